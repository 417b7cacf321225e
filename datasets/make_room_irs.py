"""Write impulse responses of whole playback paths (speaker -> room -> microphone) for training.

    .venv/bin/python datasets/make_room_irs.py [--out datasets/cache/irs/virtual-rooms-s0]
        [--count 300] [--seed 0]

Each response is one random `rig_app.room.VirtualRoom`: a shoebox room of 3-10 x 3-8 x
2.4-3.5 m with absorption 0.12-0.6 (RT60 about 0.15-1.2 s), a small speaker 0.15-2.5 m from
the microphone (band edges 80-400 Hz / 2.5-8 kHz, a resonance of up to +8 dB, any polar
pattern) and a laptop-like microphone (high-pass 50-300 Hz, a presence bump, a low-pass
3.5-11 kHz), computed with the image-source method exactly as the virtual room records a
take. Files are 8 kHz float WAV, peak 1, written atomically, with a manifest written last
(a run that stopped half-way is redone). Point a training config's `data.room_irs` at the
folder (docs/training.md). The rooms the demo and the benchmarks record through are fixed
configurations that a random draw does not repeat.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from afp_core.audio import write_audio_atomic
from afp_core.fileutil import atomic_write_text
from rig_app.room import VirtualRoom, path_responses

DEFAULT_OUT = Path(__file__).resolve().parent / "cache" / "irs" / "virtual-rooms-s0"
GENERATOR_VERSION = 1
SAMPLE_RATE = 8000
PATTERNS = ("omni", "subcardioid", "cardioid", "hypercardioid")


def as_point(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    x, y, z = values
    return float(x), float(y), float(z)


def draw_room(rng: np.random.Generator) -> VirtualRoom:
    """One random room, speaker and microphone (the ranges of the module docstring)."""
    size = (rng.uniform(3.0, 10.0), rng.uniform(3.0, 8.0), rng.uniform(2.4, 3.5))
    margin = 0.4
    mic = as_point([rng.uniform(margin, s - margin) for s in size])
    while True:  # a speaker position inside the room, 0.15-2.5 m from the microphone
        distance = rng.uniform(0.15, 2.5)
        direction = rng.normal(size=3)
        direction[2] *= 0.3  # mostly level with the microphone
        speaker = np.add(mic, distance * direction / np.linalg.norm(direction))
        if all(margin <= p <= s - margin for p, s in zip(speaker, size, strict=True)):
            break
    return VirtualRoom(
        size_m=size,
        absorption=float(rng.uniform(0.12, 0.6)),
        mic_m=mic,
        music_speaker_m=as_point(speaker),
        # the noise speaker is not rendered here; one inside the room keeps the check happy
        noise_distances_m=(("path", 0.1),),
        noise_height_m=mic[2],
        speaker_band_hz=(float(rng.uniform(80, 400)), float(rng.uniform(2500, 8000))),
        speaker_resonance_hz=float(rng.uniform(400, 2500)),
        speaker_resonance_db=float(rng.uniform(0.0, 8.0)),
        speaker_resonance_q=float(rng.uniform(0.7, 4.0)),
        mic_highpass_hz=float(rng.uniform(50, 300)),
        mic_presence_hz=float(rng.uniform(1500, 3800)),
        mic_presence_db=float(rng.uniform(0.0, 6.0)),
        mic_lowpass_hz=float(rng.uniform(3500, 11000)),
        speaker_pattern=str(rng.choice(PATTERNS)),
        seed=int(rng.integers(2**31)),
    )


def write_room_irs(folder: Path, count: int, seed: int) -> list[Path]:
    """Write (or reuse) ``count`` path responses under ``folder``; returns their files."""
    request = {"generator_version": GENERATOR_VERSION, "count": count, "seed": seed}
    manifest = folder / "manifest.json"
    paths = [folder / f"path-{i:03d}.wav" for i in range(count)]
    try:
        if json.loads(manifest.read_text()) == request and all(p.is_file() for p in paths):
            return paths
    except (OSError, ValueError):
        pass
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 7])
    for path in tqdm(paths, desc="room paths", unit="room"):
        room = draw_room(rng)
        music, _ = path_responses(room, SAMPLE_RATE, "path")
        ir = np.asarray(music, dtype=np.float64)
        write_audio_atomic(path, ir / np.max(np.abs(ir)), SAMPLE_RATE, "FLOAT")
    atomic_write_text(manifest, json.dumps(request, indent=2) + "\n")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--count", type=int, default=300, help="number of rooms")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args()
    paths = write_room_irs(args.out, args.count, args.seed)
    print(f"{args.out}: {len(paths)} speaker-room-microphone impulse responses")


if __name__ == "__main__":
    main()
