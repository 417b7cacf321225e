"""Real ``afp-rig record`` processes, playing and recording through the virtual devices,
killed at named points (``afp_core.faults``): the take must come back whole with what a
user would run next (``afp-rig recover`` after a kill, nothing after Ctrl-C, which stores
the take itself): every frame that reached the disk in the session, with the speaker
distance and notes it was recorded with, and ``align`` working on it (a take cut short is
a partial take, aligned on the markers it holds)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import soundfile as sf

from afp_core.protocols.sessions import read_session
from rig_app import cli
from rig_app.program import synthesize_song
from tests.faults.processes import killed_code, run_command

RATE = 16000
HEADER_BYTES = 56  # the recorder's WAV header


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Path:
    """A session whose program holds two 1.5 s songs (14.5 s with its markers and
    calibration segments: song 2 from 11.5 s)."""
    root = tmp_path_factory.mktemp("record-kills")
    library = root / "library"
    library.mkdir()
    for index in range(2):
        sf.write(library / f"Band - Song {index}.wav", synthesize_song(1.5, RATE, index), RATE)
    folder = root / "session"
    assert cli.main(["new", str(folder)]) == 0
    assert cli.main(["songs", str(folder), str(library), "--min-duration", "1", "--quiet"]) == 0
    program = ["program", str(folder), "--min-song-s", "1", "--gap", "0.5", "--quiet"]
    assert cli.main(program) == 0
    return folder


def run_rig(devices, *args: str, fault: str | None = None, sig: str = "KILL"):
    return run_command("rig_app.cli", *args, fault=fault, sig=sig, env=devices.env())


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    ("point", "sig"),
    [
        ("record.synced:25", "KILL"),  # 12.5 s in: past the second marker, in song 2
        pytest.param("record.synced:25", "INT", marks=SLOW),  # Ctrl-C there
        pytest.param("record.recorded", "KILL", marks=SLOW),  # recorded, not yet stored
        pytest.param("record.recorded", "INT", marks=SLOW),
    ],
)
def test_killed_recording_keeps_every_frame(virtual_devices, session, tmp_path, ledger, point, sig):
    folder = tmp_path / "session"
    shutil.copytree(session, folder)
    raw = folder / "takes" / "low.raw.wav"
    record = ["record", str(folder), "--label", "low", "--music-out", virtual_devices.music_out]
    record += ["--mic", virtual_devices.mic_in, "--lead-in", "0.5", "--tail", "1"]
    record += ["--distance", "2.5", "--notes", "by the window"]
    killed = run_rig(virtual_devices, *record, "--no-align", "--quiet", fault=point, sig=sig)
    on_disk = (raw.stat().st_size - HEADER_BYTES) // 4 if raw.exists() else 0
    after = [run_rig(virtual_devices, "recover", str(folder))] if sig == "KILL" else []
    after.append(run_rig(virtual_devices, "align", str(folder), "--label", "low", "--quiet"))
    name = f"afp-rig record SIG{sig} at {point}"
    runs = [killed, *after]
    survived = killed.returncode == killed_code(sig) and all(
        "Traceback" not in run.stderr for run in runs
    )
    survived = survived and all(run.returncode == 0 for run in after)
    takes = {take.label: take for take in read_session(folder).takes}
    stored = sf.info(raw).frames if "low" in takes else 0
    lost = on_disk == 0 or stored != on_disk
    ledger.fault(name, survived, lost)
    assert killed.returncode == killed_code(sig), (name, killed.returncode, killed.stderr[-2000:])
    for run in after:
        assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert stored == on_disk > 0, name
    take = takes["low"]
    assert take.aligned_file is not None
    assert take.speaker_distance_m == 2.5 and take.notes.startswith("by the window"), take.notes
    assert not (folder / "takes" / "low.settings.json").exists()  # stored: no longer needed
    whole = point == "record.recorded"  # the take ended before the process did
    assert take.missing_songs == (() if whole else ("Song 1",)), take.alignment
