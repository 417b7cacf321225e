"""Start a wider NAFP from a trained narrower one (Net2WiderNet, Chen et al. 2016).

Training a wider model from scratch on the CPU costs hours before it is as good as the
narrow model it should beat. Widening copies the narrow model into the wide one so that
the wide one computes the same fingerprints at step 0, then training uses the extra
channels. docs/training.md ("Widening") records what it gave.

Every channel of the narrow model becomes ``factor`` consecutive channels of the wide
one with the same incoming weights, bias and LayerNorm affine. That keeps each block's
output exact:

- ReLU/ELU act per element;
- the NAFP LayerNorm normalises over all of (C, F, T), and a map whose every channel
  appears ``factor`` times has the same mean and variance;
- a convolution reading the copies splits each original weight among them with random
  positive shares that sum to one, so it sees the same input. The shares differ between
  the copies, which is what lets their gradients, and so the copies, drift apart;
- the div-enc head's slice ``i`` then holds the copies of the narrow slice ``i``'s
  features, and its first layer's weights are split the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from afp_core.errors import ConfigError
from afp_core.models.fingerprinter import Fingerprinter
from afp_core.models.nafp import NAFPBlock, NAFPEncoder
from afp_core.models.projection import DivEncProjection


def find_widening_factor(narrow: Fingerprinter, wide: Fingerprinter) -> int | None:
    """The whole channel factor from ``narrow`` to ``wide``, or None when there is none.

    Both must be NAFP models whose specs differ in ``arch.width`` only, with every
    block of ``wide`` holding the same whole multiple (at least 2) of ``narrow``'s channels.
    """
    parts = _nafp_parts(narrow), _nafp_parts(wide)
    if parts[0] is None or parts[1] is None:
        return None
    narrow_spec, wide_spec = narrow.spec.to_dict(), wide.spec.to_dict()
    narrow_spec["arch"].pop("width")
    wide_spec["arch"].pop("width")
    if narrow_spec != wide_spec:
        return None
    pairs = zip(parts[0][0].channels, parts[1][0].channels, strict=True)
    ratios = {w / n for n, w in pairs}
    if len(ratios) != 1:
        return None
    ratio = ratios.pop()
    return int(ratio) if ratio == int(ratio) and ratio >= 2 else None


def widen_nafp(narrow: Fingerprinter, wide: Fingerprinter, seed: int = 0) -> int:
    """Load ``narrow``'s weights into ``wide`` so that both give the same fingerprints.

    Returns the channel factor. Raises ``ConfigError`` when ``find_widening_factor``
    finds none. The random shares are drawn from a generator seeded with ``seed``.
    """
    factor = find_widening_factor(narrow, wide)
    narrow_parts, wide_parts = _nafp_parts(narrow), _nafp_parts(wide)
    if factor is None or narrow_parts is None or wide_parts is None:
        raise ConfigError(
            f"cannot widen {narrow.spec.name} width {getattr(narrow.spec.arch, 'width', '?')} "
            f"into {wide.spec.name} width {getattr(wide.spec.arch, 'width', '?')}: both must be "
            "NAFP models that differ only in arch.width, by a whole factor of 2 or more"
        )
    generator = torch.Generator().manual_seed(seed)
    (narrow_encoder, narrow_head), (wide_encoder, wide_head) = narrow_parts, wide_parts
    with torch.no_grad():
        blocks = zip(_blocks(narrow_encoder), _blocks(wide_encoder), strict=True)
        for index, (source, target) in enumerate(blocks):
            in_factor = 1 if index == 0 else factor
            _widen_conv(source.conv_time, target.conv_time, factor, in_factor, generator)
            _repeat_into(source.norm_time.weight, target.norm_time.weight, factor)
            _repeat_into(source.norm_time.bias, target.norm_time.bias, factor)
            _widen_conv(source.conv_freq, target.conv_freq, factor, factor, generator)
            _repeat_into(source.norm_freq.weight, target.norm_freq.weight, factor)
            _repeat_into(source.norm_freq.bias, target.norm_freq.bias, factor)
        # weight1 is (dim, slice, hidden): the narrow slice's feature s becomes the wide
        # slice's features s*factor .. s*factor+factor-1, as the repeated channels lie.
        wide_head.weight1.copy_(_split_inputs(narrow_head.weight1, 1, factor, generator))
        wide_head.bias1.copy_(narrow_head.bias1)
        wide_head.weight2.copy_(narrow_head.weight2)
        wide_head.bias2.copy_(narrow_head.bias2)
    return factor


def _blocks(encoder: NAFPEncoder) -> list[NAFPBlock]:
    return [block for block in encoder.blocks if isinstance(block, NAFPBlock)]


def _nafp_parts(model: Fingerprinter) -> tuple[NAFPEncoder, DivEncProjection] | None:
    if isinstance(model.backbone, NAFPEncoder) and isinstance(model.head, DivEncProjection):
        return model.backbone, model.head
    return None


def _repeat_into(source: Tensor, target: Tensor, factor: int) -> None:
    """Each leading-axis entry of ``source`` ``factor`` times in a row, into ``target``."""
    target.copy_(source.repeat_interleave(factor, dim=0))


def _split_shares(shape: tuple[int, ...], factor: int, generator: torch.Generator) -> Tensor:
    """Random positive shares summing to 1, ``factor`` per entry: shape + (factor,)."""
    shares = torch.rand(*shape, factor, generator=generator) + 0.5
    return shares / shares.sum(dim=-1, keepdim=True)


def _split_inputs(weight: Tensor, axis: int, factor: int, generator: torch.Generator) -> Tensor:
    """``weight`` with its input ``axis`` repeated ``factor`` times, each weight split in shares."""
    moved = weight.movedim(axis, -1)  # (..., C_in)
    shares = _split_shares(tuple(moved.shape), factor, generator)  # (..., C_in, factor)
    split = (moved.unsqueeze(-1) * shares).flatten(-2)  # (..., C_in * factor), copies adjacent
    return split.movedim(-1, axis)


def _widen_conv(
    source: torch.nn.Conv2d,
    target: torch.nn.Conv2d,
    out_factor: int,
    in_factor: int,
    generator: torch.Generator,
) -> None:
    weight = source.weight.repeat_interleave(out_factor, dim=0)  # (C_out', C_in, kh, kw)
    if in_factor > 1:
        weight = _split_inputs(weight, 1, in_factor, generator)
    target.weight.copy_(weight)
    if source.bias is not None and target.bias is not None:
        _repeat_into(source.bias, target.bias, out_factor)
