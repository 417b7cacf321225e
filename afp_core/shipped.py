"""The model shipped in ``assets/`` and the seeded untrained fallback."""

from __future__ import annotations

from pathlib import Path

from afp_core.checkpoint import save_checkpoint
from afp_core.config import NAFPConfig
from afp_core.models import ModelSpec, build_model

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SHIPPED_MODEL = ASSETS / "models" / "afp-default.pt"
UNTRAINED_SEED = 0
UNTRAINED_SPEC = ModelSpec(name="nafp", arch=NAFPConfig(width=0.25))


def default_checkpoint_path() -> Path | None:
    """The shipped trained model, or None while none is shipped."""
    return SHIPPED_MODEL if SHIPPED_MODEL.is_file() else None


def write_untrained_checkpoint(path: Path, spec: ModelSpec = UNTRAINED_SPEC) -> Path:
    """A checkpoint of a seeded, untrained model (a fallback, and a fixture for tests)."""
    model = build_model(spec, seed=UNTRAINED_SEED)
    return save_checkpoint(path, model, meta={"trained": False, "seed": UNTRAINED_SEED})
