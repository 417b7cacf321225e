"""BEATs transformer encoder (Chen et al. 2022) as a fingerprint backbone (paper §4.1).

Kaldi fbank (``afp_core.features.KaldiFbank``, 128 bins x 98 frames for 1 s at 8 kHz)
-> 16 x 16 patches embedded by a strided convolution to 512 -> LayerNorm -> Linear to 768
-> convolutional positional embedding -> LayerNorm -> 12 post-LN transformer layers with
deep-norm residual scaling and a gated, bucketed relative position bias -> the mean of the
6 x 8 = 48 patch tokens (768) -> the div-enc projection (768 -> 128, as for the CNNs).

Module and parameter names follow the official BEATs ``state_dict`` (``patch_embedding``,
``layer_norm``, ``post_extract_proj``, ``encoder.pos_conv.0.weight_g`` ...,
``encoder.layers.N.self_attn.{q,k,v,out}_proj``, ``...relative_attention_bias``,
``...grep_linear``, ``...grep_a``, ``self_attn_layer_norm``, ``fc1``, ``fc2``,
``final_layer_norm``, ``encoder.layer_norm``) so that the official BEATs_iter3+ weights
load into ``BEATsEncoder`` as they are (``load_beats_checkpoint``,
``initialise_from_beats``). As in BEATs, one relative-position table is shared by all
layers and appears in the state_dict under every layer's name.

Parameters at the official size: 90,311,792 in the encoder (the shared table counted once)
plus 32,896 in the projection: 90,344,688 in all.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from afp_core.config import BEATsConfig, KaldiFbankConfig, expect_config
from afp_core.errors import CheckpointError, ConfigError
from afp_core.features import KaldiFbank
from afp_core.models.fingerprinter import Fingerprinter
from afp_core.models.projection import DivEncProjection

if TYPE_CHECKING:
    from afp_core.models.registry import ModelSpec

__all__ = [
    "BEATsCheckpoint",
    "BEATsEncoder",
    "BEATsLayer",
    "BEATsTransformer",
    "RelativeSelfAttention",
    "build_beats",
    "initialise_beats",
    "initialise_from_beats",
    "load_beats_checkpoint",
    "relative_position_buckets",
]

Note = Callable[[str], None]


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient is multiplied by ``factor`` on the way back."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.factor, None


def relative_position_buckets(
    query_len: int, key_len: int, num_buckets: int, max_distance: int, device: Any = None
) -> Tensor:
    """(query_len, key_len) bucket of each key position relative to each query position.

    Bidirectional T5/WavLM bucketing as BEATs uses it: half the buckets for keys after
    the query, half for keys at or before it; within each half distances below
    ``num_buckets // 4`` get a bucket each, longer ones share log-spaced buckets up to
    ``max_distance`` (and the last bucket beyond it).
    """
    half = num_buckets // 2
    exact = half // 2
    query = torch.arange(query_len, device=device)[:, None]
    key = torch.arange(key_len, device=device)[None, :]
    relative = key - query
    distance = relative.abs()
    # clamp: log(0) would be -inf (those entries take the exact branch anyway)
    scaled = torch.log(distance.clamp_min(1).float() / exact) / math.log(max_distance / exact)
    logarithmic = (exact + (scaled * (half - exact)).long()).clamp_max(half - 1)
    bucket = torch.where(distance < exact, distance, logarithmic)
    return bucket + (relative > 0).long() * half


class WeightNormConv1d(nn.Module):
    """Grouped Conv1d with weight normalisation over every axis but the kernel axis.

    weight = weight_g * weight_v / ||weight_v||, the norm taken per kernel tap over output
    and input channels; stored as ``weight_g`` (1, 1, K) and ``weight_v`` (C, C/groups, K),
    the names torch's ``weight_norm(conv, dim=2)`` gives them in the official checkpoint.
    Padding K // 2 on both sides. Shapes: (B, C, T) -> (B, C, T + 1 - K % 2).
    """

    def __init__(self, channels: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.groups = groups
        self.weight_g = nn.Parameter(torch.empty(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel))
        self.bias = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BEATs' initialisation: v ~ N(0, 4 / (K C)), g = ||v||, bias 0."""
        channels = self.weight_v.shape[0]
        with torch.no_grad():
            self.weight_v.normal_(0.0, math.sqrt(4.0 / (self.kernel * channels)))
            self.weight_g.copy_(self.weight_v.norm(dim=(0, 1), keepdim=True))
            self.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, C, T + 1 - K % 2)."""
        weight = self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))
        return F.conv1d(x, weight, self.bias, padding=self.kernel // 2, groups=self.groups)


class _TrimLast(nn.Module):
    """Drops the last time step: an even kernel with K // 2 padding adds one (B, C, T+1)."""

    def forward(self, x: Tensor) -> Tensor:
        return x[..., :-1]


class RelativeSelfAttention(nn.Module):
    """Multi-head self-attention with BEATs' gated relative position bias.

    Each head's scores get ``gate * bias[h, i, j]``, where ``bias`` comes from the shared
    ``relative_attention_bias`` table (``num_buckets`` x heads) and the gate depends on
    the query: ``g = sigmoid(sum of 4 of grep_linear(q)) * (sigmoid(sum of the other 4) *
    grep_a - 1) + 2`` with ``q`` the head's unscaled query.

    Shapes: ``forward(x: (B, T, C), position_bias: (H, T, T)) -> (B, T, C)``.
    """

    def __init__(
        self,
        embed_dim: int,
        heads: int,
        dropout: float,
        relative_attention_bias: nn.Embedding,
        max_distance: int,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.max_distance = max_distance
        self.head_dim = embed_dim // heads
        self.scaling = self.head_dim**-0.5
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        # shared by every layer (one table in BEATs), registered in each so that the
        # state_dict has every layer's key, as the official one does
        self.relative_attention_bias = relative_attention_bias
        self.grep_linear = nn.Linear(self.head_dim, 8)
        self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))
        self.dropout = nn.Dropout(dropout)

    def position_bias(self, length: int) -> Tensor:
        """(H, length, length) relative position bias of the shared table."""
        table = self.relative_attention_bias
        buckets = relative_position_buckets(
            length, length, table.num_embeddings, self.max_distance, device=table.weight.device
        )
        return table(buckets).permute(2, 0, 1)

    def forward(self, x: Tensor, position_bias: Tensor) -> Tensor:
        """(B, T, C) + (H, T, T) -> (B, T, C)."""
        b, t, c = x.shape

        def heads(y: Tensor) -> Tensor:
            return y.view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, d)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        gates = torch.sigmoid(self.grep_linear(q).view(b, self.heads, t, 2, 4).sum(-1))
        gate = gates[..., :1] * (gates[..., 1:] * self.grep_a - 1.0) + 2.0  # (B, H, T, 1)
        scores = torch.matmul(q * self.scaling, k.transpose(-1, -2))
        # softmax in float32: the bias and gate are O(1) but the scores may be half
        scores = scores.float() + gate.float() * position_bias.float()
        attn = self.dropout(torch.softmax(scores, dim=-1).to(v.dtype))
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, t, c)
        return self.out_proj(out)


class BEATsLayer(nn.Module):
    """Post-LN transformer layer with deep-norm residuals (x * alpha + f(x), then LN).

    Shapes: ``forward(x: (B, T, C), position_bias: (H, T, T)) -> (B, T, C)``.
    """

    def __init__(
        self, config: BEATsConfig, relative_attention_bias: nn.Embedding, alpha: float
    ) -> None:
        super().__init__()
        self.alpha = alpha
        self.self_attn = RelativeSelfAttention(
            config.embed_dim,
            config.heads,
            config.attention_dropout,
            relative_attention_bias,
            config.max_distance,
        )
        self.self_attn_layer_norm = nn.LayerNorm(config.embed_dim)
        self.fc1 = nn.Linear(config.embed_dim, config.ffn_dim)
        self.fc2 = nn.Linear(config.ffn_dim, config.embed_dim)
        self.final_layer_norm = nn.LayerNorm(config.embed_dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, position_bias: Tensor) -> Tensor:
        """(B, T, C) -> (B, T, C)."""
        x = self.self_attn_layer_norm(
            x * self.alpha + self.dropout(self.self_attn(x, position_bias))
        )
        hidden = self.fc2(F.gelu(self.fc1(x)))
        return self.final_layer_norm(x * self.alpha + self.dropout(hidden))


class BEATsTransformer(nn.Module):
    """Positional convolution, LayerNorm, then the layers (BEATs' ``encoder``).

    Shapes: ``forward(x: (B, N, C)) -> (B, N, C)``. In training, with ``layerdrop`` each
    layer's output is replaced by its input with that probability; the layer still runs
    so that every parameter takes part in the graph (DistributedDataParallel requires
    it). With ``layer_grad_decay`` < 1 the gradient is scaled by it at every layer's input.
    """

    def __init__(self, config: BEATsConfig) -> None:
        super().__init__()
        self.config = config
        c = config.embed_dim
        conv = WeightNormConv1d(c, config.conv_pos, config.conv_pos_groups)
        trim: list[nn.Module] = [_TrimLast()] if config.conv_pos % 2 == 0 else []
        self.pos_conv = nn.Sequential(conv, *trim, nn.GELU())
        table = nn.Embedding(config.num_buckets, config.heads)
        alpha = (2.0 * config.layers) ** 0.25
        self.layers = nn.ModuleList(BEATsLayer(config, table, alpha) for _ in range(config.layers))
        self.layer_norm = nn.LayerNorm(c)
        self.dropout = nn.Dropout(config.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BEATs' initialisation: linear weights and the table N(0, 0.02), biases 0,
        then deep-norm Xavier-normal weights (gain (8 L)^-1/4 for values, output and FFN)."""
        beta = (8.0 * self.config.layers) ** -0.25
        with torch.no_grad():
            for module in self.layers.modules():
                if isinstance(module, nn.Linear | nn.Embedding):
                    module.weight.normal_(0.0, 0.02)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    module.bias.zero_()
            for layer in self._layers():
                attn = layer.self_attn
                nn.init.xavier_normal_(attn.k_proj.weight, gain=1.0)
                nn.init.xavier_normal_(attn.q_proj.weight, gain=1.0)
                for weight in (attn.v_proj.weight, attn.out_proj.weight):
                    nn.init.xavier_normal_(weight, gain=beta)
                nn.init.xavier_normal_(layer.fc1.weight, gain=beta)
                nn.init.xavier_normal_(layer.fc2.weight, gain=beta)

    def _layers(self) -> list[BEATsLayer]:
        # nn.ModuleList is not generic: its items type as nn.Module
        return cast("list[BEATsLayer]", list(self.layers))

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, C) -> (B, N, C)."""
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        x = self.dropout(self.layer_norm(x))
        position_bias = self._layers()[0].self_attn.position_bias(x.shape[1])
        decay = self.config.layer_grad_decay
        drop = self.config.layerdrop if self.training else 0.0
        for layer in self.layers:
            if decay != 1.0 and torch.is_grad_enabled():
                x = _ScaleGrad.apply(x, decay)
            out = layer(x, position_bias)
            if drop > 0.0:
                keep = torch.rand((), device=x.device) >= drop
                out = torch.where(keep, out, x)
            x = out
        return x


class BEATsEncoder(nn.Module):
    """The fingerprint backbone: (B, 1, n_mels, frames) fbank -> (B, embed_dim).

    The front-end's (frequency, time) image is turned into BEATs' (time, frequency)
    layout, cut into ``patch`` x ``patch`` patches (frames and bins beyond the last whole
    patch are dropped, as BEATs' strided convolution does: 98 x 128 -> 6 x 8 patches),
    embedded, and the patch tokens, in time-major order, go through the transformer; the
    output is their mean. ``tokens`` gives the (B, N, embed_dim) tokens themselves.

    ``freeze()`` (or ``config.freeze_encoder``) stops gradients to every parameter and
    keeps the module in eval mode whatever ``train()`` is asked (no dropout, no layerdrop).
    """

    def __init__(self, config: BEATsConfig, input_shape: tuple[int, int]) -> None:
        super().__init__()
        n_mels, frames = input_shape
        if n_mels < config.patch or frames < config.patch:
            raise ConfigError(
                f"arch.patch: {config.patch} x {config.patch} patches do not fit the "
                f"{n_mels} x {frames} front-end output"
            )
        self.config = config
        self.input_shape = input_shape
        self.grid = (frames // config.patch, n_mels // config.patch)  # (time, frequency)
        self.out_features = config.embed_dim
        self.patch_embedding = nn.Conv2d(
            1, config.conv_dim, kernel_size=config.patch, stride=config.patch, bias=False
        )
        self.layer_norm = nn.LayerNorm(config.conv_dim)
        # BEATs has no projection when the sizes agree: no post_extract_proj keys then
        self.post_extract_proj: nn.Linear | None = (
            nn.Linear(config.conv_dim, config.embed_dim)
            if config.conv_dim != config.embed_dim
            else None
        )
        self.encoder = BEATsTransformer(config)
        self.frozen = False
        if config.freeze_encoder:
            self.freeze()

    @property
    def n_tokens(self) -> int:
        """Patch tokens per input (48 for 98 x 128 fbanks)."""
        return self.grid[0] * self.grid[1]

    def freeze(self) -> None:
        """No gradients to any parameter, eval mode from now on."""
        self.requires_grad_(False)
        self.frozen = True
        self.train(False)

    def train(self, mode: bool = True) -> BEATsEncoder:
        return super().train(mode and not self.frozen)

    def tokens(self, features: Tensor) -> Tensor:
        """(B, 1, n_mels, frames) -> (B, N, embed_dim) patch tokens, time-major."""
        if features.ndim != 4 or tuple(features.shape[1:]) != (1, *self.input_shape):
            raise ValueError(
                f"BEATsEncoder expects (batch, 1, {self.input_shape[0]}, "
                f"{self.input_shape[1]}), got {tuple(features.shape)}"
            )
        x = self.patch_embedding(features.transpose(2, 3))  # (B, conv_dim, T', F')
        x = self.layer_norm(x.flatten(2).transpose(1, 2))  # (B, N, conv_dim)
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        return self.encoder(x)

    def forward(self, features: Tensor) -> Tensor:
        """(B, 1, n_mels, frames) -> (B, embed_dim): the mean of the patch tokens."""
        return self.tokens(features).mean(dim=1)


def build_beats(spec: ModelSpec) -> Fingerprinter:
    """Kaldi fbank -> BEATsEncoder -> DivEncProjection; never reads ``arch.pretrained``."""
    arch = expect_config(spec.arch, BEATsConfig, "model.arch")
    frontend_config = expect_config(spec.frontend, KaldiFbankConfig, "model.frontend")
    frontend = KaldiFbank(frontend_config, sample_rate=spec.audio.sample_rate)
    input_shape = frontend.output_shape(spec.audio.window)
    if input_shape[1] < 1:
        raise ConfigError(
            f"model.audio.window_s: {spec.audio.window_s} s is shorter than one "
            f"{frontend_config.frame_length_ms} ms fbank frame"
        )
    backbone = BEATsEncoder(arch, input_shape)
    head = DivEncProjection(arch.embed_dim, arch.dim, arch.proj_hidden)
    return Fingerprinter(spec, frontend, backbone, head)


# --- official checkpoints -------------------------------------------------------------------

# torch's weights-only refusal of a pickled object: "GLOBAL module.Name was not an allowed
# global" (or a blocked module)
_REFUSED = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module)")
# The official BEATsConfig defaults, for cfg entries a checkpoint leaves out.
_OFFICIAL_DEFAULTS: dict[str, Any] = {
    "input_patch_size": -1,
    "embed_dim": 512,
    "conv_bias": False,
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "layer_norm_first": False,
    "deep_norm": False,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "relative_position_embedding": False,
    "num_buckets": 320,
    "max_distance": 1280,
    "gru_rel_pos": False,
    "finetuned_model": False,
}
# official cfg key -> our BEATsConfig field
_SIZES = {
    "encoder_layers": "layers",
    "encoder_embed_dim": "embed_dim",
    "encoder_attention_heads": "heads",
    "encoder_ffn_embed_dim": "ffn_dim",
    "embed_dim": "conv_dim",
    "input_patch_size": "patch",
    "conv_pos": "conv_pos",
    "conv_pos_groups": "conv_pos_groups",
    "num_buckets": "num_buckets",
    "max_distance": "max_distance",
}
# the arrangement this module implements (BEATs_iter3 and later)
_FIXED = {
    "relative_position_embedding": True,
    "gru_rel_pos": True,
    "deep_norm": True,
    "layer_norm_first": False,
    "conv_bias": False,
    "activation_fn": "gelu",
}


@dataclasses.dataclass
class BEATsCheckpoint:
    """An official BEATs checkpoint: ``cfg`` and the ``model`` state_dict as stored."""

    path: Path
    cfg: dict[str, Any]
    state_dict: dict[str, Tensor]

    @property
    def finetuned(self) -> bool:
        """True for the AudioSet-fine-tuned variants (they carry a ``predictor``)."""
        return any(k.startswith("predictor.") for k in self.state_dict)

    def setting(self, key: str) -> Any:
        """A cfg value, or the official default when the file leaves it out."""
        return self.cfg.get(key, _OFFICIAL_DEFAULTS.get(key))

    def mismatches(self, arch: BEATsConfig) -> list[str]:
        """What differs between this checkpoint's architecture and ``arch`` ([] if none)."""
        problems = []
        for key, field in _SIZES.items():
            ours = getattr(arch, field)
            if self.setting(key) != ours:
                problems.append(f"{key} {self.setting(key)!r} vs arch.{field} {ours!r}")
        for key, wanted in _FIXED.items():
            if self.setting(key) != wanted:
                problems.append(f"{key} {self.setting(key)!r} (this encoder needs {wanted!r})")
        return problems


def load_beats_checkpoint(path: str | Path) -> BEATsCheckpoint:
    """Read an official BEATs checkpoint (``{'cfg': dict, 'model': state_dict}``).

    ``torch.load(weights_only=True)``: only tensors and plain containers are accepted.
    Every problem is a one-line ``CheckpointError`` naming the file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        what = "not a file" if path.exists() else "no such file"
        raise CheckpointError(f"{path}: {what} (arch.pretrained: an official BEATs checkpoint)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _REFUSED.search(str(exc))
        if refused is None:  # the weights-only unpickler's answer to foreign bytes
            raise CheckpointError(f"{path}: not a readable torch checkpoint") from None
        raise CheckpointError(
            f"{path}: refused by weights-only loading: it holds a Python object "
            f"({refused.group(1).rstrip('.')}) other than tensors and plain containers"
        ) from None
    except Exception as exc:  # truncated zips, foreign bytes: unusable either way
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({first})") from None
    if not isinstance(data, dict) or "model" not in data or "cfg" not in data:
        keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(
            f"{path}: not an official BEATs checkpoint (expected a dict with 'cfg' and "
            f"'model', found {keys})"
        )
    cfg, state = data["cfg"], data["model"]
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: 'cfg' is a {type(cfg).__name__}, not a dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: 'model' is a {type(state).__name__}, not a state_dict")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: 'model' entry {key!r} is not a named tensor")
    return BEATsCheckpoint(path=path, cfg=dict(cfg), state_dict=dict(state))


def initialise_from_beats(
    backbone: BEATsEncoder, checkpoint: BEATsCheckpoint | str | Path
) -> list[str]:
    """Copy an official checkpoint's encoder weights into ``backbone``.

    Returns the checkpoint keys that are not encoder weights and were ignored (the
    fine-tuned variants' ``predictor.*``). A cfg whose sizes or arrangement differ from
    ``backbone.config``, a missing encoder weight or a weight of the wrong shape is a
    ``CheckpointError`` naming the file. A file holding the relative-position table for
    the first layer only (the table is shared) fills the other layers from it.
    """
    if not isinstance(checkpoint, BEATsCheckpoint):
        checkpoint = load_beats_checkpoint(checkpoint)
    path = checkpoint.path
    problems = checkpoint.mismatches(backbone.config)
    if problems:
        raise CheckpointError(
            f"{path}: the BEATs checkpoint does not fit the configured encoder: "
            + "; ".join(problems)
        )
    found = dict(checkpoint.state_dict)
    expected = backbone.state_dict()
    table = "encoder.layers.0.self_attn.relative_attention_bias.weight"
    if table in found:
        for key in expected:
            if key.endswith("self_attn.relative_attention_bias.weight") and key not in found:
                found[key] = found[table]
    missing = [k for k in expected if k not in found]
    if missing:
        first = ", ".join(missing[:3])
        raise CheckpointError(
            f"{path}: {len(missing)} encoder weight(s) missing from the BEATs checkpoint "
            f"(first: {first})"
        )
    wrong = [k for k in expected if tuple(found[k].shape) != tuple(expected[k].shape)]
    if wrong:
        key = wrong[0]
        raise CheckpointError(
            f"{path}: {len(wrong)} weight(s) of the wrong shape (first: {key} is "
            f"{tuple(found[key].shape)}, the encoder needs {tuple(expected[key].shape)})"
        )
    backbone.load_state_dict({k: found[k] for k in expected}, strict=True)
    return sorted(k for k in found if k not in expected)


def initialise_beats(model: Fingerprinter, note: Note | None = None) -> None:
    """The ``beats`` entry's start-of-training hook: load ``arch.pretrained`` if set.

    Called by the trainer for a fresh run only (a resumed run or a saved afp checkpoint
    already holds its weights, and the official file need not exist where it is rebuilt).
    """
    arch = expect_config(model.spec.arch, BEATsConfig, "model.arch")
    if arch.pretrained is None:
        return
    if not isinstance(model.backbone, BEATsEncoder):
        raise ConfigError(
            f"model {model.spec.name!r}: the backbone is a {type(model.backbone).__name__}, "
            "not a BEATsEncoder, so BEATs weights cannot be loaded into it"
        )
    checkpoint = load_beats_checkpoint(arch.pretrained)
    ignored = initialise_from_beats(model.backbone, checkpoint)
    if note is not None:
        kind = "fine-tuned" if checkpoint.finetuned else "pre-trained"
        extra = ""
        if ignored:
            shown = ", ".join(ignored[:4]) + (", ..." if len(ignored) > 4 else "")
            extra = f"; ignored {len(ignored)} key(s) that are not encoder weights: {shown}"
        note(f"encoder initialised from {checkpoint.path} ({kind} BEATs){extra}")
