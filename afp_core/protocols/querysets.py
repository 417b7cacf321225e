"""Read an exported query set for evaluation (no rig needed; docs/query-set-format.md).

``afp-rig export`` (``rig_app.export``) writes a query set folder: the protocol's query
clips cut from the aligned takes of one or more sessions, ``queries.csv`` (one row per
clip: its song, take, condition and true place in the song), ``references.csv`` (the
clean songs as the program played them), ``queryset.json`` (what is in it), a data card
and ``SHA256SUMS``. The format's names are defined here, once, for the writer and the
reader.

``read_queryset`` turns a folder into a ``QuerySetSession``: an ``EvalSession`` whose
takes are the set's takes and whose queries are its clips, so that the real-world
protocol (``afp_core.protocols.realworld``) evaluates it as it evaluates the session the
clips came from, clip by clip, and reports the same shape.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import soundfile as sf

from afp_core.errors import AudioError
from afp_core.fileutil import check_document, one_line, read_json_object
from afp_core.protocols.sessions import (
    EvalSession,
    SessionReadError,
    SessionSong,
    SessionTake,
    read_session,
)

QUERYSET_FORMAT = "afp-queryset"
QUERYSET_VERSION = 1
QUERYSET_FILE = "queryset.json"
QUERIES_FILE = "queries.csv"
REFERENCES_FILE = "references.csv"
CHECKSUMS_FILE = "SHA256SUMS"
CARD_FILE = "README.md"
QUERIES_DIR = "queries"
REFERENCES_DIR = "references"

QUERY_COLUMNS = (
    "clip",
    "session",
    "take",
    "song_index",
    "title",
    "artist",
    "source",
    "start_s",  # where the clip starts in the song (the song's source_start_s + offset_s)
    "length_s",
    "offset_s",  # where it starts after the song's start as the program played it
    "music_out",
    "noise_out",
    "mic_in",
    "room",
    "noise_distance_m",
    "music_to_noise_db",
    "flags",
)
REFERENCE_COLUMNS = (
    "session",
    "song_index",
    "title",
    "artist",
    "source",
    "file",
    "sha256",
    "duration_s",
    "source_start_s",
    "source_sha256",
)


class QuerySetError(SessionReadError):
    """A query set folder cannot be read (missing files, malformed, another version)."""


@dataclasses.dataclass(frozen=True)
class QueryClip:
    """One clip of a query set: its file, length and place in its song."""

    file: Path
    length_s: float
    offset_s: float  # after the song's start as the program played it


@dataclasses.dataclass(frozen=True)
class QuerySetSession(EvalSession):
    """A query set read for evaluation: the sessions' songs and takes, and the clips.

    Songs are numbered in ``references.csv`` order; a take is labelled as in its session
    (``<session id>/<label>`` when the set holds several sessions). ``clips``: take label
    -> song index -> that song's clips in the take.
    """

    kind: ClassVar[str] = "query set"

    clips: dict[str, dict[int, tuple[QueryClip, ...]]] = dataclasses.field(default_factory=dict)
    lengths_s: tuple[float, ...] = ()
    sessions: tuple[dict[str, Any], ...] = ()

    def metadata(self) -> dict[str, Any]:
        return {
            **super().metadata(),
            "queryset": {
                "lengths_s": list(self.lengths_s),
                "sessions": [
                    {key: s.get(key) for key in ("id", "folder", "origin", "created")}
                    for s in self.sessions
                ],
            },
        }


def is_queryset_folder(path: Path | str) -> bool:
    """Whether ``path`` is a folder holding a queryset.json."""
    return (Path(path) / QUERYSET_FILE).is_file()


def read_session_or_queryset(path: Path | str) -> EvalSession:
    """A query set folder (``read_queryset``) or else a session folder (``read_session``)."""
    return read_queryset(path) if is_queryset_folder(path) else read_session(path)


def read_queryset_document(folder: Path | str) -> dict[str, Any]:
    """The checked queryset.json of ``folder`` (format and version)."""
    path = Path(folder) / QUERYSET_FILE
    data = read_json_object(path, QuerySetError)
    check_document(data, QUERYSET_FORMAT, QUERYSET_VERSION, path, QuerySetError)
    return data


def read_csv_rows(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of one of the set's CSV files, which must have ``columns``."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in columns if c not in (reader.fieldnames or ())]
            if missing:
                raise QuerySetError(f"{path}: no column {missing[0]!r} (not a query set index)")
            return list(reader)
    except FileNotFoundError:
        raise QuerySetError(f"{path}: no such file (the query set is incomplete)") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise QuerySetError(f"{path}: cannot read ({one_line(exc)})") from None


def _take_label(session_id: str, take: str, several: bool) -> str:
    """A take's label in the evaluation: ``<session>/<take>`` when the set holds several."""
    return f"{session_id}/{take}" if several else take


def read_queryset(folder: Path | str) -> QuerySetSession:
    """Read a query set folder for evaluation; one-line ``QuerySetError`` naming the file."""
    folder = Path(folder)
    document = read_queryset_document(folder)
    where = folder / QUERYSET_FILE
    try:
        lengths = tuple(float(x) for x in document["lengths_s"])
        sessions = [dict(s) for s in document["sessions"]]
        ids = [str(s["id"]) for s in sessions]
    except KeyError as exc:
        raise QuerySetError(f"{where}: malformed (missing key {exc.args[0]!r})") from None
    except (TypeError, ValueError) as exc:
        raise QuerySetError(f"{where}: malformed ({one_line(exc)})") from None
    if not sessions:
        raise QuerySetError(f"{where}: the query set holds no sessions")
    several = len(sessions) > 1
    references = read_csv_rows(folder / REFERENCES_FILE, REFERENCE_COLUMNS)
    queries = read_csv_rows(folder / QUERIES_FILE, QUERY_COLUMNS)
    rates = {str(s["id"]): int(s.get("program_rate") or 0) for s in sessions}
    songs: list[SessionSong] = []
    index_of: dict[tuple[str, int], int] = {}
    try:
        for row in references:
            session_id = row["session"]
            if session_id not in rates:
                continue  # left by an append that did not finish: not in the set
            rate = rates[session_id] or 1
            index = len(songs)
            index_of[session_id, int(row["song_index"])] = index
            songs.append(
                SessionSong(
                    index=index,
                    title=row["title"],
                    artist=row["artist"],
                    source=row["source"],
                    start=0,
                    end=max(1, round(float(row["duration_s"]) * rate)),
                    sample_rate=rate,
                    source_start_s=float(row["source_start_s"] or 0.0),
                    file=_existing(folder / row["file"]),
                    source_sha256=row["source_sha256"] or None,
                )
            )
        takes: dict[str, SessionTake] = {}
        clips: dict[str, dict[int, list[QueryClip]]] = {}
        for session in sessions:
            for take in session.get("takes") or ():
                label = _take_label(str(session["id"]), str(take["label"]), several)
                takes[label] = _take(folder, session, take, label)
                clips[label] = {}
        for number, row in enumerate(queries, 2):
            if row["session"] not in rates:
                continue
            label = _take_label(row["session"], row["take"], several)
            key = (row["session"], int(row["song_index"]))
            if label not in takes or key not in index_of:
                raise QuerySetError(
                    f"{folder / QUERIES_FILE}: line {number}: take {row['take']!r} or song "
                    f"{row['song_index']} of session {row['session']!r} is not in the set"
                )
            file = folder / row["clip"]
            if not file.is_file():
                raise QuerySetError(
                    f"{file}: missing (the query set is incomplete; check it with "
                    f"`sha256sum -c {CHECKSUMS_FILE}` in {folder})"
                )
            clip = QueryClip(file, float(row["length_s"]), float(row["offset_s"]))
            clips[label].setdefault(index_of[key], []).append(clip)
    except QuerySetError:
        raise
    except KeyError as exc:
        raise QuerySetError(f"{where}: malformed (missing key {exc.args[0]!r})") from None
    except (TypeError, ValueError) as exc:
        raise QuerySetError(f"{folder}: malformed query set ({one_line(exc)})") from None
    if not songs:
        raise QuerySetError(f"{folder / REFERENCES_FILE}: the query set holds no songs")
    first = sessions[0]
    return QuerySetSession(
        folder=folder,
        origin="queryset",
        created=str(document.get("created", "")),
        notes=f"query set of {len(ids)} session(s): {', '.join(ids)}",
        sample_rate=int(first.get("program_rate") or 0),
        program_samples=0,
        songs=tuple(songs),
        takes=tuple(takes.values()),
        clips={
            label: {i: tuple(c) for i, c in by_song.items()} for label, by_song in clips.items()
        },
        lengths_s=lengths,
        sessions=tuple(sessions),
    )


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def _take(folder: Path, session: dict[str, Any], take: dict[str, Any], label: str) -> SessionTake:
    files = folder / QUERIES_DIR / str(session["id"]) / str(take["label"])
    distance = take.get("speaker_distance_m")
    return SessionTake(
        label=label,
        raw_file=files,
        aligned_file=files,
        recording_rate=int(take.get("recording_rate") or 0),
        speaker_distance_m=None if distance is None else float(distance),
        notes=str(take.get("notes", "")),
        xruns=int(take.get("xruns") or 0),
        recorded_at=str(take.get("recorded_at", "")),
        alignment=take.get("alignment"),
    )


def read_audio_mono(path: Path) -> tuple[np.ndarray, int]:
    """A clip as mono float32 at its own rate, with the rate; one-line ``AudioError``."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise AudioError(f"{path}: cannot read ({one_line(exc)})") from None
    return (data.mean(axis=1) if data.shape[1] > 1 else data[:, 0].copy()), int(rate)
