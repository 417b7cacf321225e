"""Recording a take: play the music (and noise) program while recording the microphone.

One PortAudio stream per device (music output, optional noise output, microphone input),
so the three may sit on different clocks; ``rig_app.align`` measures offset and drift
from the markers afterwards. The take's timeline, in frames of the microphone::

    [lead_in_s silence] [program ...] [tail_s silence]

The outputs play the same timeline on their own clocks; the microphone records exactly
``lead + program + tail`` frames and then every stream is stopped.

Real-time rules: the callbacks only copy. An output callback copies the next block of
the pre-rendered program (a view of the caller's array) into PortAudio's buffer; the
input callback copies PortAudio's buffer into a preallocated ring buffer and advances
an integer counter. No callback allocates an array, takes a lock, touches a file or
calls PortAudio. A writer thread drains the ring to disk as blocks arrive and watches
the streams. Where an xrun happened is kept the same way: a callback that reports one
stores the take's frame count in a preallocated array of its stream (``_XrunLog``).
The streams' threads and the writer run at a raised priority where the system allows it
(``_raised_priority``), so that other work on a busy machine waits for them.

Crash safety: the take is written straight to its final path as a 32-bit float WAV
whose header this module writes itself. Blocks are appended as they arrive; every
``sync_interval_s`` the data is flushed and the header's sizes are rewritten to cover
what was flushed (with an fsync every few seconds). So at any moment the file on disk
is a valid WAV holding everything but at most the last half second, whether the stream
was aborted, a device vanished, or the process was killed; ``recover_take`` then extends
the header to every whole frame that reached the file. A JSON sidecar
(``<take>.wav.json``) says "recording" while the take runs and holds the result
(devices, xruns, how it ended) once it is over.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, BinaryIO, Literal

import numpy as np

from afp_core.errors import DISK_FULL, AfpError
from afp_core.faults import fault_point
from afp_core.fileutil import atomic_write_text, one_line, utc_now
from afp_core.protocols.sessions import describe_xruns
from afp_core.tasks import TaskState
from rig_app.devices import (
    Device,
    DeviceError,
    describe_portaudio_error,
    find_device,
    hold_portaudio,
)

__all__ = [
    "TAKE_FORMAT",
    "CaptureError",
    "EndedBy",
    "InputMeter",
    "TakeConfig",
    "TakeRecorder",
    "TakeResult",
    "audible_xruns",
    "play_audio",
    "play_test_tone",
    "read_take_info",
    "record_take",
    "recording_process",
    "recover_take",
    "take_info_path",
]

TAKE_FORMAT = "afp-rig-take"
TAKE_VERSION = 1

EndedBy = Literal["finished", "stopped", "aborted", "device_error", "write_error", "crashed"]
State = Literal["ready", "recording", "finishing", "done"]

_HEADER_BYTES = 56  # RIFF(12) + fmt(8+16) + fact(8+4) + data(8)
_WAVE_FORMAT_IEEE_FLOAT = 3
_MAX_DATA_BYTES = 0xFFFFFFFF - (_HEADER_BYTES - 8)
_FSYNC_EVERY_S = 5.0
_POLL_S = 0.02
_RECORDING_NICE = -10  # CFS weight about 9x a nice-0 thread's
_XRUN_SLOTS = 1024  # places kept per stream; past that an xrun is counted, not placed
_FLOOR_DB = -120.0
_INAUDIBLE_FLAG = "priming_output"  # PortAudio filling the first output buffers
_STATUS_FLAGS = (
    "input_underflow",
    "input_overflow",
    "output_underflow",
    "output_overflow",
    "priming_output",
)


class CaptureError(AfpError):
    """A take cannot be recorded or its file cannot be used."""


def audible_xruns(xruns: dict[str, int]) -> int:
    """Under/overruns, counted per status flag, that changed the audio: output priming
    (PortAudio filling the first output buffers) is not one."""
    return sum(n for key, n in xruns.items() if not key.endswith(_INAUDIBLE_FLAG))


@contextlib.contextmanager
def _raised_priority() -> Iterator[None]:
    """Threads started inside run at nice ``_RECORDING_NICE`` where the system allows it
    (root, or an RLIMIT_NICE that does), else as they would; the calling thread gets its
    own nice value back. On Linux a nice value belongs to a thread and a new thread
    inherits its creator's, so PortAudio's callback threads, the sound server client's
    threads and the writer, all made here, keep it: a busy machine's other work then
    waits for them instead of the audio."""
    try:
        before = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, min(before, _RECORDING_NICE))
    except OSError:  # not allowed here
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, before)


def _dbfs(value: float) -> float:
    return 20.0 * math.log10(value) if value > 10.0 ** (_FLOOR_DB / 20.0) else _FLOOR_DB


# --- configuration and result -----------------------------------------------------------


@dataclass(frozen=True)
class TakeConfig:
    """Which devices to use and how. Devices are names (or parts of names) or indices.

    ``latency`` (seconds, or PortAudio's "low"/"high") is the buffering each stream asks
    for; 0.2 s rides out a busy CPU (PortAudio's "high" was 43 ms on ALSA here and
    underran under load) and costs nothing, since the markers measure the real offset.

    ``output_channels``: None plays the mono program on up to two channels of each output
    (both speakers of a laptop). ``ring_s``: how far the writer may fall behind before
    recorded audio is lost (counted as ``ring_overflow``). ``stall_timeout_s``: a stream
    whose callbacks stop for that long counts as a lost device.
    """

    music_out: str | int
    noise_out: str | int | None
    mic_in: str | int
    sample_rate: int = 48000
    blocksize: int = 1024
    latency: float | Literal["low", "high"] = 0.2
    label: str = "take"
    lead_in_s: float = 1.0
    tail_s: float = 2.0
    mic_channels: int = 1
    output_channels: int | None = None
    ring_s: float = 30.0
    sync_interval_s: float = 0.5
    stall_timeout_s: float = 3.0

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.blocksize < 0:
            raise ValueError("sample_rate must be positive and blocksize not negative")
        if self.lead_in_s < 0 or self.tail_s < 0:
            raise ValueError("lead_in_s and tail_s must not be negative")
        if self.mic_channels < 1:
            raise ValueError("mic_channels must be at least 1")
        if self.sync_interval_s <= 0 or self.ring_s <= 0 or self.stall_timeout_s <= 0:
            raise ValueError("sync_interval_s, ring_s and stall_timeout_s must be positive")


@dataclass
class TakeResult:
    """What was recorded and how the take ended.

    ``frames`` is what the file holds; ``frames_expected`` is lead + program + tail.
    ``xruns`` counts every kind seen, keyed "<role>.<flag>" (``mic_in.input_overflow``,
    ``music_out.output_underflow``, ``mic_in.ring_overflow`` when the writer fell behind).
    ``stream_latency_s`` is what PortAudio reports per stream, not the real offset
    between the outputs and the microphone: the markers measure that. ``xrun_times_s``:
    where each audible xrun was reported, seconds into the take (frames the microphone
    had captured by then), in order; at most ``_XRUN_SLOTS`` a stream.
    """

    path: Path
    label: str
    frames: int
    frames_expected: int
    sample_rate: int
    channels: int
    xruns: dict[str, int]
    devices: dict[str, str]
    started_at: str
    ended_at: str
    ended_by: EndedBy
    error: str | None = None
    lead_in_s: float = 0.0
    stream_latency_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    xrun_times_s: list[float] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate

    @property
    def xrun_total(self) -> int:
        """Under/overruns that changed the audio (``audible_xruns``)."""
        return audible_xruns(self.xruns)

    @property
    def problems(self) -> list[str]:
        """What went wrong, one phrase each: the error, the notes, the xruns and where."""
        found = ([self.error] if self.error else []) + list(self.notes)
        if self.xrun_total:
            kinds = ", ".join(f"{key} {n}" for key, n in self.xruns.items() if n)
            found.append(f"{describe_xruns(self.xrun_total, self.xrun_times_s)} ({kinds})")
        return found

    @property
    def complete(self) -> bool:
        """Finished, every expected frame in the file and no xrun."""
        return (
            self.ended_by == "finished"
            and self.frames == self.frames_expected
            and self.xrun_total == 0
        )

    @property
    def sample_rates(self) -> dict[str, int]:
        """The rate each role ran at (all streams share the take's rate)."""
        return dict.fromkeys(self.devices, self.sample_rate)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return {"format": TAKE_FORMAT, "version": TAKE_VERSION, "state": "ended", **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TakeResult:
        known = set(cls.__dataclass_fields__)
        values = {key: value for key, value in data.items() if key in known}
        values["path"] = Path(values["path"])
        return cls(**values)


def take_info_path(path: Path | str) -> Path:
    """The JSON sidecar of a take file."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_take_info(path: Path | str) -> dict[str, Any] | None:
    """The sidecar of a take as a dict (None when there is none or it is unreadable)."""
    info = take_info_path(path)
    try:
        data = json.loads(info.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == TAKE_FORMAT else None


def _write_info(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(take_info_path(path), json.dumps(data, indent=2) + "\n")


# --- the growing WAV file ---------------------------------------------------------------


def _wav_header(channels: int, sample_rate: int, frames: int) -> bytes:
    block_align = 4 * channels
    data_bytes = frames * block_align
    return (
        b"RIFF"
        + struct.pack("<I", _HEADER_BYTES - 8 + data_bytes)
        + b"WAVEfmt "
        + struct.pack(
            "<IHHIIHH",
            16,
            _WAVE_FORMAT_IEEE_FLOAT,
            channels,
            sample_rate,
            sample_rate * block_align,
            block_align,
            32,
        )
        + b"fact"
        + struct.pack("<II", 4, min(frames, 0xFFFFFFFF))
        + b"data"
        + struct.pack("<I", data_bytes)
    )


class _TakeFile:
    """A float32 WAV that is valid on disk at every sync (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        channels: int,
        sample_rate: int,
        opener: Callable[[Path], BinaryIO],
    ) -> None:
        self.path = path
        self.channels = channels
        self.sample_rate = sample_rate
        self.block_align = 4 * channels
        self.frames = 0  # whole frames the OS accepted
        self.synced_frames = 0  # frames the header on disk covers
        self._partial = 0  # bytes of a frame the OS accepted before a failed write
        self._last_fsync = time.monotonic()
        self._file = opener(path)
        self._file.write(_wav_header(channels, sample_rate, 0))
        self._file.flush()

    def append(self, block: np.ndarray) -> None:
        """Write whole frames; an OSError leaves ``frames`` counting what reached the OS."""
        data = np.ascontiguousarray(block, dtype="<f4").data.cast("B")
        done = 0
        try:
            while done < len(data):
                count = self._file.write(data[done:])
                if not count:
                    raise OSError(errno.EIO, "the file accepted no data")
                done += count
        finally:
            total = self._partial + done
            self.frames += total // self.block_align
            self._partial = total % self.block_align

    def sync(self, durable: bool = False) -> None:
        """Flush the data, then make the header cover it; fsync when ``durable`` or due."""
        handle = self._file
        now = time.monotonic()
        if durable or now - self._last_fsync >= _FSYNC_EVERY_S:
            # data on the disk before a header that claims it
            os.fsync(handle.fileno())
            self._last_fsync = now
        self._patch(self.frames)

    def _patch(self, frames: int) -> None:
        handle = self._file
        data_bytes = frames * 4 * self.channels
        handle.seek(4)
        handle.write(struct.pack("<I", _HEADER_BYTES - 8 + data_bytes))
        handle.seek(44)
        handle.write(struct.pack("<I", min(frames, 0xFFFFFFFF)))
        handle.seek(52)
        handle.write(struct.pack("<I", data_bytes))
        handle.seek(_HEADER_BYTES + self.frames * self.block_align + self._partial)
        self.synced_frames = frames

    def close(self, after_error: bool = False) -> None:
        """Make the header cover every whole frame written; cut a partly written block."""
        handle = self._file
        try:
            if after_error or self._partial:
                # A failed write may have left part of a frame: cut it.
                handle.truncate(_HEADER_BYTES + self.frames * self.block_align)
                self._partial = 0
            self._patch(self.frames)
            os.fsync(handle.fileno())
        finally:
            with contextlib.suppress(OSError):
                handle.close()


def _open_take_file(path: Path) -> BinaryIO:
    # Unbuffered: a write the OS refused is never retried later by a buffer's flush, so
    # the frame count always matches what reached the file.
    return path.open("xb", buffering=0)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user
    return True


def recording_process(path: Path | str) -> int | None:
    """The id of another process still recording the take at ``path`` (None: none is)."""
    info = read_take_info(path) or {}
    pid = info.get("pid")
    if not (info.get("state") == "recording" and isinstance(pid, int)):
        return None
    if pid != os.getpid() and _process_alive(pid):
        return pid
    return None


def recover_take(path: Path | str) -> TakeResult:
    """Make a take file whose recording was interrupted cover every whole frame on disk.

    For a take killed mid-way (process crash, power loss) the header covers what was
    synced last; this extends it to all whole frames in the file and marks the sidecar
    ``crashed``. A take that ended normally is returned as it is. ``CaptureError`` when
    the file is not a take written by this module, or when the process recording it is
    still alive (a take being recorded in this process must not be passed here).
    """
    path = Path(path)
    if not path.is_file():
        raise CaptureError(f"{path}: no such take file")
    pid = recording_process(path)
    if pid is not None:
        raise CaptureError(f"{path}: still being recorded by process {pid}")
    info = read_take_info(path) or {}
    try:
        with path.open("r+b") as handle:
            header = handle.read(_HEADER_BYTES)
            if (
                len(header) < _HEADER_BYTES
                or header[:4] != b"RIFF"
                or header[8:16] != b"WAVEfmt "
                or header[36:40] != b"fact"
                or header[48:52] != b"data"
            ):
                raise CaptureError(f"{path}: not a take written by the rig (unexpected header)")
            fmt, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", header[20:36])
            if fmt != _WAVE_FORMAT_IEEE_FLOAT or bits != 32 or block_align != 4 * channels:
                raise CaptureError(f"{path}: not a take written by the rig (not 32-bit float)")
            size = handle.seek(0, os.SEEK_END)
            frames = (size - _HEADER_BYTES) // block_align
            recorded = struct.unpack("<I", header[52:56])[0] // block_align
            if frames != recorded or size != _HEADER_BYTES + frames * block_align:
                handle.truncate(_HEADER_BYTES + frames * block_align)
                handle.seek(0)
                handle.write(_wav_header(channels, rate, frames))
                handle.flush()
                os.fsync(handle.fileno())
    except OSError as exc:
        raise CaptureError(f"{path}: cannot recover ({exc.strerror or exc})") from None

    if info.get("state") == "ended":
        result = TakeResult.from_dict(info)
        if result.frames == frames:
            return result
    result = TakeResult(
        path=path,
        label=str(info.get("label", path.stem)),
        frames=frames,
        frames_expected=int(info.get("frames_expected", frames)),
        sample_rate=rate,
        channels=channels,
        xruns=dict(info.get("xruns") or {}),
        xrun_times_s=[float(t) for t in info.get("xrun_times_s") or ()],
        devices=dict(info.get("devices") or {}),
        started_at=str(info.get("started_at", "")),
        ended_at=utc_now("milliseconds"),
        ended_by="crashed",
        error=f"{path}: the recording was interrupted; {frames / rate:.2f} s recovered",
        lead_in_s=float(info.get("lead_in_s", 0.0)),
        stream_latency_s=dict(info.get("stream_latency_s") or {}),
        notes=[*list(info.get("notes") or []), f"recovered {recorded} -> {frames} frames"],
    )
    with contextlib.suppress(OSError):
        _write_info(path, result.to_dict())
    return result


# --- the recorder ---------------------------------------------------------------------


class _XrunLog:
    """Where one stream's callbacks reported audible xruns, as take frames; preallocated,
    so a callback stores an integer and allocates nothing."""

    def __init__(self) -> None:
        self.frames = np.zeros(_XRUN_SLOTS, dtype=np.int64)
        self.count = 0  # written by the stream's own callback thread only

    def note(self, frame: int) -> None:
        if self.count < _XRUN_SLOTS:
            self.frames[self.count] = frame
        self.count += 1

    def placed(self) -> np.ndarray:
        return self.frames[: min(self.count, _XRUN_SLOTS)]


@dataclass
class _Output:
    """One output stream's program and position (positions are written by its callback)."""

    role: str
    source: np.ndarray
    lead: int
    channels: int
    position: int = 0


class TakeRecorder:
    """Records one take; thread-safe controls, live progress, a result at the end.

    ``music`` and ``noise`` are mono programs at ``config.sample_rate`` (float32 is used
    as is; anything else is converted once). ``start`` opens the devices (``DeviceError``
    if one is missing or refuses) and returns at once; ``wait`` blocks until the take is
    over; ``stop`` ends it early and keeps it; ``abort`` ends it at once and keeps what
    was recorded. The file at ``out_path`` must not exist unless ``overwrite``.
    """

    def __init__(
        self,
        config: TakeConfig,
        music: np.ndarray,
        noise: np.ndarray | None,
        out_path: Path | str,
        *,
        overwrite: bool = False,
    ) -> None:
        self.config = config
        self.out_path = Path(out_path)
        self._overwrite = overwrite
        self._music = _program(music, "music")
        if (noise is None) != (config.noise_out is None):
            raise ValueError("give both a noise program and a noise_out device, or neither")
        self._noise = None if noise is None else _program(noise, "noise")
        rate = config.sample_rate
        self._lead = round(config.lead_in_s * rate)
        longest = max(len(self._music), 0 if self._noise is None else len(self._noise))
        self._expected = self._lead + longest + round(config.tail_s * rate)
        if self._expected * 4 * config.mic_channels > _MAX_DATA_BYTES:
            hours = self._expected / rate / 3600
            raise CaptureError(
                f"{self.out_path}: a {hours:.1f} h take does not fit a WAV file at {rate} Hz "
                f"with {config.mic_channels} channel(s)"
            )
        capacity = max(round(config.ring_s * rate), 8 * max(config.blocksize, 1024))
        self._ring = np.zeros((capacity, config.mic_channels), dtype=np.float32)
        # Written by the input callback only: frames captured / put in the ring.
        self._captured = 0
        self._ring_written = 0
        # Written by the writer thread only.
        self._ring_read = 0
        self._level_db = _FLOOR_DB
        self._peak_db = _FLOOR_DB
        self._xruns: dict[str, int] = {}
        # one log per stream: each is written by one callback thread, so none races
        self._xrun_logs = {role: _XrunLog() for role in ("mic_in", "music_out", "noise_out")}
        self._callback_error: str | None = None
        self._lost: list[str] = []
        self._ending = False
        self._abort_now = False
        self._request: EndedBy | None = None
        self._wake = threading.Event()
        self._done = threading.Event()
        self._state: State = "ready"
        self._result: TakeResult | None = None
        self._thread: threading.Thread | None = None
        self._streams: dict[str, Any] = {}
        self._sd: Any = None
        # "<role>.<flag>" made once here, so a callback reporting an xrun builds no string
        self._status_keys = {
            role: [(flag, f"{role}.{flag}") for flag in _STATUS_FLAGS]
            for role in ("mic_in", "music_out", "noise_out")
        }
        self._outputs: dict[str, _Output] = {}
        self._devices: dict[str, Device] = {}
        self._file: _TakeFile | None = None
        self._hold: contextlib.ExitStack | None = None
        self._started_at = ""
        self._lock = threading.Lock()  # start/stop/abort against each other, never in callbacks

    # ----- live properties (any thread) -----

    @property
    def state(self) -> State:
        return self._state

    @property
    def recorded_s(self) -> float:
        return min(self._captured, self._expected) / self.config.sample_rate

    @property
    def total_s(self) -> float:
        return self._expected / self.config.sample_rate

    @property
    def level_db(self) -> float:
        """RMS level (dBFS) of the latest recorded blocks, for a meter."""
        return self._level_db

    @property
    def peak_db(self) -> float:
        return self._peak_db

    @property
    def xruns(self) -> dict[str, int]:
        return dict(self._xruns)

    @property
    def xrun_total(self) -> int:
        """Under/overruns so far that changed the audio (``audible_xruns``)."""
        return audible_xruns(self.xruns)  # a copy: the callbacks count on

    @property
    def xrun_times_s(self) -> list[float]:
        """Where the audible xruns so far happened, seconds into the take, in order."""
        frames = np.concatenate([log.placed() for log in self._xrun_logs.values()])
        return [round(float(f) / self.config.sample_rate, 3) for f in np.sort(frames)]

    @property
    def result(self) -> TakeResult | None:
        """The result once the take is over (``state == "done"``), else None."""
        return self._result

    # ----- control -----

    def start(self) -> None:
        """Open the devices and the file, start the streams; returns at once."""
        with self._lock:
            if self._state != "ready":
                raise CaptureError(f"{self.out_path}: this take was started already")
            if self.out_path.exists() and not self._overwrite:
                raise CaptureError(f"{self.out_path}: exists already")
            if not self.out_path.parent.is_dir():
                raise CaptureError(f"{self.out_path}: no such folder {self.out_path.parent}")
            hold = contextlib.ExitStack()
            sd = hold.enter_context(hold_portaudio())
            with _raised_priority():  # the streams' threads and the writer get it
                try:
                    self._open_streams(sd)
                    self._started_at = utc_now("milliseconds")
                    self._create_file()
                    self._state = "recording"
                    self._thread = threading.Thread(
                        target=self._run, name=f"take-{self.config.label}", daemon=True
                    )
                    self._start_streams(sd)
                except BaseException:
                    self._abandon()
                    hold.close()
                    raise
                self._hold = hold
                self._thread.start()

    def stop(self, wait: bool = True, timeout: float | None = 30.0) -> TakeResult | None:
        """End the take early and keep it (``ended_by="stopped"``)."""
        return self._end("stopped", wait, timeout)

    def abort(self, wait: bool = True, timeout: float | None = 30.0) -> TakeResult | None:
        """Stop the streams at once; what was recorded is kept (``ended_by="aborted"``)."""
        return self._end("aborted", wait, timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the take is over (True) or ``timeout`` passes (False)."""
        if self._state == "ready":
            raise CaptureError(f"{self.out_path}: the take was not started")
        return self._done.wait(timeout)

    def _end(self, how: EndedBy, wait: bool, timeout: float | None) -> TakeResult | None:
        with self._lock:
            if self._state == "ready":
                raise CaptureError(f"{self.out_path}: the take was not started")
            if self._request is None:
                self._request = how
            if how == "aborted":
                self._abort_now = True  # the callbacks see it at their next call
        self._wake.set()
        if wait:
            self._done.wait(timeout)
        return self._result

    def __enter__(self) -> TakeRecorder:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state in ("ready", "done"):
            return
        if exc_type is not None:
            self.abort()
        else:
            self.wait()

    # ----- opening -----

    def _open_streams(self, sd: ModuleType) -> None:
        self._sd = sd
        config = self.config
        roles: list[tuple[str, str | int, np.ndarray | None]] = [
            ("mic_in", config.mic_in, None),
            ("music_out", config.music_out, self._music),
        ]
        if config.noise_out is not None and self._noise is not None:
            roles.append(("noise_out", config.noise_out, self._noise))
        for role, wanted, source in roles:
            kind: Literal["input", "output"] = "input" if source is None else "output"
            device = find_device(wanted, kind)
            self._devices[role] = device
            common = {
                "device": device.index,
                "samplerate": config.sample_rate,
                "blocksize": config.blocksize,
                "latency": config.latency,
                "dtype": "float32",
                "finished_callback": self._make_finished_callback(role),
            }
            try:
                if source is None:
                    if device.max_input_channels < config.mic_channels:
                        raise DeviceError(
                            f"mic_in {device.name!r}: has {device.max_input_channels} input "
                            f"channel(s), {config.mic_channels} asked"
                        )
                    stream = sd.InputStream(
                        channels=config.mic_channels, callback=self._on_input, **common
                    )
                else:
                    channels = config.output_channels or min(2, device.max_output_channels)
                    output = _Output(role, source, self._lead, channels)
                    self._outputs[role] = output
                    stream = sd.OutputStream(
                        channels=channels, callback=self._make_output_callback(output), **common
                    )
            except sd.PortAudioError as exc:
                raise DeviceError(
                    f"{role} {device.name!r}: cannot open at {config.sample_rate} Hz "
                    f"({describe_portaudio_error(exc)})"
                ) from None
            self._streams[role] = stream
            flags = (
                ("input_overflow", "input_underflow")
                if source is None
                else ("output_underflow", "output_overflow", "priming_output")
            )
            for flag in flags:
                self._xruns[f"{role}.{flag}"] = 0
        self._xruns["mic_in.ring_overflow"] = 0

    def _create_file(self) -> None:
        if self._overwrite:
            self.out_path.unlink(missing_ok=True)
        try:
            self._file = _TakeFile(
                self.out_path, self.config.mic_channels, self.config.sample_rate, self._opener
            )
        except OSError as exc:
            raise CaptureError(
                f"{self.out_path}: cannot create ({exc.strerror or one_line(exc)})"
            ) from None
        _write_info(self.out_path, self._info("recording"))

    # The file is opened through this hook so that tests can inject a failing disk.
    _opener: Callable[[Path], BinaryIO] = staticmethod(_open_take_file)

    def _start_streams(self, sd: ModuleType) -> None:
        # The microphone first: the lead-in covers the time the outputs take to start.
        for role in ("mic_in", "music_out", "noise_out"):
            stream = self._streams.get(role)
            if stream is None:
                continue
            try:
                stream.start()
            except sd.PortAudioError as exc:
                raise DeviceError(
                    f"{role} {self._devices[role].name!r}: cannot start "
                    f"({describe_portaudio_error(exc)})"
                ) from None

    def _abandon(self) -> None:
        """Undo a failed start: close streams, remove the empty file and its sidecar."""
        self._ending = True
        self._close_streams(abort=True)
        if self._file is not None:
            self._file.close()
            self.out_path.unlink(missing_ok=True)
            take_info_path(self.out_path).unlink(missing_ok=True)
            self._file = None
        self._streams.clear()
        self._outputs.clear()
        self._devices.clear()
        self._xruns.clear()
        self._xrun_logs = {role: _XrunLog() for role in self._xrun_logs}
        self._ending = False
        self._state = "ready"

    # ----- callbacks (PortAudio's threads: copy, count, nothing else) -----

    def _count(self, key: str) -> None:
        self._xruns[key] = self._xruns.get(key, 0) + 1

    def _note_status(self, role: str, status: Any) -> None:
        for flag, key in self._status_keys[role]:
            if getattr(status, flag):
                self._count(key)
                if flag != _INAUDIBLE_FLAG:
                    self._xrun_logs[role].note(self._captured)

    def _on_input(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        sd = self._sd
        try:
            if self._abort_now:
                raise sd.CallbackAbort
            if status:
                self._note_status("mic_in", status)
            wanted = min(frames, self._expected - self._captured)
            if wanted <= 0:
                return
            written = self._ring_written
            capacity = len(self._ring)
            if written + wanted - self._ring_read > capacity:
                self._count("mic_in.ring_overflow")
                self._xrun_logs["mic_in"].note(self._captured)
            else:
                start = written % capacity
                first = min(wanted, capacity - start)
                self._ring[start : start + first] = indata[:first]
                if wanted > first:
                    self._ring[: wanted - first] = indata[first:wanted]
                self._ring_written = written + wanted
            self._captured += wanted
        except (sd.CallbackAbort, sd.CallbackStop):
            raise
        except Exception as exc:  # never let an error pass silently out of a callback
            self._callback_error = f"mic_in: {one_line(exc)}"
            raise sd.CallbackAbort from None

    def _make_output_callback(self, output: _Output) -> Callable[..., None]:
        source = output.source
        total = len(source)
        lead = output.lead
        role = output.role

        sd = self._sd

        def callback(outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            try:
                if self._abort_now:
                    raise sd.CallbackAbort
                if status:
                    self._note_status(role, status)
                begin = output.position - lead
                lo, hi = max(begin, 0), min(begin + frames, total)
                outdata.fill(0.0)
                if hi > lo:
                    outdata[lo - begin : hi - begin] = source[lo:hi, None]
                output.position += frames
            except (sd.CallbackAbort, sd.CallbackStop):
                raise
            except Exception as exc:
                self._callback_error = f"{role}: {one_line(exc)}"
                raise sd.CallbackAbort from None

        return callback

    def _make_finished_callback(self, role: str) -> Callable[[], None]:
        def finished() -> None:
            if not self._ending:
                self._lost.append(role)
                self._wake.set()

        return finished

    # ----- the writer thread -----

    def _run(self) -> None:
        try:
            self._record()
        except BaseException as exc:  # a bug must still close the file and end the take
            self._ending = self._abort_now = True
            self._close_streams(abort=True)
            self._finish("device_error", f"{self.out_path}: internal error: {one_line(exc)}", True)
            raise

    def _record(self) -> None:
        ended_by: EndedBy = "finished"
        error: str | None = None
        write_failed = False
        last_sync = time.monotonic()
        watch = {role: (-1, time.monotonic()) for role in self._streams}
        told = 0  # xruns the sidecar holds: a killed take keeps them too
        try:
            while True:
                self._drain()
                now = time.monotonic()
                if now - last_sync >= self.config.sync_interval_s:
                    self._open_file().sync()
                    last_sync = now
                    fault_point("record.synced")
                    if self.xrun_total != told:
                        told = self.xrun_total
                        with contextlib.suppress(OSError):  # the take matters more
                            _write_info(self.out_path, self._info("recording"))
                outcome = self._check(watch, now)
                if outcome is not None:
                    ended_by, error = outcome
                    break
                self._wake.wait(_POLL_S)
                self._wake.clear()
        except OSError as exc:
            ended_by, error, write_failed = "write_error", self._disk_message(exc), True
        self._state = "finishing"
        self._ending = True
        self._abort_now = True
        self._close_streams(abort=True)
        if not write_failed:
            try:
                self._drain()
            except OSError as exc:
                ended_by, error, write_failed = "write_error", self._disk_message(exc), True
        self._finish(ended_by, error, write_failed)

    def _check(
        self, watch: dict[str, tuple[int, float]], now: float
    ) -> tuple[EndedBy, str | None] | None:
        if self._request == "aborted":
            return "aborted", None
        if self._callback_error is not None:
            return "device_error", self._callback_error
        if self._lost:
            role = self._lost[0]
            return "device_error", (
                f"{role} {self._devices[role].name!r}: the stream stopped by itself after "
                f"{self.recorded_s:.2f} s (device unplugged or its server gone?)"
            )
        for role in self._streams:
            position = self._captured if role == "mic_in" else self._outputs[role].position
            last_position, since = watch[role]
            if position != last_position:
                watch[role] = (position, now)
            elif now - since > self.config.stall_timeout_s:
                return "device_error", (
                    f"{role} {self._devices[role].name!r}: no audio for "
                    f"{now - since:.1f} s (device stalled or gone)"
                )
        if self._request == "stopped":
            return "stopped", None
        if self._captured >= self._expected and self._ring_read >= self._ring_written:
            return "finished", None
        return None

    def _drain(self) -> None:
        """Append what the input callback put in the ring to the file; update the meter."""
        written = self._ring_written
        read = self._ring_read
        if written == read:
            return
        file = self._open_file()
        capacity = len(self._ring)
        start = read % capacity
        count = written - read
        first = min(count, capacity - start)
        pieces = [self._ring[start : start + first]]
        if count > first:
            pieces.append(self._ring[: count - first])
        for piece in pieces:
            file.append(piece)
        self._ring_read = written
        recent = pieces[-1][-max(1, self.config.sample_rate // 10) :]
        self._level_db = _dbfs(float(np.sqrt(np.mean(np.square(recent, dtype=np.float64)))))
        self._peak_db = _dbfs(float(np.max(np.abs(recent))))

    def _open_file(self) -> _TakeFile:
        """The take's file, open from ``start`` until the take ends."""
        if self._file is None:
            raise CaptureError(f"{self.out_path}: the take's file is not open")
        return self._file

    def _disk_message(self, exc: OSError) -> str:
        rate = self.config.sample_rate
        kept = (self._file.frames if self._file is not None else 0) / rate
        why = "the disk is full" if exc.errno in DISK_FULL else (exc.strerror or one_line(exc))
        return f"{self.out_path}: cannot write ({why}); the take keeps the {kept:.2f} s written"

    def _close_streams(self, abort: bool) -> None:
        for role in ("music_out", "noise_out", "mic_in"):
            stream = self._streams.get(role)
            if stream is None:
                continue
            # A stream whose device vanished may refuse; the take ends anyway.
            with contextlib.suppress(Exception):
                stream.abort() if abort else stream.stop()
            with contextlib.suppress(Exception):
                stream.close()

    def _finish(self, ended_by: EndedBy, error: str | None, write_failed: bool) -> None:
        notes: list[str] = []
        frames = 0
        if self._file is not None:
            try:
                self._file.close(after_error=write_failed)
            except OSError as exc:
                notes.append(f"closing the file failed: {exc.strerror or one_line(exc)}")
            frames = self._file.synced_frames
        if self._captured > self._ring_written:
            lost = (self._captured - self._ring_written) / self.config.sample_rate
            notes.append(f"{lost:.2f} s of input lost (the writer fell behind)")
        if ended_by == "finished":
            for output in self._outputs.values():
                if output.position < output.lead + len(output.source):
                    notes.append(
                        f"{output.role} had not played the whole program when recording "
                        "ended; raise tail_s"
                    )
        result = TakeResult(
            path=self.out_path,
            label=self.config.label,
            frames=frames,
            frames_expected=self._expected,
            sample_rate=self.config.sample_rate,
            channels=self.config.mic_channels,
            xruns=dict(self._xruns),
            xrun_times_s=self.xrun_times_s,
            devices={role: device.name for role, device in self._devices.items()},
            started_at=self._started_at,
            ended_at=utc_now("milliseconds"),
            ended_by=ended_by,
            error=error,
            lead_in_s=self._lead / self.config.sample_rate,
            stream_latency_s=self._latencies(),
            notes=notes,
        )
        try:
            _write_info(self.out_path, result.to_dict())
        except OSError as exc:
            result.notes.append(f"sidecar not written: {exc.strerror or one_line(exc)}")
        self._result = result
        self._state = "done"
        if self._hold is not None:
            self._hold.close()
        self._done.set()

    def _latencies(self) -> dict[str, float]:
        out = {}
        for role, stream in self._streams.items():
            with contextlib.suppress(Exception):
                out[role] = float(stream.latency)
        return out

    def _info(self, state: str) -> dict[str, Any]:
        return {
            "format": TAKE_FORMAT,
            "version": TAKE_VERSION,
            "state": state,
            "path": str(self.out_path),
            "label": self.config.label,
            "sample_rate": self.config.sample_rate,
            "channels": self.config.mic_channels,
            "frames_expected": self._expected,
            "lead_in_s": self._lead / self.config.sample_rate,
            "devices": {role: device.name for role, device in self._devices.items()},
            "started_at": self._started_at,
            "pid": os.getpid(),
            "xruns": self.xruns,
            "xrun_times_s": self.xrun_times_s,
            "config": {key: value for key, value in asdict(self.config).items() if key != "label"},
        }


def _program(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1 or not len(x):
        raise ValueError(f"the {name} program must be a non-empty 1-D array, got {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def record_take(
    config: TakeConfig,
    music: np.ndarray,
    noise: np.ndarray | None,
    out_path: Path | str,
    task: TaskState | None = None,
    *,
    overwrite: bool = False,
    on_recorder: Callable[[TakeRecorder], None] | None = None,
) -> TakeResult:
    """Record a take and block until it is over; progress in seconds through ``task``.

    Cancelling the task ends the take early like ``stop`` (the file is kept and the
    result says ``stopped``). A lost device or a full disk end the take too: check
    ``result.ended_by`` and ``result.error``. ``on_recorder`` receives the recorder
    before it starts (a GUI polls its level and xruns, or stops/aborts it).
    """
    recorder = TakeRecorder(config, music, noise, out_path, overwrite=overwrite)
    if on_recorder is not None:
        on_recorder(recorder)
    task = task or TaskState()
    task.set_total(recorder.total_s, f"recording {config.label}")
    recorder.start()
    reported = 0.0
    try:
        while not recorder.wait(0.1):
            if task.cancelled:
                recorder.stop(wait=False)
            now = recorder.recorded_s
            if now > reported:
                task.advance(
                    now - reported, f"{config.label}: {now:.0f} s, {recorder.level_db:.0f} dBFS"
                )
                reported = now
    except BaseException:
        recorder.abort()
        raise
    result = recorder.result
    if result is None:  # wait() returned True: the take is over and has its result
        raise CaptureError(f"{recorder.out_path}: the recording ended without a result")
    if result.duration_s > reported:
        task.advance(result.duration_s - reported, f"{config.label}: {result.ended_by}")
    return result


# --- level checks -------------------------------------------------------------------------


def play_test_tone(
    device: str | int,
    frequency: float = 1000.0,
    seconds: float = 1.0,
    level_dbfs: float = -20.0,
    *,
    sample_rate: int | None = None,
    channels: int | None = None,
) -> None:
    """Play a sine (10 ms fades, peak ``level_dbfs``) on an output device; blocks."""
    rate = int(sample_rate or find_device(device, "output").default_samplerate)
    n = max(1, round(seconds * rate))
    t = np.arange(n) / rate
    tone = (10.0 ** (level_dbfs / 20.0) * np.sin(2.0 * np.pi * frequency * t)).astype(np.float32)
    fade = min(n // 2, round(0.01 * rate))
    if fade:
        ramp = (0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)).astype(np.float32)
        tone[:fade] *= ramp
        tone[n - fade :] *= ramp[::-1]
    play_audio(device, tone, rate, channels=channels)


def play_audio(
    device: str | int,
    audio: np.ndarray,
    sample_rate: int,
    *,
    channels: int | None = None,
    stop: Callable[[], bool] | None = None,
) -> None:
    """Play mono ``audio`` on an output device (every channel the same); blocks until it
    has played or ``stop()`` says to stop (asked every block)."""
    dev = find_device(device, "output")
    sound = np.asarray(audio, dtype=np.float32).reshape(-1)
    n = len(sound)
    seconds = n / sample_rate
    done = threading.Event()
    state = {"position": 0}

    def callback(outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        import sounddevice as sd

        start = state["position"]
        piece = sound[start : start + frames]
        outdata.fill(0.0)
        outdata[: len(piece)] = piece[:, None]
        state["position"] = start + frames
        if start + frames >= n or (stop is not None and stop()):
            raise sd.CallbackStop

    with hold_portaudio() as sd:
        try:
            stream = sd.OutputStream(
                device=dev.index,
                samplerate=sample_rate,
                channels=channels or min(2, dev.max_output_channels),
                dtype="float32",
                callback=callback,
                finished_callback=done.set,
            )
            with stream:
                if not done.wait(seconds + 5.0):
                    raise DeviceError(f"output {dev.name!r}: the sound did not finish playing")
        except sd.PortAudioError as exc:
            raise DeviceError(
                f"output {dev.name!r}: cannot play ({describe_portaudio_error(exc)})"
            ) from None


class InputMeter:
    """Live RMS and peak level (dBFS) of an input over the last ``window_s`` seconds."""

    def __init__(
        self,
        device: str | int,
        *,
        sample_rate: int | None = None,
        channels: int = 1,
        window_s: float = 0.3,
    ) -> None:
        self.device = find_device(device, "input")
        self.sample_rate = int(sample_rate or self.device.default_samplerate)
        self.channels = channels
        self._ring = np.zeros((max(1, round(window_s * self.sample_rate)), channels), np.float32)
        self._written = 0
        self._stream: Any = None
        self._hold: contextlib.ExitStack | None = None
        self.overflows = 0

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status:
            self.overflows += 1
        capacity = len(self._ring)
        data = indata[-capacity:]
        count = len(data)
        start = self._written % capacity
        first = min(count, capacity - start)
        self._ring[start : start + first] = data[:first]
        if count > first:
            self._ring[: count - first] = data[first:]
        self._written += count

    def start(self) -> None:
        if self._stream is not None:
            return
        hold = contextlib.ExitStack()
        sd = hold.enter_context(hold_portaudio())
        try:
            self._stream = sd.InputStream(
                device=self.device.index,
                samplerate=self.sample_rate,
                channels=self.channels,
                dtype="float32",
                callback=self._callback,
            )
            self._stream.start()
        except sd.PortAudioError as exc:
            self._stream = None
            hold.close()
            raise DeviceError(
                f"input {self.device.name!r}: cannot open ({describe_portaudio_error(exc)})"
            ) from None
        self._hold = hold

    def stop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.abort()
            with contextlib.suppress(Exception):
                stream.close()
        if self._hold is not None:
            self._hold.close()
            self._hold = None

    def _window(self) -> np.ndarray:
        filled = min(self._written, len(self._ring))
        return self._ring[:filled] if filled < len(self._ring) else self._ring.copy()

    @property
    def rms_dbfs(self) -> float:
        x = self._window()
        return (
            _dbfs(float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))) if len(x) else _FLOOR_DB
        )

    @property
    def peak_dbfs(self) -> float:
        x = self._window()
        return _dbfs(float(np.max(np.abs(x)))) if len(x) else _FLOOR_DB

    def __enter__(self) -> InputMeter:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
