"""Fingerprint models: encoders, projection heads and the architecture registry."""

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
    list_models,
    register_model,
)

__all__ = [
    "MODELS",
    "DivEncProjection",
    "Fingerprinter",
    "ModelEntry",
    "ModelSpec",
    "NAFPBlock",
    "NAFPEncoder",
    "build_model",
    "count_parameters",
    "embed_windows",
    "get_model_entry",
    "list_models",
    "nafp_channels",
    "register_model",
]
