"""Shared fixtures: synthesised songs written as real audio files, and a real checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

# Qt without a display: every test, however it is started
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

# PulseAudio virtual devices (music_out, noise_out, mic_in) for the rig's capture tests
pytest_plugins = ["tests.rig_fixtures"]


def synthesise_song(seed: int, duration_s: float, sample_rate: int = 22050) -> np.ndarray:
    """A 'song': a random melody of harmonic notes over a random bass line and clicks.

    Different seeds give clearly different spectro-temporal patterns, like different songs.
    """
    rng = np.random.default_rng(seed)
    n = int(duration_s * sample_rate)
    t = np.arange(n) / sample_rate
    out = np.zeros(n)
    for voice, (low, high, note_s) in enumerate(((48, 72, 0.25), (72, 96, 0.125), (36, 48, 0.5))):
        pos = 0
        while pos < n:
            length = int(note_s * sample_rate * rng.choice([1, 2, 3]))
            f0 = 440 * 2 ** ((rng.integers(low, high) - 69) / 12)
            seg = t[pos : pos + length] - t[pos]
            env = np.exp(-seg * rng.uniform(2, 8))
            tone = sum(np.sin(2 * np.pi * f0 * h * seg) / h for h in range(1, 5))
            out[pos : pos + length] += (0.3 if voice == 2 else 0.2) * env * tone
            pos += length
    clicks = rng.random(n) < 4 / sample_rate
    out += 0.3 * np.convolve(clicks.astype(float), rng.standard_normal(200) * 0.5, mode="same")
    return (0.8 * out / np.max(np.abs(out))).astype(np.float32)


def random_walk_vectors(
    rng: np.random.Generator, n: int, dim: int, step: float = 0.5
) -> np.ndarray:
    """A random walk of unit vectors: consecutive windows correlated, like real fingerprints."""
    noise = rng.standard_normal((n, dim)) * step / np.sqrt(dim)
    out = np.empty((n, dim), np.float32)
    v = rng.standard_normal(dim)
    v /= np.linalg.norm(v)
    for t in range(n):
        v = v + noise[t]
        v /= np.linalg.norm(v)
        out[t] = v
    return out


@pytest.fixture(scope="session")
def song_library(tmp_path_factory) -> list[Path]:
    """Six 24 s songs in several formats, in a folder with a sub-folder."""
    root = tmp_path_factory.mktemp("library")
    (root / "sub").mkdir()
    paths = []
    formats = ["wav", "flac", "ogg", "wav", "flac", "ogg"]
    for i, ext in enumerate(formats):
        folder = root / "sub" if i % 2 else root
        path = folder / f"song{i}.{ext}"
        sf.write(path, synthesise_song(100 + i, 24.0), 22050)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory) -> Path:
    from afp_core.shipped import write_untrained_checkpoint

    return write_untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")
