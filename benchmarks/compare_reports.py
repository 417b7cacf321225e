"""Compare two real-world evaluation reports cell by cell: the rule that decides whether a
candidate model replaces the shipped one (docs/training.md, "How a candidate is judged").

Each report is the ``report.json`` that ``afp evaluate`` or ``benchmarks/bench_realworld.py``
writes. For one rule (default ``sequence``), the first neural system of each report (or
the one ``--old-system`` / ``--new-system`` names: two models of one report) is
compared on every (query length, take) cell by three measures:

- accuracy: right song, no rejection (the paper's measure);
- offset accuracy: right song and offset within the report's tolerance;
- answered: right song *and* above the threshold that lets 1 % of impostor queries
  through (``accuracy_at_fmr``), what a deployment that says "no match" delivers.

A candidate ships only when it is ahead on the sum of accuracy *and* of answered over
the sessions compared; the printed counts of cells ahead and behind say how even that is.
Where both reports hold their trials (``trials.csv``) of the same session, each sum also
gets a 95 % interval from a paired bootstrap over the session's songs (the queries of one
song are not independent, the songs are): the songs are drawn with replacement, the same
draw for both models, and the summed difference recomputed, with each cell's 1 % threshold
held at its reported value. How often the candidate stays ahead says whether the session
can tell the two apart. With ``--landmark`` the candidate is also set against the
landmark system of its report.

    python benchmarks/compare_reports.py \\
        runs/bench-realworld/reports/validation-demo-af2df239915c-landmark \\
        runs/bench-realworld/reports/validation-demo-<candidate>-landmark --landmark
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from afp_core.fileutil import read_json_object
from afp_core.protocols.realworld import take_sort_key
from afp_core.protocols.report import REPORT_FILE, REPORT_FORMAT, ReportError, read_report

MEASURES = {
    "accuracy": "accuracy",
    "offset": "offset_accuracy",
    "answered": "accuracy_at_fmr",
}


BOOTSTRAP_ROUNDS = 2000

Cell = tuple[float, str]  # (length_s, take)
Query = tuple[str, int, float, float]  # (take, song_index, start_s, length_s)


@dataclass(frozen=True)
class ReportCells:
    """One system's summary cells of one report: (length_s, take) -> measure -> value %,
    and each cell's threshold at 1 % false matches."""

    label: str
    cells: dict[Cell, dict[str, float]]
    thresholds: dict[Cell, float]


Trials = list[dict[str, Any]]


def load_report(path: Path, with_trials: bool = True) -> tuple[dict[str, Any], Trials | None]:
    """The report JSON at ``path`` and, for a report folder read ``with_trials``, its
    trials (typed rows); a bare ``report.json`` has no trials."""
    if path.is_dir() and not with_trials:
        path = path / REPORT_FILE
    try:
        if path.is_dir():
            folder = read_report(path)
            return folder.data, folder.trials
        report = read_json_object(path, ReportError)
    except ReportError as exc:
        raise SystemExit(str(exc)) from None
    if report.get("format") != REPORT_FORMAT:
        raise SystemExit(f"{path}: not an afp evaluation report")
    return report, None


def select_cells(
    report: dict[str, Any],
    kind: str,
    method: str,
    source: Path,
    part: str = "",
    measures: dict[str, str] = MEASURES,
) -> ReportCells:
    """The cells of the first system of ``kind`` in ``report`` whose label contains
    ``part``, for rule ``method``: each of ``measures`` (name -> summary field) in %."""
    labels = [
        s["label"]
        for s in report["systems"]
        if s["recogniser"]["kind"] == kind and part in s["label"]
    ]
    if not labels:
        named = f" named '{part}'" if part else ""
        raise SystemExit(f"{source}: no {kind} system{named} in this report")
    label = labels[0]
    cells: dict[Cell, dict[str, float]] = {}
    thresholds: dict[Cell, float] = {}
    for row in report["summary"]:
        if row["system"] == label and row["method"] == method:
            key = (float(row["length_s"]), str(row["take"]))
            cells[key] = {
                name: 100.0 * float(row[field])
                for name, field in measures.items()
                if row.get(field) is not None
            }
            if row.get("threshold_at_fmr") is not None:
                thresholds[key] = float(row["threshold_at_fmr"])
    if not cells:
        raise SystemExit(f"{source}: {label} has no '{method}' rows")
    return ReportCells(label, cells, thresholds)


def read_query_hits(
    trials: Trials, selected: ReportCells, method: str
) -> dict[Query, dict[str, bool]]:
    """Per query of ``selected``'s system and rule in ``trials``: measure -> hit."""
    hits: dict[Query, dict[str, bool]] = {}
    for row in trials:
        if row["system"] != selected.label or row["method"] != method:
            continue
        length, take = float(row["length_s"]), str(row["take"])
        threshold = selected.thresholds.get((length, take))
        query = (take, int(row["song_index"]), float(row["start_s"]), length)
        hits[query] = {
            "accuracy": bool(row["song_hit"]),
            "offset": bool(row["offset_hit"]),
            "answered": bool(row["song_hit"])
            and threshold is not None
            and float(row["score"]) >= threshold,
        }
    return hits


def bootstrap_summed_difference(
    old: dict[Query, dict[str, bool]],
    new: dict[Query, dict[str, bool]],
    measure: str,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(low, high, share > 0): the 95 % interval of the summed per-cell difference in
    points, new - old, over ``rounds`` draws of the songs with replacement (the same draw
    for both), and how often that sum is above zero. The two must hold the same queries."""
    if old.keys() != new.keys():
        raise ValueError("the two reports do not hold the same queries")
    songs = sorted({q[1] for q in old})
    cells = sorted({(q[3], q[0]) for q in old})
    song_at = {s: i for i, s in enumerate(songs)}
    cell_at = {c: i for i, c in enumerate(cells)}
    diff = np.zeros((len(cells), len(songs)))
    count = np.zeros((len(cells), len(songs)))
    for query, hits in old.items():
        c, s = cell_at[query[3], query[0]], song_at[query[1]]
        diff[c, s] += float(new[query][measure]) - float(hits[measure])
        count[c, s] += 1
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(songs), np.full(len(songs), 1 / len(songs)), size=rounds)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_cell = (weights @ diff.T) / (weights @ count.T)  # rounds x cells
    sums = 100.0 * np.nansum(per_cell, axis=1)  # a cell no drawn song reaches adds nothing
    low, high = np.percentile(sums, [2.5, 97.5])
    return float(low), float(high), float(np.mean(sums > 0))


def compare_cells(old: ReportCells, new: ReportCells, measure: str) -> tuple[list[str], float]:
    """Printed lines (one per query length, takes side by side) and the summed difference."""
    keys = sorted(
        (k for k in old.cells if k in new.cells and measure in old.cells[k]),
        key=lambda k: (k[0], take_sort_key(k[1])),
    )
    lines: list[str] = []
    diffs: list[float] = []
    for length in sorted({k[0] for k in keys}):
        row = []
        for key in (k for k in keys if k[0] == length):
            a, b = old.cells[key][measure], new.cells[key][measure]
            diffs.append(b - a)
            row.append(f"{key[1]} {a:5.1f} -> {b:5.1f} ({b - a:+5.1f})")
        lines.append(f"  {length:4g} s  " + "   ".join(row))
    ahead = sum(d > 0 for d in diffs)
    behind = sum(d < 0 for d in diffs)
    mean = sum(diffs) / len(diffs) if diffs else 0.0
    lines.append(
        f"  cells ahead {ahead}, level {len(diffs) - ahead - behind}, behind {behind}; "
        f"mean {mean:+.2f} points"
    )
    return lines, sum(diffs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "old", type=Path, help="report of the shipped model (folder or report.json)"
    )
    parser.add_argument("new", type=Path, help="report of the candidate")
    parser.add_argument("--method", default="sequence", help="neural rule to compare")
    parser.add_argument(
        "--old-system",
        default="",
        metavar="PART",
        help="the neural system of OLD whose label contains PART (default: its first)",
    )
    parser.add_argument(
        "--new-system",
        default="",
        metavar="PART",
        help="the neural system of NEW whose label contains PART (default: its first)",
    )
    parser.add_argument(
        "--landmark",
        action="store_true",
        help="also set the candidate against its report's landmark",
    )
    args = parser.parse_args(argv)
    (old_report, old_trials), (new_report, new_trials) = (
        load_report(args.old),
        load_report(args.new),
    )
    old = select_cells(old_report, "neural", args.method, args.old, args.old_system)
    new = select_cells(new_report, "neural", args.method, args.new, args.new_system)
    print(f"{old.label} ({args.old}) -> {new.label} ({args.new}), rule {args.method}")
    paired = None
    if old_trials and new_trials:
        old_hits = read_query_hits(old_trials, old, args.method)
        new_hits = read_query_hits(new_trials, new, args.method)
        if old_hits and old_hits.keys() == new_hits.keys():
            paired = old_hits, new_hits
    if paired is None:
        print("(no interval: the two reports do not hold the trials of the same queries)")
    totals = {}
    for measure in MEASURES:
        lines, total = compare_cells(old, new, measure)
        totals[measure] = total
        if paired:
            low, high, ahead = bootstrap_summed_difference(*paired, measure)
            lines.append(
                f"  summed {total:+.1f} points; 95 % interval over the songs "
                f"[{low:+.1f}, {high:+.1f}], ahead in {100 * ahead:.0f} % of the draws"
            )
        print(f"\n{measure}:")
        print("\n".join(lines))
    if args.landmark:
        landmark = select_cells(new_report, "landmark", "landmark", args.new)
        for measure in ("accuracy", "answered"):
            lines, _ = compare_cells(landmark, new, measure)
            print(f"\n{measure}, {landmark.label} -> {new.label}:")
            print("\n".join(lines))
    verdict = "ahead" if totals["accuracy"] > 0 and totals["answered"] > 0 else "not ahead"
    print(
        f"\ncandidate {verdict} on both accuracy and answered queries "
        f"(summed {totals['accuracy']:+.1f} / {totals['answered']:+.1f} points)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
