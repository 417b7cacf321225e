"""Identify a query (file or array): audio -> window fingerprints -> search -> match."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from afp_core.audio import check_finite, frame_windows, probe_audio, quiet_stderr, resample
from afp_core.config import SearchConfig
from afp_core.errors import AudioError
from afp_core.models import Fingerprinter, embed_windows
from afp_core.search import Match, Method, SearchableDB, identify_vectors


def embed_audio(
    model: Fingerprinter,
    audio: np.ndarray,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Fingerprints of every window of ``audio`` (mono, model sample rate): (n, dim)."""
    spec = model.spec.audio
    windows = frame_windows(np.asarray(audio, np.float32), spec.window, spec.hop)
    return embed_windows(model, windows, batch_size=batch_size, device=device)


def identify_audio(
    db: SearchableDB,
    model: Fingerprinter,
    audio: np.ndarray,
    *,
    method: Method = "sequence",
    k: int = SearchConfig.k,
    threshold: float | None = None,
    device: str | torch.device = "cpu",
    label: str = "query",
) -> Match:
    """Identify mono audio at the model's sample rate; raises for less than one window."""
    spec = model.spec.audio
    if len(audio) < spec.window:
        raise AudioError(
            f"{label}: query is {len(audio) / spec.sample_rate:.2f} s, "
            f"shorter than one {spec.window_s:g} s window"
        )
    vectors = embed_audio(model, audio, device=device)
    return identify_vectors(db, vectors, method=method, k=k, threshold=threshold)


def load_query(
    path: Path, sample_rate: int, start_s: float = 0.0, duration_s: float | None = None
) -> np.ndarray:
    """The excerpt [start_s, start_s + duration_s) of a file, mono at ``sample_rate``.

    Seeks instead of decoding the whole file, so cutting many excerpts stays cheap.
    """
    info = probe_audio(path)
    if start_s < 0 or start_s >= info.duration_s:
        raise AudioError(
            f"{path}: excerpt start {start_s:g} s is outside 0-{info.duration_s:.2f} s"
        )
    first = round(start_s * info.sample_rate)
    frames = -1 if duration_s is None else round(duration_s * info.sample_rate)
    try:
        with quiet_stderr():
            data, rate = sf.read(path, start=first, frames=frames, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise AudioError(f"{path}: cannot read excerpt ({exc})") from None
    check_finite(path, data, first, rate)  # else the error would blame the database
    return resample(data.mean(axis=1), rate, sample_rate)


def identify_file(
    db: SearchableDB,
    model: Fingerprinter,
    path: Path,
    *,
    start_s: float = 0.0,
    duration_s: float | None = None,
    method: Method = "sequence",
    k: int = SearchConfig.k,
    threshold: float | None = None,
    device: str | torch.device = "cpu",
) -> Match:
    """Identify the excerpt [start_s, start_s + duration_s) of an audio file."""
    audio = load_query(path, model.spec.audio.sample_rate, start_s, duration_s)
    return identify_audio(
        db, model, audio, method=method, k=k, threshold=threshold, device=device, label=str(path)
    )
