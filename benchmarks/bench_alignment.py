"""Alignment accuracy and speed on a simulated 50-minute session (paper §3 scale).

A program of 15 synthetic music-like songs x 200 s at 8 kHz (with sweep markers) is
"played" through a simulated channel and recorded on a clock running -100..+100 ppm
off, 0.73 s late. Two channel conditions:

* clean: the program only (digital loopback on another clock);
* room: the music plus a noise program at the same loudness (ducked at the markers, as
  the rig plays it), through a room (direct sound, a 15 ms decaying tail) and a
  zero-phase 150 Hz - 3.6 kHz band-pass (so the true delay stays that of the direct
  sound), plus microphone noise 40 dB under the music.

Every take is aligned with its markers (``align_take``) and without them
(``align_without_markers``, reference = the music track). Reported: offset error (ms),
drift error (ppm), the largest residual after alignment (ms; markers, or for the
markerless method its checkpoints), and the run time of each alignment.

Run: .venv/bin/python benchmarks/bench_alignment.py [--songs 15] [--song-s 200]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import soxr
from scipy import signal

from rig_app.align import Alignment, align_take, align_without_markers
from rig_app.markers import SweepSpec
from rig_app.program import (
    ProgramSong,
    build_noise_program,
    build_program,
    synthesize_song,
)

RATE = 8000
DELAY_S = 0.73
PPMS = (-100.0, -30.0, 0.0, 30.0, 100.0)


def make_room(rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(0.06 * rate)) / rate
    ir = rng.standard_normal(len(t)) * np.exp(-t / 0.015) * 0.15
    ir[: round(0.002 * rate)] = 0.0
    ir[0] = 1.0
    return ir


def make_noise_clips(rng: np.random.Generator) -> list[np.ndarray]:
    """Pink noise, a babble-like modulated band and a hum, 20 s each."""
    n = 20 * RATE
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
    pink = np.fft.irfft(spectrum, n)
    sos = signal.butter(4, [300, 2500], "bandpass", fs=RATE, output="sos")
    syllables = np.repeat(rng.uniform(0, 1, n // 1600 + 1) ** 2, 1600)[:n]
    babble = signal.sosfilt(sos, rng.standard_normal(n)) * syllables
    t = np.arange(n) / RATE
    hum = np.sin(2 * np.pi * 100 * t) + 0.3 * rng.standard_normal(n)
    return [pink, babble, hum]


def simulate(
    music: np.ndarray, noise: np.ndarray | None, ppm: float, room: np.ndarray | None, seed: int
) -> np.ndarray:
    x = music.astype(np.float64)
    if noise is not None:
        x = x + noise
    if room is not None:
        x = signal.oaconvolve(x, room)[: len(x)]
        sos = signal.butter(4, [150, 3600], "bandpass", fs=RATE, output="sos")
        x = signal.sosfiltfilt(sos, x)
    y = soxr.resample(x, RATE, RATE * (1 + ppm * 1e-6), quality="VHQ")
    y = np.concatenate([np.zeros(round(DELAY_S * RATE)), y, np.zeros(2 * RATE)])
    if room is not None:
        rng = np.random.default_rng(seed)
        y += rng.standard_normal(len(y)) * np.std(music) * 10 ** (-40 / 20)
    return y.astype(np.float32)


def describe_cpu() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def errors(alignment: Alignment, ppm: float) -> tuple[float, float, float]:
    return (
        (alignment.offset_s - DELAY_S) * 1e3,
        alignment.drift_ppm - ppm,
        alignment.max_residual_ms,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=15)
    parser.add_argument("--song-s", type=float, default=200.0)
    args = parser.parse_args()

    started = time.perf_counter()
    songs = [
        ProgramSong(synthesize_song(args.song_s, RATE, seed=i), f"song {i + 1}")
        for i in range(args.songs)
    ]
    program = build_program(songs, RATE, SweepSpec(), gap_s=1.0, min_song_s=0.0)
    noise = build_noise_program(
        make_noise_clips(np.random.default_rng(7)),
        program.samples,
        RATE,
        0.0,
        -23.0,
        seed=3,
        quiet_ranges=program.noise_quiet_ranges(),
    )
    room = make_room(RATE, 11)
    built = time.perf_counter() - started
    cpu = describe_cpu()
    print(
        f"program: {len(songs)} songs x {args.song_s:.0f} s + {len(program.markers)} markers = "
        f"{program.duration_s / 60:.1f} min at {RATE} Hz (built in {built:.1f} s)"
    )
    print(f"machine: {os.cpu_count()} CPU cores ({cpu}), no GPU; delay {DELAY_S} s")
    print()
    header = (
        f"{'condition':<9} {'ppm':>5} | {'method':<10} {'offset err ms':>13} "
        f"{'drift err ppm':>13} {'max resid ms':>12} {'min SNR dB':>10} {'time s':>7}"
    )
    print(header)
    print("-" * len(header))
    for condition in ("clean", "room"):
        for index, ppm in enumerate(PPMS):
            take = simulate(
                program.music,
                noise if condition == "room" else None,
                ppm,
                room if condition == "room" else None,
                seed=index,
            )
            for method in ("markers", "markerless"):
                t0 = time.perf_counter()
                if method == "markers":
                    alignment = align_take(take, RATE, program, name=f"{condition}{ppm:+.0f}")
                else:
                    alignment = align_without_markers(
                        take, RATE, program.music, RATE, songs=program.songs
                    )
                elapsed = time.perf_counter() - t0
                offset_err, drift_err, residual = errors(alignment, ppm)
                print(
                    f"{condition:<9} {ppm:>+5.0f} | {method:<10} {offset_err:>+13.4f} "
                    f"{drift_err:>+13.3f} {residual:>12.4f} {alignment.min_snr_db:>10.1f} "
                    f"{elapsed:>7.1f}"
                )
    print()
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
