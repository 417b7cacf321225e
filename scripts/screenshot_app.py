"""Screenshots of the rig app's pages on a demo session (offscreen; no display needed).

    QT_QPA_PLATFORM=offscreen python scripts/screenshot_app.py [--out docs/screenshots]

Builds a demo session from synthetic songs and a noise clip, adds the songs (one bad file
among them, to show a failure), builds the program with a noise track and, when the
virtual audio devices can be started (``rig_app.virtual_devices``), records and aligns
the 'low' take through them. Then saves songs.png, program.png and record.png.
inspect.png (takes with a known coloration) comes from scripts/screenshot_inspect.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rig_app.program import synthesize_song  # noqa: E402

if TYPE_CHECKING:
    from rig_app.ui.main_window import MainWindow
    from rig_app.ui.workers import Worker

RATE = 22050
SONGS = (
    ("Harbour Lights", "The Synthetic Quartet", 11.0),
    ("Paper Planes", "Mira Sol", 9.0),
    ("Night Bus", "Low Orbit", 12.0),
    ("Quiet Room (live)", "Mira Sol", 10.0),
    ("Glass Garden", "Fennel & Thyme", 8.0),
)


def write_demo_library(folder: Path) -> tuple[Path, Path]:
    """Songs as 'Artist - Title.flac' (one with a wide dynamic range), a bad file, noise."""
    songs = folder / "library"
    songs.mkdir(parents=True)
    for index, (title, artist, seconds) in enumerate(SONGS):
        audio = synthesize_song(seconds, RATE, seed=index + 3)
        if "live" in title:
            # quiet with loud hits: normalising it would clip, so its gain gets lowered
            audio = 0.1 * audio
            hits = np.arange(RATE, len(audio), 2 * RATE)
            audio[hits] = 0.3
        sf.write(songs / f"{artist} - {title}.flac", audio, RATE)
    (songs / "notes.wav").write_text("this is not audio\n")
    rng = np.random.default_rng(1)
    babble = np.cumsum(rng.standard_normal(6 * RATE)) * 0.01
    babble -= np.convolve(babble, np.ones(200) / 200, mode="same")
    noise = folder / "cafe-noise.wav"
    sf.write(noise, (0.3 * babble / np.max(np.abs(babble))).astype(np.float32), RATE)
    return songs, noise


def wait_for(worker: Worker | None, what: str) -> None:
    """Run the event loop until ``worker`` is done."""
    from PySide6.QtCore import QEventLoop

    if worker is None:
        raise SystemExit(f"screenshot_app: could not start {what}")
    if not worker.has_ended:
        loop = QEventLoop()
        worker.done.connect(loop.quit)
        loop.exec()
    settle()


def settle(seconds: float = 0.1) -> None:
    """Let queued signals and repaints through."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(round(seconds * 1000), loop.quit)
    loop.exec()


def save(window: MainWindow, title: str, out: Path) -> None:
    window.show_page(title)
    settle()
    path = out / f"{title.lower()}.png"
    window.grab().save(str(path))
    print(f"{path}: {path.stat().st_size // 1024} KB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--no-record", action="store_true", help="skip the recorded take")
    args = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    with contextlib.ExitStack() as stack:
        devices = None
        if not args.no_record:
            from rig_app.virtual_devices import VirtualDevicesError, start_virtual_devices

            try:
                devices = stack.enter_context(start_virtual_devices())
            except VirtualDevicesError as exc:
                print(f"screenshot_app: no virtual devices, no take recorded ({exc})")
        from PySide6.QtWidgets import QApplication

        from rig_app.ui.main_window import MainWindow

        app = QApplication.instance() or QApplication([])  # noqa: F841 - Qt needs it alive
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="afp-rig-demo-")))
        library, noise = write_demo_library(work)
        window = MainWindow()
        window.resize(1120, 830)
        window.show()
        if error := window.new_session(work / "demo-session"):
            raise SystemExit(f"screenshot_app: {error}")

        songs = window.songs_page
        songs.min_duration.setValue(5.0)
        again = library / f"{SONGS[1][1]} - {SONGS[1][0]}.flac"  # shows a duplicate
        wait_for(songs.add_items([str(library), str(again)]), "adding songs")

        program = window.program_page
        program.min_song.setValue(5.0)
        program.noise_level.setValue(-6.0)
        program.add_noise_files([noise])
        wait_for(program.build(), "building the program")
        args.out.mkdir(parents=True, exist_ok=True)
        save(window, "Songs", args.out)
        save(window, "Program", args.out)

        record = window.record_page
        window.show_page("Record")
        settle()
        for worker in record.workers:
            wait_for(worker, "listing devices")
        if devices is not None:
            record.lead_in.setValue(0.5)
            record.tail.setValue(1.0)
            record.rows["low"].notes.setText("living room, laptop speakers")
            wait_for(record.record("low"), "recording")
            for worker in record.workers:
                wait_for(worker, "aligning")
            # the meter, live: listen to the room while a test tone plays
            record.listen.setChecked(True)
            for worker in record.workers:
                wait_for(worker, "opening the microphone")
            tone = record.play_tone(record.music_out)
            settle(0.7)
            save(window, "Record", args.out)
            wait_for(tone, "the test tone")
            record.listen.setChecked(False)
        else:
            save(window, "Record", args.out)
        window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
