"""Evaluate a session: the real-world protocol (paper §3, Table 4) from one call, no Qt.

``evaluate_session`` takes a checkpoint (default: the shipped model), the fingerprints
to search (a database folder, or a library folder it indexes on the fly) and a session
folder; it checks everything it can before the long work, indexes what is missing,
runs the protocol and writes the report folder (``afp_core.protocols.report``). The
Evaluate page runs it on a worker thread; the README's demo calls it directly.

Where things go, by default:

- the report: ``<session>/evaluations/<YYYYmmdd-HHMMSS>/`` (report.json, trials.csv,
  accuracy.png, table.md; report.json is written last, so a folder holding one is a
  finished report);
- a library's database: ``<session>/evaluations/db-<library>-<digest>/``, the digest
  naming the checkpoint and the library folder, so another model or another library gets
  its own database and the same ones reuse it (an interrupted indexing resumes there).

A query set (``afp-rig export``) is evaluated as a session is, its reports and library
databases going into ``<set>/evaluations/``. A folder that cannot be written (a set
someone sent, on a read-only medium) takes no default: the report folder must be given,
and a library's database then goes beside it (``evaluations_folder`` says which); both
are checked before any work.

``EvaluationView`` is what a view draws of a report (table shaped like paper Table 4:
rows query lengths, columns rule x take; one accuracy-vs-length series per take and
rule), read back from the report folder by ``load_evaluation``.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from afp_core.audio import iter_audio_files, probe_audio
from afp_core.checkpoint import load_checkpoint
from afp_core.database import MANIFEST, FingerprintDB
from afp_core.errors import AudioError, ConfigError
from afp_core.fileutil import file_sha256
from afp_core.indexing import index_library, open_database_for_indexing
from afp_core.ingest import read_tags
from afp_core.protocols.querysets import read_session_or_queryset
from afp_core.protocols.realworld import (
    RealWorldPlan,
    RealWorldResult,
    RealWorldSettings,
    check_query_lengths,
    check_realworld_settings,
    plan_realworld,
    resolve_takes,
    run_realworld_plan,
    take_sort_key,
)
from afp_core.protocols.report import ReportError, read_report, write_realworld_report
from afp_core.protocols.sessions import EvalSession
from afp_core.recogniser import NeuralRecogniser, Recogniser, open_recogniser
from afp_core.shipped import SHIPPED_MODEL, default_checkpoint_path
from afp_core.tasks import TaskState

__all__ = [
    "AUDIO_UNIT",
    "EVALUATIONS_DIR",
    "FULL_RANGE",
    "MEASURES",
    "METHOD_NAMES",
    "EvaluationView",
    "Series",
    "evaluate_and_view",
    "evaluate_session",
    "evaluations_folder",
    "folder_writable",
    "library_database_folder",
    "load_evaluation",
    "new_report_folder",
    "parse_lengths",
    "previous_reports",
    "short_path",
    "value_range",
]

EVALUATIONS_DIR = "evaluations"
REPORT_FILE = "report.json"
METHOD_NAMES = {"sequence": "offset-consistent", "vote": "majority vote"}
MEASURES = {
    "accuracy": "Accuracy (right song, no rejection: the paper's Table 4)",
    "offset_accuracy": "Offset accuracy (right song, offset within ±{tol:g} s)",
    "accuracy_with_rejection": "Accuracy with the “no match” threshold",
    "no_match_rate": "“No match” rate (queries the threshold rejects)",
}
DEFAULT_SETTINGS = RealWorldSettings()  # the paper's: 1-15 s queries, every rule and take
AUDIO_UNIT = "s of audio"
"""What an evaluation's progress counts: seconds of audio indexed, then evaluated."""


# ---------------------------------------------------------------------- running


def evaluate_session(
    task: TaskState,
    session_folder: Path | str,
    *,
    checkpoint: Path | str | None = None,
    database: Path | str | None = None,
    library: Path | str | None = None,
    out: Path | str | None = None,
    settings: RealWorldSettings = DEFAULT_SETTINGS,
    device: str = "cpu",
) -> tuple[Path, list[RealWorldResult]]:
    """Run the real-world protocol on a session and write its report; (folder, results).

    ``session_folder`` may also be a query set exported from sessions (``afp-rig
    export``); its report then goes into the set's ``evaluations/`` by default. Give
    ``database`` (a folder built by ``afp index``: searched with ``checkpoint``, which
    must be its model, or by default with its own model) or ``library`` (a folder of
    songs, indexed here with ``checkpoint``, default the shipped model, into
    ``library_database_folder``; songs indexed before are not extracted again). Every
    check that needs no audio analysis comes first and fails with one line saying what
    to do: the session, its takes (aligned), the settings, the checkpoint against the
    database, the session's songs in the database or the library. Progress goes through
    ``task`` in seconds of audio (``AUDIO_UNIT``): the library's new songs indexed, then
    the takes evaluated, as one count; cancelling keeps the songs indexed so far and
    writes no report. A session or set whose folder cannot be written needs ``out``
    (checked first too); a library's database then goes beside the report folder.
    """
    if (database is None) == (library is None):
        raise ConfigError("give either a database folder or a library folder to index")
    check_realworld_settings(settings)
    session = read_session_or_queryset(session_folder)  # or an exported query set
    resolve_takes(session, settings, [])  # takes aligned and readable, before anything else
    out = _report_folder(session, out)
    checkpoint = None if checkpoint is None else Path(checkpoint)
    if checkpoint is not None and not checkpoint.is_file():
        raise ConfigError(f"{checkpoint}: no such checkpoint file")
    task.set_total(0, "checking", unit=AUDIO_UNIT)
    notes: list[str] = []
    if database is not None:
        recogniser = open_recogniser(Path(database), checkpoint, device=device)
        plan = plan_realworld([recogniser], session, settings)
        task.set_total(plan.audio_s, "evaluating")
        evaluating = _phase(task, 0.0, plan.audio_s, "evaluating")
    elif library is not None:
        home = evaluations_folder(session.folder) or out.parent
        recogniser, plan, evaluating = _index_then_plan(
            task, session, Path(library), checkpoint, settings, device, notes, home
        )
    else:  # excluded by the first check
        raise ConfigError("give either a database folder or a library folder to index")
    plan.notes.extend(notes)
    results = run_realworld_plan(plan, task=evaluating)
    task.check_cancelled()
    extra = {
        "made_by": "rig_app.evaluate.evaluate_session",
        "inputs": {
            "session": str(session.folder),
            "checkpoint": str(checkpoint) if checkpoint is not None else None,
            "database": str(recogniser.describe().get("database", "")),
            "library": None if library is None else str(library),
            "device": str(device),
        },
    }
    folder = write_realworld_report(out, results, extra=extra)
    task.set_message(f"report written to {folder}")
    return folder, results


def evaluate_and_view(
    task: TaskState, session_folder: Path | str, **options: Any
) -> EvaluationView:
    """``evaluate_session``, then its report read back as a view draws it (for the page)."""
    folder, _ = evaluate_session(task, session_folder, **options)
    return load_evaluation(None, folder)


def _index_then_plan(
    task: TaskState,
    session: EvalSession,
    library: Path,
    checkpoint: Path | None,
    settings: RealWorldSettings,
    device: str,
    notes: list[str],
    home: Path,
) -> tuple[Recogniser, RealWorldPlan, TaskState]:
    """Check the library covers the session, index what is new (into a database in
    ``home``), plan; the evaluating task."""
    if not library.is_dir():
        raise ConfigError(f"{library}: no such library folder")
    if _inside(session.folder, library):
        raise ConfigError(
            f"{library}: holds the session itself (its takes would be indexed as songs); "
            "choose the folder of the songs"
        )
    model_path = checkpoint or default_checkpoint_path()
    if model_path is None:
        raise ConfigError(
            f"no shipped model ({SHIPPED_MODEL} is missing): choose a checkpoint to index with"
        )
    model = load_checkpoint(model_path)
    files = list(iter_audio_files([library]))
    if not files:
        raise ConfigError(f"{library}: no audio files in the library folder")
    db_dir = home / _library_database_name(library, model.sha256)
    known = _existing_checksums(db_dir)
    library_checksums: dict[str, Path] = {}
    titles: set[str] = set()
    new_s = 0.0
    for count, path in enumerate(files, 1):
        # no count of audio yet (that needs this pass): the bar stays busy, the text counts
        task.check_cancelled()
        task.set_message(f"checking the library: {count} / {len(files)} files")
        checksum = file_sha256(path)
        library_checksums[checksum] = path
        titles.add(_title_key(read_tags(path)[0]))
        if checksum not in known:
            new_s += _duration(path)
    _check_library_covers(session, library, library_checksums, titles)

    db, model = open_database_for_indexing(db_dir, model_path)
    recogniser = NeuralRecogniser(db, model, device=device)
    check_query_lengths(recogniser, settings, "neural")
    unknown = [m for m in settings.methods or () if m not in recogniser.methods]
    if unknown:
        raise ConfigError(
            f"decision rule {', '.join(unknown)} unknown (rules: {', '.join(recogniser.methods)})"
        )
    evaluate_s = sum(s.duration_s for s in session.songs) * _take_count(session, settings)
    # one count of audio: the new songs indexed, then the takes evaluated (about as costly)
    task.set_total(new_s + evaluate_s, "indexing the library")
    indexing = _phase(task, 0.0, new_s, "indexing the library")
    skipped: list[str] = []
    result = index_library(
        db,
        model.model,
        [library],
        device=device,
        task=indexing,
        on_skip=lambda entry: skipped.append(entry.reason),
    )
    indexing.check_cancelled()
    if result.added:
        notes.append(f"library {library} indexed into {db_dir}: {result.summary()}")
    else:
        notes.append(
            f"library {library}: database {db_dir} reused, {len(result.duplicates)} "
            "already in the database"
        )
    notes += [f"skipped: {reason}" for reason in skipped]
    notes += [f"warning: {entry.reason}" for entry in result.warnings]
    plan = plan_realworld([recogniser], session, settings)
    return recogniser, plan, _phase(task, new_s, new_s + evaluate_s, "evaluating")


def _check_library_covers(
    session: EvalSession, library: Path, checksums: dict[str, Path], titles: set[str]
) -> None:
    """Every session song is a library file (same content) or has a library song's title."""
    missing = []
    for song in session.songs:
        if song.file is not None and song.file.is_file() and file_sha256(song.file) in checksums:
            continue
        if song.source_sha256 in checksums:  # a query set's reference: its original is there
            continue
        if _title_key(song.title) not in titles:
            missing.append(song.title)
    if missing:
        names = ", ".join(repr(title) for title in missing)
        raise ConfigError(
            f"{library}: {len(missing)} of the {session.kind}'s {len(session.songs)} songs are "
            f"not in the library: {names}; add their files to the library folder (or choose a "
            "database that holds them)"
        )


def _existing_checksums(db_dir: Path) -> set[str]:
    if not (db_dir / MANIFEST).is_file():
        return set()
    return {song.checksum for song in FingerprintDB.open(db_dir).songs()}


def _duration(path: Path) -> float:
    try:
        return probe_audio(path).duration_s
    except AudioError:
        return 0.0  # indexing skips it with its reason


def _take_count(session: EvalSession, settings: RealWorldSettings) -> int:
    return len(settings.takes) if settings.takes is not None else len(session.takes)


def _phase(task: TaskState, start: float, end: float, label: str) -> TaskState:
    """A task for one phase: its progress fills [start, end] of ``task``'s total (the
    phase's own count is scaled: "already indexed" songs and estimates still add up)."""

    def report(done: float, total: float, message: str) -> None:
        fraction = min(1.0, done / total) if total > 0 else 0.0
        target = start + (end - start) * fraction
        text = f"{label}: {message}" if message and message != label else label
        task.advance(max(0.0, target - task.done), text)

    return task.fork(report)


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _title_key(title: str) -> str:
    return " ".join(title.casefold().split())


def library_database_folder(session_folder: Path | str, library: Path | str, sha256: str) -> Path:
    """Where a library's database for a checkpoint (its ``sha256``) lives in a session
    (or a query set) that can be written."""
    return Path(session_folder) / EVALUATIONS_DIR / _library_database_name(library, sha256)


def _library_database_name(library: Path | str, sha256: str) -> str:
    library = Path(library).resolve()
    digest = hashlib.sha256(f"{sha256}\n{library}".encode()).hexdigest()[:10]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", library.name).strip("-.") or "library"
    return f"db-{name[:40]}-{digest}"


def folder_writable(folder: Path | str) -> bool:
    """Whether files can be made in ``folder``, or (where it does not exist yet) in the
    nearest folder above it that exists."""
    path = Path(folder).absolute()
    while not path.exists():
        if path.parent == path:
            return False
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def evaluations_folder(source_folder: Path | str) -> Path | None:
    """``<source>/evaluations``, where a session's or query set's reports go by default;
    None when it cannot be written (a read-only set: the report folder must be chosen)."""
    folder = Path(source_folder) / EVALUATIONS_DIR
    return folder if folder_writable(folder) else None


def new_report_folder(session_folder: Path | str) -> Path:
    """A new, unused ``<session>/evaluations/<YYYYmmdd-HHMMSS>`` folder name."""
    base = Path(session_folder) / EVALUATIONS_DIR
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder, n = base / stamp, 2
    while folder.exists():
        folder, n = base / f"{stamp}-{n}", n + 1
    return folder


def _report_folder(session: EvalSession, out: Path | str | None) -> Path:
    if out is None:
        if evaluations_folder(session.folder) is None:
            raise ConfigError(
                f"{session.folder}: cannot be written (read-only), so the report cannot go "
                f"into its {EVALUATIONS_DIR}/ folder; choose a folder for the report"
            )
        return new_report_folder(session.folder)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    if not folder_writable(out):
        raise ConfigError(f"{out}: cannot be written (read-only); choose another report folder")
    return out


def parse_lengths(text: str) -> tuple[float, ...]:
    """Query lengths from text such as "1 2 3 4 5 10 15" or "1, 2.5"; ConfigError if bad."""
    parts = [p for p in re.split(r"[\s,;]+", text.strip()) if p]
    if not parts:
        raise ConfigError("query lengths: give at least one, in seconds (e.g. 1 2 3 4 5 10 15)")
    lengths = []
    for part in parts:
        try:
            value = float(part.removesuffix("s"))
        except ValueError:
            raise ConfigError(f"query lengths: {part!r} is not a number of seconds") from None
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"query lengths: {part!r} is not a positive number of seconds")
        lengths.append(int(value) if value.is_integer() else value)
    return tuple(lengths)


def previous_reports(session_folder: Path | str) -> list[Path]:
    """Finished report folders in ``<session>/evaluations``, newest first."""
    base = Path(session_folder) / EVALUATIONS_DIR
    if not base.is_dir():
        return []
    found = [p for p in base.iterdir() if p.is_dir() and (p / REPORT_FILE).is_file()]
    return sorted(found, key=lambda p: ((p / REPORT_FILE).stat().st_mtime, p.name), reverse=True)


# ---------------------------------------------------------------------- what a view draws


@dataclasses.dataclass(frozen=True)
class Series:
    """One line of the accuracy-vs-length plot."""

    label: str
    system: str
    take: str
    method: str
    lengths_s: tuple[float, ...]
    values: tuple[float, ...]  # percent


@dataclasses.dataclass(frozen=True)
class EvaluationView:
    """A real-world report as a view shows it (see ``load_evaluation``)."""

    folder: Path
    session: str
    systems: tuple[str, ...]
    takes: tuple[str, ...]
    methods: tuple[str, ...]
    lengths_s: tuple[float, ...]
    cells: dict[tuple[str, str, str, float], dict[str, Any]]
    notes: tuple[str, ...]
    table_markdown: str
    figure: Path | None
    describe: str
    offset_tolerance_s: float = 0.5
    threshold: Any = "auto"
    trials: int = 0
    origin: str = ""  # the evaluated folder's: "queryset" for a query set

    @property
    def source(self) -> str:
        """'query set NAME' or 'NAME' (a session): what was evaluated."""
        return f"query set {self.session}" if self.origin == "queryset" else self.session

    def measure_title(self, measure: str) -> str:
        return MEASURES[measure].format(tol=self.offset_tolerance_s)

    def value(self, measure: str, system: str, take: str, method: str, length: float) -> Any:
        cell = self.cells.get((system, take, method, float(length)))
        value = None if cell is None else cell.get(measure)
        return None if value is None else 100.0 * float(value)

    def columns(self) -> list[tuple[str, str, str, str]]:
        """(system, method, take, header) per table column: rules, then takes, per system.

        The header is the take; ``column_groups`` names the rule above each run of takes.
        """
        return [
            (system, method, take, take)
            for system in self.systems
            for method in self.methods
            for take in self.takes
        ]

    def column_groups(self) -> list[tuple[str, int]]:
        """(rule, number of columns) above the take columns, in column order."""
        several = len(self.systems) > 1
        return [
            (
                METHOD_NAMES.get(method, method) + (f" ({system})" if several else ""),
                len(self.takes),
            )
            for system in self.systems
            for method in self.methods
        ]

    def table(self, measure: str = "accuracy") -> tuple[list[str], list[list[str]]]:
        """Headers and rows of paper Table 4's shape: a row per query length, a column per
        rule and take (``column_groups`` says which rule)."""
        columns = self.columns()
        headers = ["query", "queries"] + [c[3] for c in columns]
        rows = []
        for length in self.lengths_s:
            counts = sorted(
                {
                    int(cell["queries"])
                    for c in columns
                    if (cell := self.cells.get((c[0], c[2], c[1], float(length))))
                }
            )
            row = [f"{length:g} s", "/".join(map(str, counts)) or "–"]
            for system, method, take, _ in columns:
                value = self.value(measure, system, take, method, length)
                row.append("–" if value is None else f"{value:.1f}")
            rows.append(row)
        return headers, rows

    def series(self, measure: str = "accuracy") -> list[Series]:
        several = len(self.systems) > 1
        out = []
        for system in self.systems:
            for take in self.takes:
                for method in self.methods:
                    points = [
                        (length, self.value(measure, system, take, method, length))
                        for length in self.lengths_s
                    ]
                    points = [(x, y) for x, y in points if y is not None]
                    if not points:
                        continue
                    label = f"{take}, {METHOD_NAMES.get(method, method)}"
                    if several:
                        label += f" ({system})"
                    xs, ys = zip(*points, strict=True)
                    out.append(Series(label, system, take, method, xs, ys))
        return out


FULL_RANGE = (-3.0, 105.0)
"""The plot's y range showing all of 0-100 % (a little room for the markers)."""
_MIN_SPAN = 10.0  # percentage points: a flat line is not blown up into noise


def value_range(series: Sequence[Series], full: bool = False) -> tuple[float, float]:
    """The y range (percent) of an accuracy-vs-length plot: the data's, with a margin of
    8 % of their span (at least 2 points, at least 10 points in all), inside ``FULL_RANGE``;
    ``full`` (or no data): ``FULL_RANGE``."""
    values = [v for line in series for v in line.values if math.isfinite(v)]
    if full or not values:
        return FULL_RANGE
    low, high = min(values), max(values)
    pad = max(2.0, 0.08 * (high - low))
    low, high = low - pad, high + pad
    if high - low < _MIN_SPAN:
        middle = (low + high) / 2
        low, high = middle - _MIN_SPAN / 2, middle + _MIN_SPAN / 2
    if high > FULL_RANGE[1]:
        low, high = low - (high - FULL_RANGE[1]), FULL_RANGE[1]
    if low < FULL_RANGE[0]:
        low, high = FULL_RANGE[0], min(FULL_RANGE[1], high + FULL_RANGE[0] - low)
    return low, high


def load_evaluation(task: TaskState | None, folder: Path | str) -> EvaluationView:
    """Read a real-world report folder back (``ReportError``, one line, if it is not one)."""
    folder = Path(folder)
    if task is not None:
        task.set_total(0, f"reading {folder.name}")
    report = read_report(folder)
    if report.protocol != "realworld":
        raise ReportError(f"{folder}: a {report.protocol} report, not a real-world one")
    data = report.data
    settings = data.get("settings") or {}
    systems_data = data.get("systems") or []
    summary = data.get("summary") or []
    try:
        cells = {
            (str(c["system"]), str(c["take"]), str(c["method"]), float(c["length_s"])): c
            for c in summary
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"{folder / REPORT_FILE}: malformed summary ({exc})") from None
    systems = tuple(str(s.get("label")) for s in systems_data) or tuple(
        dict.fromkeys(k[0] for k in cells)
    )
    methods = tuple(dict.fromkeys(m for s in systems_data for m in s.get("methods", ()))) or tuple(
        dict.fromkeys(k[2] for k in cells)
    )
    takes = [str(t) for t in data.get("takes") or dict.fromkeys(k[1] for k in cells)]
    ordered = sorted(takes, key=take_sort_key)
    lengths = tuple(float(x) for x in settings.get("lengths_s") or ())
    session = Path(str((data.get("session") or {}).get("folder", ""))).name
    return EvaluationView(
        folder=folder,
        session=session,
        systems=systems,
        takes=tuple(ordered),
        methods=methods,
        lengths_s=lengths or tuple(sorted({k[3] for k in cells})),
        cells=cells,
        notes=tuple(str(n) for n in data.get("notes") or ()),
        table_markdown=report.table,
        figure=report.figure,
        describe=_describe(data),
        offset_tolerance_s=float(settings.get("offset_tolerance_s", 0.5)),
        threshold=settings.get("threshold", "auto"),
        trials=len(report.trials),
        origin=str((data.get("session") or {}).get("origin", "")),
    )


def _describe(data: dict[str, Any]) -> str:
    """One line: when, which model (its file and architecture) and database, k."""
    session_folder = Path(str((data.get("session") or {}).get("folder", "")))
    parts = []
    created = str(data.get("created", ""))
    if created:
        try:
            when = datetime.datetime.fromisoformat(created).astimezone()
            parts.append(when.strftime("%Y-%m-%d %H:%M"))
        except ValueError:
            parts.append(created)
    for system in data.get("systems") or []:
        info = system.get("recogniser") or {}
        text = []
        if info.get("checkpoint"):
            text.append(f"model {_describe_checkpoint(info, session_folder)}")
        if info.get("database"):
            db = info.get("database_info") or {}
            songs = db.get("songs")
            text.append(
                f"database {short_path(Path(str(info['database'])), session_folder)}"
                + (f" ({songs} songs)" if isinstance(songs, int) else "")
            )
        if info.get("k"):
            text.append(f"k={info['k']}")
        if text:
            parts.append(", ".join(text))
    return "; ".join(parts)


def _describe_checkpoint(info: dict[str, Any], session_folder: Path) -> str:
    """'evaluations/db-x/model.pt (nafp width 0.25, the shipped model)': the file, then
    the architecture from the checkpoint's metadata (a database's model.pt is a copy of
    the checkpoint it was built with, so the file name alone says little)."""
    about = []
    spec = info.get("model")
    if isinstance(spec, dict) and spec.get("name"):
        arch = spec.get("arch")
        width = arch.get("width") if isinstance(arch, dict) else None
        width_text = f" width {width:g}" if isinstance(width, int | float) else ""
        about.append(f"{spec['name']}{width_text}")
    if info.get("trained") is False:
        about.append("untrained")
    elif info.get("checkpoint_sha256") and info.get("checkpoint_sha256") == _shipped_sha256():
        about.append("the shipped model")
    path = short_path(Path(str(info["checkpoint"])), session_folder)
    return path + (f" ({', '.join(about)})" if about else "")


@functools.lru_cache(maxsize=1)
def _shipped_sha256() -> str | None:
    try:
        return file_sha256(SHIPPED_MODEL)
    except OSError:
        return None


def short_path(path: Path, session_folder: Path | None = None) -> str:
    """``path`` relative to the session folder when inside it, else '~/...' when inside
    the home folder, else as it is."""
    if session_folder is not None and str(session_folder) not in ("", "."):
        try:
            return path.relative_to(session_folder).as_posix()
        except ValueError:
            pass
    try:
        return "~/" + path.relative_to(Path.home()).as_posix()
    except ValueError:
        return str(path)
