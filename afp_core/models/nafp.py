"""The NAFP encoder (Chang et al. 2021; paper §4.1, docs/design.md §1.3).

Eight blocks of separable convolutions, each halving time then frequency, turn a
(1, 256, 32) log-mel image into a (1024, 1, 1) map that is flattened into the feature
vector the projection head consumes.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from afp_core.config import NAFPConfig
from afp_core.errors import ConfigError

BASE_CHANNELS: tuple[int, ...] = (128, 128, 256, 256, 512, 512, 1024, 1024)
_KERNEL = 3
_STRIDE = 2


def nafp_channels(width: float) -> tuple[int, ...]:
    """Channel count of each block for a width multiplier (rounded, at least 1)."""
    if not math.isfinite(width) or width <= 0:
        raise ConfigError(f"arch.width: must be a positive number, got {width!r}")
    return tuple(max(1, round(c * width)) for c in BASE_CHANNELS)


def same_padding(size: int, kernel: int = _KERNEL, stride: int = _STRIDE) -> tuple[int, int]:
    """(before, after) zero padding giving TensorFlow's "same" output size ceil(size/stride).

    Like TF, an odd total puts the extra zero after the signal (for an even size with
    kernel 3 and stride 2: nothing before, one after), so the weights of the original
    TF model line up with the same samples here.
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class NAFPBlock(nn.Module):
    """One separable block; shapes (B, C_in, F, T) -> (B, C_out, ceil(F/2), ceil(T/2)).

    Conv (1x3, stride (1,2)) along time -> act -> LayerNorm ->
    Conv (3x1, stride (2,1)) along frequency -> act -> LayerNorm, where act is ReLU or
    (as in the authors' TensorFlow code) ELU.

    The LayerNorms are the original "layer_norm2d": each item is normalised over all of
    (C, F, T), with an elementwise affine of shape (C, F, T). That is why the input size
    has to be known here, and where most of the model's 16.9 M parameters outside the
    convolutions come from.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        in_size: tuple[int, int],
        activation: str = "relu",
    ) -> None:
        super().__init__()
        freq, time = in_size
        time_out = math.ceil(time / _STRIDE)
        freq_out = math.ceil(freq / _STRIDE)
        self.in_size = (freq, time)
        self.out_size = (freq_out, time_out)
        # ZeroPad2d takes (left, right, top, bottom) = (time before/after, freq before/after).
        self.pad_time = nn.ZeroPad2d((*same_padding(time), 0, 0))
        self.conv_time = nn.Conv2d(
            in_channels, out_channels, kernel_size=(1, _KERNEL), stride=(1, _STRIDE)
        )
        self.norm_time = nn.LayerNorm((out_channels, freq, time_out))
        self.pad_freq = nn.ZeroPad2d((0, 0, *same_padding(freq)))
        self.conv_freq = nn.Conv2d(
            out_channels, out_channels, kernel_size=(_KERNEL, 1), stride=(_STRIDE, 1)
        )
        self.norm_freq = nn.LayerNorm((out_channels, freq_out, time_out))
        self.act = nn.ELU() if activation == "elu" else nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, F, T) -> (B, C_out, ceil(F/2), ceil(T/2))."""
        x = self.norm_time(self.act(self.conv_time(self.pad_time(x))))
        return self.norm_freq(self.act(self.conv_freq(self.pad_freq(x))))


class NAFPEncoder(nn.Module):
    """NAFP backbone: (B, 1, F, T) log-mel images -> (B, out_features) feature vectors.

    ``input_shape`` is (F, T) of the front-end output; block sizes follow from it
    (256 x 32 -> 1 x 1 after eight halvings of each axis, with "same" padding). The
    final map is flattened, so ``out_features = channels[-1] * F_last * T_last``, which
    is ``round(1024 * width)`` for the default input.
    """

    def __init__(self, config: NAFPConfig, input_shape: tuple[int, int] = (256, 32)) -> None:
        super().__init__()
        freq, time = (int(s) for s in input_shape)
        if freq <= 0 or time <= 0:
            raise ConfigError(f"NAFP input shape must be positive, got {tuple(input_shape)}")
        self.config = config
        self.input_shape = (freq, time)
        self.channels = nafp_channels(config.width)
        blocks = []
        in_channels, size = 1, self.input_shape
        for out_channels in self.channels:
            block = NAFPBlock(in_channels, out_channels, size, config.activation)
            blocks.append(block)
            in_channels, size = out_channels, block.out_size
        self.blocks = nn.Sequential(*blocks)
        self.output_size = size
        self.out_features = in_channels * size[0] * size[1]

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, F, T) -> (B, out_features)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, *self.input_shape):
            raise ValueError(
                f"NAFPEncoder expects (batch, 1, {self.input_shape[0]}, {self.input_shape[1]}),"
                f" got {tuple(x.shape)}"
            )
        return self.blocks(x).flatten(1)
