"""A complete fingerprint model: front-end -> backbone -> projection head."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from afp_core.features import KaldiFbank, LogMel
    from afp_core.models.registry import ModelSpec


class Fingerprinter(nn.Module):
    """Waveform windows -> unit-norm fingerprints.

    - ``features(waves: (B, window)) -> front-end output`` (e.g. (B, 1, 256, 32) log-mel)
    - ``embed(features) -> (B, dim)``: backbone then head, for training code that
      augments or masks the front-end output first
    - ``forward(waves: (B, window)) -> (B, dim)`` unit vectors

    ``spec`` (a ``ModelSpec``) describes the model fully: ``build_model(spec)`` rebuilds
    the same architecture, which is what checkpoints rely on.
    """

    def __init__(
        self,
        spec: ModelSpec,
        frontend: LogMel | KaldiFbank,
        backbone: nn.Module,
        head: nn.Module,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.frontend = frontend
        self.backbone = backbone
        self.head = head

    @property
    def dim(self) -> int:
        """Fingerprint dimension."""
        return int(self.spec.arch.dim)

    @property
    def window(self) -> int:
        """Samples per input window."""
        return self.spec.audio.window

    def features(self, waves: Tensor) -> Tensor:
        """(B, window) waveforms -> front-end features."""
        return self.frontend(waves)

    def embed(self, features: Tensor) -> Tensor:
        """Front-end features -> (B, dim) unit vectors."""
        return self.head(self.backbone(features))

    def forward(self, waves: Tensor) -> Tensor:
        """(B, window) waveforms -> (B, dim) unit vectors."""
        return self.embed(self.features(waves))


def embed_windows(
    model: Fingerprinter,
    windows: np.ndarray,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Fingerprint ``windows`` (n, window) -> (n, dim) contiguous float32.

    Runs in eval mode under ``torch.inference_mode`` in batches of ``batch_size``. The
    model is moved to ``device`` (nn.Module.to works in place) and its train/eval mode is
    restored afterwards.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    windows = np.asarray(windows)
    if windows.ndim != 2:
        raise ValueError(f"windows must be (n, window), got shape {windows.shape}")
    if windows.shape[1] != model.window:
        raise ValueError(
            f"windows have {windows.shape[1]} samples, the model expects {model.window}"
        )
    n = windows.shape[0]
    out = np.empty((n, model.dim), dtype=np.float32)
    if n == 0:
        return out
    device = torch.device(device)
    model.to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                # a copy only when needed: torch refuses to wrap read-only or strided views
                chunk = np.require(windows[start : start + batch_size], np.float32, ["C", "W"])
                batch = torch.from_numpy(chunk).to(device)
                out[start : start + len(chunk)] = model(batch).float().cpu().numpy()
    finally:
        model.train(was_training)
    return out
