"""The measured music-to-noise ratio against the virtual room's known one.

Sessions of 2 and 3 synthetic songs (6 s each, 16 kHz) with a white-noise program, each
take simulated through the default virtual room (noise speaker 3.0 / 1.5 / 0.5 m) and
aligned; its quality record (``rig_app.quality``) measures the ratio at the microphone
over the program's calibration segments. The truth is the room's own: the energies of
the music and the noise it delivers to the microphone over the songs
(``rig_app.room.music_to_noise_db``). Printed: per take, measured and true ratio and the
largest per-song error.

Run: .venv/bin/python benchmarks/bench_quality.py
"""

from __future__ import annotations

import platform
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from afp_core.tasks import TaskState
from rig_app.jobs import align_session_take, simulate_session_take
from rig_app.program import ProgramSong, build_noise_program, build_program, synthesize_song
from rig_app.room import VirtualRoom, music_to_noise_db, render_paths
from rig_app.session import Session

RATE = 16000
ROOM = VirtualRoom()


def make_session(folder: Path, songs: int) -> Session:
    session = Session.create(folder)
    made = [ProgramSong(synthesize_song(6.0, RATE, seed=i), f"song {i}") for i in range(songs)]
    program = build_program(made, RATE, gap_s=0.5, min_song_s=0.0)
    noise = build_noise_program(
        [0.1 * np.random.default_rng(1).standard_normal(4 * RATE).astype(np.float32)],
        program.samples,
        RATE,
        seed=3,
        quiet_ranges=program.noise_quiet_ranges(),
    )
    session.set_program(program, noise)
    return session


def main() -> int:
    print(f"machine: {platform.processor() or platform.machine()}")
    print("| songs | take | measured dB | room dB | error dB | worst song error dB |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for count in (2, 3):
            session = make_session(Path(tmp) / f"s{count}", count)
            program = session.load_program()
            assert session.program is not None  # make_session set it
            noise, _ = sf.read(session.resolve(session.program["noise_file"]), dtype="float32")
            spans = [(slot.start, slot.end) for slot in program.songs]
            for label in ("low", "mid", "high"):
                simulate_session_take(TaskState(), session, ROOM, label)
                align_session_take(TaskState(), session, label)
                record = session.take(label).quality
                assert record is not None  # the alignment measured it
                music, noisy = render_paths(ROOM, program.music, noise, RATE, label)
                truth = music_to_noise_db(music, noisy, spans)
                worst = max(
                    abs(song["music_to_noise_db"] - music_to_noise_db(music, noisy, [span]))
                    for song, span in zip(record["songs"], spans, strict=True)
                )
                measured = record["music_to_noise_db"]
                print(
                    f"| {count} | {label} | {measured:+.2f} | {truth:+.2f} | "
                    f"{measured - truth:+.2f} | {worst:.2f} |"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
