"""Configuration as frozen dataclasses, with the defaults in one place.

``to_dict`` / ``from_dict`` convert to plain JSON/YAML-able dicts (what checkpoints,
manifests and reports store). ``from_dict`` is strict: an unknown key or a value of the
wrong type raises ``ConfigError`` naming the key, before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar

from afp_core.errors import ConfigError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class AudioConfig:
    """How audio is cut into fingerprint windows (paper §2.3: 1 s windows, 50 % overlap)."""

    sample_rate: int = 8000
    window_s: float = 1.0
    hop_s: float = 0.5

    @property
    def window(self) -> int:
        """Window length in samples."""
        return round(self.window_s * self.sample_rate)

    @property
    def hop(self) -> int:
        """Hop length in samples."""
        return round(self.hop_s * self.sample_rate)

    def windows_in(self, seconds: float) -> int:
        """Whole windows in a query of ``seconds``: the count thresholds are stored and
        looked up under (one rule for calibration, search and evaluation)."""
        n_samples = round(seconds * self.sample_rate)
        return 0 if n_samples < self.window else 1 + (n_samples - self.window) // self.hop


@dataclasses.dataclass(frozen=True)
class LogMelConfig:
    """Log-mel front-end of the CNN encoders: a 256 x 32 image in [-80, 0] dB.

    docs/design.md §1.2.
    """

    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 256
    f_min: float = 0.0
    f_max: float = 4000.0
    power: float = 2.0
    top_db: float = 80.0


NAFP_ACTIVATIONS = ("relu", "elu")


@dataclasses.dataclass(frozen=True)
class NAFPConfig:
    """NAFP encoder and div-enc projection (paper §4.1).

    ``width`` multiplies every convolution's channel count (1.0 is the paper's 16.9 M
    parameter model; 0.25 is a CPU-sized variant). The encoder output has
    ``round(1024 * width)`` features, split into ``dim`` slices by the projection.
    ``activation`` follows each convolution: the authors' TensorFlow code uses ELU; "relu"
    (the default, so that earlier checkpoints load as trained) is what the shipped model
    was trained with (docs/design.md §2.2).
    """

    width: float = 1.0
    dim: int = 128
    proj_hidden: int = 32
    activation: str = "relu"

    def __post_init__(self) -> None:
        if self.activation not in NAFP_ACTIVATIONS:
            raise ConfigError(
                f"arch.activation: one of {', '.join(NAFP_ACTIVATIONS)}, got {self.activation!r}"
            )


@dataclasses.dataclass(frozen=True)
class ResNetSTAConfig:
    """ResNet+STA encoder and div-enc projection (paper §4.1; ``afp_core.models.resnet_sta``).

    A stride-2 stem, then ``len(channels)`` stages of ``blocks[i]`` residual blocks with
    ``channels[i]`` channels (every stage after the first halves both axes), each block
    ending in a spectro-temporal attention mask; global average pooling gives
    ``round(channels[-1] * width)`` features for the projection. ``width`` multiplies every
    channel count: 1.0 is the paper-sized model (~20.0 M parameters), 0.25 a CPU-sized one.
    """

    width: float = 1.0
    channels: tuple[int, ...] = (64, 128, 256, 512, 1024)
    blocks: tuple[int, ...] = (2, 2, 1, 1, 1)
    attention_kernel: int = 3
    dim: int = 128
    proj_hidden: int = 32

    def __post_init__(self) -> None:
        if not 0 < self.width < float("inf"):  # also rejects NaN
            raise ConfigError(f"arch.width: must be a positive number, got {self.width!r}")
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ConfigError(f"arch.channels: positive integers, got {list(self.channels)}")
        if len(self.blocks) != len(self.channels) or any(b <= 0 for b in self.blocks):
            raise ConfigError(
                f"arch.blocks: one positive block count per stage ({len(self.channels)} "
                f"stages in arch.channels), got {list(self.blocks)}"
            )
        if self.attention_kernel <= 0 or self.attention_kernel % 2 == 0:
            raise ConfigError(
                f"arch.attention_kernel: must be a positive odd integer, got "
                f"{self.attention_kernel!r}"
            )
        for key in ("dim", "proj_hidden"):
            if getattr(self, key) <= 0:
                raise ConfigError(
                    f"arch.{key}: must be a positive integer, got {getattr(self, key)!r}"
                )


@dataclasses.dataclass(frozen=True)
class KaldiFbankConfig:
    """Kaldi log mel filterbank of BEATs (docs/design.md §1.2; ``features.KaldiFbank``).

    Kaldi's ``compute-fbank-feats`` definitions with snip edges, per-frame DC removal,
    pre-emphasis, a Povey window, an FFT of the next power of two, the power spectrum,
    triangular filters on Kaldi's mel scale, natural log floored at float32 epsilon and no
    dither. ``high_freq`` <= 0 counts down from the Nyquist frequency (Kaldi's
    convention: 0 is Nyquist). The waveform is scaled by ``scale`` first (BEATs feeds
    16-bit sample values) and the result normalised as BEATs does:
    ``(fbank - mean) / (2 * std)`` with its AudioSet statistics. At 8 kHz a 1 s window
    gives 98 frames of 128 bins.
    """

    n_mels: int = 128
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    preemphasis: float = 0.97
    low_freq: float = 20.0
    high_freq: float = 0.0
    scale: float = 32768.0
    mean: float = 15.41663
    std: float = 6.55582

    def __post_init__(self) -> None:
        if self.n_mels <= 0:
            raise ConfigError(f"frontend.n_mels: must be a positive integer, got {self.n_mels!r}")
        for key in ("frame_length_ms", "frame_shift_ms", "scale", "std"):
            value = getattr(self, key)
            if not 0 < value < float("inf"):
                raise ConfigError(f"frontend.{key}: must be a positive number, got {value!r}")
        if not 0 <= self.preemphasis <= 1:
            raise ConfigError(f"frontend.preemphasis: must be in [0, 1], got {self.preemphasis!r}")
        if self.low_freq < 0:
            raise ConfigError(f"frontend.low_freq: must be >= 0 Hz, got {self.low_freq!r}")


@dataclasses.dataclass(frozen=True)
class BEATsConfig:
    """BEATs transformer encoder and div-enc projection (paper §4.1; ``afp_core.models.beats``).

    The defaults are the official BEATs_iter3+ sizes (~90.3 M parameters): 16 x 16 fbank
    patches embedded to ``conv_dim``, projected to ``embed_dim``, a convolutional
    positional embedding (``conv_pos`` taps in ``conv_pos_groups`` groups), ``layers``
    post-LN (deep-norm) transformer layers of ``heads`` heads and ``ffn_dim`` feed-forward
    units with a gated, bucketed relative position bias (``num_buckets``,
    ``max_distance``). The patch tokens are averaged and the div-enc projection maps the
    ``embed_dim`` vector to ``dim`` (``embed_dim`` must be a multiple of ``dim``).

    Regularisation as in BEATs: ``dropout`` (residual branches), ``attention_dropout``,
    ``layerdrop`` (each layer skipped with this probability in training) and
    ``layer_grad_decay`` (gradients scaled by it at the input of every layer; the official
    checkpoint's setting is 0.6, with ``layerdrop`` 0.05 and no dropout).

    ``pretrained``: path of an official BEATs checkpoint (``{'cfg', 'model'}``) whose
    encoder weights initialise a fresh training run; building the model never reads it.
    ``freeze_encoder``: the encoder is not trained (no gradients, always in eval mode):
    only the projection learns.
    """

    dim: int = 128
    proj_hidden: int = 32
    layers: int = 12
    embed_dim: int = 768
    heads: int = 12
    ffn_dim: int = 3072
    conv_dim: int = 512
    patch: int = 16
    conv_pos: int = 128
    conv_pos_groups: int = 16
    num_buckets: int = 320
    max_distance: int = 800
    dropout: float = 0.0
    attention_dropout: float = 0.0
    layerdrop: float = 0.0
    layer_grad_decay: float = 1.0
    pretrained: str | None = None
    freeze_encoder: bool = False

    def __post_init__(self) -> None:
        for key in (
            "dim",
            "proj_hidden",
            "layers",
            "embed_dim",
            "heads",
            "ffn_dim",
            "conv_dim",
            "patch",
            "conv_pos",
            "conv_pos_groups",
            "num_buckets",
            "max_distance",
        ):
            if getattr(self, key) <= 0:
                raise ConfigError(
                    f"arch.{key}: must be a positive integer, got {getattr(self, key)!r}"
                )
        if self.embed_dim % self.heads:
            raise ConfigError(
                f"arch.heads: embed_dim {self.embed_dim} is not divisible by {self.heads} heads"
            )
        if self.embed_dim % self.conv_pos_groups:
            raise ConfigError(
                f"arch.conv_pos_groups: embed_dim {self.embed_dim} is not divisible by "
                f"{self.conv_pos_groups} groups"
            )
        if self.embed_dim % self.dim:
            raise ConfigError(
                f"arch.dim: embed_dim {self.embed_dim} is not divisible by dim={self.dim} "
                "(the projection splits the encoder output into dim equal slices)"
            )
        if self.num_buckets < 4:
            raise ConfigError(f"arch.num_buckets: at least 4, got {self.num_buckets!r}")
        if self.max_distance <= self.num_buckets // 4:
            # distances below num_buckets // 4 have exact buckets; the log-spaced ones
            # above need room up to max_distance
            raise ConfigError(
                f"arch.max_distance: must exceed num_buckets // 4 = {self.num_buckets // 4}, "
                f"got {self.max_distance!r}"
            )
        for key in ("dropout", "attention_dropout", "layerdrop"):
            value = getattr(self, key)
            if not 0 <= value < 1:
                raise ConfigError(f"arch.{key}: a probability in [0, 1), got {value!r}")
        if not 0 < self.layer_grad_decay <= 1:
            raise ConfigError(
                f"arch.layer_grad_decay: must be in (0, 1], got {self.layer_grad_decay!r}"
            )
        if self.pretrained is not None and not self.pretrained.strip():
            raise ConfigError("arch.pretrained: an empty path (use null for no checkpoint)")


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    """faiss IVF-PQ parameters; codes from paper Table 1 (m=32 x 8 bits).

    ``nlist`` None (the default) chooses the number of coarse lists from the vectors when
    the IVF-PQ index is trained, about 4 sqrt(N) (``afp_core.database.auto_nlist``), and
    ``nprobe`` None probes as many as keep the recall of the paper's 4 of 256
    (``auto_nprobe``); a database made with numbers (the paper's 256 and 4, or any made
    before this rule) keeps them (docs/design.md §3.4).

    ``density``: stored windows per query hop. A query starts anywhere in a song, so its
    windows fall up to half a hop from the nearest stored ones; ``density`` 2 stores a
    window every hop / 2 and halves that gap, at twice the vectors (docs/design.md §3.5).

    Size (``afp_core.ivf``, docs/design.md §3.4): from ``hnsw_min_lists`` lists on, the
    coarse quantiser is an HNSW graph over the centroids (trained by two-level k-means)
    instead of a flat one; an index whose lists would take more than ``ram_budget_mb``
    MB of memory keeps them on disk, memory-mapped.

    ``hub_neighbours``: each stored vector's hubness is its mean similarity to this many
    nearest vectors of other songs, and offset-consistent search discounts windows that
    resemble every song (``afp_core.hubness``, docs/design.md §3.9); 0 turns it off.
    """

    m: int = 32
    nbits: int = 8
    nlist: int | None = None
    nprobe: int | None = None
    # Below this many vectors IVF-PQ cannot be trained well: an exact flat index is used.
    min_train_vectors: int = 10_000
    max_train_vectors: int = 200_000
    density: int = 1
    hnsw_min_lists: int = 4096
    ram_budget_mb: float = 2000.0
    hub_neighbours: int = 10


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """How a query is searched (paper §2.3): ``k`` nearest stored vectors per query window.

    The command line's and the evaluation's defaults come from here; a database keeps its
    own ``nprobe`` (``IndexConfig``) and calibrates its thresholds with this ``k``.
    """

    k: int = 4


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training distortions of the positive (docs/design.md §1.6; paper §2.2): the spec.

    ``pipeline`` "baseline": background noise with ``noise_p`` at an SNR drawn from
    ``snr_bands_db`` (rows of low dB, high dB, weight: 50 % 0-5, 30 % 5-10, 20 % 10-15),
    room and microphone impulse responses (``room_ir_p``, ``mic_ir_p``: always), the
    positive shifted by ``shift_min_s``-``shift_max_s`` (either way) with ``shift_p``,
    and a weak time and frequency mask on the spectrogram of the positives in a share
    ``mask_batch_p`` of the batches (each mask at most ``mask_max_*`` of the axis).
    "proposed" adds, each with ``filter_p``, a low-pass (cutoff in ``lowpass_hz``) and a
    high-pass (cutoff in ``highpass_hz``) with a roll-off drawn from ``rolloff_db``
    (audiomentations' zero-phase Butterworth filters: multiples of 12 dB per octave).
    ``preroll_s`` of audio before the excerpt goes through the impulse responses too, so
    the positive carries a real reverberation tail rather than a convolution onset.

    Not in the paper: with ``distortion_p`` the music first goes through an overdriven
    loudspeaker (``afp_core.augment.overdrive``: tanh soft clipping with the excerpt's
    peak driven ``distortion_drive_db`` into the knee), the non-linearity small speakers
    add at high volume (0: off).
    """

    pipeline: Literal["baseline", "proposed"] = "proposed"
    noise_p: float = 0.8
    snr_bands_db: tuple[tuple[float, ...], ...] = (
        (0.0, 5.0, 0.5),
        (5.0, 10.0, 0.3),
        (10.0, 15.0, 0.2),
    )
    room_ir_p: float = 1.0
    mic_ir_p: float = 1.0
    shift_p: float = 0.3
    shift_min_s: float = 0.1
    shift_max_s: float = 0.25
    preroll_s: float = 0.25
    mask_batch_p: float = 1.0 / 3.0
    mask_max_freq: float = 0.1
    mask_max_time: float = 0.1
    filter_p: float = 0.4
    lowpass_hz: tuple[float, ...] = (2000.0, 3000.0)
    highpass_hz: tuple[float, ...] = (500.0, 1000.0)
    rolloff_db: tuple[int, ...] = (12, 24, 36)
    distortion_p: float = 0.0
    distortion_drive_db: tuple[float, ...] = (3.0, 15.0)

    def __post_init__(self) -> None:
        key = "augmentation"
        probabilities = (
            "noise_p",
            "room_ir_p",
            "mic_ir_p",
            "shift_p",
            "mask_batch_p",
            "filter_p",
            "distortion_p",
        )
        for name in probabilities:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{key}.{name}: a probability in [0, 1], got {value!r}")
        for name in ("mask_max_freq", "mask_max_time"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{key}.{name}: a fraction in [0, 1), got {value!r}")
        if not self.snr_bands_db:
            raise ConfigError(f"{key}.snr_bands_db: needs at least one [low, high, weight] row")
        for i, band in enumerate(self.snr_bands_db):
            if len(band) != 3 or band[0] > band[1] or band[2] < 0:
                raise ConfigError(
                    f"{key}.snr_bands_db[{i}]: expected [low dB, high dB, weight >= 0] with "
                    f"low <= high, got {list(band)}"
                )
        if sum(band[2] for band in self.snr_bands_db) <= 0:
            raise ConfigError(f"{key}.snr_bands_db: the weights sum to zero")
        if not 0.0 <= self.shift_min_s <= self.shift_max_s:
            raise ConfigError(
                f"{key}.shift_min_s: need 0 <= shift_min_s <= shift_max_s, got "
                f"{self.shift_min_s} and {self.shift_max_s}"
            )
        if self.preroll_s < 0:
            raise ConfigError(f"{key}.preroll_s: must be >= 0, got {self.preroll_s}")
        drive = self.distortion_drive_db
        if len(drive) != 2 or not 0 <= drive[0] <= drive[1]:
            raise ConfigError(
                f"{key}.distortion_drive_db: expected [low dB, high dB] with 0 <= low <= high, "
                f"got {list(drive)}"
            )
        for name in ("lowpass_hz", "highpass_hz"):
            band = getattr(self, name)
            if len(band) != 2 or not 0 < band[0] <= band[1]:
                raise ConfigError(f"{key}.{name}: expected [low Hz, high Hz], got {list(band)}")
        rolloffs = tuple(self.rolloff_db)
        expected = tuple(range(rolloffs[0], rolloffs[-1] + 1, 12)) if rolloffs else ()
        if not rolloffs or rolloffs[0] <= 0 or rolloffs[0] % 12 or rolloffs != expected:
            raise ConfigError(
                f"{key}.rolloff_db: consecutive multiples of 12 dB/octave (zero-phase "
                f"Butterworth orders), e.g. [12, 24, 36]; got {list(rolloffs)}"
            )


def to_dict(config: Any) -> dict[str, Any]:
    """A plain dict (nested dataclasses become dicts, tuples become lists)."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types.

    ``where`` prefixes key names in error messages (``training.batch_size``).
    """
    label = where or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"{_join(where, unknown[0])}: unknown key (known keys: {known})")
    hints = typing.get_type_hints(cls)
    values = {name: _coerce(hints[name], value, _join(where, name)) for name, value in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{label}: {exc}") from None


def expect_config(value: object, cls: type[T], where: str) -> T:
    """``value`` if it is a ``cls``, else ``ConfigError`` naming ``where`` (``model.arch``)."""
    if not isinstance(value, cls):
        raise ConfigError(f"{where}: expected a {cls.__name__}, got {type(value).__name__}")
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(option, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            choices = ", ".join(repr(a) for a in typing.get_args(hint))
            raise ConfigError(f"{key}: {value!r} is not one of {choices}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported configuration type {hint!r}")
