"""ResNet+STA: a residual CNN with a spectro-temporal attention mask in every block.

Paper §4.1 (after Singh et al., "Attention-based audio embeddings for query-by-example"):
a ResNet-like encoder whose attention "emphasizes the local maxima of the extracted
feature maps", adapted to the 256 x 32 log-mel input of NAFP and followed by the same
div-enc projection. The paper gives the total size (19,968,256 parameters) but not the
layer list; the design below is ours, sized to land within 1 % of that figure at width 1.

Encoder (width 1, input (B, 1, 256, 32))::

    stem    Conv 3x3 stride 2 (1 -> 64) -> GroupNorm -> ReLU        (B, 64, 128, 16)
    stage 1 2 blocks,  64 channels, stride 1                         (B, 64, 128, 16)
    stage 2 2 blocks, 128 channels, first block stride 2             (B, 128, 64, 8)
    stage 3 1 block,  256 channels, stride 2                         (B, 256, 32, 4)
    stage 4 1 block,  512 channels, stride 2                         (B, 512, 16, 2)
    stage 5 1 block, 1024 channels, stride 2                         (B, 1024, 8, 1)
    global average pool over (F, T)                                  (B, 1024)

Block: Conv 3x3 (stride s) -> GN -> ReLU -> Conv 3x3 -> GN -> STA mask (multiply) ->
+ shortcut (identity, or Conv 1x1 stride s -> GN when the shape changes) -> ReLU.

Spectro-temporal attention (``SpectroTemporalAttention``), per channel ("channel-wise"):
for features x (B, C, F, T) the mask is ``sigmoid(a_freq + a_time + a_peak)`` with

- ``a_freq`` (B, C, F, 1): the mean and the max of x over time, per frequency row, mixed by
  a depthwise 1-D convolution along frequency (which bands of this channel matter now);
- ``a_time`` (B, C, 1, T): the same with the statistics taken over frequency and the
  convolution along time (which frames matter);
- ``a_peak`` (B, C, F, T): ``gamma_c * (x - maxpool3x3(x))``, zero at a 3 x 3 local
  maximum and negative elsewhere, so that with ``gamma_c > 0`` (its initial value 1) the
  mask keeps local maxima and damps their surroundings, the constellation-map idea of
  Wang's landmarks that the paper says the attention mimics.

Why this design: the first two terms are separable (F + T logits instead of F x T), cheap
and driven by pooled statistics, so the mask can follow where the energy of a window is;
the third is what makes it a peak emphasiser rather than a plain gating of bands and
frames. The mask multiplies the residual branch only, so an all-ones mask gives a plain
ResNet block and an all-zeros one a pure shortcut; the output never vanishes.

Normalisation is GroupNorm (groups of 16 channels), not BatchNorm: every operation works
on one item, in training as in evaluation, so an item's fingerprint never depends on its
batch-mates (docs/design.md §2.1), and the contrastive batch (clean anchors and distorted
positives) cannot leak through batch statistics.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from afp_core.config import LogMelConfig, ResNetSTAConfig, expect_config
from afp_core.errors import ConfigError
from afp_core.features import LogMel
from afp_core.models.fingerprinter import Fingerprinter
from afp_core.models.projection import DivEncProjection

if TYPE_CHECKING:
    from afp_core.models.registry import ModelSpec

CHANNELS_PER_GROUP = 16


def resnet_sta_channels(config: ResNetSTAConfig) -> tuple[int, ...]:
    """Channel count of each stage for the config's width multiplier (rounded, at least 1)."""
    width = config.width
    if not math.isfinite(width) or width <= 0:
        raise ConfigError(f"arch.width: must be a positive number, got {width!r}")
    return tuple(max(1, round(c * width)) for c in config.channels)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with groups of about ``CHANNELS_PER_GROUP`` channels (one group if fewer)."""
    groups = max(1, channels // CHANNELS_PER_GROUP)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


class SpectroTemporalAttention(nn.Module):
    """Channel-wise spectro-temporal attention mask; (B, C, F, T) -> (B, C, F, T).

    ``mask(x)`` is ``sigmoid(a_freq + a_time + gamma * (x - maxpool3x3(x)))`` in (0, 1),
    see the module docstring; ``forward(x)`` is ``x * mask(x)``.

    Parameters: ``freq_conv`` and ``time_conv`` are depthwise ``Conv1d(2C, C, kernel,
    groups=C)``: each channel mixes its own (mean, max) pair over ``kernel`` neighbouring
    rows (or frames); ``peak_gain`` is ``gamma``, shape (C,).
    """

    def __init__(self, channels: int, kernel: int = 3) -> None:
        super().__init__()
        if channels <= 0 or kernel <= 0 or kernel % 2 == 0:
            raise ValueError(
                f"SpectroTemporalAttention: channels > 0 and an odd kernel > 0 needed, "
                f"got channels={channels}, kernel={kernel}"
            )
        self.channels = channels
        self.kernel = kernel
        pad = kernel // 2
        self.freq_conv = nn.Conv1d(2 * channels, channels, kernel, padding=pad, groups=channels)
        self.time_conv = nn.Conv1d(2 * channels, channels, kernel, padding=pad, groups=channels)
        self.peak_gain = nn.Parameter(torch.ones(channels))

    @staticmethod
    def _pooled(x: Tensor, dim: int) -> Tensor:
        """(B, C, F, T) -> (B, 2C, L): per channel, mean then max over ``dim``, interleaved."""
        stats = torch.stack((x.mean(dim=dim), x.amax(dim=dim)), dim=2)  # (B, C, 2, L)
        return stats.flatten(1, 2)

    def logits(self, x: Tensor) -> Tensor:
        """(B, C, F, T) -> (B, C, F, T) mask logits."""
        a_freq = self.freq_conv(self._pooled(x, dim=3)).unsqueeze(3)  # (B, C, F, 1)
        a_time = self.time_conv(self._pooled(x, dim=2)).unsqueeze(2)  # (B, C, 1, T)
        peaks = x - F.max_pool2d(x, kernel_size=3, stride=1, padding=1)  # <= 0, 0 at maxima
        return a_freq + a_time + self.peak_gain.view(1, -1, 1, 1) * peaks

    def mask(self, x: Tensor) -> Tensor:
        """(B, C, F, T) -> (B, C, F, T) attention mask in (0, 1)."""
        return torch.sigmoid(self.logits(x))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, F, T) -> (B, C, F, T): ``x`` weighted by its mask."""
        return x * self.mask(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel={self.kernel}"


class STABlock(nn.Module):
    """Residual block with attention; (B, C_in, F, T) -> (B, C_out, ceil(F/s), ceil(T/s)).

    Conv 3x3 (stride s) -> GN -> ReLU -> Conv 3x3 -> GN -> attention mask ->
    + shortcut -> ReLU. The shortcut is the identity when shapes agree, else
    Conv 1x1 (stride s) -> GN.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, attention_kernel: int = 3
    ) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = group_norm(out_channels)
        self.attention = SpectroTemporalAttention(out_channels, attention_kernel)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                group_norm(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, F, T) -> (B, C_out, ceil(F/stride), ceil(T/stride))."""
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.attention(self.norm2(self.conv2(y)))
        return F.relu(y + self.shortcut(x))


class ResNetSTAEncoder(nn.Module):
    """ResNet+STA backbone: (B, 1, F, T) log-mel images -> (B, out_features) feature vectors.

    ``input_shape`` is (F, T) of the front-end output (256 x 32 by default); the final map
    is average-pooled over both axes, so ``out_features = round(channels[-1] * width)``
    whatever the input size, and ``output_size`` records the map's (F, T) before pooling.
    """

    def __init__(self, config: ResNetSTAConfig, input_shape: tuple[int, int] = (256, 32)) -> None:
        super().__init__()
        freq, time = (int(s) for s in input_shape)
        if freq <= 0 or time <= 0:
            raise ConfigError(f"ResNet+STA input shape must be positive, got {tuple(input_shape)}")
        self.config = config
        self.input_shape = (freq, time)
        self.channels = resnet_sta_channels(config)
        stem_channels = self.channels[0]
        self.stem = nn.Sequential(
            nn.Conv2d(1, stem_channels, 3, stride=2, padding=1, bias=False),
            group_norm(stem_channels),
            nn.ReLU(),
        )
        size = (_halve(freq), _halve(time))
        stages = []
        in_channels = stem_channels
        for i, (out_channels, count) in enumerate(zip(self.channels, config.blocks, strict=True)):
            blocks = []
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(STABlock(in_channels, out_channels, stride, config.attention_kernel))
                if stride == 2:
                    size = (_halve(size[0]), _halve(size[1]))
                in_channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.output_size = size
        self.out_features = in_channels
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation (fan-out) for the 2-D convolutions, as in ResNet."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def attention_modules(self) -> list[SpectroTemporalAttention]:
        """The attention module of every block, in order."""
        return [m for m in self.modules() if isinstance(m, SpectroTemporalAttention)]

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, F, T) -> (B, out_features)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, *self.input_shape):
            raise ValueError(
                f"ResNetSTAEncoder expects (batch, 1, {self.input_shape[0]}, "
                f"{self.input_shape[1]}), got {tuple(x.shape)}"
            )
        return self.stages(self.stem(x)).mean(dim=(2, 3))


def _halve(size: int) -> int:
    """Output length of a 3-tap (or 1-tap) stride-2 convolution with padding 1 (0)."""
    return (size + 1) // 2


def build_resnet_sta(spec: ModelSpec) -> Fingerprinter:
    """Log-mel front-end -> ``ResNetSTAEncoder`` -> ``DivEncProjection``."""
    arch = expect_config(spec.arch, ResNetSTAConfig, "model.arch")
    frontend_config = expect_config(spec.frontend, LogMelConfig, "model.frontend")
    frontend = LogMel(frontend_config, sample_rate=spec.audio.sample_rate)
    n_mels, frames = frontend.output_shape(spec.audio.window)
    backbone = ResNetSTAEncoder(arch, input_shape=(n_mels, frames))
    if backbone.out_features % arch.dim:
        raise ConfigError(
            f"arch.width: width {arch.width} gives {backbone.out_features} encoder features "
            f"(arch.channels[-1] x width), which is not divisible by arch.dim={arch.dim} (the "
            "projection splits the features into dim equal slices); width 1.0, 0.5 and 0.25 "
            "work with dim 128"
        )
    head = DivEncProjection(backbone.out_features, arch.dim, arch.proj_hidden)
    return Fingerprinter(spec, frontend, backbone, head)
