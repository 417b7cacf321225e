"""Distortions applied to audio: noise at a chosen SNR and speech babble.

The training pipelines (baseline and low/high-pass, notes §1) build on these.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from afp_core.audio import load_audio
from afp_core.errors import AudioError

EPS = 1e-12


def mix_at_snr(
    signal: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator
) -> np.ndarray:
    """``signal`` plus a random excerpt of ``noise`` scaled to ``snr_db`` (power ratio).

    The noise is looped when shorter than the signal. Returns float32.
    """
    n = len(signal)
    if len(noise) == 0:
        raise ValueError("noise is empty")
    reps = int(np.ceil(n / len(noise))) + 1
    looped = np.tile(noise, reps) if reps > 1 else noise
    start = int(rng.integers(0, len(looped) - n + 1))
    excerpt = looped[start : start + n].astype(np.float64)
    p_signal = float(np.mean(np.square(signal, dtype=np.float64)))
    p_noise = float(np.mean(np.square(excerpt)))
    gain = np.sqrt(p_signal / (max(p_noise, EPS) * 10 ** (snr_db / 10)))
    return (signal + gain * excerpt).astype(np.float32)


def make_babble(
    files: Sequence[Path],
    duration_s: float,
    sample_rate: int,
    rng: np.random.Generator,
    speakers: int = 4,
) -> np.ndarray:
    """Speech babble: ``speakers`` streams of randomly chosen clips, summed, unit RMS."""
    if not files:
        raise AudioError("no speech files for babble noise")
    n = round(duration_s * sample_rate)
    babble = np.zeros(n, np.float64)
    cache: dict[int, np.ndarray] = {}
    for _ in range(speakers):
        stream: list[np.ndarray] = []
        length = 0
        while length < n:
            i = int(rng.integers(len(files)))
            if i not in cache:
                cache[i] = load_audio(files[i], sample_rate=sample_rate)
            clip = cache[i]
            clip = clip / (np.sqrt(np.mean(np.square(clip, dtype=np.float64))) + EPS)
            stream.append(clip)
            length += len(clip)
        babble += np.concatenate(stream)[:n]
    return (babble / (np.sqrt(np.mean(babble**2)) + EPS)).astype(np.float32)
