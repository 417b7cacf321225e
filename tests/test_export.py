"""Publishing sessions as a query set (``rig_app.export``, ``afp-rig export``) and
evaluating the set (``afp evaluate realworld DB QUERY_SET``), on real sessions.

The sessions are written by the rig's own code (``tests.test_protocol_realworld``): a
program at 16 kHz, so every query is resampled to the models' 8 kHz, with a clean take
and a noisy one, each aligned by its markers. The databases hold the original song files
(the untrained seeded model, and the landmark method).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from afp_core.cli import main as afp_main
from afp_core.database import Song
from afp_core.errors import AfpError, Cancelled
from afp_core.protocols.querysets import QuerySetError, read_queryset
from afp_core.protocols.realworld import (
    RealWorldSettings,
    plan_realworld,
    run_realworld_comparison,
)
from afp_core.protocols.report import read_report
from afp_core.recogniser import Recogniser, open_recogniser
from afp_core.tasks import TaskState
from rig_app import cli
from rig_app.export import spread, write_float_wav, write_query_set
from rig_app.selection import Selection
from rig_app.session import Session
from tests.test_protocol_realworld import build_db, known_cell, write_session

RATE = 16000
LENGTHS = (1, 2, 5)


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _check_sums(folder: Path) -> None:
    """``sha256sum -c`` (coreutils) accepts the set's SHA256SUMS."""
    check = subprocess.run(
        ["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=folder, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


class _FirstSongLeftOut:
    """A real recogniser whose catalogue lacks its first song (one database is reused)."""

    def __init__(self, recogniser: Recogniser) -> None:
        self._recogniser = recogniser

    def __getattr__(self, name: str) -> Any:
        return getattr(self._recogniser, name)

    def songs(self) -> list[Song]:
        return self._recogniser.songs()[1:]


def _one_line(err: str, prog: str = "afp-rig") -> str:
    err = err.strip()
    assert err.startswith(f"{prog}: error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def world(tmp_path_factory, song_library, untrained_checkpoint):
    root = tmp_path_factory.mktemp("export")
    songs = song_library[:3]
    session = write_session(root / "session", songs, {"low": None, "high": 5.0}, rate=RATE)
    neural = build_db(root / "db", songs, untrained_checkpoint)
    landmark = root / "lmdb"
    assert afp_main(["index", str(landmark), *map(str, songs), "--landmark", "--quiet"]) == 0
    queryset = root / "set"
    write_query_set([session], queryset, lengths_s=LENGTHS)
    return root, session, neural, landmark, queryset


def test_export_then_evaluate_equals_session_then_evaluate(world):
    """Every query exported: the same trials, hit for hit, neural and landmark alike."""
    _, session, neural, landmark, queryset = world
    settings = RealWorldSettings(lengths_s=LENGTHS)
    systems = ["neural", "landmark"]

    def run(source):
        recognisers = [open_recogniser(neural), open_recogniser(landmark)]
        return run_realworld_comparison(recognisers, source, settings, systems=systems)

    from_session, from_set = run(session), run(queryset)
    for a, b in zip(from_session, from_set, strict=True):
        assert a.takes == b.takes == ("low", "high")
        assert [m.song_id for m in a.songs] == [m.song_id for m in b.songs]
        assert [m.matched_by for m in b.songs] == ["checksum"] * 3  # the originals' checksums
        assert len(a.trials) == len(b.trials) > 0

        def key(t):
            return (t.take, t.song_index, t.length_s, t.start_s, t.method)

        trials = {key(t): t for t in b.trials}
        for trial in a.trials:
            other = trials[key(trial)]
            assert (trial.found_id, trial.song_hit, trial.offset_hit, trial.true_offset_s) == (
                other.found_id,
                other.song_hit,
                other.offset_hit,
                other.true_offset_s,
            ), trial
            assert trial.score == pytest.approx(other.score, rel=1e-3, abs=1e-3)
        for cell in a.summary:
            twin = known_cell(b, cell.take, cell.method, cell.length_s)
            assert (cell.queries, cell.accuracy, cell.offset_accuracy) == (
                twin.queries,
                twin.accuracy,
                twin.offset_accuracy,
            )
    clean = known_cell(from_set[0], "low", "sequence", 5)
    assert clean.queries == 3 * 4 and clean.accuracy == 1.0  # the clean take: all right


def test_evaluate_command_takes_a_query_set(world, tmp_path, capsys):
    _, session, neural, _, queryset = world
    reports = {}
    for name, source in (("session", session), ("set", queryset)):
        out = tmp_path / name
        args = ["evaluate", "realworld", str(neural), str(source), "--lengths", "2", "5"]
        assert afp_main([*args, "--out", str(out), "--quiet"]) == 0
        reports[name] = read_report(out)
    capsys.readouterr()

    def cells(report):
        return [
            (c["take"], c["method"], c["length_s"], c["queries"], c["accuracy"])
            for c in report.summary
        ]

    assert cells(reports["session"]) == cells(reports["set"])
    assert reports["set"].data["session"]["origin"] == "queryset"
    # the set lacks 4 s queries: said, not an error
    args = ["evaluate", "realworld", str(neural), str(queryset), "--lengths", "4", "5"]
    assert afp_main([*args, "--out", str(tmp_path / "four"), "--quiet"]) == 0
    assert "the query set holds no 4 s queries" in capsys.readouterr().err
    assert afp_main(["evaluate", "realworld", str(neural), str(tmp_path)]) == 1
    assert "not a session or query set folder" in _one_line(capsys.readouterr().err, "afp")
    # a song the database lacks is named as the query set's, not the session's
    lacking = _FirstSongLeftOut(open_recogniser(neural))
    n_songs = len(read_queryset(queryset).songs)
    with pytest.raises(AfpError, match=rf"1 of the query set's {n_songs} songs are not in"):
        plan_realworld([lacking], queryset, RealWorldSettings(lengths_s=(2.0,)))


def test_set_layout_checksums_and_data_card(world):
    _, session, _, _, queryset = world
    document = json.loads((queryset / "queryset.json").read_text())
    assert document["format"] == "afp-queryset" and document["version"] == 1
    assert document["lengths_s"] == [1, 2, 5] and document["per_song"] is None
    assert [s["id"] for s in document["sessions"]] == ["session"]
    assert document["created"] == max(t.recorded_at for t in Session.load(session).takes)
    # sha256sum -c checks every file but itself
    _check_sums(queryset)
    sums = (queryset / "SHA256SUMS").read_text().splitlines()
    listed = {line.split("  ", 1)[1] for line in sums}
    assert listed == set(_files(queryset)) - {"SHA256SUMS"}
    # clips: the aligned take's samples at its rate, 24-bit
    info = sf.info(str(queryset / "queries/session/low/001_5s_5s.flac"))
    assert (info.samplerate, info.frames, info.subtype) == (RATE, 5 * RATE, "PCM_24")
    read = read_queryset(queryset)
    aligned, _ = sf.read(str(session / "takes/low.aligned.wav"), dtype="float32")
    song = read.songs[1]
    program = Session.load(session).program
    assert program is not None
    start = round(program["songs"][1]["start_s"] * RATE) + 5 * RATE
    clip, _ = sf.read(str(queryset / "queries/session/low/001_5s_5s.flac"), dtype="float32")
    assert np.allclose(clip, aligned[start : start + 5 * RATE], atol=2**-22)
    assert song.title == "song1" and song.duration_s == pytest.approx(24.0, abs=1e-3)
    rows = (queryset / "queries.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 3 * (24 + 12 + 4)  # header + takes x songs x queries
    card = (queryset / "README.md").read_text()
    assert "| session | low | 72 | 36 | 12 | 120 |" in card
    assert "Licence and contact (to be filled in by the lab)" in card
    assert "Nothing was left out." in card


def test_same_choice_same_bytes(world, tmp_path):
    _, session, _, _, queryset = world
    again = write_query_set([session], tmp_path / "again", lengths_s=LENGTHS)
    assert _files(again.folder) == _files(queryset)
    first = write_query_set([session], tmp_path / "w1", lengths_s=(5,), audio="wav")
    second = write_query_set([session], tmp_path / "w2", lengths_s=(5,), audio="wav")
    assert _files(first.folder) == _files(second.folder)
    data, rate = sf.read(str(tmp_path / "w1/queries/session/high/000_0s_5s.wav"), dtype="float32")
    assert rate == RATE and len(data) == 5 * RATE


def test_float_wav_is_read_back_exactly(tmp_path):
    audio = np.random.default_rng(1).standard_normal(1001).astype(np.float32)
    write_float_wav(tmp_path / "x.wav", audio, 44100)
    back, rate = sf.read(str(tmp_path / "x.wav"), dtype="float32")
    assert rate == 44100 and np.array_equal(back, audio)
    assert sf.info(str(tmp_path / "x.wav")).subtype == "FLOAT"


def test_spread_is_even_and_deterministic():
    assert spread(10, None) == list(range(10)) and spread(3, 5) == [0, 1, 2]
    assert spread(10, 2) == [2, 7] and spread(10, 3) == [1, 5, 8] and spread(24, 1) == [12]


def test_selection_is_honoured(world, song_library, tmp_path):
    _, session, _, _, _ = world
    copy = tmp_path / "session"
    shutil.copytree(session, copy)
    loaded = Session.load(copy)
    selection = Selection.from_session(loaded)
    selection.exclude("low", 1, "door slammed at 0:12")
    selection.exclude(None, 2, "the song skips")
    selection.store(loaded)
    result = write_query_set([copy], tmp_path / "set", lengths_s=(5,), per_song=2)
    rows = (result.folder / "queries.csv").read_text().splitlines()[1:]
    kept = sorted({(r.split(",")[2], r.split(",")[3]) for r in rows})
    assert kept == [("high", "0"), ("high", "1"), ("low", "0")]
    assert result.clips == len(rows) == 3 * 2  # two 5 s queries per song, spread
    names = {p.name for p in (result.folder / "queries/session/high").iterdir()}
    assert names == {"000_5s_5s.flac", "000_15s_5s.flac", "001_5s_5s.flac", "001_15s_5s.flac"}
    assert [p.name for p in (result.folder / "references/session").iterdir()] != []
    assert not (result.folder / "references/session/002.flac").exists()  # no clip of it
    card = (result.folder / "README.md").read_text()
    assert "- session: 'song1' (song_index 1), take low: door slammed at 0:12" in card
    assert "- session: 'song2' (song_index 2), every take: the song skips" in card
    # a whole take left out: it may even be unaligned
    selection.exclude("high", None, "microphone knocked over")
    selection.store(loaded)
    data = json.loads((copy / "session.json").read_text())
    data["takes"][1]["alignment"] = None
    (copy / "session.json").write_text(json.dumps(data))
    result = write_query_set([copy], tmp_path / "low-only", lengths_s=(5,))
    assert [p.name for p in (result.folder / "queries/session").iterdir()] == ["low"]
    assert (
        "take high (whole take): microphone knocked over"
        in (result.folder / "README.md").read_text()
    )
    assert [t.label for t in read_queryset(result.folder).takes] == ["low"]


def test_append_adds_sessions_and_keeps_what_is_there(world, song_library, tmp_path, capsys):
    _, session, neural, _, _ = world
    other = write_session(tmp_path / "other", song_library[1:3], {"mid": 10.0}, rate=RATE, seed=4)
    out = tmp_path / "set"
    code = cli.main(["export", str(session), str(out), "--lengths", "5", "--quiet"])
    assert code == 0 and "24 query clips added (sessions added: session)" in capsys.readouterr().out
    clip = out / "queries/session/low/000_0s_5s.flac"
    before = (clip.stat().st_ino, clip.stat().st_mtime_ns, clip.read_bytes())
    code = cli.main(["export", str(session), str(other), str(out), "--lengths", "5", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0 and "already in the set as 'session'" in captured.out
    assert "8 query clips added (sessions added: other)" in captured.out
    assert (clip.stat().st_ino, clip.stat().st_mtime_ns, clip.read_bytes()) == before
    document = json.loads((out / "queryset.json").read_text())
    assert [s["id"] for s in document["sessions"]] == ["session", "other"]
    assert document["clips"] == 24 + 8
    _check_sums(out)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left
    read = read_queryset(out)
    assert [t.label for t in read.takes] == ["session/low", "session/high", "other/mid"]
    assert len(read.songs) == 3 + 2
    # the two sessions' takes evaluated side by side
    result = run_realworld_comparison(
        [open_recogniser(neural)], out, RealWorldSettings(lengths_s=(5,), methods=("sequence",))
    )[0]
    assert result.takes == ("other/mid", "session/low", "session/high")
    assert known_cell(result, "other/mid", "sequence", 5).queries == 2 * 4
    assert known_cell(result, "session/low", "sequence", 5).accuracy == 1.0

    # an export into it with other settings, a set of another version, a folder that is
    # not a set: one line each, nothing changed
    snapshot = _files(out)
    code = cli.main(["export", str(other), str(out), "--lengths", "2", "--quiet"])
    assert code == 1 and "--lengths 5" in _one_line(capsys.readouterr().err)
    document["version"] = 2
    (out / "queryset.json").write_text(json.dumps(document))
    code = cli.main(["export", str(other), str(out), "--lengths", "5", "--quiet"])
    err = _one_line(capsys.readouterr().err)
    assert code == 1 and f"{out / 'queryset.json'}: a query set of format version 2" in err
    with pytest.raises(QuerySetError, match="version 2 is newer"):
        read_queryset(out)
    assert _files(out) | {"queryset.json": b""} == snapshot | {"queryset.json": b""}
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    code = cli.main(["export", str(other), str(stranger), "--quiet"])
    assert code == 1 and "is not empty and not a query set" in _one_line(capsys.readouterr().err)
    assert [p.name for p in stranger.iterdir()] == ["notes.txt"]


def test_bad_input_is_one_line_and_writes_nothing(world, song_library, tmp_path, capsys):
    _, session, _, _, _ = world
    out = tmp_path / "never"
    unaligned = write_session(tmp_path / "raw", song_library[:2], {"low": None}, align=False)
    code = cli.main(["export", str(unaligned), str(out), "--quiet"])
    err = _one_line(capsys.readouterr().err)
    assert code == 1 and f"{unaligned / 'session.json'}: take 'low' is not aligned" in err
    assert f"afp-rig align {unaligned} --label low" in err and "afp-rig exclude" in err

    broken = tmp_path / "broken"
    shutil.copytree(session, broken)
    data = json.loads((broken / "session.json").read_text())
    data["takes"][0]["ground_truth"] = data["takes"][0]["ground_truth"][:1]
    (broken / "session.json").write_text(json.dumps(data))
    code = cli.main(["export", str(broken), str(out), "--quiet"])
    err = _one_line(capsys.readouterr().err)
    assert code == 1 and "take 'low' has no interval for song 2 'song1'" in err
    assert "--take low --song 2" in err

    (broken / "takes/high.aligned.wav").unlink()
    code = cli.main(["export", str(broken), str(out), "--quiet"])
    err = _one_line(capsys.readouterr().err)
    assert code == 1 and "takes/high.aligned.wav is missing: restore it" in err
    assert f"afp-rig align {broken} --label LABEL" in err

    code = cli.main(["export", str(out), "--quiet"])
    assert code == 1 and "then the query set folder" in _one_line(capsys.readouterr().err)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cancel_leaves_nothing(world, tmp_path):
    _, session, _, _, queryset = world
    task = TaskState(lambda done, total, message: task.cancel() if done > 0 else None)
    with pytest.raises(Cancelled):
        write_query_set([session], tmp_path / "set", lengths_s=(5,), task=task)
    assert list(tmp_path.iterdir()) == []
    snapshot = _files(queryset)
    other = tmp_path / "copy"
    shutil.copytree(session, other)
    data = json.loads((other / "session.json").read_text())
    data["created"] = "2000-01-01T00:00:00+00:00"  # another session for the set
    (other / "session.json").write_text(json.dumps(data))
    task = TaskState(lambda done, total, message: task.cancel() if done > 0 else None)
    with pytest.raises(Cancelled):
        write_query_set([other], queryset, lengths_s=LENGTHS, task=task)
    assert _files(queryset) == snapshot
    assert not [p for p in queryset.iterdir() if p.name.startswith(".")]


def test_bad_settings(world, tmp_path):
    _, session, _, _, _ = world
    cases: list[tuple[dict[str, Any], str]] = [
        ({"lengths_s": ()}, "at least one"),
        ({"lengths_s": (1, 1)}, "repeated"),
        ({"lengths_s": (0,)}, "not a positive"),
        ({"per_song": 0}, "per-song"),
        ({"audio": "mp3"}, "audio"),
    ]
    for kwargs, text in cases:
        with pytest.raises(AfpError, match=text):
            write_query_set([session], tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_authors_format_is_wired(world, tmp_path, capsys):
    _, session, _, _, _ = world
    out = tmp_path / "authors"
    assert cli.main(["export", str(session), str(out), "--format", "authors", "--quiet"]) == 0
    assert "written in the paper authors' layout" in capsys.readouterr().out
    assert (out / "recording_songs.csv").is_file()
