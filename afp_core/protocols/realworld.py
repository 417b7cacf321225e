"""The real-world protocol (paper §3, Tables 2 and 4): queries cut from recorded takes.

A session (``afp_core.protocols.sessions``) holds takes recorded while the music program
played, each aligned to the program clock: in a take's aligned file, sample i is program
sample i, so song s occupies the same interval ``[s.start_s, s.end_s)`` as in the
program. For every take and song the protocol reads that interval once and cuts queries
of 1, 2, 3, 4, 5, 10 and 15 s back to back inside it (``query_starts``: query j of length
L starts ``j * L`` s after the song's start, as long as it fits; ``cut_query``); each
query is resampled to the recogniser's rate and analysed on its own
(``Recogniser.analyse``), as a query clip is, and identified with every decision rule of
the recogniser. A neural recogniser whose rate is the take's analyses the whole interval
once instead and slices it: its windows are independent, so that is the same analysis.

An exported query set (``afp_core.protocols.querysets``, docs/query-set-format.md) holds
those very clips, cut the same way; it is evaluated clip by clip with the same code and
gives the same report.

Measures, per take x rule x query length:

- ``accuracy``: the right song, whatever the offset, with no rejection (the paper's
  measure: its Table 4 counts song-level matches);
- ``offset_accuracy``: the right song with the returned offset within
  ``offset_tolerance_s`` (±0.5 s) of the query's true place in the song;
- ``no_match_rate``: share of queries the "no match" threshold (``Recogniser.threshold``)
  rejects, and ``accuracy_with_rejection``: the right song and not rejected;
- the "no match" trade-off: every query is also answered as if its song were not in the
  database (``exclude_song``), which makes it an impostor that sounds exactly like a
  real take. ``false_match_rate_measured`` is the share of those impostors the threshold
  lets through; ``threshold_at_fmr`` is the score that lets ``false_match_rate`` (1 %)
  of them through, pooled over the takes (one threshold per rule and length, as a
  deployment would set it), and ``rejected_at_fmr`` / ``accuracy_at_fmr`` what it does
  to the true queries of each take.

Session songs are found in the recogniser's catalogue by the checksum of the session
song's file (what ``afp index`` records) when the file is there, else by title
(case-insensitive). Everything that can be checked is checked before any audio is
analysed: takes aligned (or explicitly allowed unchecked), files readable, songs in the
database, query lengths answerable.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from afp_core.audio import probe_audio, resample
from afp_core.calibration import threshold_at_false_match_rate
from afp_core.database import Song
from afp_core.errors import AudioError, ConfigError, DatabaseError
from afp_core.fileutil import file_sha256
from afp_core.protocols.querysets import (
    QueryClip,
    QuerySetSession,
    read_audio_mono,
    read_session_or_queryset,
)
from afp_core.protocols.sessions import (
    TAKE_LABELS,
    EvalSession,
    SessionReadError,
    SessionSong,
    SessionTake,
)
from afp_core.recogniser import NeuralRecogniser, Recogniser
from afp_core.tasks import TaskState

DEFAULT_LENGTHS_S: tuple[float, ...] = (1, 2, 3, 4, 5, 10, 15)


def take_sort_key(label: str) -> tuple[str, int, str]:
    """The order takes are listed in everywhere: ``TAKE_LABELS``, then others by label (a
    query set of several sessions labels its takes ``<session>/<take>``: session by
    session, each in that order)."""
    session, _, take = label.rpartition("/")
    return session, (TAKE_LABELS.index(take) if take in TAKE_LABELS else len(TAKE_LABELS)), take


def query_starts(duration_s: float, length_s: float) -> list[float]:
    """Where the protocol's queries of ``length_s`` start in a song interval of
    ``duration_s`` seconds: back to back from its start (query j at ``j * length_s``), as
    many as fit whole."""
    count = math.floor(duration_s / length_s + 1e-9)
    return [j * length_s for j in range(count)]


def cut_query(interval: np.ndarray, rate: int, start_s: float, length_s: float) -> np.ndarray:
    """The query ``[start_s, start_s + length_s)`` of a song's interval at ``rate``: the
    samples the protocol analyses and an exported query set holds."""
    first = round(start_s * rate)
    return interval[first : first + round(length_s * rate)]


@dataclasses.dataclass(frozen=True)
class RealWorldSettings:
    """What the protocol varies; the defaults are the paper's (§3).

    ``methods``: decision rules to run (None: every rule of each recogniser).
    ``takes``: take labels to evaluate (None: every take of the session).
    ``threshold``: the "no match" threshold behind ``no_match_rate`` and
    ``accuracy_with_rejection``: "auto" (``Recogniser.threshold``), a number, or None.
    ``allow_unchecked``: evaluate takes that are not aligned or flagged (``TakeVerdict``)
    (a take with no aligned file is then read raw, assumed to start with the program,
    as the paper's authors assumed). ``impostors``: answer every query a second time
    without its song (the "no match" trade-off; doubles the searches), at the operating
    point of ``false_match_rate``.
    """

    lengths_s: tuple[float, ...] = DEFAULT_LENGTHS_S
    methods: tuple[str, ...] | None = None
    takes: tuple[str, ...] | None = None
    offset_tolerance_s: float = 0.5
    threshold: float | str | None = "auto"
    allow_unchecked: bool = False
    impostors: bool = True
    false_match_rate: float = 0.01

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SongMapping:
    """A session song and the catalogue song it is scored against."""

    index: int
    title: str
    file: str | None
    song_id: int
    catalogue_title: str
    matched_by: str  # "checksum" or "title"


@dataclasses.dataclass(frozen=True)
class RealWorldTrial:
    """One identified query."""

    system: str
    take: str
    song_index: int
    song: str
    start_s: float  # query start after the song's start in the take (program clock)
    true_offset_s: float  # where the query lies in the catalogue's song
    length_s: float
    method: str
    found: str | None
    found_id: int | None
    offset_s: float | None
    score: float
    threshold: float | None
    song_hit: bool
    offset_hit: bool
    rejected: bool
    impostor_score: float | None = None  # the best score without the query's own song


@dataclasses.dataclass(frozen=True)
class RealWorldCell:
    """The summary of one take x rule x query length."""

    system: str
    take: str
    method: str
    length_s: float
    queries: int
    accuracy: float
    offset_accuracy: float
    accuracy_with_rejection: float
    no_match_rate: float
    false_match_rate_measured: float | None = None
    threshold_at_fmr: float | None = None
    rejected_at_fmr: float | None = None
    accuracy_at_fmr: float | None = None


@dataclasses.dataclass
class RealWorldResult:
    """Everything one recogniser did on one session: settings, per-query trials, summary."""

    system: str
    recogniser: dict[str, Any]
    methods: tuple[str, ...]
    session: dict[str, Any]
    settings: dict[str, Any]
    songs: list[SongMapping]
    trials: list[RealWorldTrial]
    summary: list[RealWorldCell]
    takes: tuple[str, ...]
    notes: list[str]
    elapsed_s: float

    def cell(self, take: str, method: str, length_s: float) -> RealWorldCell | None:
        for cell in self.summary:
            if cell.take == take and cell.method == method and cell.length_s == length_s:
                return cell
        return None


@dataclasses.dataclass
class _System:
    recogniser: Recogniser
    label: str
    methods: tuple[str, ...]
    mapping: dict[int, SongMapping]  # session song index -> catalogue song


@dataclasses.dataclass(frozen=True)
class _Query:
    length_s: float
    start_s: float  # after the song's start (program clock)
    audio: np.ndarray
    rate: int


@dataclasses.dataclass(frozen=True)
class _SongQueries:
    """A song's queries in one take; ``interval``: the song's whole interval they were cut
    from (at ``rate``), when there is one to analyse at once."""

    queries: list[_Query]
    interval: np.ndarray | None = None
    rate: int = 0


@dataclasses.dataclass(frozen=True)
class _TakeSource:
    """A session's take: queries are cut from its file on the program clock."""

    take: SessionTake
    file: Path
    rate: int
    frames: int

    def song_queries(self, song: SessionSong, lengths_s: Sequence[float]) -> _SongQueries:
        raw = read_song_interval(self.file, self.rate, self.frames, song)
        queries = [
            _Query(length, start, cut_query(raw, self.rate, start, length), self.rate)
            for length in lengths_s
            for start in query_starts(len(raw) / self.rate, length)
        ]
        return _SongQueries(queries, raw, self.rate)


@dataclasses.dataclass(frozen=True)
class _ClipSource:
    """A query set's take: its queries are clip files, cut already."""

    take: SessionTake
    clips: dict[int, tuple[QueryClip, ...]]  # song index -> clips

    def song_queries(self, song: SessionSong, lengths_s: Sequence[float]) -> _SongQueries:
        wanted = {float(length): length for length in lengths_s}
        queries = []
        for clip in self.clips.get(song.index, ()):
            if clip.length_s in wanted:
                audio, rate = read_audio_mono(clip.file)
                queries.append(_Query(wanted[clip.length_s], clip.offset_s, audio, rate))
        order = {float(length): i for i, length in enumerate(lengths_s)}
        queries.sort(key=lambda q: (order[float(q.length_s)], q.start_s))
        return _SongQueries(queries)


@dataclasses.dataclass
class RealWorldPlan:
    """A checked run: what ``run_realworld_plan`` will do (built by ``plan_realworld``)."""

    session: EvalSession
    settings: RealWorldSettings
    systems: list[_System]
    sources: list[_TakeSource | _ClipSource]
    notes: list[str]

    @property
    def audio_s(self) -> float:
        """Seconds of take audio to analyse (the progress total)."""
        per_take = sum(song.duration_s for song in self.session.songs)
        groups = len({_analysis_key(s.recogniser) for s in self.systems})
        return per_take * len(self.sources) * groups


# ---------------------------------------------------------------------- song mapping


def map_session_songs(
    songs: Sequence[SessionSong],
    catalogue: Sequence[Song],
    where: str,
    checksums: dict[Path, str] | None = None,
    fix: str | None = None,
    kind: str = "session",
) -> list[SongMapping]:
    """Catalogue song of every session song: by file checksum, else by title.

    ``DatabaseError`` (one line, before any work) listing the session songs the
    catalogue lacks and what to do (``fix``; default: the ``afp index`` command).
    ``checksums`` caches file checksums across calls; ``kind`` names what the songs are
    of in that message ("session", "query set").
    """
    checksums = {} if checksums is None else checksums
    by_checksum = {song.checksum: song for song in catalogue}
    by_title: dict[str, list[Song]] = defaultdict(list)
    for entry in catalogue:
        by_title[_title_key(entry.title)].append(entry)
    mapped: list[SongMapping] = []
    missing: list[SessionSong] = []
    for song in songs:
        found: Song | None = None
        how = ""
        if song.file is not None:
            if song.file not in checksums:
                checksums[song.file] = file_sha256(song.file)
            found = by_checksum.get(checksums[song.file])
            how = "checksum"
        if found is None and song.source_sha256:  # a query set's copy: the original's
            found = by_checksum.get(song.source_sha256)
            how = "checksum"
        if found is None:
            titled = by_title.get(_title_key(song.title), [])
            found = titled[0] if titled else None
            how = "title"
        if found is None:
            missing.append(song)
            continue
        mapped.append(
            SongMapping(
                index=song.index,
                title=song.title,
                file=None if song.file is None else str(song.file),
                song_id=found.id,
                catalogue_title=found.title,
                matched_by=how,
            )
        )
    if missing:
        names = ", ".join(repr(s.title) for s in missing)
        files = [str(s.file) for s in missing if s.file is not None]
        hint = " ".join(files) if files and len(files) == len(missing) else "FILE..."
        fix = fix or f"index them with: afp index {where} {hint}"
        raise DatabaseError(
            f"{where}: {len(missing)} of the {kind}'s {len(songs)} songs are not in the "
            f"database: {names}; {fix}"
        )
    return mapped


def _title_key(title: str) -> str:
    return " ".join(title.casefold().split())


# ---------------------------------------------------------------------- planning


def plan_realworld(
    recognisers: Sequence[Recogniser],
    session: EvalSession | Path | str,
    settings: RealWorldSettings = RealWorldSettings(),
    *,
    systems: Sequence[str] | None = None,
) -> RealWorldPlan:
    """Check everything before work; one-line ``AfpError`` for the first problem found."""
    if not isinstance(session, EvalSession):
        session = read_session_or_queryset(session)
    if not recognisers:
        raise ConfigError("no recogniser to evaluate")
    check_realworld_settings(settings)
    labels = list(systems) if systems is not None else _default_labels(recognisers)
    if len(labels) != len(recognisers) or len(set(labels)) != len(labels):
        raise ConfigError("every recogniser needs its own, distinct system label")
    notes: list[str] = []
    sources = resolve_takes(session, settings, notes)
    checksums: dict[Path, str] = {}
    planned: list[_System] = []
    for recogniser, label in zip(recognisers, labels, strict=True):
        methods = _methods(recogniser, settings, label)
        check_query_lengths(recogniser, settings, label)
        where = str(recogniser.describe().get("database", label))
        mapping = map_session_songs(
            session.songs, recogniser.songs(), where, checksums, kind=session.kind
        )
        for entry in mapping:
            if entry.matched_by == "title" and entry.file is not None:
                notes.append(
                    f"{label}: {entry.title!r} matched by title (the session's file is not "
                    "the one the database indexed)"
                )
        planned.append(_System(recogniser, label, methods, {m.index: m for m in mapping}))
    longest_song = max(song.duration_s for song in session.songs)
    for length in settings.lengths_s:
        if length > longest_song:
            notes.append(f"no song is {length:g} s long: no {length:g} s queries")
        elif isinstance(session, QuerySetSession) and float(length) not in session.lengths_s:
            notes.append(f"the query set holds no {length:g} s queries")
    return RealWorldPlan(session, settings, planned, sources, notes)


def check_realworld_settings(settings: RealWorldSettings) -> None:
    if not settings.lengths_s:
        raise ConfigError("lengths: give at least one query length")
    for length in settings.lengths_s:
        if not (isinstance(length, int | float) and math.isfinite(length) and length > 0):
            raise ConfigError(f"lengths: {length!r} is not a positive number of seconds")
    if len(set(settings.lengths_s)) != len(settings.lengths_s):
        raise ConfigError("lengths: a query length is repeated")
    if settings.offset_tolerance_s < 0:
        raise ConfigError("offset tolerance must not be negative")
    if not 0.0 < settings.false_match_rate < 1.0:
        raise ConfigError(
            f"false-match rate: {settings.false_match_rate!r} is not a share in (0, 1)"
        )
    threshold = settings.threshold
    if not (threshold is None or threshold == "auto" or isinstance(threshold, int | float)):
        raise ConfigError(f"threshold: {threshold!r} is not a number, 'auto' or None")


def _methods(recogniser: Recogniser, settings: RealWorldSettings, label: str) -> tuple[str, ...]:
    if settings.methods is None:
        return tuple(recogniser.methods)
    unknown = [m for m in settings.methods if m not in recogniser.methods]
    if unknown:
        raise ConfigError(
            f"{label}: decision rule {', '.join(unknown)} unknown to a {recogniser.kind} "
            f"recogniser (it has: {', '.join(recogniser.methods)})"
        )
    return tuple(settings.methods)


def check_query_lengths(recogniser: Recogniser, settings: RealWorldSettings, label: str) -> None:
    short = [x for x in settings.lengths_s if x < recogniser.min_query_s - 1e-9]
    if short:
        raise ConfigError(
            f"{label}: query length {short[0]:g} s is shorter than the "
            f"{recogniser.min_query_s:g} s a {recogniser.kind} recogniser needs"
        )
    hop = getattr(recogniser, "hop_s", None)
    if hop:
        off_grid = [x for x in settings.lengths_s if abs(x / hop - round(x / hop)) > 1e-6]
        if off_grid:
            raise ConfigError(
                f"{label}: query length {off_grid[0]:g} s is not a multiple of the "
                f"{hop:g} s window hop (back-to-back queries must start on the window grid)"
            )


def _default_labels(recognisers: Sequence[Recogniser]) -> list[str]:
    labels = []
    for recogniser in recognisers:
        database = recogniser.describe().get("database")
        name = Path(str(database)).name if database else ""
        labels.append(f"{recogniser.kind} ({name})" if name else recogniser.kind)
    if len(set(labels)) != len(labels):
        labels = [f"{label} #{i + 1}" for i, label in enumerate(labels)]
    return labels


def resolve_takes(
    session: EvalSession, settings: RealWorldSettings, notes: list[str]
) -> list[_TakeSource | _ClipSource]:
    where = session.folder
    if settings.takes is not None:
        takes = [session.take(label) for label in settings.takes]
    else:
        takes = sorted(session.takes, key=lambda take: take_sort_key(take.label))
    if not takes:
        raise SessionReadError(
            f"{where}: the session has no takes to evaluate (record one with `afp-rig record`)"
        )
    if isinstance(session, QuerySetSession):  # checked when it was exported
        return [_ClipSource(take, session.clips.get(take.label, {})) for take in takes]
    sources: list[_TakeSource | _ClipSource] = []
    for take in takes:
        verdict = take.verdict
        if not verdict.trusted and not settings.allow_unchecked:
            raise SessionReadError(
                f"{where}: take {take.label!r} is {verdict.describe()}; align it with "
                f"`afp-rig align {where} --label {take.label}` "
                "(or allow unchecked takes to evaluate it anyway)"
            )
        if take.aligned_file is not None:
            file = take.aligned_file
            if not verdict.trusted:
                notes.append(f"take {take.label!r}: {verdict.describe()}; evaluated as asked")
        else:
            file = take.raw_file
            notes.append(
                f"take {take.label!r}: not aligned; its raw recording is assumed to start "
                "exactly with the program, with no drift (the paper authors' assumption)"
            )
        try:
            info = probe_audio(file)
        except AudioError as exc:
            raise SessionReadError(f"{where}: take {take.label!r}: {exc}") from None
        end = max(song.end_s for song in session.songs)
        if info.duration_s + 1e-6 < end:
            notes.append(
                f"take {take.label!r}: {info.duration_s:.1f} s long, the program's songs end "
                f"at {end:.1f} s; queries beyond its end are left out"
            )
        frames = info.frames
        missing = [s.start_s for s in session.songs if s.title in take.missing_songs]
        if missing:  # a partial take: only the songs it holds whole are read
            frames = min(frames, round(min(missing) * info.sample_rate))
        sources.append(_TakeSource(take, file, info.sample_rate, frames))
    return sources


def _analysis_key(recogniser: Recogniser) -> tuple[Any, ...]:
    """Recognisers with the same key give the same analysis of the same audio."""
    if isinstance(recogniser, NeuralRecogniser):
        return ("neural", recogniser.checkpoint.sha256, recogniser.sample_rate)
    return ("own", id(recogniser))


# ---------------------------------------------------------------------- running


def run_realworld_protocol(
    recogniser: Recogniser,
    session: EvalSession | Path | str,
    settings: RealWorldSettings = RealWorldSettings(),
    *,
    task: TaskState | None = None,
    system: str | None = None,
) -> RealWorldResult:
    """Run the protocol for one recogniser (see the module docstring)."""
    plan = plan_realworld(
        [recogniser], session, settings, systems=None if system is None else [system]
    )
    return run_realworld_plan(plan, task=task)[0]


def run_realworld_comparison(
    recognisers: Sequence[Recogniser],
    session: EvalSession | Path | str,
    settings: RealWorldSettings = RealWorldSettings(),
    *,
    task: TaskState | None = None,
    systems: Sequence[str] | None = None,
) -> list[RealWorldResult]:
    """Run the protocol for several recognisers on the same takes (paper Table 2).

    Each take's audio is read once; recognisers that analyse audio the same way (neural
    ones with the same checkpoint, e.g. indexes of one library at several PQ sizes)
    share one analysis.
    """
    plan = plan_realworld(recognisers, session, settings, systems=systems)
    return run_realworld_plan(plan, task=task)


def run_realworld_plan(
    plan: RealWorldPlan, *, task: TaskState | None = None
) -> list[RealWorldResult]:
    """Run a checked plan; one result per recogniser. Cancellable between songs."""
    task = task or TaskState()
    settings = plan.settings
    started = time.monotonic()
    groups: dict[tuple[Any, ...], list[_System]] = defaultdict(list)
    for system in plan.systems:
        groups[_analysis_key(system.recogniser)].append(system)
    thresholds = {
        (system.label, method, length): _threshold(system.recogniser, settings, method, length)
        for system in plan.systems
        for method in system.methods
        for length in settings.lengths_s
    }
    trials: dict[str, list[RealWorldTrial]] = {system.label: [] for system in plan.systems}
    task.set_total(plan.audio_s, "reading the takes")
    for source in plan.sources:
        for song in plan.session.songs:
            task.check_cancelled()
            cut = source.song_queries(song, settings.lengths_s)
            for members in groups.values():
                task.set_message(f"{source.take.label}: {song.title}")
                for query, analysis, at_s in _analyses(members[0].recogniser, cut, task):
                    for system in members:
                        trials[system.label] += _identify_query(
                            system,
                            source.take.label,
                            song,
                            query,
                            analysis,
                            at_s,
                            settings,
                            thresholds,
                        )
                task.advance(song.duration_s)
    elapsed = time.monotonic() - started
    results = []
    for system in plan.systems:
        rows = trials[system.label]
        results.append(
            RealWorldResult(
                system=system.label,
                recogniser=system.recogniser.describe(),
                methods=system.methods,
                session=plan.session.metadata(),
                settings=settings.to_dict(),
                songs=sorted(system.mapping.values(), key=lambda m: m.index),
                trials=rows,
                summary=summarise_realworld(
                    rows,
                    [s.take.label for s in plan.sources],
                    system.methods,
                    settings.lengths_s,
                    settings.false_match_rate,
                ),
                takes=tuple(s.take.label for s in plan.sources),
                notes=list(plan.notes),
                elapsed_s=round(elapsed, 3),
            )
        )
    return results


def _threshold(
    recogniser: Recogniser, settings: RealWorldSettings, method: str, length: float
) -> float | None:
    if settings.threshold == "auto":
        return recogniser.threshold(method, length)
    return None if settings.threshold is None else float(settings.threshold)


def read_song_interval(file: Path, rate: int, frames: int, song: SessionSong) -> np.ndarray:
    """The song's interval of a take on the program clock (``file``, ``frames`` long at
    ``rate``), mono float32 at that rate; cut short where the take ends."""
    start = round(song.start_s * rate)
    end = min(round(song.end_s * rate), frames)
    if end <= start:
        return np.zeros(0, np.float32)
    try:
        data, _ = sf.read(
            str(file), start=start, frames=end - start, dtype="float32", always_2d=True
        )
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise AudioError(f"{file}: cannot read {song.title!r} ({exc})") from None
    return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0].copy()


def _analyses(
    recogniser: Recogniser, cut: _SongQueries, task: TaskState
) -> Iterator[tuple[_Query, Any, float]]:
    """(query, analysis, where the query starts in it) for each query of a song: every
    query analysed on its own, or the whole interval once where slicing it is the same."""
    rate = recogniser.sample_rate
    whole = cut.interval
    if whole is not None and cut.rate == rate and isinstance(recogniser, NeuralRecogniser):
        analysis = recogniser.analyse(whole) if cut.queries else None
        for query in cut.queries:
            task.check_cancelled()
            yield query, analysis, query.start_s
        return
    for length in dict.fromkeys(q.length_s for q in cut.queries):
        task.check_cancelled()
        queries = [q for q in cut.queries if q.length_s == length]
        audios = [resample(q.audio, q.rate, rate) for q in queries]
        if isinstance(recogniser, NeuralRecogniser):
            analyses = recogniser.analyse_many(audios)  # the same, in shared batches
        else:
            analyses = [recogniser.analyse(audio) for audio in audios]
        for query, analysis in zip(queries, analyses, strict=True):
            yield query, analysis, 0.0


def _identify_query(
    system: _System,
    take: str,
    song: SessionSong,
    query: _Query,
    analysis: Any,
    at_s: float,
    settings: RealWorldSettings,
    thresholds: dict[tuple[str, str, float], float | None],
) -> list[RealWorldTrial]:
    """One trial per decision rule for ``query``, found at ``at_s`` in ``analysis``."""
    expected = system.mapping[song.index]
    recogniser = system.recogniser
    start, length = query.start_s, query.length_s
    truth = song.source_start_s + start
    rows = []
    for method in system.methods:
        match = recogniser.identify(analysis, at_s, length, method)
        found = match.song
        threshold = thresholds[system.label, method, length]
        song_hit = found is not None and found.id == expected.song_id
        impostor = None
        if settings.impostors:
            alone = recogniser.identify(
                analysis, at_s, length, method, exclude_song=expected.song_id
            )
            impostor = float(alone.score)
        near = match.offset_s is not None and (
            abs(match.offset_s - truth) <= settings.offset_tolerance_s + 1e-9
        )
        rows.append(
            RealWorldTrial(
                system=system.label,
                take=take,
                song_index=song.index,
                song=song.title,
                start_s=float(start),
                true_offset_s=float(truth),
                length_s=float(length),
                method=method,
                found=None if found is None else found.title,
                found_id=None if found is None else found.id,
                offset_s=None if match.offset_s is None else float(match.offset_s),
                score=float(match.score),
                threshold=threshold,
                song_hit=song_hit,
                offset_hit=song_hit and near,
                rejected=found is None or (threshold is not None and match.score < threshold),
                impostor_score=impostor,
            )
        )
    return rows


def summarise_realworld(
    trials: Sequence[RealWorldTrial],
    takes: Sequence[str],
    methods: Sequence[str],
    lengths_s: Sequence[float],
    false_match_rate: float = 0.01,
) -> list[RealWorldCell]:
    """One cell per take x rule x length (cells with no query are left out)."""
    groups: dict[tuple[str, str, str, float], list[RealWorldTrial]] = defaultdict(list)
    pooled: dict[tuple[str, str, float], list[float]] = defaultdict(list)
    for trial in trials:
        groups[trial.system, trial.take, trial.method, trial.length_s].append(trial)
        if trial.impostor_score is not None:
            pooled[trial.system, trial.method, trial.length_s].append(trial.impostor_score)
    systems = list(dict.fromkeys(t.system for t in trials))
    cells = []
    for system in systems:
        for take in takes:
            for method in methods:
                for length in lengths_s:
                    rows = groups.get((system, take, method, float(length)), [])
                    if rows:
                        impostors = pooled.get((system, method, float(length)))
                        at_fmr = threshold_at_false_match_rate(impostors, false_match_rate)
                        cells.append(_cell(system, take, method, float(length), rows, at_fmr))
    return cells


def _cell(
    system: str,
    take: str,
    method: str,
    length: float,
    rows: Sequence[RealWorldTrial],
    at_fmr: float | None,
) -> RealWorldCell:
    def share(predicate: Callable[[RealWorldTrial], bool]) -> float:
        return float(np.mean([predicate(t) for t in rows]))

    judged = [
        (t.impostor_score, t.threshold)
        for t in rows
        if t.impostor_score is not None and t.threshold is not None
    ]
    measured = None
    if judged:
        measured = float(np.mean([score >= threshold for score, threshold in judged]))
    return RealWorldCell(
        system=system,
        take=take,
        method=method,
        length_s=length,
        queries=len(rows),
        accuracy=share(lambda t: t.song_hit),
        offset_accuracy=share(lambda t: t.offset_hit),
        accuracy_with_rejection=share(lambda t: t.song_hit and not t.rejected),
        no_match_rate=share(lambda t: t.rejected),
        false_match_rate_measured=measured,
        threshold_at_fmr=at_fmr,
        rejected_at_fmr=None if at_fmr is None else share(lambda t: t.score < at_fmr),
        accuracy_at_fmr=None
        if at_fmr is None
        else share(lambda t: t.song_hit and t.score >= at_fmr),
    )
