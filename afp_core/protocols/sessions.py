"""Read a recording session folder for evaluation (no GUI, no ``rig_app`` import).

The rig writes sessions (``rig_app.session``, docs/session-format.md); the evaluation
protocols only need to read them: which songs were played where on the program clock,
and which takes exist, with the file that holds each take on that clock and whether its
alignment was checked. This module reads exactly that and refuses, in one line naming
the file, a session it cannot use.

Truth for the real-world protocol: a take's aligned file is on the program clock
(sample i = program sample i), so song ``s`` occupies ``[s.start, s.end)`` samples of
it at the program's rate, and a query starting ``t`` seconds after ``s.start_s`` lies
``s.source_start_s + t`` seconds into the song the database holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from afp_core.errors import AfpError
from afp_core.fileutil import check_document, one_line, read_json_object

SESSION_FORMAT = "afp-rig-session"
SESSION_VERSION = 1
PROGRAM_FORMAT = "afp-rig-program"
PROGRAM_VERSION = 1
ALIGNMENT_FORMAT = "afp-rig-alignment"
ALIGNMENT_VERSION = 1
SESSION_FILE = "session.json"
# The protocol's takes, from the mildest noise to the strongest, in this order.
TAKE_LABELS = ("low", "mid", "high")
XRUN_PLACES_SHOWN = 3  # a take's first few xrun places are named; the count says the rest


class SessionReadError(AfpError):
    """A session folder cannot be used for evaluation (missing, malformed, incomplete)."""


class SampleSpan:
    """Samples ``[start, end)`` at ``sample_rate``, also in seconds (a song's place on
    the program clock; ``rig_app.program.ProgramSlot`` is one too)."""

    start: int
    end: int
    sample_rate: int

    @property
    def start_s(self) -> float:
        return self.start / self.sample_rate

    @property
    def end_s(self) -> float:
        return self.end / self.sample_rate

    @property
    def duration_s(self) -> float:
        return (self.end - self.start) / self.sample_rate


@dataclasses.dataclass(frozen=True)
class SessionSong(SampleSpan):
    """One song of the program: where it lies on the program clock and where it came from.

    ``start``/``end`` are program samples at ``sample_rate`` (half-open); ``file`` is the
    song's audio file as the session names it, resolved against the session folder
    (None when the session names none or it does not exist here). ``source_sha256``: the
    checksum of the original song file where ``file`` is a copy (a query set's reference),
    so that a database of the originals still finds it by content.
    """

    index: int
    title: str
    artist: str
    source: str
    start: int
    end: int
    sample_rate: int
    source_start_s: float = 0.0
    file: Path | None = None
    source_sha256: str | None = None


@dataclasses.dataclass(frozen=True)
class TakeVerdict:
    """Whether a take's numbers can be trusted, and why not: one rule for every view.

    ``status`` is ``"ok"`` (aligned, the alignment passed its own checks and nothing was
    lost while recording), ``"flagged"`` (aligned, but a check failed or audio was lost:
    ``reasons`` says which) or ``"not aligned"``. The CLI, the demo, the app's pages and
    the evaluation all read this, so a take is called the same everywhere.
    """

    status: str
    reasons: tuple[str, ...] = ()

    @property
    def trusted(self) -> bool:
        return self.status == "ok"

    def describe(self) -> str:
        """``ok``, ``not aligned`` or ``flagged: reason; reason``."""
        return f"{self.status}: {'; '.join(self.reasons)}" if self.reasons else self.status


def describe_xruns(count: int, times_s: Sequence[float] = (), what: str = "") -> str:
    """``3 xruns at 12.4 s, 80.1 s, 80.2 s``: how many, and where the first few were
    (seconds into the raw take); ``what`` names them otherwise (``3 <what> at ...``)."""
    text = f"{count} {what or ('xrun' if count == 1 else 'xruns')}"
    if times_s:
        shown = ", ".join(f"{t:.1f} s" for t in list(times_s)[:XRUN_PLACES_SHOWN])
        text += f" at {shown}" + (", …" if len(times_s) > XRUN_PLACES_SHOWN else "")
    return text


def partial_take_note(missing: Sequence[str]) -> str:
    """What a take that stopped early says: the songs it does not hold whole."""
    titles = ", ".join(repr(title) for title in missing)
    return (
        f"partial take: {len(missing)} song{'s' if len(missing) != 1 else ''} missing "
        f"({titles}); it has ground truth only for the songs before"
    )


def judge_take(
    aligned: bool,
    alignment: dict[str, Any] | None,
    xruns: int,
    xrun_times_s: Sequence[float] = (),
) -> TakeVerdict:
    """The verdict on a take from what its session records (see ``TakeVerdict``).

    ``aligned``: an aligned file exists; ``alignment``: the stored alignment summary
    (its ``ok``, ``notes`` and ``missing_songs``); ``xruns``: buffer under/overruns
    counted while recording, ``xrun_times_s`` where they were (seconds into the raw take).
    A partial take (songs missing: the recording stopped early) is flagged, so it is
    evaluated only when asked, and then on the songs it holds.
    """
    if not aligned or alignment is None:
        return TakeVerdict("not aligned")
    reasons = []
    if not alignment.get("ok"):
        notes = [str(note) for note in alignment.get("notes") or ()]
        reasons.extend(notes or ["the alignment failed its checks"])
    missing = [str(title) for title in alignment.get("missing_songs") or ()]
    if missing and partial_take_note(missing) not in reasons:  # the notes say it too
        reasons.append(partial_take_note(missing))
    if xruns:
        lost = describe_xruns(xruns, xrun_times_s, "buffer under/overruns while recording")
        reasons.append(f"{lost} (audio lost or repeated)")
    return TakeVerdict("flagged" if reasons else "ok", tuple(reasons))


@dataclasses.dataclass(frozen=True)
class SessionTake:
    """A take: its files and the summary of its alignment (None: never aligned)."""

    label: str
    raw_file: Path
    aligned_file: Path | None
    recording_rate: int
    speaker_distance_m: float | None
    notes: str
    xruns: int
    recorded_at: str
    alignment: dict[str, Any] | None
    xrun_times_s: tuple[float, ...] = ()

    @property
    def verdict(self) -> TakeVerdict:
        return judge_take(
            self.aligned_file is not None, self.alignment, self.xruns, self.xrun_times_s
        )

    @property
    def missing_songs(self) -> tuple[str, ...]:
        """Titles of the songs the take does not hold whole (a partial take's)."""
        return tuple(str(t) for t in (self.alignment or {}).get("missing_songs") or ())

    def metadata(self) -> dict[str, Any]:
        """What a report records about the take (no channel response arrays)."""
        alignment = None
        if self.alignment is not None:
            keys = (
                "method",
                "ok",
                "offset_s",
                "drift_ppm",
                "rms_residual_ms",
                "max_residual_ms",
                "min_snr_db",
                "recording_rate",
                "program_rate",
                "notes",
            )
            alignment = {key: self.alignment.get(key) for key in keys}
        return {
            "label": self.label,
            "raw_file": str(self.raw_file),
            "aligned_file": None if self.aligned_file is None else str(self.aligned_file),
            "recording_rate": self.recording_rate,
            "speaker_distance_m": self.speaker_distance_m,
            "notes": self.notes,
            "xruns": self.xruns,
            "xrun_times_s": list(self.xrun_times_s),
            "verdict": self.verdict.describe(),
            "recorded_at": self.recorded_at,
            "alignment": alignment,
        }


@dataclasses.dataclass(frozen=True)
class EvalSession:
    """What the evaluation needs from a session folder."""

    # what messages call it: a query set read as a session says "query set"
    kind: ClassVar[str] = "session"

    folder: Path
    origin: str
    created: str
    notes: str
    sample_rate: int
    program_samples: int
    songs: tuple[SessionSong, ...]
    takes: tuple[SessionTake, ...]

    def take(self, label: str) -> SessionTake:
        for take in self.takes:
            if take.label == label:
                return take
        have = ", ".join(t.label for t in self.takes) or "none"
        raise SessionReadError(
            f"{self.folder / SESSION_FILE}: no take labelled {label!r} (takes: {have})"
        )

    def metadata(self) -> dict[str, Any]:
        """What a report records about the session."""
        return {
            "folder": str(self.folder),
            "origin": self.origin,
            "created": self.created,
            "notes": self.notes,
            "program_rate": self.sample_rate,
            "program_samples": self.program_samples,
            "songs": [
                {
                    "index": s.index,
                    "title": s.title,
                    "artist": s.artist,
                    "file": None if s.file is None else str(s.file),
                    "start_s": s.start_s,
                    "end_s": s.end_s,
                    "source_start_s": s.source_start_s,
                }
                for s in self.songs
            ],
            "takes": [t.metadata() for t in self.takes],
        }


def is_session_folder(path: Path | str) -> bool:
    """Whether ``path`` is a folder holding a session.json."""
    return (Path(path) / SESSION_FILE).is_file()


def read_session(folder: Path | str) -> EvalSession:
    """Read ``folder``/session.json and its program description; one-line errors."""
    folder = Path(folder)
    path = folder / SESSION_FILE
    if not folder.is_dir():
        raise SessionReadError(f"{folder}: no such session folder")
    if not path.is_file():
        raise SessionReadError(f"{path}: no such file (not a session folder)")
    data = read_json_object(path, SessionReadError)
    check_document(data, SESSION_FORMAT, SESSION_VERSION, path, SessionReadError)
    try:
        program = data.get("program")
        if not isinstance(program, dict):
            raise SessionReadError(
                f"{path}: the session has no program yet (build one with `afp-rig program`)"
            )
        entries = data.get("songs") or []
        if not isinstance(entries, list):
            raise TypeError("'songs' must be a list")
        rate, samples, placed = _program_songs(folder, program, path)
        songs = tuple(_song(folder, song, entries) for song in placed)
        takes_data = data.get("takes") or []
        if not isinstance(takes_data, list):
            raise TypeError("'takes' must be a list")
        takes = tuple(_take(folder, t, path) for t in takes_data)
    except SessionReadError:
        raise
    except KeyError as exc:
        raise SessionReadError(f"{path}: malformed session (missing key {exc.args[0]!r})") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise SessionReadError(f"{path}: malformed session ({one_line(exc)})") from None
    if not songs:
        raise SessionReadError(f"{path}: the program holds no songs")
    labels = [t.label for t in takes]
    if len(set(labels)) != len(labels):
        raise SessionReadError(f"{path}: take labels repeat ({', '.join(labels)})")
    return EvalSession(
        folder=folder,
        origin=str(data.get("origin", "rig")),
        created=str(data.get("created", "")),
        notes=str(data.get("notes", "")),
        sample_rate=rate,
        program_samples=samples,
        songs=songs,
        takes=takes,
    )


def _resolve(folder: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else folder / path


def _program_songs(
    folder: Path, program: dict[str, Any], path: Path
) -> tuple[int, int, list[SessionSong]]:
    """(rate, samples, the songs as the program places them) from program.json when
    present; ``_song`` completes each from the session's song list."""
    name = program.get("program_file")
    if name:
        file = _resolve(folder, str(name))
        if not file.is_file():
            raise SessionReadError(f"{path}: program file {name} is missing")
        described = read_json_object(file, SessionReadError)
        check_document(described, PROGRAM_FORMAT, PROGRAM_VERSION, file, SessionReadError)
        try:
            rate = int(described["sample_rate"])
            samples = int(described["samples"])
            songs = [
                SessionSong(
                    index=int(s.get("index", i)),
                    title=str(s["title"]),
                    artist=str(s.get("artist", "")),
                    source=str(s.get("source", "")),
                    start=int(s["start"]),
                    end=int(s["end"]),
                    sample_rate=rate,
                    source_start_s=float(s.get("source_start_s", 0.0)),
                )
                for i, s in enumerate(described["songs"])
            ]
        except KeyError as exc:
            raise SessionReadError(
                f"{file}: malformed program (missing key {exc.args[0]!r})"
            ) from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise SessionReadError(f"{file}: malformed program ({one_line(exc)})") from None
    else:  # only session.json's summary: seconds, rounded to samples here
        rate = int(program["sample_rate"])
        samples = int(program["samples"])
        songs = [
            SessionSong(
                index=i,
                title=str(s["title"]),
                artist="",
                source="",
                start=round(float(s["start_s"]) * rate),
                end=round(float(s["end_s"]) * rate),
                sample_rate=rate,
                source_start_s=float(s.get("source_start_s", 0.0)),
            )
            for i, s in enumerate(program["songs"])
        ]
    if rate <= 0:
        raise SessionReadError(f"{path}: program sample rate {rate} is not positive")
    for song in songs:
        if not 0 <= song.start < song.end <= samples:
            raise SessionReadError(
                f"{path}: song {song.title!r} lies outside the program "
                f"([{song.start}, {song.end}) of {samples} samples)"
            )
    return rate, samples, songs


def _song(folder: Path, song: SessionSong, entries: list[Any]) -> SessionSong:
    """Complete a program's song from the session's song entry (same position, else same
    title): its artist, source and file."""
    entry: dict[str, Any] = {}
    index = song.index
    if (
        0 <= index < len(entries)
        and isinstance(entries[index], dict)
        and str(entries[index].get("title", "")) == song.title
    ):
        entry = entries[index]
    if not entry:
        entry = next(
            (e for e in entries if isinstance(e, dict) and e.get("title") == song.title), {}
        )
    name = str(entry.get("file") or "") or song.source
    file = None
    if name and "://" not in name:
        candidate = _resolve(folder, name)
        file = candidate if candidate.is_file() else None
    return dataclasses.replace(
        song,
        artist=str(entry.get("artist", "")) or song.artist,
        source=str(entry.get("source", "")) or song.source,
        file=file,
    )


def _take(folder: Path, data: Any, path: Path) -> SessionTake:
    if not isinstance(data, dict):
        raise TypeError("every take must be an object")
    label = str(data["label"])
    alignment = data.get("alignment")
    if alignment is not None:
        check_document(
            alignment,
            ALIGNMENT_FORMAT,
            ALIGNMENT_VERSION,
            f"{path}: take '{label}'",
            SessionReadError,
        )
    aligned = data.get("aligned_file")
    distance = data.get("speaker_distance_m")
    return SessionTake(
        label=label,
        raw_file=_resolve(folder, str(data["raw_file"])),
        aligned_file=None if not aligned else _resolve(folder, str(aligned)),
        recording_rate=int(data["recording_rate"]),
        speaker_distance_m=None if distance is None else float(distance),
        notes=str(data.get("notes", "")),
        xruns=int(data.get("xruns", 0)),
        recorded_at=str(data.get("recorded_at", "")),
        alignment=alignment,
        xrun_times_s=tuple(float(t) for t in data.get("xrun_times_s") or ()),
    )
