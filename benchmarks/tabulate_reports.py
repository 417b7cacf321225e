"""Print the README's tables from real-world evaluation reports: one row per session and
query length, one column per system, each cell the session's takes side by side.

    python benchmarks/tabulate_reports.py \\
        runs/bench-realworld/reports/test-demo-<models>-landmark \\
        runs/bench-realworld/reports/test-harsh-<models>-landmark \\
        --column v5=neural:659ba4a3ecf7 --column landmark=landmark \\
        --column "fused (v5)=fused:659ba4a3ecf7" --measure accuracy --lengths 1 2 3 5 10

A column is ``NAME=KIND[:PART][/RULE]``: the first system of KIND (neural, landmark or
fused) whose label contains PART, decided by RULE (default: ``sequence`` for neural
systems, the kind itself otherwise). Measures: ``accuracy`` (right song, no rejection),
``offset`` (and the offset within tolerance), ``answered`` (right song above the
threshold that lets 1 % of impostors through), ``rejected`` (true queries rejected at
that threshold), and for the calibrated threshold the system ships with, ``no-match``
(true queries answered "no match") and ``false-matches`` (impostors answered with a
song). Reports are folders or their ``report.json``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import compare_reports
from compare_reports import ReportCells, load_report, select_cells

from afp_core.protocols.realworld import take_sort_key

MEASURES = {
    **compare_reports.MEASURES,
    "rejected": "rejected_at_fmr",
    "no-match": "no_match_rate",
    "false-matches": "false_match_rate_measured",
}
DEFAULT_RULES = {"neural": "sequence", "landmark": "landmark", "fused": "fused"}


@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    part: str
    rule: str


def parse_column(text: str) -> Column:
    """``NAME=KIND[:PART][/RULE]`` as a column; ``ValueError`` (one line) if malformed."""
    name, sep, spec = text.partition("=")
    spec, _, rule = spec.partition("/")
    kind, _, part = spec.partition(":")
    if not sep or not name or kind not in DEFAULT_RULES:
        raise ValueError(
            f"column {text!r}: expected NAME=KIND[:PART][/RULE] with KIND one of "
            + ", ".join(DEFAULT_RULES)
        )
    return Column(name, kind, part, rule or DEFAULT_RULES[kind])


def session_name(report: dict[str, object], source: Path) -> str:
    """The session's folder name (``test-demo``), else the report's."""
    session = report.get("session")
    folder = session.get("folder") if isinstance(session, dict) else None
    return Path(str(folder)).name if folder else source.name


def format_cell(cells: ReportCells, length: float, measure: str) -> str:
    keys = sorted((k for k in cells.cells if k[0] == length), key=lambda k: take_sort_key(k[1]))
    values = [cells.cells[k].get(measure) for k in keys]
    return " / ".join("-" if v is None else f"{v:.1f}" for v in values) or "-"


def tabulate(
    reports: list[Path], columns: list[Column], measure: str, lengths: list[float] | None
) -> str:
    """The markdown table of ``measure`` for ``columns`` over ``reports``."""
    header = ["session", "query", *(c.name for c in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for source in reports:
        report, _ = load_report(source, with_trials=False)  # the summary is enough
        selected = [select_cells(report, c.kind, c.rule, source, c.part, MEASURES) for c in columns]
        found = sorted({k[0] for cells in selected for k in cells.cells})
        for length in [x for x in found if lengths is None or x in lengths]:
            row = [session_name(report, source), f"{length:g} s"]
            row += [format_cell(cells, length, measure) for cells in selected]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", type=Path, nargs="+", help="report folders (or report.json)")
    parser.add_argument(
        "--column", action="append", required=True, help="NAME=KIND[:PART][/RULE], repeatable"
    )
    parser.add_argument("--measure", choices=MEASURES, default="accuracy")
    parser.add_argument("--lengths", type=float, nargs="+", help="query lengths (default: all)")
    args = parser.parse_args(argv)
    try:
        columns = [parse_column(text) for text in args.column]
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    print(tabulate(args.reports, columns, args.measure, args.lengths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
