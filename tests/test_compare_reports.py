"""benchmarks/compare_reports.py: the cell-by-cell comparison that decides whether a
candidate model replaces the shipped one, read from real report files."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def compare(monkeypatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module("compare_reports")


def write_report(folder: Path, neural: dict[tuple[float, str], tuple[float, float]]) -> Path:
    """A report with one neural and one landmark system; ``neural`` maps a cell to its
    (accuracy, accuracy at 1 % false matches); the landmark scores 0.5 / 0.5 everywhere."""
    systems = [
        {"label": "neural (db-x)", "recogniser": {"kind": "neural"}},
        {"label": "landmark (db-l)", "recogniser": {"kind": "landmark"}},
    ]
    summary = []
    for (length, take), (accuracy, answered) in neural.items():
        for label, method, acc, ans in (
            ("neural (db-x)", "sequence", accuracy, answered),
            ("neural (db-x)", "vote", 0.0, 0.0),
            ("landmark (db-l)", "landmark", 0.5, 0.5),
        ):
            summary.append(
                {
                    "system": label,
                    "take": take,
                    "method": method,
                    "length_s": length,
                    "accuracy": acc,
                    "offset_accuracy": acc,
                    "accuracy_at_fmr": ans,
                }
            )
    folder.mkdir()
    report = {"format": "afp-evaluation-report", "systems": systems, "summary": summary}
    (folder / "report.json").write_text(json.dumps(report))
    return folder


def test_candidate_ahead_on_both_counts(compare, tmp_path, capsys) -> None:
    old = write_report(tmp_path / "old", {(1.0, "low"): (0.80, 0.60), (1.0, "high"): (0.50, 0.30)})
    new = write_report(tmp_path / "new", {(1.0, "low"): (0.85, 0.58), (1.0, "high"): (0.55, 0.40)})
    assert compare.main([str(old), str(new), "--landmark"]) == 0
    out = capsys.readouterr().out
    assert "low  80.0 ->  85.0 ( +5.0)" in out
    assert "cells ahead 1, level 0, behind 1; mean +4.00 points" in out  # answered: -2, +10
    assert "candidate ahead on both" in out
    assert "landmark (db-l) -> neural (db-x)" in out


def test_candidate_more_accurate_but_answering_less_is_not_ahead(compare, tmp_path, capsys) -> None:
    old = write_report(tmp_path / "old", {(5.0, "low"): (0.90, 0.80)})
    new = write_report(tmp_path / "new", {(5.0, "low"): (0.95, 0.70)})
    compare.main([str(old / "report.json"), str(new)])
    assert "candidate not ahead" in capsys.readouterr().out


def test_not_a_report_is_a_one_line_error(compare, tmp_path) -> None:
    bad = tmp_path / "report.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit, match=r"report\.json: not an afp evaluation report"):
        compare.main([str(bad), str(bad)])
