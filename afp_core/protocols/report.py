"""Evaluation reports: one folder per run, written atomically, read back by ``read_report``.

A report folder holds:

- ``report.json``: format/version, the protocol, when, the versions (afp, torch, faiss,
  numpy, python, platform), every setting, what was evaluated (``Recogniser.describe()``:
  database, checkpoint, k, nprobe...), the session and its takes' metadata or the noise,
  notes, the summary, and the types of the CSV's columns;
- ``trials.csv``: one row per query;
- ``accuracy.png``: the figure (accuracy vs query length like the paper's tables, or vs
  code length like its Figure 7);
- ``tradeoff.png`` (real world, with impostors): the "no match" trade-off, true queries
  answered with the right song against the false-match rate on impostors, per rule;
- ``table.md``: the Markdown table (real world: paper Table 4's shape; baseline: Table 3's;
  quantisation: a table of Figure 7's points).

Every file goes through a temporary file and a rename; ``report.json`` is written last,
so a folder with a report.json holds a complete report.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from afp_core import __version__
from afp_core.colours import take_colour
from afp_core.errors import AfpError
from afp_core.fileutil import (
    atomic_path,
    atomic_write_text,
    check_document,
    format_bytes,
    read_json_object,
    utc_now,
)
from afp_core.protocols.baseline import (
    METHOD_LABELS,
    BaselineResult,
    Trial,
    condition_name,
    format_accuracy_tables,
)
from afp_core.protocols.quantisation import QuantisationResult
from afp_core.protocols.realworld import RealWorldResult, RealWorldTrial, take_sort_key

REPORT_FORMAT = "afp-evaluation-report"
REPORT_VERSION = 1
REPORT_FILE = "report.json"
TRIALS_FILE = "trials.csv"
FIGURE_FILE = "accuracy.png"
TRADEOFF_FILE = "tradeoff.png"
TABLE_FILE = "table.md"


class ReportError(AfpError):
    """A report folder is missing, incomplete or not a report."""


@dataclasses.dataclass
class EvaluationReport:
    """A report folder read back: the JSON, the trials (typed), the table and the figure."""

    folder: Path
    protocol: str
    data: dict[str, Any]
    trials: list[dict[str, Any]]
    table: str
    figure: Path | None

    @property
    def summary(self) -> Any:
        return self.data.get("summary")


def versions() -> dict[str, str]:
    """Versions a report needs to be reproduced."""
    import faiss
    import torch

    return {
        "afp": __version__,
        "torch": str(torch.__version__),
        "faiss": str(faiss.__version__),
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


# ---------------------------------------------------------------------- real world


def realworld_report_data(
    results: Sequence[RealWorldResult], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The report.json of one or several systems evaluated on the same session."""
    first = results[0]
    notes = list(dict.fromkeys(note for r in results for note in r.notes))
    return {
        "protocol": "realworld",
        "session": first.session,
        "takes": list(first.takes),
        "settings": first.settings,
        "systems": [
            {
                "label": r.system,
                "recogniser": r.recogniser,
                "methods": list(r.methods),
                "songs": [dataclasses.asdict(m) for m in r.songs],
                "elapsed_s": r.elapsed_s,
            }
            for r in results
        ],
        "summary": [dataclasses.asdict(c) for r in results for c in r.summary],
        "notes": notes,
        **(extra or {}),
    }


def write_realworld_report(
    out: Path | str,
    results: RealWorldResult | Sequence[RealWorldResult],
    *,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the report of ``results`` into folder ``out``; returns the folder."""
    results = [results] if isinstance(results, RealWorldResult) else list(results)
    if not results:
        raise ReportError("no results to report")
    trials = [dataclasses.asdict(t) for r in results for t in r.trials]
    figures = {}
    if any(t.impostor_score is not None for r in results for t in r.trials):
        figures[TRADEOFF_FILE] = lambda path: plot_realworld_tradeoff(results, path)
    return _write(
        Path(out),
        realworld_report_data(results, extra),
        trials,
        _columns(RealWorldTrial),
        format_realworld_table(results),
        lambda path: plot_realworld(results, path),
        figures,
    )


def _realworld_columns(results: Sequence[RealWorldResult]) -> list[tuple[str, str, str, str]]:
    """(system, method, take, header) per column: methods then takes, per system."""
    several = len(results) > 1
    columns = []
    for result in results:
        for method in result.methods:
            for take in sorted(result.takes, key=take_sort_key):
                prefix = f"{result.system} " if several else ""
                columns.append((result.system, method, take, f"{prefix}{method} {take}"))
    return columns


def format_realworld_table(results: Sequence[RealWorldResult]) -> str:
    """Markdown shaped like paper Table 4: rows query lengths, columns rules x takes."""
    first = results[0]
    settings = first.settings
    cells = {(c.system, c.take, c.method, c.length_s): c for r in results for c in r.summary}
    columns = _realworld_columns(results)
    lengths = [float(x) for x in settings["lengths_s"]]
    session = Path(first.session["folder"]).name
    songs = len(first.session["songs"])
    rules = "; ".join(
        f"{m}: {METHOD_LABELS.get(m, m)}"
        for m in dict.fromkeys(m for r in results for m in r.methods)
    )
    threshold = settings.get("threshold")

    def table(title: str, value: Callable[[Any], str]) -> list[str]:
        lines = [
            title,
            "",
            "| query | queries | " + " | ".join(c[3] for c in columns) + " |",
            "|---|---|" + "---|" * len(columns),
        ]
        for length in lengths:
            row = [cells.get((c[0], c[2], c[1], length)) for c in columns]
            counts = sorted({c.queries for c in row if c is not None})
            count = "-" if not counts else "/".join(str(n) for n in counts)
            values = [value(c) if c is not None else "-" for c in row]
            lines.append(f"| {length:g} s | {count} | " + " | ".join(values) + " |")
        return [*lines, ""]

    takes = ", ".join(sorted(first.takes, key=take_sort_key))
    lines = [
        f"Real-world protocol on session {session} ({first.session.get('origin', 'rig')}, "
        f"{songs} songs; takes {takes}); rules: {rules}",
        "",
    ]
    lines += table(
        "Accuracy % (right song, no rejection: the paper's measure, Table 4)",
        lambda c: f"{100 * c.accuracy:.1f}",
    )
    lines += table(
        f"Offset accuracy % (right song, offset within ±{settings['offset_tolerance_s']:g} s)",
        lambda c: f"{100 * c.offset_accuracy:.1f}",
    )
    if threshold is not None:
        measured = any(c.false_match_rate_measured is not None for c in cells.values())
        lines += table(
            '"No match" rate % / accuracy % with rejection'
            + (" / false matches % on impostors" if measured else "")
            + f" (threshold: {threshold})",
            lambda c: (
                f"{100 * c.no_match_rate:.1f} / {100 * c.accuracy_with_rejection:.1f}"
                + (
                    f" / {100 * c.false_match_rate_measured:.1f}"
                    if c.false_match_rate_measured is not None
                    else ""
                )
            ),
        )
    if any(c.threshold_at_fmr is not None for c in cells.values()):
        rate = 100 * float(settings.get("false_match_rate", 0.01))
        lines += table(
            f"At {rate:g} % false matches (threshold set on this session's impostors, the "
            f"queries answered without their song): true queries rejected % / accuracy %",
            lambda c: (
                "-"
                if c.rejected_at_fmr is None
                else f"{100 * c.rejected_at_fmr:.1f} / {100 * c.accuracy_at_fmr:.1f}"
            ),
        )
    notes = list(dict.fromkeys(note for r in results for note in r.notes))
    if notes:
        lines += ["Notes:", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines).rstrip() + "\n"


_STYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P")


def plot_realworld(results: Sequence[RealWorldResult], path: Path | BinaryIO) -> None:
    """Accuracy vs query length, one line per system x take x rule."""
    figure, ax = _figure()
    colours: dict[str, str] = {}
    for s, result in enumerate(results):
        for t, take in enumerate(sorted(result.takes, key=take_sort_key)):
            if take not in colours:
                colours[take] = take_colour(take, t)  # as the app draws it
            for m, method in enumerate(result.methods):
                cells = [c for c in result.summary if c.take == take and c.method == method]
                if not cells:
                    continue
                label = f"{take}, {method}" + (f" ({result.system})" if len(results) > 1 else "")
                ax.plot(
                    [c.length_s for c in cells],
                    [100 * c.accuracy for c in cells],
                    color=colours[take],
                    linestyle=_STYLES[m % len(_STYLES)],
                    marker=_MARKERS[s % len(_MARKERS)],
                    label=label,
                )
    lengths = [float(x) for x in results[0].settings["lengths_s"]]
    ax.set_xticks(lengths)
    ax.set_xticklabels([f"{x:g}" for x in lengths])
    ax.set_xlabel("query length (s)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"Real-world protocol: {Path(results[0].session['folder']).name}")
    _finish(figure, ax, path)


def plot_realworld_tradeoff(results: Sequence[RealWorldResult], path: Path | BinaryIO) -> None:
    """One panel per system x rule: share of true queries answered with the right song
    (score >= threshold) against the share of impostors answered (a song despite its
    absence), as the threshold moves; one line per query length, takes pooled."""
    panels = [(r, m) for r in results for m in r.methods]
    figure, axes = _figure(len(panels))
    axes = np.atleast_1d(axes)
    rate = float(results[0].settings.get("false_match_rate", 0.01))
    for ax, (result, method) in zip(axes, panels, strict=True):
        lengths = sorted({t.length_s for t in result.trials if t.method == method})
        for i, length in enumerate(lengths):
            rows = [
                t
                for t in result.trials
                if t.method == method and t.length_s == length and t.impostor_score is not None
            ]
            if not rows:
                continue
            impostors = np.array([t.impostor_score for t in rows])
            scores = np.array([t.score for t in rows])
            hits = np.array([t.song_hit for t in rows])
            cuts = np.unique(np.r_[impostors, np.inf])[:, None]  # every threshold that matters
            far = np.mean(impostors[None, :] >= cuts, axis=1)
            accepted = np.mean(hits[None, :] & (scores[None, :] >= cuts), axis=1)
            ax.plot(
                np.maximum(far, 5e-4) * 100,
                accepted * 100,
                color=f"C{i}",
                label=f"{length:g} s",
            )
        ax.axvline(rate * 100, color="gray", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlim(0.05, 100)
        ax.set_ylim(-2, 102)
        ax.set_xlabel("false matches on impostors (%)")
        ax.set_ylabel("right song, accepted (%)")
        name = f"{result.system}: {METHOD_LABELS.get(method, method)}"
        ax.set_title(name if len(name) < 60 else name[:57] + "...", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, format="png")


# ---------------------------------------------------------------------- baseline


def baseline_report_data(result: BaselineResult, extra: dict[str, Any] | None = None) -> dict:
    return {
        "protocol": "baseline",
        "settings": dataclasses.asdict(result.settings),
        "systems": [
            {"label": result.system, "recogniser": result.recogniser, "elapsed_s": result.elapsed_s}
        ],
        "summary": result.summary,
        "notes": list(result.notes),
        **(extra or {}),
    }


def write_baseline_report(
    out: Path | str, result: BaselineResult, *, extra: dict[str, Any] | None = None
) -> Path:
    """Write the baseline protocol's report into folder ``out``; returns the folder."""
    trials = [_baseline_row(result.system, t) for t in result.trials]
    return _write(
        Path(out),
        baseline_report_data(result, extra),
        trials,
        {"system": "str", **_columns(Trial), "rejected": "bool"},
        format_accuracy_tables(result.summary) + _notes(result.notes),
        lambda path: plot_baseline(result, path),
    )


def _baseline_row(system: str, trial: Trial) -> dict[str, Any]:
    return {"system": system, **dataclasses.asdict(trial), "rejected": trial.rejected}


def plot_baseline(result: BaselineResult, path: Path | BinaryIO) -> None:
    """Hit rate vs query length, one panel per rule, one line per condition (± spread)."""
    summary = result.summary
    methods = list(summary["results"])
    figure, axes = _figure(columns=max(1, len(methods)))
    axes = axes if isinstance(axes, np.ndarray) else np.array([axes])
    lengths = [float(x) for x in summary["settings"]["lengths_s"]]
    for ax, method in zip(axes, methods or [None], strict=False):
        if method is None:
            continue
        for i, snr in enumerate(summary["settings"]["snrs_db"]):
            cells = summary["results"][method].get(condition_name(snr), {})
            xs = [x for x in lengths if f"{x:g}" in cells]
            if not xs:
                continue
            ys = [100 * cells[f"{x:g}"]["accuracy"] for x in xs]
            errors = [
                100 * (c["std"] if c.get("std") is not None else c["stderr"])
                for c in (cells[f"{x:g}"] for x in xs)
            ]
            ax.errorbar(
                xs,
                ys,
                yerr=errors,
                marker=_MARKERS[i % len(_MARKERS)],
                capsize=3,
                label=condition_name(snr),
            )
        ax.set_xticks(lengths)
        ax.set_xticklabels([f"{x:g}" for x in lengths])
        ax.set_xlabel("query length (s)")
        ax.set_ylabel("Top-1 hit rate (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(f"Baseline protocol: {METHOD_LABELS.get(method, method)}")
    _finish(figure, axes[0], path)


# ---------------------------------------------------------------------- quantisation


def _quantisation_columns(result: QuantisationResult) -> list[tuple[str, str, float, str]]:
    """(condition or take, method, length, header) of the evaluation, per column."""
    columns = []
    if result.protocol == "realworld":
        first = _realworld_results(result)[0]
        lengths = [float(x) for x in first.settings["lengths_s"]]
        for length in lengths:
            for method in first.methods:
                for take in sorted(first.takes, key=take_sort_key):
                    suffix = f" {length:g} s" if len(lengths) > 1 else ""
                    columns.append((take, method, length, f"{method} {take}{suffix}"))
    else:
        first_b = _baseline_results(result)[0]
        settings = first_b.summary["settings"]
        lengths = [float(x) for x in settings["lengths_s"]]
        for length in lengths:
            for method in first_b.summary["results"]:
                for snr in settings["snrs_db"]:
                    suffix = f" {length:g} s" if len(lengths) > 1 else ""
                    name = condition_name(snr)
                    columns.append((name, method, length, f"{method} {name}{suffix}"))
    return columns


def _realworld_results(result: QuantisationResult) -> list[RealWorldResult]:
    found = [e for e in result.evaluations if isinstance(e, RealWorldResult)]
    if len(found) != len(result.evaluations):
        raise AfpError("a real-world quantisation sweep holds baseline evaluations")
    return found


def _baseline_results(result: QuantisationResult) -> list[BaselineResult]:
    found = [e for e in result.evaluations if isinstance(e, BaselineResult)]
    if len(found) != len(result.evaluations):
        raise AfpError("a baseline quantisation sweep holds real-world evaluations")
    return found


def _quantisation_value(
    evaluation: RealWorldResult | BaselineResult, key: str, method: str, length: float
) -> float | None:
    if isinstance(evaluation, RealWorldResult):
        cell = evaluation.cell(key, method, length)
        return None if cell is None else cell.accuracy
    cell = evaluation.summary["results"].get(method, {}).get(key, {}).get(f"{length:g}")
    return None if cell is None else cell["accuracy"]


def quantisation_summary(result: QuantisationResult) -> list[dict[str, Any]]:
    """One row per index: its size and the accuracy of every evaluation column."""
    rows = []
    for point, evaluation in zip(result.points, result.evaluations, strict=True):
        accuracy = {
            header: _quantisation_value(evaluation, key, method, length)
            for key, method, length, header in _quantisation_columns(result)
        }
        rows.append(
            {
                **dataclasses.asdict(point),
                "bytes_per_vector": point.bytes_per_vector,
                "accuracy": accuracy,
            }
        )
    return rows


def format_quantisation_table(result: QuantisationResult) -> str:
    """Markdown: one row per index (m, code length, size), accuracy per column."""
    columns = _quantisation_columns(result)
    measure = (
        "song-level accuracy %, no rejection"
        if result.protocol == "realworld"
        else "Top-1 hit rate % (offset within ±0.5 s)"
    )
    effective = result.effective
    lines = [
        f"Accuracy vs code length (paper Figure 7): {result.protocol} protocol, {measure}; "
        f"{effective['vectors']} vectors of {len(result.library)} songs; IVF-PQ with "
        f"nlist={effective['nlist']}, nprobe={effective['nprobe']}, "
        f"{effective['nbits']}-bit codebooks",
        "",
        "| index | code (bits) | bytes/vector | index size | "
        + " | ".join(c[3] for c in columns)
        + " |",
        "|---|---|---|---|" + "---|" * len(columns),
    ]
    for point, evaluation in zip(result.points, result.evaluations, strict=True):
        values = []
        for key, method, length, _ in columns:
            value = _quantisation_value(evaluation, key, method, length)
            values.append("-" if value is None else f"{100 * value:.1f}")
        lines.append(
            f"| {point.label} | {point.code_bits} | {point.bytes_per_vector:g} | "
            f"{format_bytes(point.index_bytes)} | " + " | ".join(values) + " |"
        )
    lines.append("")
    return "\n".join(lines) + _notes(result.notices)


def plot_quantisation(result: QuantisationResult, path: Path | BinaryIO) -> None:
    """Accuracy vs code length (log scale), one line per column; index sizes on top."""
    figure, ax = _figure()
    pq = [(i, p) for i, p in enumerate(result.points) if p.m is not None]
    flat = [(i, p) for i, p in enumerate(result.points) if p.m is None]
    columns = _quantisation_columns(result)
    keys = list(dict.fromkeys(c[0] for c in columns))
    lengths = list(dict.fromkeys(c[2] for c in columns))
    for key, method, length, header in columns:
        colour = take_colour(key, keys.index(key))
        marker = _MARKERS[lengths.index(length) % len(_MARKERS)]
        style = (
            _STYLES[list(METHOD_LABELS).index(method) % len(_STYLES)]
            if method in METHOD_LABELS
            else "-"
        )
        xs, ys = [], []
        for i, point in pq:
            value = _quantisation_value(result.evaluations[i], key, method, length)
            if value is not None:
                xs.append(point.code_bits)
                ys.append(100 * value)
        line = ax.plot(xs, ys, marker=marker, color=colour, linestyle=style, label=header)
        for i, point in flat:
            value = _quantisation_value(result.evaluations[i], key, method, length)
            if value is not None:
                ax.plot(
                    [point.code_bits],
                    [100 * value],
                    marker="*",
                    markersize=11,
                    color=line[0].get_color(),
                    linestyle="none",
                )
    ax.set_xscale("log", base=2)
    ticks = [p.code_bits for p in result.points]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{p.code_bits}\n{p.label}" for p in result.points], fontsize=7)
    ax.set_xlabel("code length (bits per vector); * = unquantised (flat)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    top = ax.twiny()
    top.set_xscale("log", base=2)
    top.set_xlim(ax.get_xlim())
    top.set_xticks(ticks)
    top.set_xticklabels([format_bytes(p.index_bytes) for p in result.points], fontsize=7)
    top.set_xlabel("index size")
    _finish(figure, ax, path)


def quantisation_report_data(
    result: QuantisationResult, extra: dict[str, Any] | None = None
) -> dict:
    first = result.evaluations[0]
    systems = [{"label": e.system, "recogniser": e.recogniser} for e in result.evaluations]
    return {
        "protocol": "quantisation",
        "evaluation_protocol": result.protocol,
        "settings": dataclasses.asdict(result.settings),
        "effective_index_settings": result.effective,
        "evaluation_settings": result.evaluation_settings,
        "checkpoint": result.checkpoint,
        "library": result.library,
        "session": result.session,
        "takes": list(first.takes) if isinstance(first, RealWorldResult) else None,
        "noise": result.noise,
        "systems": systems,
        "summary": quantisation_summary(result),
        "evaluations": [
            [dataclasses.asdict(c) for c in e.summary]
            if isinstance(e, RealWorldResult)
            else e.summary
            for e in result.evaluations
        ],
        "notes": list(result.notices),
        "elapsed_s": result.elapsed_s,
        **(extra or {}),
    }


def write_quantisation_report(
    out: Path | str, result: QuantisationResult, *, extra: dict[str, Any] | None = None
) -> Path:
    """Write the sweep's report into folder ``out``; returns the folder."""
    if result.protocol == "realworld":
        trials = [
            {"index": e.system, **dataclasses.asdict(t)}
            for e in result.evaluations
            for t in e.trials
        ]
        columns = {"index": "str", **_columns(RealWorldTrial)}
    else:
        trials = [
            {"index": e.system, **_baseline_row(e.system, t)}
            for e in _baseline_results(result)
            for t in e.trials
        ]
        columns = {"index": "str", "system": "str", **_columns(Trial), "rejected": "bool"}
    return _write(
        Path(out),
        quantisation_report_data(result, extra),
        trials,
        columns,
        format_quantisation_table(result),
        lambda path: plot_quantisation(result, path),
    )


# ---------------------------------------------------------------------- files


def _write(
    out: Path,
    data: dict[str, Any],
    trials: list[dict[str, Any]],
    columns: dict[str, str],
    table: str,
    plot: Callable[[BinaryIO], None],
    figures: dict[str, Callable[[BinaryIO], None]] | None = None,
) -> Path:
    if out.exists() and not out.is_dir():
        raise ReportError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    document = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "created": utc_now(),
        "versions": versions(),
        **data,
        "files": {
            "trials": TRIALS_FILE,
            "figure": FIGURE_FILE,
            "table": TABLE_FILE,
            **({"figures": list(figures)} if figures else {}),
        },
        "trial_columns": columns,
    }
    text = json.dumps(_finite(document), indent=2, default=_json_default, allow_nan=False)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in trials:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    atomic_write_text(out / TRIALS_FILE, buffer.getvalue())
    for name, draw in {FIGURE_FILE: plot, **(figures or {})}.items():
        with atomic_path(out / name) as tmp, tmp.open("wb") as handle:
            draw(handle)
    atomic_write_text(out / TABLE_FILE, table)
    atomic_write_text(out / REPORT_FILE, text + "\n")
    return out


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (JSON has no such numbers)."""
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def _columns(cls: type) -> dict[str, str]:
    types = {"str": "str", "int": "int", "float": "float", "bool": "bool"}
    columns = {}
    for field in dataclasses.fields(cls):
        annotation = str(field.type)
        base = annotation.split("|")[0].strip()
        columns[field.name] = types.get(base, "str")
    return columns


def _parse(value: str, kind: str) -> Any:
    if value == "":
        return None
    if kind == "bool":
        return value == "True"
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    return value


def read_report(folder: Path | str) -> EvaluationReport:
    """Read a report folder written here; ``ReportError`` (one line) if it is not one."""
    folder = Path(folder)
    file = folder / REPORT_FILE
    if not folder.is_dir():
        raise ReportError(f"{folder}: no such report folder")
    if not file.is_file():
        raise ReportError(f"{file}: no such file (not a finished evaluation report)")
    data = read_json_object(file, ReportError)
    check_document(data, REPORT_FORMAT, REPORT_VERSION, file, ReportError)
    columns = data.get("trial_columns")
    if not isinstance(columns, dict):
        raise ReportError(f"{file}: malformed report (no trial_columns)")
    trials_file = folder / TRIALS_FILE
    try:
        text = trials_file.read_text(encoding="utf-8")
        table = (folder / TABLE_FILE).read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"{folder}: incomplete report ({exc.strerror}: {exc.filename})") from None
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames != list(columns):
        raise ReportError(f"{trials_file}: columns differ from those report.json lists")
    try:
        trials = [{k: _parse(v, columns[k]) for k, v in row.items()} for row in reader]
    except (ValueError, TypeError) as exc:
        raise ReportError(f"{trials_file}: malformed row ({exc})") from None
    figure = folder / FIGURE_FILE
    return EvaluationReport(
        folder=folder,
        protocol=str(data.get("protocol")),
        data=data,
        trials=trials,
        table=table,
        figure=figure if figure.is_file() else None,
    )


# ---------------------------------------------------------------------- helpers


def _figure(columns: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7 * columns if columns > 1 else 7.5, 4.8), dpi=110)
    axes = figure.subplots(1, columns, squeeze=True)
    return figure, axes


def _finish(figure: Any, ax: Any, target: Any) -> None:
    for axis in figure.axes:
        axis.grid(True, alpha=0.3)
    handles, _labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7, loc="best", ncol=2 if len(handles) > 6 else 1, framealpha=0.7)
    figure.tight_layout()
    figure.savefig(target, format="png")


def _notes(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    return "\nNotes:\n\n" + "".join(f"- {note}\n" for note in notes)
