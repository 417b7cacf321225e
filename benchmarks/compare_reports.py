"""Compare two real-world evaluation reports cell by cell: the rule that decides whether a
candidate model replaces the shipped one (docs/training.md, "How a candidate is judged").

Each report is the ``report.json`` that ``afp evaluate`` or ``benchmarks/bench_realworld.py``
writes. For one rule (default ``sequence``), the first neural system of each report is
compared on every (query length, take) cell by three measures:

- accuracy: right song, no rejection (the paper's measure);
- offset accuracy: right song and offset within the report's tolerance;
- answered: right song *and* above the threshold that lets 1 % of impostor queries
  through (``accuracy_at_fmr``), what a deployment that says "no match" delivers.

A candidate ships only when it is ahead on the sum of accuracy *and* of answered over
the sessions compared; the printed counts of cells ahead and behind say how even that is.
With ``--landmark`` the candidate is also set against the landmark system of its report.

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

from afp_core.fileutil import read_json_object
from afp_core.protocols.realworld import take_sort_key
from afp_core.protocols.report import REPORT_FILE, REPORT_FORMAT, ReportError

MEASURES = {
    "accuracy": "accuracy",
    "offset": "offset_accuracy",
    "answered": "accuracy_at_fmr",
}


@dataclass(frozen=True)
class ReportCells:
    """One system's summary cells of one report: (length_s, take) -> measure -> value %."""

    label: str
    cells: dict[tuple[float, str], dict[str, float]]


def load_report(path: Path) -> dict[str, Any]:
    """The report JSON at ``path`` (a report folder or its ``report.json``)."""
    file = path / REPORT_FILE if path.is_dir() else path
    try:
        report = read_json_object(file, ReportError)
    except ReportError as exc:
        raise SystemExit(str(exc)) from None
    if report.get("format") != REPORT_FORMAT:
        raise SystemExit(f"{file}: not an afp evaluation report")
    return report


def select_cells(report: dict[str, Any], kind: str, method: str, source: Path) -> ReportCells:
    """The cells of the first system of ``kind`` in ``report``, for rule ``method``."""
    labels = [s["label"] for s in report["systems"] if s["recogniser"]["kind"] == kind]
    if not labels:
        raise SystemExit(f"{source}: no {kind} system in this report")
    label = labels[0]
    cells: dict[tuple[float, str], dict[str, float]] = {}
    for row in report["summary"]:
        if row["system"] == label and row["method"] == method:
            key = (float(row["length_s"]), str(row["take"]))
            cells[key] = {
                name: 100.0 * float(row[field])
                for name, field in MEASURES.items()
                if row.get(field) is not None
            }
    if not cells:
        raise SystemExit(f"{source}: {label} has no '{method}' rows")
    return ReportCells(label, cells)


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
        "--landmark",
        action="store_true",
        help="also set the candidate against its report's landmark",
    )
    args = parser.parse_args(argv)
    old_report, new_report = load_report(args.old), load_report(args.new)
    old = select_cells(old_report, "neural", args.method, args.old)
    new = select_cells(new_report, "neural", args.method, args.new)
    print(f"{old.label} ({args.old}) -> {new.label} ({args.new}), rule {args.method}")
    totals = {}
    for measure in MEASURES:
        lines, total = compare_cells(old, new, measure)
        totals[measure] = total
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
