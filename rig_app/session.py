"""A recording session: songs, the programs played, and the takes recorded.

A session is a folder::

    session.json                 what is below, and how it fits together
    program/program.json         the music program (``rig_app.program``, its own format)
    program/music.wav            the music track, 32-bit float
    program/noise.wav            the noise track (absent for imported layouts)
    takes/<label>.raw.wav        a take as recorded (or an absolute path elsewhere)
    takes/<label>.aligned.wav    the take on the program clock: sample i = program sample i
    takes/<label>.settings.json  while a take records: what it will be stored with
                                 (``rig_app.jobs``; a killed take's recovery reads it)

``session.json``::

    {"format": "afp-rig-session", "version": 1,
     "created": ISO time, "origin": "rig" | "authors-layout", "notes": str,
     "songs": [{"title", "artist", "source", "file", "duration_s",
                "loudness_before", "loudness_after"}],
     "program": null | {"folder": "program", "program_file", "music_file", "noise_file",
                        "sample_rate", "samples", "duration_s", "markers": [{"label",
                        "position", "position_s"}], "songs": [{"title", "start_s", "end_s",
                                                      "source_start_s"}]},
     "takes": [{"label", "raw_file", "aligned_file", "recording_rate",
                "devices": {"music_out", "noise_out", "mic_in"},
                "sample_rates": {"music_out", "noise_out", "mic_in"},
                "speaker_distance_m", "notes", "xruns", "recorded_at",
                "alignment": Alignment.to_dict() or null,
                "ground_truth": [{"title", "program_start_s", "program_end_s",
                                  "take_start_s", "take_end_s"}]}]}

File names in it are relative to the session folder unless absolute (an imported take
can stay where it is). Take labels are short slugs; the paper's are ``low``, ``mid``
and ``high`` (speaker far, middle, close). ``Session.load`` checks the format, the
version and that every file named exists, and says what is wrong in one line
(``SessionError``). ``save`` replaces session.json atomically.

``rig_app.authors`` reads the paper authors' published layout into a session and writes
a session out in that layout. docs/session-format.md has the details.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from afp_core.audio import probe_audio, write_audio_atomic
from afp_core.errors import AfpError
from afp_core.fileutil import atomic_write_bytes, check_document, read_json_object, utc_now
from afp_core.protocols.sessions import (
    SESSION_FILE,
    SESSION_FORMAT,
    SESSION_VERSION,
    TAKE_LABELS,
    TakeVerdict,
    judge_take,
)
from rig_app.align import Alignment, AlignmentError
from rig_app.program import Program, load_program, write_program

__all__ = [
    "Session",
    "SessionError",
    "SongEntry",
    "TakeEntry",
]

_SESSION_LOCK = threading.RLock()

PROGRAM_DIR = "program"
TAKES_DIR = "takes"
RAW_TAKE_SUFFIX = ".raw.wav"
ALIGNED_TAKE_SUFFIX = ".aligned.wav"
TAKE_SETTINGS_SUFFIX = ".settings.json"
_LABEL = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


class SessionError(AfpError):
    """A session folder or file is missing, corrupt or inconsistent."""


@dataclass
class SongEntry:
    """A song of the session, as the program uses it."""

    title: str
    artist: str = ""
    source: str = ""
    file: str = ""
    duration_s: float = 0.0
    loudness_before: float | None = None
    loudness_after: float | None = None


@dataclass
class TakeEntry:
    """A recorded take and what is known about it."""

    label: str
    raw_file: str
    recording_rate: int
    aligned_file: str | None = None
    devices: dict[str, str] = field(default_factory=dict)
    sample_rates: dict[str, int] = field(default_factory=dict)
    speaker_distance_m: float | None = None
    notes: str = ""
    xruns: int = 0
    recorded_at: str = ""
    alignment: dict[str, Any] | None = None
    ground_truth: list[dict[str, Any]] = field(default_factory=list)
    # where the streams reported lost or repeated audio, seconds into the raw take
    xrun_times_s: list[float] = field(default_factory=list)
    quality: dict[str, Any] | None = None  # rig_app.quality's record, made after alignment

    def load_alignment(self) -> Alignment | None:
        """The take's alignment as an object (None when it was not aligned)."""
        return None if self.alignment is None else Alignment.from_dict(self.alignment)

    @property
    def verdict(self) -> TakeVerdict:
        """Whether its numbers can be trusted: the rule the evaluation applies too."""
        return judge_take(bool(self.aligned_file), self.alignment, self.xruns, self.xrun_times_s)


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass
class Session:
    """A session folder in memory; ``save`` writes session.json."""

    folder: Path
    songs: list[SongEntry] = field(default_factory=list)
    program: dict[str, Any] | None = None
    takes: list[TakeEntry] = field(default_factory=list)
    created: str = ""
    origin: str = "rig"
    notes: str = ""
    # which takes and songs go into a query set, and why not (rig_app.selection)
    selection: dict[str, Any] | None = None

    @property
    def path(self) -> Path:
        return self.folder / SESSION_FILE

    # --- create, load, save ------------------------------------------------------------

    @classmethod
    def create(cls, folder: Path | str, origin: str = "rig") -> Session:
        """A new, empty session in ``folder`` (created; it must not hold a session yet)."""
        folder = Path(folder)
        if (folder / SESSION_FILE).exists():
            raise SessionError(f"{folder / SESSION_FILE}: a session already exists here")
        if folder.exists() and not folder.is_dir():
            raise SessionError(f"{folder}: exists and is not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        session = cls(folder=folder, created=utc_now(), origin=origin)
        session.save()
        return session

    @classmethod
    def load(cls, folder: Path | str) -> Session:
        """Read and check ``folder``/session.json; ``SessionError`` says what is wrong."""
        folder = Path(folder)
        path = folder / SESSION_FILE
        if not path.is_file():
            raise SessionError(f"{path}: no such file (not a session folder)")
        data = read_json_object(path, SessionError)
        session = cls._from_dict(data, folder, path)
        session._check_files()
        return session

    @classmethod
    def _from_dict(cls, data: Any, folder: Path, path: Path) -> Session:
        check_document(data, SESSION_FORMAT, SESSION_VERSION, path, SessionError)
        try:
            songs = [
                SongEntry(
                    title=str(s["title"]),
                    artist=str(s.get("artist", "")),
                    source=str(s.get("source", "")),
                    file=str(s.get("file", "")),
                    duration_s=float(s.get("duration_s", 0.0)),
                    loudness_before=_opt_float(s.get("loudness_before")),
                    loudness_after=_opt_float(s.get("loudness_after")),
                )
                for s in _list(data, "songs")
            ]
            program = data.get("program")
            if program is not None and not isinstance(program, dict):
                raise TypeError("'program' must be an object or null")
            takes = [_take_from_dict(t, path) for t in _list(data, "takes")]
        except KeyError as exc:
            raise SessionError(f"{path}: malformed session (missing key {exc.args[0]!r})") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise SessionError(
                f"{path}: malformed session ({' '.join(str(exc).split())})"
            ) from None
        labels = [t.label for t in takes]
        if len(set(labels)) != len(labels):
            raise SessionError(f"{path}: take labels repeat ({', '.join(labels)})")
        return cls(
            folder=folder,
            songs=songs,
            program=program,
            takes=takes,
            created=str(data.get("created", "")),
            origin=str(data.get("origin", "rig")),
            notes=str(data.get("notes", "")),
            selection=_opt_dict(data.get("selection"), "selection"),
        )

    def _check_files(self) -> None:
        named: list[tuple[str, str]] = []
        if self.program is not None:
            for key in ("program_file", "music_file", "noise_file"):
                if self.program.get(key):
                    named.append((f"program {key.replace('_', ' ')}", str(self.program[key])))
        for take in self.takes:
            named.append((f"take '{take.label}' raw file", take.raw_file))
            if take.aligned_file:
                named.append((f"take '{take.label}' aligned file", take.aligned_file))
        for what, name in named:
            if not self.resolve(name).is_file():
                raise SessionError(f"{self.path}: {what} {name} is missing")

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": SESSION_FORMAT,
            "version": SESSION_VERSION,
            "created": self.created,
            "origin": self.origin,
            "notes": self.notes,
            "songs": [
                {
                    "title": s.title,
                    "artist": s.artist,
                    "source": s.source,
                    "file": s.file,
                    "duration_s": s.duration_s,
                    "loudness_before": _finite_or_none(s.loudness_before),
                    "loudness_after": _finite_or_none(s.loudness_after),
                }
                for s in self.songs
            ],
            "program": self.program,
            "takes": [
                {
                    "label": t.label,
                    "raw_file": t.raw_file,
                    "aligned_file": t.aligned_file,
                    "recording_rate": t.recording_rate,
                    "devices": dict(t.devices),
                    "sample_rates": dict(t.sample_rates),
                    "speaker_distance_m": t.speaker_distance_m,
                    "notes": t.notes,
                    "xruns": t.xruns,
                    "recorded_at": t.recorded_at,
                    "alignment": t.alignment,
                    "ground_truth": t.ground_truth,
                    "xrun_times_s": list(t.xrun_times_s),
                    "quality": t.quality,
                }
                for t in self.takes
            ],
        }
        if self.selection is not None:
            data["selection"] = self.selection
        return data

    def save(self) -> Path:
        """Write session.json atomically; returns its path."""
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        return atomic_write_bytes(self.path, text.encode("utf-8"))

    # --- contents ----------------------------------------------------------------------

    def resolve(self, name: str) -> Path:
        """A file named in the session, as a path (relative names are in the folder)."""
        path = Path(name)
        return path if path.is_absolute() else self.folder / path

    def _relative(self, path: Path) -> str:
        try:
            return path.resolve().relative_to(self.folder.resolve()).as_posix()
        except ValueError:
            return str(path.resolve())

    def set_program(
        self,
        program: Program,
        noise: np.ndarray | None = None,
        songs: Sequence[SongEntry] | None = None,
    ) -> None:
        """Write the program (and noise) into the session and describe it; then ``save``.

        ``songs`` default to what the program knows about its songs.
        """
        folder = self.folder / PROGRAM_DIR
        json_path = write_program(folder, program, noise)
        data = json.loads(json_path.read_text(encoding="utf-8"))
        self.program = {
            "folder": PROGRAM_DIR,
            "program_file": f"{PROGRAM_DIR}/{json_path.name}",
            "music_file": f"{PROGRAM_DIR}/{data['music_file']}",
            "noise_file": f"{PROGRAM_DIR}/{data['noise_file']}" if data["noise_file"] else None,
            "sample_rate": program.sample_rate,
            "samples": program.samples,
            "duration_s": program.duration_s,
            "markers": [
                {
                    "label": m.label,
                    "position": m.position,
                    "position_s": m.position / program.sample_rate,
                }
                for m in program.markers
            ],
            "songs": [
                {
                    "title": s.title,
                    "start_s": s.start_s,
                    "end_s": s.end_s,
                    "source_start_s": s.source_start_s,
                }
                for s in program.songs
            ],
        }
        if songs is None:
            songs = [
                SongEntry(
                    title=s.title,
                    artist=s.artist,
                    source=s.source,
                    file=s.source,
                    duration_s=s.duration_s,
                    loudness_before=s.loudness_before,
                    loudness_after=s.loudness_after,
                )
                for s in program.songs
            ]
        self.songs = list(songs)
        self.save()

    def program_folder(self) -> Path:
        """The folder of the session's program; ``SessionError`` if it has none yet."""
        if self.program is None:
            raise SessionError(f"{self.path}: the session has no program yet")
        return self.folder / str(self.program.get("folder", PROGRAM_DIR))

    def load_program(self) -> Program:
        """The session's music program (with its audio)."""
        return load_program(self.program_folder())

    def raw_take_path(self, label: str) -> Path:
        """Where a take of ``label`` is recorded (takes/<label>.raw.wav)."""
        return self.folder / TAKES_DIR / f"{label}{RAW_TAKE_SUFFIX}"

    def aligned_take_path(self, label: str) -> Path:
        """Where the aligned audio of a take of ``label`` goes (takes/<label>.aligned.wav)."""
        return self.folder / TAKES_DIR / f"{label}{ALIGNED_TAKE_SUFFIX}"

    def take_settings_path(self, label: str) -> Path:
        """Where a take of ``label`` being recorded keeps what it will be stored with
        (takes/<label>.settings.json; ``rig_app.jobs`` writes, reads and removes it)."""
        return self.folder / TAKES_DIR / f"{label}{TAKE_SETTINGS_SUFFIX}"

    def find_take(self, label: str) -> TakeEntry | None:
        """The take labelled ``label``, None if there is none."""
        return next((take for take in self.takes if take.label == label), None)

    def take(self, label: str) -> TakeEntry:
        """The take labelled ``label``; ``SessionError`` if there is none."""
        take = self.find_take(label)
        if take is not None:
            return take
        have = ", ".join(t.label for t in self.takes) or "none"
        raise SessionError(f"{self.path}: no take labelled {label!r} (takes: {have})")

    def add_take(
        self,
        label: str,
        recording: np.ndarray | Path | str,
        recording_rate: int | None = None,
        *,
        alignment: Alignment | None = None,
        devices: dict[str, str] | None = None,
        sample_rates: dict[str, int] | None = None,
        speaker_distance_m: float | None = None,
        notes: str = "",
        xruns: int = 0,
        xrun_times_s: Sequence[float] = (),
        replace: bool = False,
    ) -> TakeEntry:
        """Record a take in the session and ``save``.

        ``recording`` is the audio (written to takes/<label>.raw.wav, needs
        ``recording_rate``) or the path of an audio file already written (kept where it
        is). The aligned audio in ``alignment`` (if any) goes to takes/<label>.aligned.wav
        and its song intervals become the take's ground truth; a take replaced by one
        without aligned audio loses the old aligned file. ``xrun_times_s``: where audio was
        lost or repeated, seconds into the raw take. The quality record is made after
        alignment (``rig_app.quality``), so a stored take starts without one.
        """
        # takes recorded side by side (one thread each) store themselves one at a time
        with _SESSION_LOCK:
            if not _LABEL.match(label):
                raise SessionError(
                    f"{self.path}: take label {label!r} must be a short lower-case slug "
                    f"(e.g. {', '.join(TAKE_LABELS)})"
                )
            if not replace and self.find_take(label) is not None:
                raise SessionError(f"{self.path}: a take labelled {label!r} exists already")
            (self.folder / TAKES_DIR).mkdir(parents=True, exist_ok=True)
            if isinstance(recording, np.ndarray):
                if recording_rate is None:
                    raise ValueError("recording_rate is needed to write a recording")
                raw_path = self.raw_take_path(label)
                write_audio_atomic(raw_path, recording, recording_rate, subtype="FLOAT")
            else:
                raw_path = Path(recording)
                info = probe_audio(raw_path)
                if recording_rate is not None and recording_rate != info.sample_rate:
                    raise SessionError(
                        f"{raw_path}: recorded at {info.sample_rate} Hz, not {recording_rate} Hz"
                    )
                recording_rate = info.sample_rate
            aligned_file = None
            aligned_path = self.aligned_take_path(label)
            ground_truth: list[dict[str, Any]] = []
            if alignment is not None:
                if alignment.aligned is not None:
                    write_audio_atomic(
                        aligned_path, alignment.aligned, alignment.program_rate, subtype="FLOAT"
                    )
                    aligned_file = self._relative(aligned_path)
                ground_truth = [
                    {
                        "title": s.title,
                        "program_start_s": s.program_start_s,
                        "program_end_s": s.program_end_s,
                        "take_start_s": s.take_start_s,
                        "take_end_s": s.take_end_s,
                    }
                    for s in alignment.songs
                ]
            if aligned_file is None and replace:
                # the replaced take's aligned audio would pass for this one's
                aligned_path.unlink(missing_ok=True)
            entry = TakeEntry(
                label=label,
                raw_file=self._relative(raw_path),
                recording_rate=int(recording_rate),
                aligned_file=aligned_file,
                devices=dict(devices or {}),
                sample_rates={k: int(v) for k, v in (sample_rates or {}).items()},
                speaker_distance_m=speaker_distance_m,
                notes=notes,
                xruns=int(xruns),
                xrun_times_s=[float(t) for t in xrun_times_s],
                recorded_at=utc_now(),
                alignment=None if alignment is None else alignment.to_dict(),
                ground_truth=ground_truth,
            )
            self.takes = [t for t in self.takes if t.label != label] + [entry]
            self.save()
            return entry


def _list(data: dict[str, Any], key: str) -> list[Any]:
    value = data[key]
    if not isinstance(value, list):
        raise TypeError(f"{key!r} must be a list")
    return value


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_dict(value: Any, key: str) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise TypeError(f"{key!r} must be an object or null")
    return value


def _take_from_dict(data: Any, path: Path) -> TakeEntry:
    if not isinstance(data, dict):
        raise TypeError("every take must be an object")
    label = str(data["label"])
    alignment = data.get("alignment")
    if alignment is not None:
        try:
            Alignment.from_dict(alignment, where=f"take '{label}'")
        except AlignmentError as exc:
            raise SessionError(f"{path}: {exc}") from None
    distance = data.get("speaker_distance_m")
    return TakeEntry(
        label=label,
        raw_file=str(data["raw_file"]),
        recording_rate=int(data["recording_rate"]),
        aligned_file=None if data.get("aligned_file") is None else str(data["aligned_file"]),
        devices={str(k): str(v) for k, v in dict(data.get("devices") or {}).items()},
        sample_rates={str(k): int(v) for k, v in dict(data.get("sample_rates") or {}).items()},
        speaker_distance_m=None if distance is None else float(distance),
        notes=str(data.get("notes", "")),
        xruns=int(data.get("xruns", 0)),
        recorded_at=str(data.get("recorded_at", "")),
        alignment=alignment,
        ground_truth=list(data.get("ground_truth") or []),
        xrun_times_s=[float(t) for t in data.get("xrun_times_s") or []],
        quality=_opt_dict(data.get("quality"), "quality"),
    )
