"""pytest plugin: virtual audio devices for the recording-rig tests.

Register it once (``pytest_plugins = ["tests.rig_fixtures"]`` in the root conftest.py).
``virtual_devices`` starts one PulseAudio daemon for the whole session
(``rig_app.virtual_devices``: music_out, noise_out and mic_in, where mic_in hears the
other two through 30 ms loopbacks) and stops it at the end. It skips, saying why, only
when PortAudio or PulseAudio cannot be started here. ``write_killed_take`` leaves the take
file a recorder killed mid-way leaves, without devices; ``record_killed_session_take``
leaves what a killed ``record_session_take`` leaves (its take settings too), without
devices. ``make_room_session`` makes a small session with takes simulated through the
virtual room and aligned (quality measured).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest

from afp_core.tasks import TaskState
from rig_app.devices import DeviceError, load_sounddevice
from rig_app.jobs import align_session_take, simulate_session_take
from rig_app.program import (
    Program,
    ProgramSong,
    build_noise_program,
    build_program,
    synthesize_song,
)
from rig_app.room import VirtualRoom
from rig_app.session import Session
from rig_app.virtual_devices import VirtualDevices, VirtualDevicesError, start_virtual_devices


@pytest.fixture(scope="session")
def virtual_devices() -> Iterator[VirtualDevices]:
    """music_out / noise_out / mic_in PortAudio devices backed by PulseAudio null sinks."""
    try:
        # PortAudio initialised before the devices exist, as when another test imported
        # sounddevice first: the devices must still appear (PortAudio is re-initialised).
        load_sounddevice()
        devices = start_virtual_devices()
    except (DeviceError, VirtualDevicesError) as exc:
        pytest.skip(f"virtual audio devices unavailable: {exc}")
    with devices:
        yield devices


_KILLED_TAKE = """
import os, signal, sys
import numpy as np
from afp_core.fileutil import utc_now
from rig_app.capture import TakeConfig, TakeRecorder

out, rate, synced, label = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
audio = np.load(sys.argv[5])
config = TakeConfig("music_out", None, "mic_in", sample_rate=rate, label=label)
recorder = TakeRecorder(config, audio, None, out)
recorder._started_at = utc_now("milliseconds")  # as start() sets it
recorder._create_file()  # the take file and its "recording" sidecar, as start() makes them
recorder._file.append(audio[:synced])
recorder._file.sync(durable=True)
recorder._file.append(audio[synced:])  # reaches the file, not yet the header
os.kill(os.getpid(), signal.SIGKILL)
"""


def write_killed_take(path: Path, audio: np.ndarray, rate: int, synced: int, label: str) -> None:
    """The take file a recorder leaves when killed (kill -9) after writing ``audio`` to
    ``path``, its header covering the first ``synced`` frames: the real writer, no devices."""
    path.parent.mkdir(parents=True, exist_ok=True)
    source = path.with_name(f".{path.name}.npy")
    np.save(source, np.asarray(audio, np.float32))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    args = [str(path), str(rate), str(synced), label, str(source)]
    process = subprocess.run(
        [sys.executable, "-c", _KILLED_TAKE, *args], env=env, capture_output=True, timeout=60
    )
    source.unlink()
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()


_KILLED_SESSION_TAKE = """
import dataclasses, json, os, signal, sys
from afp_core.fileutil import utc_now
from afp_core.tasks import TaskState
from rig_app import jobs
from rig_app.capture import TakeRecorder
from rig_app.room import VirtualRoom
from rig_app.session import Session

folder, fields, played_s = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])


def killed_take(config, music, noise, out, task, overwrite=False, on_recorder=None):
    heard = music if noise is None else music + noise  # what the microphone hears
    config = dataclasses.replace(config, noise_out=None)
    recorder = TakeRecorder(config, heard, None, out, overwrite=overwrite)
    recorder._started_at = utc_now("milliseconds")  # as start() sets it
    recorder._create_file()  # the take file and its "recording" sidecar
    synced = round(played_s * config.sample_rate)
    recorder._file.append(heard[:synced])
    recorder._file.sync(durable=True)
    recorder._file.append(heard[synced : synced + config.sample_rate // 4])
    os.kill(os.getpid(), signal.SIGKILL)


jobs.find_device = lambda wanted, kind: None  # no devices: the take is written above
jobs.record_take = killed_take
if fields.pop("room", False):
    fields["room"] = VirtualRoom()
jobs.record_session_take(TaskState(), Session.load(folder), jobs.TakeSettings(**fields))
"""


def record_killed_session_take(
    folder: Path, label: str, played_s: float = 1.0, room: bool = False, **settings: object
) -> None:
    """``jobs.record_session_take`` of take ``label`` of the session in ``folder`` with
    ``settings`` (``TakeSettings`` fields; ``room``: through the default virtual room),
    its process killed (kill -9) once ``played_s`` of the program reached the take file:
    everything as the rig does it but the devices (the program is written as heard)."""
    fields = {"label": label, "music_out": "music_out", "mic_in": "mic_in", **settings}
    fields["room"] = room
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    args = [str(folder), json.dumps(fields), str(played_s)]
    process = subprocess.run(
        [sys.executable, "-c", _KILLED_SESSION_TAKE, *args],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()


def make_room_session(
    folder: Path,
    labels: tuple[str, ...] = ("low", "high"),
    *,
    songs: int = 3,
    seconds: float = 6.0,
    rate: int = 16000,
) -> Session:
    """A session of ``songs`` synthetic songs with a white-noise program, and the takes
    ``labels`` simulated through the default virtual room, aligned (a few seconds each)."""
    session = Session.create(folder)
    session.set_program(*make_room_program(rate, range(songs), seconds))
    for label in labels:
        simulate_session_take(TaskState(), session, VirtualRoom(), label)
        align_session_take(TaskState(), session, label)
    return session


def make_room_program(
    rate: int, seeds: Iterable[int], seconds: float, noise_seed: int = 1
) -> tuple[Program, np.ndarray]:
    """A program of synthetic songs (``song N`` for each seed N, ``seconds`` long; markers,
    0.5 s gaps, calibration segments) and a white-noise program ducked where it must be."""
    made = [ProgramSong(synthesize_song(seconds, rate, seed=i), f"song {i}") for i in seeds]
    program = build_program(made, rate, gap_s=0.5, min_song_s=0.0)
    rng = np.random.default_rng(noise_seed)
    noise = build_noise_program(
        [0.1 * rng.standard_normal(4 * rate).astype(np.float32)],
        program.samples,
        rate,
        seed=3,
        quiet_ranges=program.noise_quiet_ranges(),
    )
    return program, noise


def command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of ``parser``'s sub-command ``command`` (for checking its help)."""
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices[command]
