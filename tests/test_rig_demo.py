"""The README's main job (`afp-rig demo`) on a small synthesised library, takes simulated.

The live path (three virtual rooms recorded at once) is tested in test_room.py; here the
demo runs offline so that it does not depend on PulseAudio.
"""

from __future__ import annotations

import csv
from collections import Counter

import pytest

from afp_core.database import FingerprintDB
from afp_core.errors import AfpError
from afp_core.protocols.report import read_report
from rig_app.cli import main
from rig_app.demo import DemoOptions, run_demo_job
from rig_app.session import Session


def test_demo_builds_records_aligns_and_evaluates(
    tmp_path, song_library, untrained_checkpoint, capsys
):
    options = DemoOptions(
        out=tmp_path / "out",
        songs=2,
        excerpt_s=12.0,
        live=False,
        model=untrained_checkpoint,
        library=tuple(song_library),
        quiet=True,
    )
    report_folder = run_demo_job(options)

    printed = capsys.readouterr().out
    assert "SIMULATED OFFLINE" in printed  # said clearly, since no devices were used
    assert "| 1 s |" in printed and "no 15 s queries" in printed  # the songs are 12 s
    session = Session.load(tmp_path / "out" / "session")
    assert [t.label for t in session.takes] == ["low", "mid", "high"]
    assert all("simulated" in t.notes for t in session.takes)
    assert all(t.alignment and t.alignment["ok"] for t in session.takes)

    report = read_report(report_folder)
    trials = report.trials
    assert {t["take"] for t in trials} == {"low", "mid", "high"}
    # the program holds excerpts: true offsets count from where each excerpt starts (7 s)
    assert min(t["true_offset_s"] for t in trials) == pytest.approx(7.0, abs=1e-6)
    assert (report_folder / "accuracy.png").stat().st_size > 0
    # every take's quality was measured, and the takes were published as a query set
    assert all(t.quality and t.quality["music_to_noise_db"] is not None for t in session.takes)
    query_set = tmp_path / "out" / "query-set"
    assert f"query set: {query_set} (" in printed
    with (query_set / "queries.csv").open(encoding="utf-8") as handle:
        clips = list(csv.DictReader(handle))
    assert {row["take"] for row in clips} == {"low", "mid", "high"}
    assert max(Counter((r["take"], r["song_index"], r["length_s"]) for r in clips).values()) == 2
    assert (query_set / "SHA256SUMS").is_file() and (query_set / "README.md").is_file()

    # a rerun rebuilds the session but keeps the database: nothing is indexed again
    before = [(s.id, s.added_at) for s in FingerprintDB.open(tmp_path / "out" / "db").songs()]
    run_demo_job(options)
    after = [(s.id, s.added_at) for s in FingerprintDB.open(tmp_path / "out" / "db").songs()]
    assert after == before and len(after) == len(song_library)


def test_demo_without_enough_songs_is_one_line(tmp_path, song_library, capsys):
    with pytest.raises(AfpError, match="needs 8 songs"):
        run_demo_job(DemoOptions(out=tmp_path / "o", songs=8, excerpt_s=12.0,
                                 library=tuple(song_library), quiet=True))  # fmt: skip
    argv = ["demo", "--out", str(tmp_path / "o"), "--songs", "8", "--offline", "--quiet"]
    assert main([*argv, "--library", str(song_library[0].parent)]) == 1
    assert "afp-rig: error:" in capsys.readouterr().err


def test_quick_demo_indexes_the_session_songs_among_a_few_others(tmp_path, song_library):
    from rig_app.demo import DemoSong, pick_database_songs, quick_demo_options

    quick = quick_demo_options(library_songs=3, out=tmp_path / "q")
    assert (quick.songs, quick.excerpt_s, quick.out) == (4, 20.0, tmp_path / "q")
    session_songs = [DemoSong(song_library[4], "t", "a", 0.0)]
    picked = pick_database_songs(list(song_library), session_songs, quick)
    assert len(picked) == 3 and song_library[4] in picked and len(set(picked)) == 3
    # the same seed draws the same distractors; the whole library when not limited
    assert picked == pick_database_songs(list(song_library), session_songs, quick)
    full = DemoOptions()
    assert pick_database_songs(list(song_library), session_songs, full) == list(song_library)


def test_quick_demo_from_the_command_line(tmp_path, song_library, untrained_checkpoint, capsys):
    argv = ["demo", "--quick", "--offline", "--quiet", "--songs", "2", "--excerpt-s", "12"]
    argv += ["--library-songs", "3", "--out", str(tmp_path / "q")]
    argv += ["--model", str(untrained_checkpoint), "--library", str(song_library[0].parent)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"{tmp_path / 'q' / 'db'} holds 3 songs" in printed
    assert len(FingerprintDB.open(tmp_path / "q" / "db").songs()) == 3
