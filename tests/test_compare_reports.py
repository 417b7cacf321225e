"""benchmarks/compare_reports.py: the cell-by-cell comparison that decides whether a
candidate model replaces the shipped one, read from real report files."""

from __future__ import annotations

import csv
import dataclasses
import importlib
import json
from pathlib import Path
from types import ModuleType

import pytest

from afp_core.protocols.realworld import RealWorldTrial
from afp_core.protocols.report import REPORT_FORMAT, REPORT_VERSION

TRIAL_COLUMNS = {f.name: "str" for f in dataclasses.fields(RealWorldTrial)} | {
    "song_index": "int",
    "start_s": "float",
    "length_s": "float",
    "score": "float",
    "song_hit": "bool",
    "offset_hit": "bool",
}

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
    report = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "systems": systems,
        "summary": summary,
        "trial_columns": TRIAL_COLUMNS,
    }
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "table.md").write_text("")
    write_trials(folder, {})
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


def write_trials(folder: Path, hits: dict[int, list[bool]], score: float = 0.9) -> None:
    """The trials file of ``folder``'s neural system: per song index, the hits of its 1 s
    queries on the low take (scores above the report's 1 % threshold, if it has one)."""
    trials = [
        RealWorldTrial(
            system="neural (db-x)",
            take="low",
            song_index=song,
            song=f"song {song}",
            start_s=float(j),
            true_offset_s=float(j),
            length_s=1.0,
            method="sequence",
            found=f"song {song}" if hit else "other",
            found_id=song if hit else 99,
            offset_s=float(j),
            score=score,
            threshold=None,
            song_hit=hit,
            offset_hit=hit,
            rejected=False,
        )
        for song, row in hits.items()
        for j, hit in enumerate(row)
    ]
    with (folder / "trials.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(TRIAL_COLUMNS))
        writer.writeheader()
        writer.writerows(dataclasses.asdict(t) for t in trials)


def test_summed_difference_gets_an_interval_over_the_songs(compare, tmp_path, capsys) -> None:
    # four songs of four queries; the candidate finds one more query of every song
    old_hits = {s: [True, True, False, False] for s in range(4)}
    new_hits = {s: [True, True, True, False] for s in range(4)}
    old = write_report(tmp_path / "old", {(1.0, "low"): (0.50, 0.50)})
    new = write_report(tmp_path / "new", {(1.0, "low"): (0.75, 0.75)})
    write_trials(old, old_hits)
    write_trials(new, new_hits)
    compare.main([str(old), str(new)])
    out = capsys.readouterr().out
    # every draw of the songs gives +25 points: the session tells the two apart
    assert "summed +25.0 points; 95 % interval over the songs [+25.0, +25.0], ahead in 100 %" in out


def test_a_gain_from_one_song_is_not_told_apart(compare) -> None:
    old = {("low", s, float(j), 1.0): {"accuracy": False} for s in range(10) for j in range(4)}
    new = {q: {"accuracy": q[1] == 0} for q in old}  # only song 0 gains
    low, high, ahead = compare.bootstrap_summed_difference(old, new, "accuracy")
    assert low == 0.0 < high  # some draws leave song 0 out
    assert 0.5 < ahead < 0.8  # P(song 0 drawn at least once) = 1 - 0.9 ** 10 = 0.65


def test_reports_of_different_queries_get_no_interval(compare, tmp_path, capsys) -> None:
    old = write_report(tmp_path / "old", {(1.0, "low"): (0.50, 0.50)})
    new = write_report(tmp_path / "new", {(1.0, "low"): (0.75, 0.75)})
    write_trials(old, {0: [True, False]})
    write_trials(new, {1: [True, True]})
    compare.main([str(old), str(new)])
    out = capsys.readouterr().out
    assert "no interval" in out
    assert "95 % interval" not in out


@pytest.fixture
def tabulate(compare) -> ModuleType:  # compare puts benchmarks/ on the path
    return importlib.import_module("tabulate_reports")


def test_tables_put_each_sessions_takes_side_by_side(tabulate, tmp_path, capsys) -> None:
    cells = {(1.0, "high"): (0.50, 0.30), (1.0, "low"): (0.80, 0.60), (5.0, "low"): (1.0, 0.9)}
    report = write_report(tmp_path / "test-demo", cells)
    args = [str(report), "--column", "v5=neural:db-x", "--column", "lm=landmark", "--lengths", "1"]
    tabulate.main([*args, "--measure", "answered"])
    assert capsys.readouterr().out.splitlines() == [
        "| session | query | v5 | lm |",
        "|---|---|---|---|",
        "| test-demo | 1 s | 60.0 / 30.0 | 50.0 / 50.0 |",  # low before high, 5 s left out
    ]
    tabulate.main([*args, "--measure", "rejected"])  # not in this report's summary
    assert "| test-demo | 1 s | - / - | - / - |" in capsys.readouterr().out


def test_a_column_naming_no_system_is_a_one_line_error(tabulate, tmp_path) -> None:
    report = write_report(tmp_path / "r", {(1.0, "low"): (0.8, 0.6)})
    with pytest.raises(SystemExit, match="no neural system named 'db-y'"):
        tabulate.main([str(report), "--column", "v5=neural:db-y"])
    with pytest.raises(SystemExit, match="expected NAME=KIND"):
        tabulate.main([str(report), "--column", "v5=cnn"])


def test_compare_picks_one_model_of_a_report_by_name(compare, tmp_path, capsys) -> None:
    report = write_report(tmp_path / "r", {(1.0, "low"): (0.8, 0.6)})
    with pytest.raises(SystemExit, match="no neural system named 'db-z'"):
        compare.main([str(report), str(report), "--new-system", "db-z"])
