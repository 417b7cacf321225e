"""Publish sessions as a query set: the protocol's query clips, indexes, a data card.

``export_query_set(sessions, out_dir)`` writes the folder layout of
docs/query-set-format.md (names in ``afp_core.protocols.querysets``, which reads it back
for ``afp evaluate realworld``):

- ``queries/<session-id>/<take>/<song>_<start>s_<length>s.flac``: the real-world
  protocol's queries, cut where it cuts them (``query_starts`` and ``cut_query`` of
  ``afp_core.protocols.realworld``) from each included take's aligned file, at its rate;
  ``per_song`` keeps that many per song and length, spread evenly;
- ``references/<session-id>/<song>.flac``: each song as the program played it;
- ``queries.csv``, ``references.csv``, ``queryset.json``, the data card ``README.md``
  and ``SHA256SUMS``.

The session's selection (``rig_app.selection``) decides what goes in; every take that
goes in must be aligned and trusted. Exporting into an existing set adds the sessions it
does not hold yet and leaves its clips as they are. Everything is checked before the
first file is written, and files are written into a temporary folder that is renamed
into place, so a failure or a cancel leaves the set as it was. The same choice exports
the same bytes: no clock time is written anywhere (``created`` is the date of the newest
recording), the float WAV writer leaves out libsndfile's time-stamped PEAK chunk, and
every list is in a fixed order.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import secrets
import shutil
import struct
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from afp_core import __version__
from afp_core.audio import probe_audio
from afp_core.errors import AfpError, AudioError
from afp_core.fileutil import atomic_folder, atomic_write_text, file_sha256, one_line
from afp_core.protocols.querysets import (
    CARD_FILE,
    CHECKSUMS_FILE,
    QUERIES_DIR,
    QUERIES_FILE,
    QUERY_COLUMNS,
    QUERYSET_FILE,
    QUERYSET_FORMAT,
    QUERYSET_VERSION,
    REFERENCE_COLUMNS,
    REFERENCES_DIR,
    REFERENCES_FILE,
    read_csv_rows,
)
from afp_core.protocols.realworld import (
    cut_query,
    query_starts,
    read_song_interval,
    take_sort_key,
)
from afp_core.protocols.sessions import EvalSession, SessionSong, SessionTake, read_session
from afp_core.tasks import TaskState
from rig_app.room import find_take_room
from rig_app.selection import Selection
from rig_app.session import Session, SessionError, TakeEntry

__all__ = [
    "AUDIO_FORMATS",
    "DEFAULT_LENGTHS_S",
    "ExportError",
    "ExportResult",
    "data_card",
    "export_query_set",
    "spread",
    "write_float_wav",
    "write_query_set",
]

DEFAULT_LENGTHS_S: tuple[float, ...] = (1, 2, 3, 5, 10, 15)
AUDIO_FORMATS = {"flac": ".flac", "wav": ".wav"}  # FLAC 24-bit PCM, WAV 32-bit float
_STAGING = ".export-"  # an append's temporary folder inside the set
_FULL_SCALE_24 = 1.0 - 2.0**-23  # the largest 24-bit sample


class ExportError(AfpError):
    """A query set cannot be exported as asked (bad input, not a query set, other version)."""


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What an export did: the set's folder, the sessions added and left as they were."""

    folder: Path
    added: tuple[str, ...]
    kept: tuple[str, ...]
    clips: int
    notes: tuple[str, ...]


# ---------------------------------------------------------------------- planning


@dataclasses.dataclass(frozen=True)
class _SongPlan:
    song: SessionSong
    starts: dict[float, tuple[float, ...]]  # length -> query starts after the song's start
    ratio_db: float | None
    flags: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class _TakePlan:
    entry: TakeEntry
    take: SessionTake
    file: Path
    rate: int
    frames: int
    songs: tuple[_SongPlan, ...]
    condition: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class _SessionPlan:
    id: str
    key: str
    session: Session
    read: EvalSession
    music: Path
    music_frames: int
    takes: tuple[_TakePlan, ...]
    songs: tuple[SessionSong, ...]  # the songs with at least one clip
    source_sha256: dict[int, str]
    entry: dict[str, Any]  # its record in queryset.json


def spread(count: int, keep: int | None) -> list[int]:
    """``keep`` of ``range(count)`` spread evenly (the middle of each of ``keep`` equal
    parts); all of them when ``keep`` is None or not smaller."""
    if keep is None or keep >= count:
        return list(range(count))
    return [math.floor((i + 0.5) * count / keep) for i in range(keep)]


def _check_settings(lengths_s: Sequence[float], per_song: int | None, audio: str) -> None:
    if not lengths_s:
        raise ExportError("lengths: give at least one query length")
    for length in lengths_s:
        if not (isinstance(length, int | float) and math.isfinite(length) and length > 0):
            raise ExportError(f"lengths: {length!r} is not a positive number of seconds")
    if len({float(x) for x in lengths_s}) != len(lengths_s):
        raise ExportError("lengths: a query length is repeated")
    if per_song is not None and per_song < 1:
        raise ExportError(f"per-song: {per_song} is not a positive number of queries")
    if audio not in AUDIO_FORMATS:
        raise ExportError(f"audio: {audio!r} is not one of {', '.join(AUDIO_FORMATS)}")


def _session_key(session: Session) -> str:
    """Which session this is, whatever folder it is in now (appending skips it if held)."""
    identity = {"created": session.created, "origin": session.origin, "program": session.program}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-") or "session"


def _load(folder: Path) -> Session:
    """The session; a file it names that is missing says what to do about it."""
    try:
        return Session.load(folder)
    except SessionError as exc:
        if not str(exc).endswith("is missing"):
            raise
        raise ExportError(
            f"{exc}: restore it; a take's aligned audio is made again by `afp-rig align "
            f"{folder} --label LABEL`, or leave the take out: afp-rig exclude {folder} "
            "--take LABEL --reason ..."
        ) from None


def _plan_session(
    session: Session, lengths_s: Sequence[float], per_song: int | None
) -> _SessionPlan:
    folder = session.folder
    read = read_session(folder)
    selection = Selection.from_session(session)
    where = session.path
    music = session.resolve(str((session.program or {}).get("music_file") or ""))
    try:
        music_info = probe_audio(music)
    except AudioError as exc:
        raise ExportError(f"{where}: the program's music: {exc}") from None
    takes = []
    for take in sorted(read.takes, key=lambda t: take_sort_key(t.label)):
        if selection.reason_excluded(take.label) is not None:
            continue
        takes.append(_plan_take(session, read, selection, take, lengths_s, per_song))
    if not takes:
        raise ExportError(
            f"{where}: no take to export (every take is excluded or there is none); "
            f"see `afp-rig selection {folder}`"
        )
    used = sorted({s.song.index for t in takes for s in t.songs if s.starts})
    songs = tuple(song for song in read.songs if song.index in used)
    checksums = {s.index: file_sha256(s.file) for s in songs if s.file is not None}
    plan = _SessionPlan(
        id=_slug(folder.resolve().name),
        key=_session_key(session),
        session=session,
        read=read,
        music=music,
        music_frames=music_info.frames,
        takes=tuple(takes),
        songs=songs,
        source_sha256=checksums,
        entry={},
    )
    return plan


def _plan_take(
    session: Session,
    read: EvalSession,
    selection: Selection,
    take: SessionTake,
    lengths_s: Sequence[float],
    per_song: int | None,
) -> _TakePlan:
    where, label = session.path, take.label
    leave_out = f"or leave it out: afp-rig exclude {session.folder} --take {label} --reason ..."
    verdict = take.verdict
    if not verdict.trusted or take.aligned_file is None:
        raise ExportError(
            f"{where}: take {label!r} is {verdict.describe()}; align it "
            f"(afp-rig align {session.folder} --label {label}) {leave_out}"
        )
    try:
        info = probe_audio(take.aligned_file)
    except AudioError as exc:
        raise ExportError(f"{exc}; align take {label!r} again {leave_out}") from None
    entry = session.take(label)
    quality = entry.quality or {}
    per_song_quality = {
        int(s["index"]): s for s in quality.get("songs") or () if isinstance(s, dict)
    }
    songs = []
    for song in read.songs:
        if selection.reason_excluded(label, song.index) is not None:
            continue
        if song.index >= len(entry.ground_truth):
            raise ExportError(
                f"{where}: take {label!r} has no interval for song {song.index + 1} "
                f"{song.title!r}; align it again (afp-rig align {session.folder} --label "
                f"{label}) or leave the song out: afp-rig exclude {session.folder} --take "
                f"{label} --song {song.index + 1} --reason ..."
            )
        if round(song.end_s * info.sample_rate) > info.frames:
            raise ExportError(
                f"{take.aligned_file}: ends at {info.duration_s:.1f} s, before song "
                f"{song.index + 1} {song.title!r} ends ({song.end_s:.1f} s); leave the song "
                f"out: afp-rig exclude {session.folder} --take {label} --song "
                f"{song.index + 1} --reason ..."
            )
        interval = round(song.end_s * info.sample_rate) - round(song.start_s * info.sample_rate)
        starts = {}
        for length in lengths_s:
            every = query_starts(interval / info.sample_rate, length)
            starts[float(length)] = tuple(every[i] for i in spread(len(every), per_song))
        measured = per_song_quality.get(song.index, {})
        ratio = measured.get("music_to_noise_db")
        if ratio is None:
            ratio = quality.get("music_to_noise_db")
        flags = tuple(str(f) for f in measured.get("flags") or ())
        songs.append(_SongPlan(song, starts, None if ratio is None else float(ratio), flags))
    return _TakePlan(
        entry=entry,
        take=take,
        file=take.aligned_file,
        rate=info.sample_rate,
        frames=info.frames,
        songs=tuple(songs),
        condition=_condition(entry),
    )


def _condition(entry: TakeEntry) -> dict[str, Any]:
    """Devices, room and noise distance of a take, as the data card shows them."""
    room = ""
    distance = entry.speaker_distance_m
    found = find_take_room(entry.notes)
    if found is not None:
        virtual, details = found
        mode = details.get("mode") or "virtual"
        room = f"virtual room ({mode}): {virtual.describe()}"
        if distance is None and details.get("noise_distance_m") is not None:
            distance = float(details["noise_distance_m"])
    quality = entry.quality or {}
    ratio = quality.get("music_to_noise_db")
    return {
        "music_out": entry.devices.get("music_out", ""),
        "noise_out": entry.devices.get("noise_out", ""),
        "mic_in": entry.devices.get("mic_in", ""),
        "room": room,
        "noise_distance_m": distance,
        "music_to_noise_db": None if ratio is None else float(ratio),
        "flags": [str(f) for f in quality.get("flags") or ()],
    }


def _session_entry(plan: _SessionPlan) -> dict[str, Any]:
    """The session's record in queryset.json (what the data card is written from)."""
    selection = Selection.from_session(plan.session)
    titles = {s.index: s.title for s in plan.read.songs}
    recorded = sorted(t.entry.recorded_at for t in plan.takes if t.entry.recorded_at)
    return {
        "id": plan.id,
        "key": plan.key,
        "folder": plan.session.folder.resolve().name,
        "origin": plan.session.origin,
        "created": plan.session.created,
        "recorded": [recorded[0], recorded[-1]] if recorded else [],
        "notes": plan.session.notes,
        "program_rate": plan.read.sample_rate,
        "songs": len(plan.read.songs),
        "takes": [
            {
                "label": t.take.label,
                "recording_rate": t.take.recording_rate,
                "aligned_rate": t.rate,
                "recorded_at": t.entry.recorded_at,
                "verdict": t.take.verdict.describe(),
                "xruns": t.take.xruns,
                **t.condition,
                "song_flags": {str(s.song.index): list(s.flags) for s in t.songs if s.flags},
                "speaker_distance_m": t.take.speaker_distance_m,
                "notes": t.take.notes,
                "alignment": t.take.metadata()["alignment"],
            }
            for t in plan.takes
        ],
        "excluded": [
            {
                "take": e.take,
                "song": e.song,
                "title": None if e.song is None else titles.get(e.song),
                "reason": e.reason,
            }
            for e in selection.exclusions
        ],
        "selection_notes": [dataclasses.asdict(n) for n in selection.notes],
    }


# ---------------------------------------------------------------------- the set on disk


def _existing_set(
    out: Path, lengths_s: Sequence[float], per_song: int | None, audio: str
) -> dict[str, Any] | None:
    """The set already in ``out`` (None: a new one); refuses what cannot be appended to."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return None
    path = out / QUERYSET_FILE
    if not path.is_file():
        raise ExportError(
            f"{out}: folder is not empty and not a query set (no {QUERYSET_FILE}); export "
            "into a new or empty folder, or into a query set to add to it"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: cannot read ({one_line(exc)})") from None
    if not isinstance(data, dict) or data.get("format") != QUERYSET_FORMAT:
        raise ExportError(f"{path}: not an {QUERYSET_FORMAT} file; export into a new folder")
    if data.get("version") != QUERYSET_VERSION:
        raise ExportError(
            f"{path}: a query set of format version {data.get('version')!r}; this afp-rig "
            f"writes version {QUERYSET_VERSION}: export into a new folder"
        )
    held = {
        "lengths": [float(x) for x in data.get("lengths_s") or ()],
        "per-song": data.get("per_song"),
        "audio": data.get("audio"),
    }
    asked = {"lengths": [float(x) for x in lengths_s], "per-song": per_song, "audio": audio}
    for name, value in asked.items():
        if held[name] != value:
            raise ExportError(
                f"{path}: the set was exported with --{name} {_option(held[name])}; give the "
                f"same to add to it (asked: {_option(value)}), or export into a new folder"
            )
    return data


def _option(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(_num(x) for x in value)
    return "all" if value is None else str(value)


def _num(value: float) -> str:
    """A number for the indexes: integers without ".0", others exact (shortest repr)."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _plain(value: float) -> float:
    """1.0 -> 1, so that queryset.json says 1 s as the tables do."""
    return int(value) if float(value).is_integer() else float(value)


def _round(value: float | None, digits: int = 6) -> str:
    return "" if value is None else _num(round(float(value), digits))


def _clip_name(song: SessionSong, start_in_song_s: float, length_s: float, suffix: str) -> str:
    def seconds(x: float) -> str:
        return f"{x:.3f}".rstrip("0").rstrip(".")

    return f"{song.index:03d}_{seconds(start_in_song_s)}s_{seconds(length_s)}s{suffix}"


def write_float_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    """Mono 32-bit float WAV with nothing but fmt, fact and data (libsndfile adds a PEAK
    chunk holding the time of writing, which would make every export differ)."""
    data = np.asarray(audio, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    fact = struct.pack("<I", len(audio))
    body = (
        b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"fact"
        + struct.pack("<I", len(fact))
        + fact
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def _write_audio(path: Path, audio: np.ndarray, rate: int, kind: str) -> int:
    """Write a clip or reference; returns how many samples were clipped (FLAC only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "wav":
        write_float_wav(path, audio, rate)
        return 0
    over = int(np.count_nonzero((audio > _FULL_SCALE_24) | (audio < -1.0)))
    sf.write(str(path), np.clip(audio, -1.0, _FULL_SCALE_24), rate, subtype="PCM_24")
    return over


# ---------------------------------------------------------------------- exporting


def export_query_set(
    task: TaskState,
    sessions: Sequence[Path | str],
    out_dir: Path | str,
    *,
    lengths_s: Sequence[float] = DEFAULT_LENGTHS_S,
    per_song: int | None = None,
    layout: str = "folder",
    audio: str = "flac",
) -> ExportResult:
    """The export job (the Dataset page and ``afp-rig export``): ``layout`` "folder" is
    ``write_query_set``, "authors" the paper authors' layout
    (``rig_app.authors.export_authors_layout``: long takes and a song list, no query
    clips; ``lengths_s``, ``per_song`` and ``audio`` do not apply)."""
    if layout == "authors":
        from rig_app.authors import export_authors_layout

        folder = export_authors_layout(sessions, out_dir, task=task)
        return ExportResult(Path(folder), tuple(Path(s).name for s in sessions), (), 0, ())
    if layout != "folder":
        raise ExportError(f"format: {layout!r} is not folder or authors")
    return write_query_set(
        sessions, out_dir, lengths_s=lengths_s, per_song=per_song, audio=audio, task=task
    )


def write_query_set(
    sessions: Sequence[Path | str],
    out_dir: Path | str,
    *,
    lengths_s: Sequence[float] = DEFAULT_LENGTHS_S,
    per_song: int | None = None,
    audio: str = "flac",
    task: TaskState | None = None,
) -> ExportResult:
    """Export ``sessions`` as a query set in ``out_dir`` (new, empty, or a query set to add
    to); see the module docstring. One-line ``AfpError`` naming the file and what to do,
    before anything is written; ``task`` counts seconds of audio written and cancels
    between songs (the set is then left as it was)."""
    task = task or TaskState()
    out = Path(out_dir)
    _check_settings(lengths_s, per_song, audio)
    if not sessions:
        raise ExportError(f"{out}: no session to export")
    existing = _existing_set(out, lengths_s, per_song, audio)
    held = {str(s.get("key")): str(s.get("id")) for s in (existing or {}).get("sessions") or ()}
    ids = set(held.values())
    plans: list[_SessionPlan] = []
    kept: list[str] = []
    notes: list[str] = []
    for folder in sessions:
        session = _load(Path(folder))
        key = _session_key(session)
        already = held.get(key) or next((p.id for p in plans if p.key == key), None)
        if already is not None:  # not checked again: it is not read
            kept.append(already)
            notes.append(f"{folder}: already in the set as {already!r}; left as it is")
            continue
        plan = _plan_session(session, lengths_s, per_song)
        unique, n = plan.id, 2
        while unique in ids:
            unique, n = f"{plan.id}-{n}", n + 1
        ids.add(unique)
        plan = dataclasses.replace(plan, id=unique)
        plans.append(dataclasses.replace(plan, entry=_session_entry(plan)))
    total = sum(
        length * len(starts)
        for plan in plans
        for take in plan.takes
        for song in take.songs
        for length, starts in song.starts.items()
    ) + sum(song.duration_s for plan in plans for song in plan.songs)
    task.set_total(total, "exporting the query set", unit="s of audio")
    suffix = AUDIO_FORMATS[audio]
    settings = {"lengths_s": [_plain(x) for x in lengths_s], "per_song": per_song, "audio": audio}
    try:
        if existing is None:
            with atomic_folder(out) as building:
                written = _write_sessions(building, plans, suffix, audio, task)
                _write_indexes(building, None, plans, written, settings)
        else:
            written = _append(out, existing, plans, suffix, audio, task, settings)
    except (OSError, sf.SoundFileError) as exc:
        raise ExportError(f"{out}: cannot write the query set ({one_line(exc)})") from None
    if written.clipped:
        notes.append(
            f"{written.clipped} samples beyond full scale were clipped in the FLAC files "
            "(--audio wav keeps them)"
        )
    return ExportResult(
        folder=out,
        added=tuple(p.id for p in plans),
        kept=tuple(kept),
        clips=sum(
            len(starts)
            for plan in plans
            for take in plan.takes
            for song in take.songs
            for starts in song.starts.values()
        ),
        notes=tuple(notes),
    )


@dataclasses.dataclass
class _Written:
    queries: list[dict[str, str]]
    references: list[dict[str, str]]
    sums: dict[str, str]  # file relative to the set -> sha256
    clipped: int = 0


def _write_sessions(
    root: Path, plans: Sequence[_SessionPlan], suffix: str, audio: str, task: TaskState
) -> _Written:
    """Clips and references of ``plans`` under ``root``, with their index rows."""
    written = _Written([], [], {})

    def put(relative: str, samples: np.ndarray, rate: int) -> None:
        written.clipped += _write_audio(root / relative, samples, rate, audio)
        written.sums[relative] = file_sha256(root / relative)

    for plan in plans:
        for take in plan.takes:
            condition = take.condition
            for song_plan in take.songs:
                task.check_cancelled()
                song = song_plan.song
                task.set_message(f"{plan.id} {take.take.label}: {song.title}")
                raw = read_song_interval(take.file, take.rate, take.frames, song)
                for length, starts in song_plan.starts.items():
                    for start in starts:
                        in_song = song.source_start_s + start
                        name = _clip_name(song, in_song, length, suffix)
                        relative = f"{QUERIES_DIR}/{plan.id}/{take.take.label}/{name}"
                        put(relative, cut_query(raw, take.rate, start, length), take.rate)
                        written.queries.append(
                            {
                                "clip": relative,
                                "session": plan.id,
                                "take": take.take.label,
                                "song_index": str(song.index),
                                "title": song.title,
                                "artist": song.artist,
                                "source": song.source,
                                "start_s": _round(in_song),
                                "length_s": _num(length),
                                "offset_s": _num(start),
                                "music_out": condition["music_out"],
                                "noise_out": condition["noise_out"],
                                "mic_in": condition["mic_in"],
                                "room": condition["room"],
                                "noise_distance_m": _round(condition["noise_distance_m"]),
                                "music_to_noise_db": _round(song_plan.ratio_db, 2),
                                "flags": "; ".join(song_plan.flags),
                            }
                        )
                        task.advance(length)
        for song in plan.songs:
            task.check_cancelled()
            relative = f"{REFERENCES_DIR}/{plan.id}/{song.index:03d}{suffix}"
            rate = plan.read.sample_rate
            put(relative, read_song_interval(plan.music, rate, plan.music_frames, song), rate)
            written.references.append(
                {
                    "session": plan.id,
                    "song_index": str(song.index),
                    "title": song.title,
                    "artist": song.artist,
                    "source": song.source,
                    "file": relative,
                    "sha256": written.sums[relative],
                    "duration_s": _num(song.duration_s),
                    "source_start_s": _num(song.source_start_s),
                    "source_sha256": plan.source_sha256.get(song.index, ""),
                }
            )
            task.advance(song.duration_s)
    return written


def _append(
    out: Path,
    existing: dict[str, Any],
    plans: Sequence[_SessionPlan],
    suffix: str,
    audio: str,
    task: TaskState,
    settings: dict[str, Any],
) -> _Written:
    """Add ``plans`` to the set in ``out``: new folders moved in, indexes rewritten."""
    held = {str(s.get("id")) for s in existing.get("sessions") or ()}
    # what an append that did not finish left: folders no index names
    for child in out.iterdir():
        if child.name.startswith(_STAGING):
            shutil.rmtree(child, ignore_errors=True)
    for sub in (QUERIES_DIR, REFERENCES_DIR):
        if (out / sub).is_dir():
            for child in (out / sub).iterdir():
                if child.name not in held:
                    shutil.rmtree(child, ignore_errors=True)
    staging = out / f"{_STAGING}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        written = _write_sessions(staging, plans, suffix, audio, task)
        for plan in plans:
            for sub in (QUERIES_DIR, REFERENCES_DIR):
                if (staging / sub / plan.id).is_dir():
                    (out / sub).mkdir(exist_ok=True)
                    (staging / sub / plan.id).replace(out / sub / plan.id)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _write_indexes(out, existing, plans, written, settings)
    return written


def _csv(rows: Sequence[dict[str, str]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _old_sums(path: Path, ids: set[str]) -> dict[str, str]:
    """The checksums a set already lists for the files of sessions ``ids`` (kept as they
    are, not read again)."""
    sums = {}
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else ():
        digest, _, name = line.partition("  ")
        parts = name.split("/")
        if len(parts) > 2 and parts[0] in (QUERIES_DIR, REFERENCES_DIR) and parts[1] in ids:
            sums[name] = digest
    return sums


def _write_indexes(
    root: Path,
    existing: dict[str, Any] | None,
    plans: Sequence[_SessionPlan],
    written: _Written,
    settings: dict[str, Any],
) -> None:
    """queries.csv, references.csv, the data card, SHA256SUMS and queryset.json (last: a
    reader goes by the sessions it lists), each replaced atomically."""
    old = [dict(s) for s in (existing or {}).get("sessions") or ()]
    ids = {str(s["id"]) for s in old}
    queries: list[dict[str, str]] = []
    references: list[dict[str, str]] = []
    if existing is not None:
        queries = [
            r for r in read_csv_rows(root / QUERIES_FILE, QUERY_COLUMNS) if r["session"] in ids
        ]
        references = [
            r
            for r in read_csv_rows(root / REFERENCES_FILE, REFERENCE_COLUMNS)
            if r["session"] in ids
        ]
    queries += written.queries
    references += written.references
    sessions = old + [plan.entry for plan in plans]
    recorded = [s["recorded"][-1] for s in sessions if s.get("recorded")]
    document = {
        "format": QUERYSET_FORMAT,
        "version": QUERYSET_VERSION,
        # the newest recording, not the time of export: the same choice, the same bytes
        "created": max(recorded) if recorded else "",
        "software": {"afp-rig": __version__},
        **settings,
        "clips": len(queries),
        "sessions": sessions,
    }
    texts = {
        QUERIES_FILE: _csv(queries, QUERY_COLUMNS),
        REFERENCES_FILE: _csv(references, REFERENCE_COLUMNS),
        CARD_FILE: data_card(document, queries),
        QUERYSET_FILE: json.dumps(document, indent=2, allow_nan=False) + "\n",
    }
    sums = _old_sums(root / CHECKSUMS_FILE, ids) | written.sums
    sums |= {name: hashlib.sha256(text.encode()).hexdigest() for name, text in texts.items()}
    texts[CHECKSUMS_FILE] = "".join(f"{sums[name]}  {name}\n" for name in sorted(sums))
    for name in (QUERIES_FILE, REFERENCES_FILE, CARD_FILE, CHECKSUMS_FILE, QUERYSET_FILE):
        atomic_write_text(root / name, texts[name])


# ---------------------------------------------------------------------- the data card


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "/").replace("\n", " ") or "—"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _db(value: Any) -> str:
    return "" if value is None else f"{float(value):+.1f} dB"


def data_card(document: dict[str, Any], queries: Sequence[dict[str, str]]) -> str:
    """The set's README.md: how it was recorded, its conditions, counts, quality, what
    was left out and why, the software, and licence fields for the lab to fill in."""
    sessions = document["sessions"]
    lengths = [float(x) for x in document["lengths_s"]]
    per_song = document.get("per_song")
    counts = Counter((q["session"], q["take"], float(q["length_s"])) for q in queries)
    songs = {(q["session"], q["song_index"]) for q in queries}
    kept = "every query" if per_song is None else f"{per_song} queries spread evenly"
    lines = [
        f"# Query set: {', '.join(s['id'] for s in sessions)}",
        "",
        f"{len(queries)} query clips of {', '.join(_num(x) for x in lengths)} s from "
        f"{sum(len(s['takes']) for s in sessions)} takes of {len(sessions)} recording "
        f"session(s), {len(songs)} songs. Made with afp-rig {document['software']['afp-rig']} "
        f"(`afp-rig export`); format `{QUERYSET_FORMAT}` version {QUERYSET_VERSION} "
        "(afp-rig's docs/query-set-format.md).",
        "",
        "Each take is a recording of a music program (the songs, loudness-normalised, "
        "between sweep markers) played through a loudspeaker while a second one played "
        "noise, aligned to the program's clock (by its markers; an imported layout by "
        "correlation with the music). The clips are the real-world "
        "protocol's queries (Nikou & Giannakopoulos, 2025): in every song of every take, "
        "query j of length L starts j·L s after the song's start, as long as it fits; "
        f"per song and length this set keeps {kept}. `queries.csv` gives each clip's "
        "song, take, condition and true start in the song; `references.csv` the songs as "
        "the program played them (`references/`), with the checksum of the original file.",
        "",
        "## How it was recorded",
        "",
    ]
    for session in sessions:
        recorded = session.get("recorded") or []
        when = " to ".join(dict.fromkeys(recorded)) if recorded else "unknown"
        lines.append(
            f"- **{session['id']}** (folder `{session['folder']}`, {session['origin']}): "
            f"{session['songs']} songs in the program at {session['program_rate']} Hz; "
            f"takes {', '.join(t['label'] for t in session['takes'])} recorded {when}"
            + (f". Notes: {_cell(session['notes'])}" if session.get("notes") else "")
        )
    lines += ["", "## Conditions", ""]
    rows = []
    for session in sessions:
        for take in session["takes"]:
            rows.append(
                [
                    session["id"],
                    take["label"],
                    take["music_out"],
                    take["noise_out"],
                    take["mic_in"],
                    take["room"],
                    "" if take["noise_distance_m"] is None else f"{take['noise_distance_m']:g} m",
                    _db(take["music_to_noise_db"]),
                    take["aligned_rate"],
                ]
            )
    header = ["session", "take", "music out", "noise out", "microphone", "room"]
    header += ["noise distance", "music-to-noise (measured)", "rate (Hz)"]
    lines += _table(header, rows)
    lines += ["", "## Clips per condition", ""]
    rows = [
        [s["id"], t["label"]]
        + [counts[s["id"], t["label"], length] for length in lengths]
        + [sum(counts[s["id"], t["label"], length] for length in lengths)]
        for s in sessions
        for t in s["takes"]
    ]
    lines += _table(["session", "take", *[f"{_num(x)} s" for x in lengths], "all"], rows)
    lines += ["", "## Quality", ""]
    flagged = []
    for session in sessions:
        for take in session["takes"]:
            for flag in take.get("flags") or ():
                flagged.append(f"- {session['id']} {take['label']}: {flag}")
            for index, flags in sorted(
                (take.get("song_flags") or {}).items(), key=lambda item: int(item[0])
            ):
                flagged += [
                    f"- {session['id']} {take['label']} song_index {index}: {f}" for f in flags
                ]
    if any(t.get("music_to_noise_db") is None for s in sessions for t in s["takes"]):
        lines.append(
            "Takes without a measured music-to-noise ratio had no quality record when "
            "exported (`afp-rig quality`)."
        )
        lines.append("")
    lines += flagged or ["No take or song was flagged by the rig's quality checks."]
    lines += ["", "## Left out", ""]
    left = []
    for session in sessions:
        for item in session.get("excluded") or ():
            take = "every take" if item["take"] is None else f"take {item['take']}"
            what = (
                f"{take} (whole take)"
                if item["song"] is None
                else f"{item['title']!r} (song_index {item['song']}), {take}"
            )
            left.append(f"- {session['id']}: {what}: {item['reason']}")
        for note in session.get("selection_notes") or ():
            target = " ".join(
                part
                for part in (
                    "" if note["take"] is None else f"take {note['take']}",
                    "" if note["song"] is None else f"song_index {note['song']}",
                )
                if part
            )
            left.append(f"- {session['id']} note on {target or 'the session'}: {note['text']}")
    lines += left or ["Nothing was left out."]
    lines += [
        "",
        "## Files",
        "",
        "- `queries/<session>/<take>/<song>_<start>s_<length>s.flac|wav`: the clips "
        "(`<start>`: seconds into the song); `queries.csv` indexes them.",
        "- `references/<session>/<song>.flac|wav` and `references.csv`: the songs as played.",
        "- `queryset.json`: what is in the set (sessions, takes, conditions, alignment, "
        "what was left out).",
        f"- `{CHECKSUMS_FILE}`: every file's SHA-256; check with `sha256sum -c {CHECKSUMS_FILE}`.",
        "- Evaluate with `afp evaluate realworld DB QUERY_SET` (afp-rig).",
        "",
        "## Licence and contact (to be filled in by the lab)",
        "",
        "- Licence of the recordings: ",
        "- Rights in the songs (see `source` in references.csv): ",
        "- Who recorded it, and contact: ",
        "- How to cite: ",
        "",
    ]
    return "\n".join(lines)
