"""Model specifications and the registry of architectures.

A ``ModelSpec`` names an architecture and carries its configuration; it is what a
checkpoint stores next to the weights. Each architecture is one ``ModelEntry`` in
``MODELS``: its name, a description, its arch and front-end config classes, and a
builder ``ModelSpec -> Fingerprinter``. Adding an architecture = writing its modules and
registering one entry (``register_model``); the arch config class must have a ``dim``
field (the fingerprint dimension).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from afp_core.config import (
    AudioConfig,
    BEATsConfig,
    KaldiFbankConfig,
    LogMelConfig,
    NAFPConfig,
    ResNetSTAConfig,
    expect_config,
    from_dict,
    to_dict,
)
from afp_core.errors import ConfigError
from afp_core.features import LogMel
from afp_core.models.beats import build_beats, initialise_beats
from afp_core.models.fingerprinter import Fingerprinter
from afp_core.models.nafp import NAFPEncoder
from afp_core.models.projection import DivEncProjection
from afp_core.models.resnet_sta import build_resnet_sta

# Widened to unions as architectures with other configs are registered.
FrontendConfig = LogMelConfig | KaldiFbankConfig
ArchConfig = NAFPConfig | ResNetSTAConfig | BEATsConfig


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One registered architecture."""

    name: str
    description: str
    arch_config: type
    frontend_config: type
    # what the front-end computes, for listings and checkpoints ("log-mel 256 x 32")
    frontend_name: str
    build: Callable[[ModelSpec], Fingerprinter]
    # Optional start-of-training step (e.g. loading pre-trained encoder weights):
    # ``initialise(model, note)``. The trainer calls it for a fresh run only; building a
    # model never does, so that a checkpoint can be rebuilt where such files are absent.
    initialise: Callable[[Fingerprinter, Callable[[str], None]], None] | None = None


MODELS: dict[str, ModelEntry] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    """Add ``entry`` to ``MODELS``; a name can be registered once."""
    if entry.name in MODELS:
        raise ValueError(f"model {entry.name!r} is already registered")
    MODELS[entry.name] = entry
    return entry


def list_models() -> list[ModelEntry]:
    """Registered architectures, sorted by name."""
    return [MODELS[name] for name in sorted(MODELS)]


def get_model_entry(name: str) -> ModelEntry:
    """The entry for ``name``; ``ConfigError`` listing the known names if there is none."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(MODELS))
        raise ConfigError(f"model.name: unknown model {name!r} (known models: {known})") from None


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which architecture, with which audio, front-end and architecture settings.

    ``frontend`` and ``arch`` default to the named model's own config classes with their
    defaults (``LogMelConfig()`` and ``NAFPConfig()`` for ``nafp``); they are never None
    after construction. A config of the wrong class for the model raises ``ConfigError``.
    """

    name: str
    audio: AudioConfig = dataclasses.field(default_factory=AudioConfig)
    frontend: FrontendConfig = None  # type: ignore[assignment]
    arch: ArchConfig = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        entry = get_model_entry(self.name)
        if not isinstance(self.audio, AudioConfig):
            raise ConfigError(f"model.audio: expected AudioConfig, got {type(self.audio).__name__}")
        for field, cls in (("frontend", entry.frontend_config), ("arch", entry.arch_config)):
            value = getattr(self, field)
            if value is None:
                object.__setattr__(self, field, cls())
            elif not isinstance(value, cls):
                raise ConfigError(
                    f"model.{field}: model {self.name!r} needs a {cls.__name__}, "
                    f"got {type(value).__name__}"
                )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict: ``{"name", "audio", "frontend", "arch"}``."""
        return {
            "name": self.name,
            "audio": to_dict(self.audio),
            "frontend": to_dict(self.frontend),
            "arch": to_dict(self.arch),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "model") -> ModelSpec:
        """Parse ``to_dict`` output strictly; missing sections take the model's defaults."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(
                f"{where}.{unknown[0]}: unknown key (known keys: {', '.join(sorted(fields))})"
            )
        if "name" not in data:
            raise ConfigError(f"{where}.name: missing (known models: {', '.join(sorted(MODELS))})")
        name = data["name"]
        if not isinstance(name, str):
            raise ConfigError(f"{where}.name: expected a string, got {name!r}")
        entry = get_model_entry(name)
        return cls(
            name=name,
            audio=from_dict(AudioConfig, data.get("audio"), f"{where}.audio"),
            frontend=from_dict(entry.frontend_config, data.get("frontend"), f"{where}.frontend"),
            arch=from_dict(entry.arch_config, data.get("arch"), f"{where}.arch"),
        )


def build_model(spec: ModelSpec, seed: int | None = None) -> Fingerprinter:
    """Build the model ``spec`` describes, on the CPU, in train mode.

    With ``seed`` the initial weights are deterministic; the global RNG state is left as
    it was.
    """
    entry = get_model_entry(spec.name)
    if seed is None:
        return entry.build(spec)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return entry.build(spec)


def initialise_model(model: Fingerprinter, note: Callable[[str], None] | None = None) -> None:
    """Run the model entry's ``initialise`` step, if it has one (fresh training runs only)."""
    entry = get_model_entry(model.spec.name)
    if entry.initialise is not None:
        entry.initialise(model, note or (lambda text: None))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _check_positive(key: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(f"arch.{key}: must be a positive integer, got {value!r}")


def _build_nafp(spec: ModelSpec) -> Fingerprinter:
    arch = expect_config(spec.arch, NAFPConfig, "model.arch")
    _check_positive("dim", arch.dim)
    _check_positive("proj_hidden", arch.proj_hidden)
    frontend_config = expect_config(spec.frontend, LogMelConfig, "model.frontend")
    frontend = LogMel(frontend_config, sample_rate=spec.audio.sample_rate)
    n_mels, frames = frontend.output_shape(spec.audio.window)
    backbone = NAFPEncoder(arch, input_shape=(n_mels, frames))
    if backbone.out_features % arch.dim:
        raise ConfigError(
            f"arch.width: width {arch.width} gives {backbone.out_features} encoder features, "
            f"which is not divisible by arch.dim={arch.dim} (the projection splits the "
            "features into dim equal slices); width 1.0, 0.5 and 0.25 work with dim 128"
        )
    head = DivEncProjection(backbone.out_features, arch.dim, arch.proj_hidden)
    return Fingerprinter(spec, frontend, backbone, head)


register_model(
    ModelEntry(
        name="nafp",
        description="NAFP separable-conv encoder (16.9 M parameters at width 1) "
        "with div-enc projection, log-mel 256 x 32 input",
        arch_config=NAFPConfig,
        frontend_config=LogMelConfig,
        frontend_name="log-mel 256 x 32",
        build=_build_nafp,
    )
)


# --- ResNet+STA (afp_core.models.resnet_sta) ---
register_model(
    ModelEntry(
        name="resnet_sta",
        description="ResNet with spectro-temporal attention in every block (20.0 M parameters "
        "at width 1) with div-enc projection, log-mel 256 x 32 input",
        arch_config=ResNetSTAConfig,
        frontend_config=LogMelConfig,
        frontend_name="log-mel 256 x 32",
        build=build_resnet_sta,
    )
)


# --- BEATs (afp_core.models.beats) ---
register_model(
    ModelEntry(
        name="beats",
        description="BEATs transformer encoder (90.3 M parameters at the official size) "
        "with div-enc projection, Kaldi fbank 128 x 98 input; arch.pretrained: official "
        "BEATs weights",
        arch_config=BEATsConfig,
        frontend_config=KaldiFbankConfig,
        frontend_name="kaldi fbank 128 x 98",
        build=build_beats,
        initialise=initialise_beats,
    )
)
