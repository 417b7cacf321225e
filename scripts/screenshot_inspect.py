"""Screenshot of the Inspect page on a session with simulated low and high takes.

    QT_QPA_PLATFORM=offscreen python scripts/screenshot_inspect.py [--out docs/screenshots]

Builds a 48 kHz program (markers, a speech-babble noise track) from two development songs
when ``./dev demo`` unpacked them into datasets/cache (else from synthetic songs), then
two takes as a laptop microphone would hear them: the music and the noise through a room
(a decaying noise impulse response), the microphone's band (high-pass 200 Hz, low-pass
5 kHz), self-noise, a delay and a clock drift; the noise is louder in 'high' (speaker
close) than in 'low'. Each take is aligned to the program by the rig's own alignment
(``align_session_take``), then the page is saved as inspect.png.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import soxr
from scipy import signal

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from afp_core.audio import load_audio, probe_audio  # noqa: E402
from afp_core.tasks import TaskState  # noqa: E402
from rig_app.program import (  # noqa: E402
    ProgramSong,
    build_noise_program,
    build_program,
    synthesize_song,
)
from rig_app.session import Session  # noqa: E402
from rig_app.ui.state import align_session_take  # noqa: E402

RATE = 48000
DEBIAN = ROOT / "datasets" / "cache" / "debian" / "usr" / "share"
SONGS = (
    ("Northerners", DEBIAN / "games/wesnoth/1.16/data/core/music/northerners.ogg"),
    ("Elvish Theme", DEBIAN / "games/wesnoth/1.16/data/core/music/elvish-theme.ogg"),
)
SPEECH = DEBIAN / "asterisk" / "sounds"
EXCERPT_S = (20.0, 45.0)  # the part of each song used
TAKES = {"low": -14.0, "high": -4.0}  # noise level at the microphone, dB re the music


def songs() -> list[ProgramSong]:
    out = []
    for index, (title, path) in enumerate(SONGS):
        if path.is_file():
            audio = load_audio(path, RATE)
            start = round(EXCERPT_S[0] * RATE)
            audio = audio[start : start + round(EXCERPT_S[1] * RATE)]
        else:
            audio = synthesize_song(EXCERPT_S[1], RATE, seed=index + 3)
        out.append(ProgramSong(audio, title, artist="Wesnoth" if path.is_file() else ""))
    return out


def room(rng: np.random.Generator, rt60_s: float) -> np.ndarray:
    """A room impulse response: direct sound, then exponentially decaying noise."""
    n = round(rt60_s * RATE)
    t = np.arange(n) / RATE
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60_s) * 0.08
    ir[: round(0.004 * RATE)] = 0.0
    ir[0] = 1.0
    return ir


def heard(music: np.ndarray, noise: np.ndarray, noise_db: float, seed: int) -> np.ndarray:
    """What a laptop's microphone records of the two programs (see the docstring)."""
    rng = np.random.default_rng(seed)
    x = signal.fftconvolve(music, room(rng, 0.35))[: len(music)]
    v = signal.fftconvolve(noise, room(rng, 0.5))[: len(noise)]
    gain = 10 ** (noise_db / 20) * np.std(x) / max(np.std(v), 1e-9)
    y = x + gain * v
    high_pass = signal.butter(2, 200, "high", fs=RATE, output="sos")
    low_pass = signal.butter(4, 5000, "low", fs=RATE, output="sos")
    y = signal.sosfilt(low_pass, signal.sosfilt(high_pass, y))
    y += rng.standard_normal(len(y)) * 0.002 * np.std(y)
    y = soxr.resample(y, RATE, RATE * (1 + 25e-6), quality="VHQ")  # the clocks differ
    y = np.concatenate([np.zeros(round(0.31 * RATE)), y, np.zeros(RATE)])
    return (0.3 * y / np.max(np.abs(y))).astype(np.float32)


def build_session(folder: Path) -> Session:
    program = build_program(songs(), RATE, min_song_s=10.0)
    speech = [p for p in sorted(SPEECH.rglob("*.wav")) if probe_audio(p).duration_s >= 2.0]
    speech = speech[:60]
    sources = speech or [synthesize_song(5.0, RATE, seed=11)]
    noise = build_noise_program(
        sources, program.samples, RATE, -6.0, quiet_ranges=program.marker_ranges()
    )
    session = Session.create(folder)
    session.set_program(program, noise)
    for seed, (label, noise_db) in enumerate(TAKES.items()):
        take = heard(program.music, noise, noise_db, seed)
        session.add_take(label, take, RATE, notes="simulated laptop microphone")
        alignment = align_session_take(TaskState(), session, label)
        print(f"{label}: offset {alignment.offset_s:.4f} s, drift {alignment.drift_ppm:+.1f} ppm")
    return session


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication
    from screenshot_app import settle, wait_for

    from rig_app.ui.main_window import MainWindow

    app = QApplication.instance() or QApplication([])  # noqa: F841 - Qt needs it alive
    with tempfile.TemporaryDirectory(prefix="afp-rig-inspect-") as work:
        session = build_session(Path(work) / "inspect-session")
        window = MainWindow()
        window.resize(1120, 830)
        window.show()
        if error := window.open_session(session.folder):
            raise SystemExit(f"screenshot_inspect: {error}")
        page = window.show_page("Inspect")

        def finish(what: str) -> None:
            settle(0.5)  # a changed control starts its job after a short delay
            while page.workers:
                wait_for(page.workers[0], what)
                settle(0.3)

        finish("the analysis")
        page.song.setCurrentIndex(1)
        page.start.setValue(10.0)
        finish("the excerpt")
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "inspect.png"
        window.grab().save(str(path))
        print(f"{path}: {path.stat().st_size // 1024} KB")
        window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
