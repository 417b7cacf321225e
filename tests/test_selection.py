"""The selection of a session (``rig_app.selection``) and ``afp-rig exclude / include /
selection`` on a real session (program, aligned takes) written by the rig's own code."""

from __future__ import annotations

import json

import pytest

from rig_app import cli
from rig_app.selection import Exclusion, Selection
from rig_app.session import Session, SessionError
from tests.rig_fixtures import command_parser
from tests.test_protocol_realworld import write_session


@pytest.fixture
def session_dir(tmp_path, song_library):
    return write_session(tmp_path / "session", song_library[:3], {"low": None, "high": 5.0})


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err: str) -> str:
    err = err.strip()
    assert err.startswith("afp-rig: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_exclude_include_and_store(session_dir):
    session = Session.load(session_dir)
    selection = Selection.from_session(session)
    assert selection.exclusions == [] and selection.reason_excluded("low", 1) is None
    selection.exclude("low", 1, "door slammed at 0:12")
    selection.exclude(None, 2, "  song   skips ")
    selection.exclude("high", None, "mic moved")
    selection.set_note("low", None, "window open")
    selection.store(session)

    again = Selection.from_session(Session.load(session_dir))
    assert again.exclusions == selection.exclusions
    assert again.reason_excluded("low", 1) == "door slammed at 0:12"
    assert again.reason_excluded("low", 0) is None
    assert again.reason_excluded("mid", 2) == "song skips"  # every take, spaces folded
    assert again.reason_excluded("low") is None  # the whole take is not excluded
    assert again.reason_excluded("high") == "mic moved"
    assert again.reason_excluded("high", 0) == "mic moved"
    assert again.note("low", None) == "window open"
    stored = json.loads((session_dir / "session.json").read_text())["selection"]
    assert stored["format"] == "afp-rig-selection" and stored["version"] == 1
    assert {"take": "low", "song": 1, "reason": "door slammed at 0:12"} in stored["excluded"]
    assert stored["notes"] == [{"take": "low", "song": None, "text": "window open"}]

    again.exclude("low", 1, "a second reason")  # replaces, does not repeat
    assert again.exclusions.count(Exclusion("low", 1, "a second reason")) == 1
    assert len(again.exclusions) == 3
    again.include("low", 2)  # the song in every take is a wider exclusion: it stays
    assert again.reason_excluded("low", 2) == "song skips"
    again.include(None, 2)
    again.include("high", None)
    assert again.reason_excluded("high") is None and again.reason_excluded("mid", 2) is None
    again.include("low", None)
    assert again.exclusions == []
    again.set_note("low", None, "")
    again.store(session)
    assert Session.load(session_dir).selection is None  # nothing left: no record

    with pytest.raises(SessionError, match="reason"):
        again.exclude("low", 0, "  ")
    with pytest.raises(SessionError, match="take, a song"):
        again.exclude(None, None, "everything")


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"format": "other", "version": 1}, "not an afp-rig-selection file"),
        ({"format": "afp-rig-selection", "version": 9}, "version 9 is newer"),
        ({"format": "afp-rig-selection", "version": 1, "excluded": [{"take": 3}]}, "malformed"),
        ({"format": "afp-rig-selection", "version": 1, "excluded": "x"}, "malformed"),
        (
            {
                "format": "afp-rig-selection",
                "version": 1,
                "excluded": [{"take": None, "song": None, "reason": "all"}],
            },
            "names no take or song",
        ),
    ],
)
def test_malformed_record_is_one_line_naming_session_json(session_dir, record, expected):
    data = json.loads((session_dir / "session.json").read_text())
    data["selection"] = record
    (session_dir / "session.json").write_text(json.dumps(data))
    with pytest.raises(SessionError) as error:
        Selection.from_session(Session.load(session_dir))
    message = str(error.value)
    assert message.startswith(f"{session_dir / 'session.json'}: selection") and "\n" not in message
    assert expected in message


def test_commands(session_dir, capsys):
    code, out, _ = _run(capsys, "exclude", session_dir, "--take", "low", "--song", "2",
                        "--reason", "door slammed")  # fmt: skip
    assert code == 0 and "excluded song 2 'song1' of take low: door slammed" in out
    assert Selection.from_session(Session.load(session_dir)).reason_excluded("low", 1)
    code, out, _ = _run(capsys, "exclude", session_dir, "--song", "SONG2", "--reason", "skips")
    assert code == 0 and "song 3 'song2' in every take" in out  # by title, case ignored
    code, out, _ = _run(capsys, "exclude", session_dir, "--take", "high", "--reason", "mic moved")
    assert code == 0

    code, out, _ = _run(capsys, "selection", session_dir)
    assert code == 0
    assert "song 1: song0" in out and "take low: ok" in out
    assert "take high: excluded: mic moved" in out
    assert "excluded: song 2 'song1' of take low: door slammed" in out
    assert "excluded: song 3 'song2' in every take: skips" in out

    code, out, _ = _run(capsys, "include", session_dir, "--take", "low", "--song", "3")
    assert code == 0 and "0 exclusion(s) removed" in out
    assert "take low: still excluded by a wider exclusion: skips" in out
    code, out, _ = _run(capsys, "include", session_dir, "--take", "high")
    assert code == 0 and "1 exclusion(s) removed" in out
    assert Selection.from_session(Session.load(session_dir)).reason_excluded("high") is None


def test_note_command_on_a_song_of_a_take_and_on_the_session(session_dir, capsys):
    code, out, _ = _run(capsys, "note", session_dir, "--take", "low", "--song", "1", "hum")
    assert code == 0 and "note on song 1 'song0' of take low: hum" in out
    code, out, _ = _run(capsys, "note", session_dir, "recorded on a Monday")
    assert code == 0 and "note on the session: recorded on a Monday" in out
    selection = Selection.from_session(Session.load(session_dir))
    assert (
        selection.note("low", 0) == "hum" and selection.note(None, None) == "recorded on a Monday"
    )
    code, out, _ = _run(capsys, "selection", session_dir)
    assert "note on song 1 'song0' of take low: hum" in out
    code, out, _ = _run(capsys, "note", session_dir, "--take", "low", "--song", "1", "")
    assert code == 0 and "removed the note on song 1 'song0' of take low" in out
    assert Selection.from_session(Session.load(session_dir)).note("low", 0) == ""


def test_command_errors_are_one_line(session_dir, capsys):
    path = session_dir / "session.json"
    before = path.read_bytes()
    code, _, err = _run(capsys, "exclude", session_dir, "--take", "loud", "--reason", "x")
    assert code == 1
    assert f"{path}: no take labelled 'loud' (takes: low, high)" in _one_line_error(err)
    code, _, err = _run(capsys, "exclude", session_dir, "--song", "4", "--reason", "x")
    assert code == 1 and f"{path}: no song 4 (songs 1-3)" in _one_line_error(err)
    code, _, err = _run(capsys, "exclude", session_dir, "--song", "0", "--reason", "x")
    assert code == 1 and f"{path}: no song 0 (songs 1-3)" in _one_line_error(err)
    code, _, err = _run(capsys, "include", session_dir, "--song", "nothing like it")
    assert code == 1 and "no song titled 'nothing like it'" in _one_line_error(err)
    code, _, err = _run(capsys, "exclude", session_dir, "--reason", "x")
    assert code == 1 and "give --take, --song or both" in _one_line_error(err)
    code, _, err = _run(capsys, "exclude", session_dir, "--take", "low", "--reason", " ")
    assert code == 1 and "give the reason" in _one_line_error(err)
    assert path.read_bytes() == before  # nothing stored by any of them
    with pytest.raises(SystemExit) as usage:
        cli.main(["exclude", str(session_dir), "--take", "low"])  # --reason is required
    assert usage.value.code == 2


def test_commands_explain_every_option(capsys):
    parser = cli.build_parser()
    for command in ("exclude", "include", "note", "selection"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0 and "Exit status" in capsys.readouterr().out
        sub = command_parser(parser, command)
        assert all(action.help for action in sub._actions)
