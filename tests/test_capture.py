"""Recording takes through the virtual devices: real playback, capture and alignment.

What mic_in records is music_out + noise_out through PulseAudio loopbacks with 30 ms of
latency and their own resampling, so offset and drift are real and unknown in advance.
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from afp_core.tasks import TaskState
from rig_app.align import align_take
from rig_app.capture import (
    CaptureError,
    TakeConfig,
    TakeRecorder,
    read_take_info,
    record_take,
    recover_take,
)
from rig_app.devices import DeviceError
from rig_app.program import ProgramSong, build_noise_program, build_program, synthesize_song
from rig_app.session import Session
from rig_app.virtual_devices import start_virtual_devices

RATE = 48000


def _config(devices, noise: bool = True, **kwargs) -> TakeConfig:
    return TakeConfig(
        music_out=devices.music_out,
        noise_out=devices.noise_out if noise else None,
        mic_in=devices.mic_in,
        sample_rate=RATE,
        lead_in_s=kwargs.pop("lead_in_s", 0.5),
        tail_s=kwargs.pop("tail_s", 1.0),
        **kwargs,
    )


def _tone(seconds: float, level: float = 0.1) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (level * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


def _readable_frames(path: Path) -> int:
    data, rate = sf.read(path, dtype="float32")
    assert rate == RATE
    return len(data)


def take_info(path: Path) -> dict[str, Any]:
    """The take's side file, which must be there."""
    info = read_take_info(path)
    assert info is not None, path
    return info


def test_take_is_recorded_aligned_and_stored_in_a_session(virtual_devices, tmp_path):
    songs = [ProgramSong(synthesize_song(1.5, RATE, seed=i), f"song {i}") for i in (1, 2)]
    program = build_program(songs, RATE, gap_s=0.5, min_song_s=0.0)  # markers: start/middle/end
    rng = np.random.default_rng(7)
    noise = build_noise_program(
        [0.1 * rng.standard_normal(2 * RATE).astype(np.float32)],
        program.samples,
        RATE,
        level_db_relative_to_music=-10.0,
        quiet_ranges=program.noise_quiet_ranges(),
    )
    session = Session.create(tmp_path / "session")
    session.set_program(program, noise)
    out = session.folder / "takes" / "high.raw.wav"
    out.parent.mkdir()
    progress: list[float] = []
    task = TaskState(lambda done, total, message: progress.append(done))

    result = record_take(_config(virtual_devices, label="high"), program.music, noise, out, task)

    assert result.ended_by == "finished", result.error
    assert result.error is None
    assert result.xrun_total == 0, result.xruns
    assert result.frames == result.frames_expected == round((0.5 + program.duration_s + 1.0) * RATE)
    assert result.complete
    assert result.devices == {
        "mic_in": "mic_in",
        "music_out": "music_out",
        "noise_out": "noise_out",
    }
    assert progress and progress[-1] == pytest.approx(result.frames / RATE, abs=0.2)
    recorded, rate = sf.read(out, dtype="float32")
    assert rate == RATE and len(recorded) == result.frames
    assert take_info(out)["state"] == "ended"

    alignment = align_take(recorded, rate, program, name=str(out))
    assert alignment.ok, alignment.notes
    assert [a.label for a in alignment.anchors] == [m.label for m in program.markers]
    for anchor in alignment.anchors:
        assert anchor.used, anchor
        assert anchor.residual_ms is not None and anchor.fit_residual_ms is not None
        assert abs(anchor.residual_ms) < 1.0, anchor
        assert abs(anchor.fit_residual_ms) < 1.0, anchor
    # program sample 0 lands after the lead-in, give or take the devices' latencies
    latency_ms = (alignment.offset_s - result.lead_in_s) * 1000.0
    assert -300.0 < latency_ms < 300.0
    assert abs(alignment.drift_ppm) < 1000.0
    print(
        f"\nvirtual devices: offset after lead-in {latency_ms:.2f} ms, drift "
        f"{alignment.drift_ppm:.1f} ppm, residuals rms {alignment.rms_residual_ms:.4f} ms "
        f"max {alignment.max_residual_ms:.4f} ms, min SNR {alignment.min_snr_db:.1f} dB, "
        f"reported stream latencies {result.stream_latency_s}"
    )

    entry = session.add_take(
        "high",
        result.path,
        result.sample_rate,
        alignment=alignment,
        devices=result.devices,
        sample_rates=result.sample_rates,
        xruns=result.xrun_total,
    )
    assert entry.raw_file == "takes/high.raw.wav"
    assert Session.load(session.folder).take("high").xruns == 0


def test_abort_midway_keeps_a_readable_partial_take(virtual_devices, tmp_path):
    out = tmp_path / "aborted.wav"
    recorder = TakeRecorder(_config(virtual_devices), _tone(6.0), _tone(6.0, 0.05), out)
    recorder.start()
    assert take_info(out)["state"] == "recording"
    while recorder.recorded_s < 1.0:
        time.sleep(0.02)
    assert recorder.level_db > -60.0  # the meter follows the input
    result = recorder.abort()

    assert result is not None and recorder.state == "done"
    assert result.ended_by == "aborted"
    assert 0.9 * RATE < result.frames < 3.0 * RATE
    assert result.frames < result.frames_expected and not result.complete
    assert _readable_frames(out) == result.frames
    assert recover_take(out).frames == result.frames  # nothing to recover: it ended cleanly


def test_cancelling_the_task_stops_the_take_and_keeps_it(virtual_devices, tmp_path):
    out = tmp_path / "stopped.wav"
    task = TaskState()
    task._on_progress = lambda done, total, message: task.cancel() if done >= 1.0 else None

    result = record_take(_config(virtual_devices, noise=False), _tone(8.0), None, out, task)

    assert result.ended_by == "stopped"
    assert result.error is None
    assert RATE <= result.frames < 4 * RATE
    assert _readable_frames(out) == result.frames
    assert "noise_out" not in result.devices


_KILLED_TAKE = textwrap.dedent(
    """
    import sys
    import numpy as np
    from rig_app.capture import TakeConfig, TakeRecorder

    out = sys.argv[1]
    t = np.arange(48000 * 8) / 48000
    music = (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    config = TakeConfig("music_out", None, "mic_in", sync_interval_s=0.5)
    recorder = TakeRecorder(config, music, None, out)
    recorder.start()
    recorder.wait()
    """
)


def test_killed_recording_process_leaves_a_recoverable_take(virtual_devices, tmp_path):
    out = tmp_path / "killed.wav"
    script = tmp_path / "record.py"
    script.write_text(_KILLED_TAKE)
    env = {**os.environ, **virtual_devices.env()}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    process = subprocess.Popen(
        [sys.executable, str(script), str(out)], env=env, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 20.0
        # wait until well over a second of audio has reached the file
        while not (out.exists() and out.stat().st_size > 56 + 4 * round(1.5 * RATE)):
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            assert time.monotonic() < deadline, "the recording never started"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert take_info(out)["state"] == "recording"  # it never got to say it ended
    on_disk = (out.stat().st_size - 56) // 4
    readable = _readable_frames(out)  # readable as it is, before any recovery
    assert RATE <= readable <= on_disk
    assert on_disk - readable <= 0.6 * RATE  # at most one sync interval behind

    result = recover_take(out)
    assert result.ended_by == "crashed"
    assert result.frames == on_disk
    assert _readable_frames(out) == on_disk
    info = take_info(out)
    assert info["state"] == "ended" and info["ended_by"] == "crashed"
    assert info["devices"]["mic_in"] == "mic_in"


def test_lost_device_ends_the_take_with_a_device_error(virtual_devices, tmp_path):
    out = tmp_path / "lost.wav"
    with start_virtual_devices(prefix="lost_") as doomed:
        config = TakeConfig(doomed.music_out, None, doomed.mic_in, lead_in_s=0.5, tail_s=0.5)
        recorder = TakeRecorder(config, _tone(6.0), None, out)
        recorder.start()
        while recorder.recorded_s < 1.0:
            time.sleep(0.02)
        doomed.kill()  # the sound server dies: every stream on it fails
        assert recorder.wait(timeout=10.0)
    result = recorder.result
    assert result is not None
    assert result.ended_by == "device_error"
    assert result.error is not None and "\n" not in result.error
    assert "lost_" in result.error
    assert 0.9 * RATE < result.frames < 4 * RATE
    assert _readable_frames(out) == result.frames


class _FullDisk(io.FileIO):
    """A file on a disk that fills up once the file is ``size`` bytes long (opened as the
    recorder opens its take: unbuffered, new).

    Like a real file system it still lets existing bytes be rewritten (the header) and
    writes what fits before failing with ENOSPC.
    """

    def __init__(self, path: Path, size: int) -> None:
        super().__init__(path, "xb")
        self._size = size

    def write(self, data) -> int:
        data = memoryview(data)
        room = self._size - self.tell()
        if room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data[:room])


def test_full_disk_stops_the_take_and_keeps_what_was_written(virtual_devices, tmp_path):
    out = tmp_path / "full.wav"
    room = 56 + 4 * RATE + 2  # one second and half a sample

    class Recorder(TakeRecorder):
        _opener = staticmethod(lambda path: _FullDisk(path, room))

    recorder = Recorder(_config(virtual_devices, noise=False), _tone(6.0), None, out)
    recorder.start()
    assert recorder.wait(timeout=15.0)
    result = recorder.result
    assert result is not None
    assert result.ended_by == "write_error"
    assert result.error is not None
    assert "the disk is full" in result.error and "\n" not in result.error
    assert result.frames == RATE  # the half-written sample is cut
    assert out.stat().st_size == 56 + 4 * RATE
    assert _readable_frames(out) == RATE
    assert json.loads(out.with_name("full.wav.json").read_text())["ended_by"] == "write_error"


def test_missing_device_fails_before_creating_a_file(virtual_devices, tmp_path):
    out = tmp_path / "never.wav"
    config = TakeConfig("music_out", None, "no-such-microphone")
    with pytest.raises(DeviceError, match="no-such-microphone"):
        TakeRecorder(config, _tone(1.0), None, out).start()
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_recover_take_refuses_a_file_it_did_not_write(tmp_path):
    path = tmp_path / "other.wav"
    sf.write(path, np.zeros(100, dtype=np.float32), RATE, subtype="PCM_16")
    with pytest.raises(CaptureError, match="not a take written by the rig"):
        recover_take(path)


def test_existing_take_is_not_overwritten(virtual_devices, tmp_path):
    out = tmp_path / "exists.wav"
    out.write_bytes(b"keep me")
    with pytest.raises(CaptureError, match="exists already"):
        TakeRecorder(_config(virtual_devices), _tone(1.0), _tone(1.0), out).start()
    assert out.read_bytes() == b"keep me"
