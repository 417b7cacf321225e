"""Audio input and output: probing, streaming decode to 8 kHz mono, framing into windows.

Everything here is numpy only (no torch). Decoding goes through libsndfile (soundfile),
resampling through soxr with its anti-alias filter. ``stream_audio`` reads a file block by
block, so memory stays proportional to the block, however long the file is.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

import numpy as np
import soundfile as sf
import soxr

from afp_core.errors import AudioError
from afp_core.fileutil import one_line

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioInfo",
    "check_finite",
    "describe_missing",
    "frame_windows",
    "iter_audio_files",
    "load_audio",
    "probe_audio",
    "quiet_stderr",
    "resample",
    "stream_audio",
    "stream_windows",
    "window_count",
    "write_audio_atomic",
]

AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".wav",
        ".wave",
        ".bwf",
        ".rf64",
        ".w64",
        ".flac",
        ".ogg",
        ".oga",
        ".opus",
        ".mp3",
        ".aif",
        ".aiff",
        ".aifc",
        ".au",
        ".snd",
        ".caf",
        ".sph",
        ".nist",
        ".voc",
        ".paf",
        ".svx",
        ".sd2",
    }
)

# soundfile guesses the major format from the suffix; these suffixes need telling.
_WRITE_FORMATS: dict[str, tuple[str, str | None]] = {
    ".wav": ("WAV", None),
    ".wave": ("WAV", None),
    ".rf64": ("RF64", None),
    ".w64": ("W64", None),
    ".flac": ("FLAC", None),
    ".ogg": ("OGG", None),
    ".oga": ("OGG", None),
    ".opus": ("OGG", "OPUS"),
    ".mp3": ("MP3", None),
    ".aif": ("AIFF", None),
    ".aiff": ("AIFF", None),
    ".aifc": ("AIFF", None),
    ".au": ("AU", None),
    ".snd": ("AU", None),
    ".caf": ("CAF", None),
}

# Errors libsndfile / soundfile raise for unreadable or undecodable data.
_DECODE_ERRORS = (sf.SoundFileError, RuntimeError, ValueError, TypeError, OSError)

# libsndfile reads only what a truncated file holds and leaves one trace of the header's
# promise in its log: "data : 640000 (should be 96000)" (declared bytes, bytes there).
_SHOULD_BE = re.compile(r":\s*(\d+)\s*\(should be (\d+)\)")
# Sizes a streaming writer puts in the header before it knows the length: not a promise.
_UNKNOWN_SIZE = 0x7FFF0000
# A file decoding this much short of its header (and at least this share) is reported:
# MP3 headers overshoot by a fraction of a second on whole files.
_SHORT_READ_S = 1.0
_SHORT_READ_SHARE = 0.01

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioInfo:
    """What ``probe_audio`` learns from a file's header."""

    path: Path
    sample_rate: int
    channels: int
    frames: int
    format: str
    # What the header promises where the file holds fewer frames (a truncated file).
    header_frames: int | None = None

    @property
    def duration_s(self) -> float:
        """Duration in seconds (``frames / sample_rate``)."""
        return self.frames / self.sample_rate


class _StderrToLog:
    """While entered, what C code writes to file descriptor 2 goes to the debug log.

    libmpg123 and libsndfile print notes ("Note: Illegal Audio-MPEG-Header ...") straight
    to the process's stderr, past Python; the user gets one line per file from us instead.
    fd 2 belongs to the whole process, so overlapping users (threads) share one
    redirection: the first starts it, the last restores fd 2 and replays what was caught.
    Keep it around C calls only: Python writes to stderr meanwhile are caught too.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved: int | None = None
        self._capture: IO[bytes] | None = None

    def __enter__(self) -> None:
        with self._lock:
            if self._users == 0:
                self._start()
            self._users += 1

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self._stop()

    def _start(self) -> None:
        if sys.stderr is not None:
            sys.stderr.flush()  # what Python wrote before belongs on the terminal
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 (a detached process): nothing to keep off the terminal
            return
        try:
            self._capture = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _stop
        except OSError:  # nowhere to put it: leave stderr as it is
            os.close(saved)
            return
        os.dup2(self._capture.fileno(), 2)
        self._saved = saved

    def _stop(self) -> None:
        if self._saved is None or self._capture is None:
            return
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._saved = None
        capture, self._capture = self._capture, None
        with capture:
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
        for line in text.splitlines():
            if line.strip():
                _log.debug("decoder: %s", line)


_STDERR_TO_LOG = _StderrToLog()


def quiet_stderr() -> _StderrToLog:
    """``with quiet_stderr():`` around a C library's call sends its chatter to the log."""
    return _STDERR_TO_LOG


def _reason(exc: BaseException) -> str:
    """libsndfile's message for ``exc`` on one line, without the repeated file name."""
    text = one_line(getattr(exc, "error_string", None) or exc)
    if text.startswith("Error : "):
        text = text[len("Error : ") :]
    return text.rstrip(".")


# What libsndfile says when no decoder recognises a regular file's content: its MP3
# decoder blames a missing file or a pipe, the others say "Format not recognised".
_UNRECOGNISED = ("File does not exist or is not a regular file", "Format not recognised")


def _unreadable(path: Path, exc: BaseException) -> AudioError:
    reason = _reason(exc)
    if reason.startswith(_UNRECOGNISED) and path.is_file():
        if path.stat().st_size == 0:
            return AudioError(f"{path}: empty file (0 bytes)")
        return AudioError(f"{path}: not an audio file the decoder recognises")
    return AudioError(f"{path}: not an audio file libsndfile can read ({reason})")


def describe_missing(path: Path, what: str = "file") -> str:
    """Why ``path`` (which does not exist) is not there: a broken or looping link says so."""
    if path.is_symlink():
        loops = f"{path}: a symbolic link that loops"
        try:
            path.resolve(strict=True)
        except RuntimeError:  # Python before 3.13
            return loops
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return loops
            return f"{path}: a broken symbolic link (to {path.readlink()})"
    return f"{path}: no such {what}"


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise AudioError(describe_missing(path))
    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file")


def probe_audio(path: Path | str) -> AudioInfo:
    """Read ``path``'s header; ``AudioError`` if it is missing, unreadable or empty."""
    path = Path(path)
    _check_exists(path)
    try:
        with quiet_stderr():
            info = sf.info(str(path))
    except _DECODE_ERRORS as exc:
        raise _unreadable(path, exc) from None
    if info.frames <= 0 or info.samplerate <= 0 or info.channels <= 0:
        raise AudioError(f"{path}: empty audio file (no samples)")
    return AudioInfo(
        path=path,
        sample_rate=int(info.samplerate),
        channels=int(info.channels),
        frames=int(info.frames),
        format=str(info.format),
        header_frames=_header_frames(int(info.frames), str(info.extra_info or "")),
    )


def _header_frames(frames: int, log: str) -> int | None:
    """Frames the header declares, from libsndfile's log, where the file holds fewer."""
    declared = None
    for line in log.splitlines():
        found = _SHOULD_BE.search(line)
        if found is None:
            continue
        claimed, there = int(found[1]), int(found[2])
        if 0 < there < claimed < _UNKNOWN_SIZE:
            declared = round(frames * claimed / there)  # the last one is the data chunk
    return declared


def stream_audio(
    path: Path | str,
    sample_rate: int = 8000,
    block_s: float = 30.0,
    on_warning: Callable[[str], None] | None = None,
) -> Iterator[np.ndarray]:
    """Decode ``path`` block by block to mono float32 at ``sample_rate``.

    Yields non-empty 1-D float32 blocks (about ``block_s`` seconds each, the last shorter)
    whose concatenation is the whole resampled signal. The header is checked at once (a
    missing, unreadable or empty file raises ``AudioError`` here, not at the first block);
    a decoding error later in the file raises ``AudioError`` from the iterator. A file that
    ends well before its header says (truncated) is decoded as far as it goes and
    ``on_warning`` gets one line saying so (default: the log).
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if block_s <= 0:
        raise ValueError(f"block_s must be positive, got {block_s}")
    info = probe_audio(path)
    return _stream(info, sample_rate, block_s, on_warning or _log.warning)


def _stream(
    info: AudioInfo, sample_rate: int, block_s: float, on_warning: Callable[[str], None]
) -> Iterator[np.ndarray]:
    path = info.path
    block = max(1, round(block_s * info.sample_rate))
    resampler = (
        None
        if info.sample_rate == sample_rate
        else soxr.ResampleStream(info.sample_rate, sample_rate, 1, dtype="float32", quality="HQ")
    )
    done = 0
    try:
        with quiet_stderr():
            handle = sf.SoundFile(str(path))
    except _DECODE_ERRORS as exc:
        raise _unreadable(path, exc) from None
    with handle:
        # One buffer reused for every read: decoding allocates nothing per block.
        buffer = np.empty((block, handle.channels), dtype=np.float32)
        while True:
            try:
                with quiet_stderr():  # not around the yield: the caller's output is its own
                    frames = handle.read(block, dtype="float32", always_2d=True, out=buffer)
            except _DECODE_ERRORS as exc:
                where = done / info.sample_rate
                raise AudioError(
                    f"{path}: decoding failed after {where:.2f} s ({_reason(exc)})"
                ) from None
            n = len(frames)
            check_finite(path, frames, done, info.sample_rate)
            done += n
            last = n < block
            mono = _downmix(frames)
            if resampler is not None:
                mono = resampler.resample_chunk(mono, last=last)
            if len(mono):
                yield mono
            if last:
                break
    short = _short_read(info, done)
    if short:
        on_warning(short)


def _short_read(info: AudioInfo, decoded: int) -> str | None:
    """One line where ``decoded`` frames fall well short of what the header promised."""
    promised = info.header_frames or info.frames
    missing = promised - decoded
    if missing <= max(_SHORT_READ_S * info.sample_rate, _SHORT_READ_SHARE * promised):
        return None
    rate = info.sample_rate
    return (
        f"{info.path}: truncated: the header says {promised / rate:.1f} s, "
        f"the file holds {decoded / rate:.1f} s"
    )


def check_finite(path: Path | str, frames: np.ndarray, first: int, sample_rate: int) -> None:
    """``AudioError`` naming the file and the time when (n,) or (n, channels) ``frames``,
    starting at frame ``first`` of ``path``, hold a NaN or an infinity."""
    finite = np.isfinite(frames)
    if finite.all():
        return
    bad = int(np.flatnonzero(~finite.reshape(len(frames), -1).all(axis=1))[0])
    raise AudioError(f"{path}: NaN or infinite samples at {(first + bad) / sample_rate:.2f} s")


def _downmix(frames: np.ndarray) -> np.ndarray:
    """(n, channels) float32 -> a new contiguous (n,) float32 array, mean of the channels."""
    if frames.shape[1] == 1:
        return frames[:, 0].copy()
    return frames.mean(axis=1, dtype=np.float32)


def load_audio(path: Path | str, sample_rate: int = 8000) -> np.ndarray:
    """The whole of ``path`` as mono float32 at ``sample_rate``, shape (samples,)."""
    blocks = list(stream_audio(path, sample_rate))
    if not blocks:
        return np.zeros(0, dtype=np.float32)
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample (samples,) or (samples, channels) ``x`` with soxr HQ; float32 out."""
    x = np.asarray(x, dtype=np.float32)
    if sr_in == sr_out:
        return x
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_in} and {sr_out}")
    return np.asarray(soxr.resample(x, sr_in, sr_out, quality="HQ"), dtype=np.float32)


def window_count(n_samples: int, window: int, hop: int) -> int:
    """Number of whole windows of ``window`` samples, ``hop`` apart, in ``n_samples``."""
    if window <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive, got {window} and {hop}")
    if n_samples < window:
        return 0
    return 1 + (n_samples - window) // hop


def frame_windows(x: np.ndarray, window: int, hop: int) -> np.ndarray:
    """Read-only strided view (window_count, window) of 1-D ``x``; no copy."""
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D signal, got shape {x.shape}")
    n = window_count(len(x), window, hop)
    if n == 0:
        empty = np.zeros((0, window), dtype=x.dtype)
        empty.flags.writeable = False
        return empty
    return np.lib.stride_tricks.sliding_window_view(x, window)[::hop]


def stream_windows(
    blocks: Iterable[np.ndarray], window: int, hop: int, max_windows: int = 1024
) -> Iterator[np.ndarray]:
    """Cut a stream of 1-D blocks of any sizes into windows.

    Yields contiguous float32 arrays (n_i, window) with 1 <= n_i <= ``max_windows``; their
    concatenation equals ``frame_windows(np.concatenate(blocks), window, hop)``.
    """
    window_count(0, window, hop)  # validates window and hop
    if max_windows < 1:
        raise ValueError(f"max_windows must be at least 1, got {max_windows}")
    pending: list[np.ndarray] = []
    pending_len = 0
    skip = 0  # samples still to drop when hop > window leaves a gap between windows
    for raw in blocks:
        block = np.asarray(raw, dtype=np.float32)
        if block.ndim != 1:
            raise ValueError(f"expected 1-D blocks, got shape {block.shape}")
        if skip:
            dropped = min(skip, len(block))
            block = block[dropped:]
            skip -= dropped
        if not len(block):
            continue
        pending.append(block)
        pending_len += len(block)
        # Join only once a window fits, so many tiny blocks do not cost a join each.
        if pending_len < window:
            continue
        buffer = pending[0] if len(pending) == 1 else np.concatenate(pending)
        views = frame_windows(buffer, window, hop)
        for start in range(0, len(views), max_windows):
            yield views[start : start + max_windows].copy()
        consumed = len(views) * hop
        if consumed >= len(buffer):
            skip = consumed - len(buffer)
            pending, pending_len = [], 0
        else:
            # Copy the tail so the (possibly large) joined buffer can be freed.
            tail = buffer[consumed:].copy()
            pending, pending_len = [tail], len(tail)


def iter_audio_files(paths: Iterable[Path | str]) -> Iterator[Path]:
    """Files named directly (any suffix), then audio files found in named folders.

    Folders are walked recursively; their files with a suffix in ``AUDIO_EXTENSIONS``
    come out sorted by path components, hidden files and folders skipped. A path that
    does not exist raises ``AudioError``.
    """
    for item in paths:
        path = Path(item)
        if path.is_dir():
            yield from _walk_audio(path)
        elif path.exists():
            yield path
        else:
            raise AudioError(describe_missing(path, "file or folder"))


def _walk_audio(folder: Path) -> Iterator[Path]:
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(
            Path(root, name)
            for name in files
            if not name.startswith(".") and Path(name).suffix.lower() in AUDIO_EXTENSIONS
        )
    yield from sorted(found, key=lambda p: p.parts)


def write_audio_atomic(
    path: Path | str, x: np.ndarray, sample_rate: int, subtype: str | None = None
) -> None:
    """Write (samples,) or (samples, channels) ``x`` to ``path`` atomically.

    The data goes to a hidden temporary file in the same folder, which then replaces
    ``path``: a reader sees the old file or the whole new one, never a partial one.
    The format follows the suffix (.opus is Ogg Opus); ``subtype`` as in soundfile.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _WRITE_FORMATS:
        known = " ".join(sorted(_WRITE_FORMATS))
        raise AudioError(f"{path}: cannot write audio with suffix {suffix!r} (known: {known})")
    if not path.parent.is_dir():
        raise AudioError(f"{path}: no such folder {path.parent}")
    file_format, default_subtype = _WRITE_FORMATS[suffix]
    # Not mkstemp: its 0600 mode would stick to the final file; a random name suffices.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        sf.write(
            str(tmp),
            np.asarray(x),
            sample_rate,
            subtype=subtype or default_subtype,
            format=file_format,
        )
        tmp.replace(path)
    except _DECODE_ERRORS as exc:
        raise AudioError(f"{path}: cannot write audio ({_reason(exc)})") from None
    finally:
        tmp.unlink(missing_ok=True)
