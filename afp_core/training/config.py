"""Training configuration: YAML -> frozen dataclasses, validated before any work.

A training YAML file has five sections (all optional; see ``configs/``)::

    model:        a ModelSpec (name, audio, frontend, arch)
    data:         DataConfig: songs, noise, impulse responses, splits, cache
    training:     TrainingConfig: batch, epochs, optimiser, schedule, device, budget
    augmentation: afp_core.config.AugmentConfig (defaults: docs/design.md §1.6)
    output:       the run folder (relative paths are relative to the working directory)

An unknown key or a value of the wrong type raises ``ConfigError`` naming the key
(``training.batch_size``). Relative data paths in a YAML file are resolved against the
repository root when they exist there, else against the working directory.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

from afp_core.config import AugmentConfig, NAFPConfig, from_dict, to_dict
from afp_core.errors import ConfigError
from afp_core.models import ModelSpec

REPO_ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("model", "data", "training", "augmentation", "output")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the training audio comes from and how it is split (paper §4.2).

    - ``songs``: audio files or folders (recursive). Empty, with no ``fma_audio``: the
      development music (``afp_core.devdata``).
    - ``train_only_songs``: audio files or folders added to the training split only, never
      to validation or test (so the held-out songs stay those of ``songs``). A file whose
      name (stem, case-insensitive) is that of a validation or test song is left out: it
      is most likely another rendering of the same piece.
    - ``fma_audio`` / ``fma_metadata``: an FMA full/large audio folder
      (``fma_full/000/000002.mp3``) and its ``tracks.csv`` (titles, artists).
    - ``noise``: folders or files of background-noise clips (e.g. AudioSet-derived).
      Empty: the development speech prompts. ``synthetic_noise`` synthetic clips of
      10 s (``afp_core.augment.synthesise_noise``) are added to whichever is used.
    - ``room_irs`` / ``mic_irs``: impulse-response folders or files: WAV folders (MIT
      survey, MicIRP) or Aachen AIR ``.mat`` files. Both empty: a synthetic collection of
      ``synthetic_rooms`` + ``synthetic_mics`` (``afp_core.training.irs``).
    - Shares: songs split train/validation/test by song; noise 70/20/10 and IRs 80/20
      as in the paper, each with ``split_seed``.
    - ``cache_dir``: decoded 8 kHz audio (keyed by file checksum) and prepared clips.
    - ``energy_floor``: a training window is kept when sum(x^2) exceeds it
      (docs/design.md §1.5).
    """

    songs: tuple[str, ...] = ()
    train_only_songs: tuple[str, ...] = ()
    fma_audio: str | None = None
    fma_metadata: str | None = None
    noise: tuple[str, ...] = ()
    synthetic_noise: int = 40
    room_irs: tuple[str, ...] = ()
    mic_irs: tuple[str, ...] = ()
    synthetic_rooms: int = 120
    synthetic_mics: int = 60
    val_share: float = 0.1
    test_share: float = 0.1
    noise_val_share: float = 0.2
    noise_test_share: float = 0.1
    ir_val_share: float = 0.2
    split_seed: int = 0
    cache_dir: str = "datasets/cache/training"
    energy_floor: float = 1.0

    def __post_init__(self) -> None:
        for name in ("val_share", "test_share", "noise_val_share", "noise_test_share"):
            _check_share(f"data.{name}", getattr(self, name))
        _check_share("data.ir_val_share", self.ir_val_share)
        if self.val_share + self.test_share >= 1:
            raise ConfigError("data.test_share: val_share + test_share must be below 1")
        if self.noise_val_share + self.noise_test_share >= 1:
            raise ConfigError(
                "data.noise_test_share: noise_val_share + noise_test_share must be below 1"
            )
        for name in ("synthetic_noise", "synthetic_rooms", "synthetic_mics"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name}: must be >= 0")
        if self.energy_floor < 0:
            raise ConfigError("data.energy_floor: must be >= 0")


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Optimisation and run settings (paper §4.3).

    - ``batch_size`` is N: N windows from N different songs, each with its augmented
      twin, so the loss sees 2N (the paper's 2N = 512 is ``batch_size: 256``).
      ``repeat_songs`` lets N exceed the training songs: every song gives a window, then
      songs drawn again (by length) give more, and the loss leaves the other windows of
      an item's song out of its denominator (``nt_xent(songs=...)``).
    - ``steps_per_epoch``: 0 means one pass over the training windows (0.5 s hop) / N.
    - Learning rate: LAMB with ``lr * 2N / lr_scale_batch`` (the authors' code scales the
      base rate by batch/640, "batch" counting anchors and positives); ``lr_scale_batch:
      0`` uses ``lr`` as given. Cosine decay to ``min_lr`` over all steps after
      ``warmup_steps`` of linear warm-up.
    - ``device``: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N". ``amp``: mixed
      precision on CUDA (ignored on the CPU).
    - ``max_minutes``: stop cleanly (checkpoint, resumable) after this much training
      time; 0 means no budget.
    - Validation each epoch: ``val_batches`` fixed batches for the loss, and
      ``val_windows`` clean windows of validation songs for the retrieval check.
    - ``init_from``: a trained afp checkpoint of the same model spec whose weights start
      a fresh run (fine-tuning on more data, or longer), or of a NAFP narrower by a whole
      factor, widened into this run's model with the same fingerprints at step 0
      (``afp_core.models.widen``); a resumed run takes its weights from its own state.
    """

    batch_size: int = 256
    epochs: int = 120
    steps_per_epoch: int = 0
    lr: float = 0.003
    lr_scale_batch: int = 640
    min_lr: float = 1e-7
    warmup_steps: int = 0
    weight_decay: float = 0.0
    temperature: float = 0.05
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    amp: bool = True
    max_minutes: float = 0.0
    val_batches: int = 8
    val_windows: int = 500
    init_from: str | None = None
    repeat_songs: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"training.{name}: must be at least 1")
        if self.batch_size < 2:
            raise ConfigError("training.batch_size: N must be at least 2 (negatives needed)")
        for name in ("steps_per_epoch", "lr_scale_batch", "warmup_steps", "workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"training.{name}: must be >= 0")
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"training.{name}: must be a positive number, got {value}")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"training.min_lr: must be in [0, lr], got {self.min_lr}")
        if self.weight_decay < 0 or self.max_minutes < 0:
            name = "weight_decay" if self.weight_decay < 0 else "max_minutes"
            raise ConfigError(f"training.{name}: must be >= 0")
        if self.val_batches < 0 or self.val_windows < 0:
            raise ConfigError("training.val_batches: val_batches and val_windows must be >= 0")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(
                f"training.device: 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"
            )

    def effective_lr(self) -> float:
        """The base learning rate after the batch scaling."""
        if self.lr_scale_batch == 0:
            return self.lr
        return self.lr * 2 * self.batch_size / self.lr_scale_batch


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A whole training run."""

    model: ModelSpec = dataclasses.field(
        default_factory=lambda: ModelSpec(name="nafp", arch=NAFPConfig())
    )
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    augmentation: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    output: str = "runs/train"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict in the YAML layout (what the checkpoint's meta stores)."""
        return {
            "model": self.model.to_dict(),
            "data": to_dict(self.data),
            "training": to_dict(self.training),
            "augmentation": to_dict(self.augmentation),
            "output": self.output,
        }

    @classmethod
    def from_dict(cls, data: Any) -> TrainConfig:
        """Strict parse of the YAML layout; ``ConfigError`` names the offending key."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"training config: expected a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise ConfigError(
                f"{unknown[0]}: unknown section (known sections: {', '.join(SECTIONS)})"
            )
        model = ModelSpec.from_dict(data["model"], "model") if "model" in data else cls().model
        output = data.get("output", "runs/train")
        if not isinstance(output, str) or not output:
            raise ConfigError(f"output: expected a folder name, got {output!r}")
        return cls(
            model=model,
            data=from_dict(DataConfig, data.get("data"), "data"),
            training=from_dict(TrainingConfig, data.get("training"), "training"),
            augmentation=from_dict(AugmentConfig, data.get("augmentation"), "augmentation"),
            output=output,
        )

    def replace(self, **sections: Any) -> TrainConfig:
        """A copy with whole sections replaced."""
        return dataclasses.replace(self, **sections)


def load_train_config(path: Path | str) -> TrainConfig:
    """Read and validate a training YAML file (``yaml.safe_load``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML{line}") from None
    try:
        return TrainConfig.from_dict(data)
    except ConfigError as exc:
        hint = ""
        if "expected a number, got '" in str(exc):
            hint = " (YAML reads 1e-7 as text: write 1.0e-7)"
        raise ConfigError(f"{path}: {exc}{hint}") from None


def resolve_data_path(value: str) -> Path:
    """A configured path: absolute as is; relative against the repo root if it exists there."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    in_repo = REPO_ROOT / path
    return in_repo if in_repo.exists() or not path.exists() else path


def _check_share(key: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{key}: a share in [0, 1), got {value!r}")
