"""Fingerprint models: encoders, projection heads and the architecture registry."""

from afp_core.models.beats import BEATsEncoder, initialise_from_beats, load_beats_checkpoint
from afp_core.models.fingerprinter import Fingerprinter, embed_windows
from afp_core.models.nafp import NAFPBlock, NAFPEncoder, nafp_channels
from afp_core.models.projection import DivEncProjection
from afp_core.models.registry import (
    MODELS,
    ModelEntry,
    ModelSpec,
    build_model,
    count_parameters,
    get_model_entry,
    initialise_model,
    list_models,
    register_model,
)
from afp_core.models.resnet_sta import ResNetSTAEncoder, SpectroTemporalAttention

__all__ = [
    "MODELS",
    "BEATsEncoder",
    "DivEncProjection",
    "Fingerprinter",
    "ModelEntry",
    "ModelSpec",
    "NAFPBlock",
    "NAFPEncoder",
    "ResNetSTAEncoder",
    "SpectroTemporalAttention",
    "build_model",
    "count_parameters",
    "embed_windows",
    "get_model_entry",
    "initialise_from_beats",
    "initialise_model",
    "list_models",
    "load_beats_checkpoint",
    "nafp_channels",
    "register_model",
]
