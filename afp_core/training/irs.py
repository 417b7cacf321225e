"""Synthetic impulse responses for machines without a real IR collection.

Rooms: exponentially decaying noise (RT60 0.2-1.0 s, faster decay above a random
crossover, as in real rooms) after a direct path and a handful of early reflections.
Microphones and small speakers: band-pass responses with random corners and orders and
a few resonances, as an impulse response of a cascade of biquads.

``write_synthetic_irs`` writes a seeded collection as 8 kHz float WAV files, once:
a collection whose ``manifest.json`` matches the request is reused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import signal

from afp_core.audio import write_audio_atomic
from afp_core.fileutil import atomic_write_text

GENERATOR_VERSION = 1


@dataclass(frozen=True)
class IRCollection:
    """Room and microphone impulse-response files."""

    room: tuple[Path, ...]
    mic: tuple[Path, ...]


def make_room_ir(rng: np.random.Generator, sample_rate: int = 8000) -> np.ndarray:
    """One room impulse response, peak 1, float32; RT60 uniform in 0.2-1.0 s."""
    rt60 = rng.uniform(0.2, 1.0)
    n = int(1.2 * rt60 * sample_rate)
    t = np.arange(n) / sample_rate
    ir = np.zeros(n)
    ir[0] = 1.0
    # Early reflections: sparse, within 50 ms, weaker with distance (1/r).
    for _ in range(int(rng.integers(4, 12))):
        delay = rng.uniform(0.002, 0.05)
        k = int(delay * sample_rate)
        ir[k] += rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.8) * 0.003 / delay
    # Late reverberation: noise decaying by 60 dB in rt60 (faster in the high band).
    onset = rng.uniform(0.01, 0.04)
    crossover = rng.uniform(800.0, 2500.0)
    sos_low = signal.butter(2, crossover, "lowpass", fs=sample_rate, output="sos")
    sos_high = signal.butter(2, crossover, "highpass", fs=sample_rate, output="sos")
    noise = rng.standard_normal(n)
    rt60_high = rt60 * rng.uniform(0.4, 0.8)
    late = signal.sosfilt(sos_low, noise) * np.exp(-6.91 * t / rt60) + signal.sosfilt(
        sos_high, noise
    ) * np.exp(-6.91 * t / rt60_high)
    fade_in = np.clip((t - onset) / 0.01, 0.0, 1.0)
    direct_to_reverb_db = rng.uniform(-6.0, 6.0)
    late *= fade_in
    late_energy = np.sqrt(np.sum(late**2)) + 1e-12
    ir += late / late_energy * 10 ** (-direct_to_reverb_db / 20)
    return (ir / np.max(np.abs(ir))).astype(np.float32)


def make_mic_ir(rng: np.random.Generator, sample_rate: int = 8000, length: int = 512) -> np.ndarray:
    """One microphone/speaker response: band-pass with resonances; peak 1, float32."""
    nyquist = sample_rate / 2
    low = rng.uniform(60.0, 600.0)
    high = rng.uniform(0.6, 0.95) * nyquist
    sections = [
        signal.butter(int(rng.integers(1, 4)), low, "highpass", fs=sample_rate, output="sos"),
        signal.butter(int(rng.integers(1, 5)), high, "lowpass", fs=sample_rate, output="sos"),
    ]
    for _ in range(int(rng.integers(1, 4))):
        centre = rng.uniform(300.0, 0.85 * nyquist)
        sections.append(
            _peaking(centre, rng.uniform(-10.0, 10.0), rng.uniform(1.0, 5.0), sample_rate)
        )
    impulse = np.zeros(length)
    impulse[0] = 1.0
    ir = signal.sosfilt(np.vstack(sections), impulse)
    return (ir / np.max(np.abs(ir))).astype(np.float32)


def _peaking(centre: float, gain_db: float, q: float, sample_rate: int) -> np.ndarray:
    """A peaking-EQ biquad (RBJ cookbook) as one sos row."""
    a = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * centre / sample_rate
    alpha = np.sin(w0) / (2 * q)
    b = np.array([1 + alpha * a, -2 * np.cos(w0), 1 - alpha * a])
    den = np.array([1 + alpha / a, -2 * np.cos(w0), 1 - alpha / a])
    return np.concatenate([b / den[0], den / den[0]])[None, :]


def write_synthetic_irs(
    folder: Path | str,
    rooms: int = 120,
    mics: int = 60,
    seed: int = 0,
    sample_rate: int = 8000,
) -> IRCollection:
    """Write (or reuse) ``rooms`` room and ``mics`` microphone IRs as WAV under ``folder``.

    Files: ``folder/room/room-NNN.wav`` and ``folder/mic/mic-NNN.wav``; the manifest is
    written last, so a collection interrupted half-way is written again.
    """
    folder = Path(folder)
    request = {
        "generator_version": GENERATOR_VERSION,
        "rooms": rooms,
        "mics": mics,
        "seed": seed,
        "sample_rate": sample_rate,
    }
    manifest = folder / "manifest.json"
    room_paths = tuple(folder / "room" / f"room-{i:03d}.wav" for i in range(rooms))
    mic_paths = tuple(folder / "mic" / f"mic-{i:03d}.wav" for i in range(mics))
    if _manifest_matches(manifest, request) and all(p.is_file() for p in room_paths + mic_paths):
        return IRCollection(room=room_paths, mic=mic_paths)
    (folder / "room").mkdir(parents=True, exist_ok=True)
    (folder / "mic").mkdir(parents=True, exist_ok=True)
    room_rng, mic_rng = (np.random.default_rng([seed, k]) for k in (1, 2))
    for path in room_paths:
        write_audio_atomic(path, make_room_ir(room_rng, sample_rate), sample_rate, "FLOAT")
    for path in mic_paths:
        write_audio_atomic(path, make_mic_ir(mic_rng, sample_rate), sample_rate, "FLOAT")
    atomic_write_text(manifest, json.dumps(request, indent=2) + "\n")
    return IRCollection(room=room_paths, mic=mic_paths)


def _manifest_matches(path: Path, request: dict) -> bool:
    try:
        return json.loads(path.read_text()) == request
    except (OSError, ValueError):
        return False
