"""``afp evaluate``: round trips through ``main([...])`` and one-line errors before work."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf

from afp_core.cli import main
from afp_core.protocols.report import read_report
from tests.test_protocol_realworld import build_db, write_session


@pytest.fixture(scope="module")
def world(tmp_path_factory, song_library, untrained_checkpoint):
    root = tmp_path_factory.mktemp("evalcli")
    db = build_db(root / "db", song_library[:3], untrained_checkpoint)
    session = write_session(root / "session", song_library[:3], {"low": None, "high": 5.0})
    return root, db, session


def test_realworld_round_trip(world, capsys):
    root, db, session = world
    out = root / "rw"
    args = ["evaluate", "realworld", str(db), str(session), "--lengths", "3", "5"]
    code = main([*args, "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = read_report(out)
    assert report.data["command"].startswith("afp ")
    assert report.data["settings"]["lengths_s"] == [3, 5]
    assert report.data["settings"]["threshold"] == "auto"
    assert captured.out.rstrip().endswith(f"report: {out}")
    assert report.table.rstrip() in captured.out
    assert "| 3 s | 24 | 100.0 |" in captured.out  # 3 songs x 8 queries, clean take: all right
    assert len(report.trials) == 2 * 2 * 3 * (8 + 4)  # takes x rules x songs x queries


def test_realworld_compares_databases_in_one_table(world, capsys):
    root, db, session = world
    other = root / "db-copy"
    if not other.exists():
        shutil.copytree(db, other)
    out = root / "cmp"
    args = ["evaluate", "realworld", str(db), str(other), str(session), "--lengths", "5"]
    assert (
        main([*args, "--method", "sequence", "--takes", "low", "--out", str(out), "--quiet"]) == 0
    )
    table = capsys.readouterr().out
    assert "| query | queries | neural (db) sequence low | neural (db-copy) sequence low |" in table
    report = read_report(out)
    assert [s["label"] for s in report.data["systems"]] == ["neural (db)", "neural (db-copy)"]
    assert {row["system"] for row in report.trials} == {"neural (db)", "neural (db-copy)"}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("afp: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_errors_are_one_line_and_come_before_work(world, song_library, tmp_path, capsys):
    _, db, session = world
    out = tmp_path / "never"
    unaligned = write_session(tmp_path / "raw", song_library[:3], {"low": None}, align=False)
    assert main(["evaluate", "realworld", str(db), str(unaligned), "--out", str(out)]) == 1
    assert f"afp-rig align {unaligned} --label low" in one_line_error(capsys)

    missing = write_session(tmp_path / "more", song_library[2:4], {"low": None}, align=False)
    args = ["evaluate", "realworld", str(db), str(missing), "--allow-unchecked"]
    assert main([*args, "--out", str(out)]) == 1
    assert "not in the database: 'song3'; index them with: afp index" in one_line_error(capsys)

    from afp_core.checkpoint import save_checkpoint
    from afp_core.models import build_model
    from afp_core.shipped import UNTRAINED_SPEC

    other = save_checkpoint(tmp_path / "other.pt", build_model(UNTRAINED_SPEC, seed=3))
    args = ["evaluate", "realworld", str(db), str(session), "--model", str(other)]
    assert main([*args, "--out", str(out)]) == 1
    assert "DB was built with model" in one_line_error(capsys)

    assert main(["evaluate", "realworld", str(session), str(db), "--out", str(out)]) == 1
    assert "give the databases first, the session last" in one_line_error(capsys)

    args = ["evaluate", "realworld", str(db), str(session), "--threshold", "high"]
    assert main([*args, "--out", str(out)]) == 1
    assert "--threshold: 'high' is not auto, none or a number" in one_line_error(capsys)

    assert not out.exists()  # nothing was written by any of them
    with pytest.raises(SystemExit) as usage:
        main(["evaluate", "realworld", str(db)])
    assert usage.value.code == 2


def test_baseline_round_trip(world, song_library, tmp_path, capsys):
    _, db, _ = world
    noise = tmp_path / "noise"
    noise.mkdir()
    sf.write(noise / "white.wav", np.random.default_rng(0).standard_normal(16000) * 0.1, 8000)
    out = tmp_path / "bl"
    args = ["evaluate", "baseline", str(db), str(song_library[0].parent), str(noise)]
    args += ["--lengths", "3", "--snrs", "10", "--clean", "--repeats", "2", "--excerpts", "1"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr().out
    assert "| query | clean | 10 dB |" in captured and "± std across 2 repeats" in captured
    report = read_report(out)
    assert report.protocol == "baseline"
    # 3 of the 6 library songs are in the database; the other 3 measure false matches
    inside = [row for row in report.trials if row["in_database"]]
    assert {row["song"] for row in inside} == {p.name for p in song_library[:3]}
    assert {row["repeat"] for row in report.trials} == {0, 1}


def test_quantisation_round_trip(world, song_library, tmp_path, capsys, untrained_checkpoint):
    _, _, session = world
    library = tmp_path / "library"
    library.mkdir()
    for path in song_library[:3]:
        shutil.copy(path, library / path.name)
    out = tmp_path / "q"
    args = ["evaluate", "quantisation", str(library), "--session", str(session)]
    args += ["--model", str(untrained_checkpoint), "--lengths", "5"]
    assert main([*args, "--m", "8", "32", "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "| m=8 |" in captured.out and "| m=32 |" in captured.out and "| flat |" in captured.out
    assert "every index is a real IVF-PQ" in captured.err  # the notice, on stderr
    report = read_report(out)
    assert [row["label"] for row in report.summary] == ["flat", "m=8", "m=32"]

    assert main([*args, "--m", "8", "12", "--out", str(tmp_path / "x")]) == 1
    assert "m=12 does not divide" in one_line_error(capsys)


def test_neural_and_landmark_databases_on_the_same_takes(world, song_library, capsys):
    """Paper Table 2 in one command: a neural and a landmark database, same takes."""
    root, db, session = world
    landmark = root / "lmdb"
    if not landmark.exists():
        files = [str(p) for p in song_library[:3]]
        assert main(["index", str(landmark), *files, "--landmark", "--quiet"]) == 0
    out = root / "table2"
    args = ["evaluate", "realworld", str(db), str(landmark), str(session), "--lengths", "5"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "neural (db) sequence low" in table and "landmark (lmdb) landmark high" in table
    report = read_report(out)
    assert [s["recogniser"]["kind"] for s in report.data["systems"]] == ["neural", "landmark"]
    clean = next(
        c
        for c in report.summary
        if c["system"] == "landmark (lmdb)" and c["take"] == "low" and c["length_s"] == 5
    )
    assert clean["queries"] == 12 and clean["accuracy"] >= 0.9
