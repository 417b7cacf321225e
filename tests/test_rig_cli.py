"""The ``afp-rig`` command end to end on a temporary session (no display needed)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from afp_core.errors import Cancelled
from afp_core.protocols.sessions import describe_xruns, partial_take_note
from afp_core.tasks import TaskState
from rig_app import cli
from rig_app.program import synthesize_song
from rig_app.session import Session
from tests.rig_fixtures import (
    command_parser,
    make_room_program,
    record_killed_session_take,
    write_killed_take,
)

pytest_plugins = ["tests.rig_fixtures"]

RATE = 16000
COMMANDS = (
    "app", "devices", "new", "songs", "program", "record", "recover", "align", "import-authors",
)  # fmt: skip


def _library(folder: Path, seconds: float = 2.0) -> Path:
    folder.mkdir(parents=True)
    for index, title in enumerate(("One", "Two", "Three")):
        sf.write(folder / f"Band - {title}.wav", synthesize_song(seconds, RATE, seed=index), RATE)
    (folder / "broken.wav").write_text("not audio\n")
    return folder


def _noise(path: Path) -> Path:
    sf.write(path, 0.1 * np.random.default_rng(0).standard_normal(2 * RATE), RATE)
    return path


def _run(capsys, *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_command_explains_every_option(capsys):
    parser = cli.build_parser()
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert "Exit status" in text
        sub = command_parser(parser, command)
        for action in sub._actions:
            assert action.help, f"{command}: {action.dest} has no help"


@pytest.mark.parametrize("distance", ["nan", "inf", "-1", "two"])
def test_a_speaker_distance_must_be_metres(tmp_path, capsys, distance):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["record", str(tmp_path / "session"), "--distance", distance])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--distance" in err and repr(distance) in err
    assert not (tmp_path / "session").exists()


def test_no_command_opens_the_app(monkeypatch, tmp_path):
    from rig_app.ui import main_window

    opened: list[Path | str | None] = []

    def run_app(session: Path | str | None = None, argv: Sequence[str] | None = None) -> int:
        opened.append(session)
        return 0

    # Mocked: the event loop would wait for a person to close the window.
    monkeypatch.setattr(main_window, "run_app", run_app)
    assert cli.main([]) == 0
    assert cli.main(["app", "somewhere"]) == 0
    assert cli.main([str(tmp_path)]) == 0  # a session folder alone opens it in the app
    assert opened == [None, Path("somewhere"), tmp_path]


def test_new_songs_program_end_to_end(tmp_path, capsys):
    session_dir = tmp_path / "session"
    library = _library(tmp_path / "library")

    code, out, _ = _run(capsys, "new", session_dir, "--notes", "living room")
    assert code == 0 and "new session" in out
    assert Session.load(session_dir).notes == "living room"

    code, out, err = _run(capsys, "songs", session_dir, library, "--min-duration", 1, "--quiet")
    assert code == 1  # one item failed, the others were added
    assert out.count("added: ") == 3
    assert "3 added, 0 duplicate(s), 1 failed; the session has 3 songs" in out
    assert "failed: " in err and "broken.wav" in err

    code, out, err = _run(
        capsys, "songs", session_dir, library / "Band - Two.wav", "--min-duration", 1, "--quiet"
    )
    assert code == 0 and "duplicate: " in err and "0 added, 1 duplicate(s)" in out

    noise = _noise(tmp_path / "noise.wav")
    code, out, err = _run(
        capsys,
        "program",
        session_dir,
        "--min-song-s",
        1,
        "--noise",
        noise,
        "--noise-level-db",
        -6,
        "--gap",
        0.5,
        "--quiet",
    )
    assert code == 0, err
    assert "3 songs, 4 markers, noise at -6 dB re music" in out
    assert out.count("LUFS") == 3
    session = Session.load(session_dir)
    assert session.program is not None and session.program["noise_file"] == "program/noise.wav"
    assert [song.loudness_after is not None for song in session.songs] == [True] * 3


def test_user_errors_are_one_line_with_exit_1(tmp_path, capsys):
    code, out, err = _run(capsys, "program", tmp_path)
    assert code == 1 and out == ""
    assert err.startswith("afp-rig: error: ") and err.count("\n") == 1
    assert "not a session folder" in err

    assert _run(capsys, "new", tmp_path / "s")[0] == 0
    code, _, err = _run(capsys, "new", tmp_path / "s")
    assert code == 1 and "already exists" in err
    code, _, err = _run(capsys, "program", tmp_path / "s", "--quiet")
    assert code == 1 and "no songs yet" in err
    code, _, err = _run(capsys, "align", tmp_path / "s", "--label", "low")
    assert code == 1 and "no take labelled 'low'" in err
    code, _, err = _run(capsys, "import-authors", tmp_path / "missing", tmp_path / "t")
    assert code == 1 and "no such file or folder" in err


def test_cancel_exits_130(tmp_path, capsys, monkeypatch):
    from rig_app import jobs

    def cancelled(*args, **kwargs):
        raise Cancelled("cancelled by the user; finished work is kept")

    monkeypatch.setattr(jobs, "add_session_songs", cancelled)
    Session.create(tmp_path / "s")
    code, _, err = _run(capsys, "songs", tmp_path / "s", tmp_path, "--quiet")
    assert code == 130 and "finished work is kept" in err


def test_first_ctrl_c_cancels_the_task_and_the_second_quits():
    task = TaskState()
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs in the background
    with cli._interrupt_cancels(task):
        os.kill(os.getpid(), signal.SIGINT)
        assert task.cancelled
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # put back as it was


def test_ctrl_c_while_adding_songs_keeps_what_was_added(tmp_path):
    """A real process: SIGINT once the first songs are in; exit 130, the rest kept."""
    session_dir = tmp_path / "session"
    Session.create(session_dir)
    library = tmp_path / "library"
    library.mkdir()
    for index in range(40):
        sf.write(library / f"song {index:02d}.wav", synthesize_song(2.0, RATE, seed=index), RATE)
    command = [sys.executable, "-m", "rig_app.cli", "songs", str(session_dir), str(library)]
    process = subprocess.Popen(
        [*command, "--min-duration", "1", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    songs_json = session_dir / "songs" / "songs.json"
    deadline = 60.0
    while deadline > 0 and process.poll() is None:
        if songs_json.is_file() and json.loads(songs_json.read_text())["songs"]:
            break
        deadline -= 0.05
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    kept = Session.load(session_dir).songs
    assert process.returncode == 130, err
    assert "finished work is kept" in err
    assert 0 < len(kept) < 40
    assert not list((session_dir / "songs").glob(".incoming-*"))


def test_devices_record_and_align_through_virtual_devices(virtual_devices, tmp_path, capsys):
    code, out, _ = _run(capsys, "devices", "--json")
    names = [json.loads(line)["name"] for line in out.splitlines()]
    assert code == 0 and virtual_devices.mic_in in names

    session_dir = tmp_path / "session"
    assert _run(capsys, "new", session_dir)[0] == 0
    library = _library(tmp_path / "library", seconds=1.5)
    _run(capsys, "songs", session_dir, library, "--min-duration", 1, "--quiet")
    noise = _noise(tmp_path / "noise.wav")
    code, _, err = _run(
        capsys, "program", session_dir, "--min-song-s", 1, "--gap", 0.5, "--noise", noise, "--quiet"
    )
    assert code == 0, err

    record = ["record", session_dir, "--label", "high", "--music-out", virtual_devices.music_out]
    record += ["--noise-out", virtual_devices.noise_out, "--mic", virtual_devices.mic_in]
    record += ["--distance", 0.5, "--notes", "close", "--lead-in", 0.5, "--tail", 1, "--quiet"]
    code, out, err = _run(capsys, *record)
    assert code == 0, err
    assert "(finished)" in out and "high: offset " in out and ": ok" in out
    take = Session.load(session_dir).take("high")
    assert take.alignment is not None and take.alignment["ok"]
    assert take.speaker_distance_m == 0.5 and take.notes == "close"
    assert not (session_dir / "takes" / "high.settings.json").exists()  # stored: not needed
    assert take.devices == {
        "mic_in": virtual_devices.mic_in,
        "music_out": virtual_devices.music_out,
        "noise_out": virtual_devices.noise_out,
    }

    code, _, err = _run(capsys, *record)
    assert code == 1 and "exists already" in err  # --replace is needed

    code, out, err = _run(capsys, "align", session_dir, "--quiet")
    assert code == 0, err
    assert out.startswith("high: offset ")
    assert Session.load(session_dir).take("high").recorded_at == take.recorded_at


def _session_with_program(tmp_path: Path, capsys) -> Path:
    """A session whose program holds three 2 s songs (about 9 s with its markers)."""
    session_dir = tmp_path / "session"
    assert _run(capsys, "new", session_dir)[0] == 0
    _run(
        capsys, "songs", session_dir, _library(tmp_path / "library"), "--min-duration", 1, "--quiet"
    )
    code, _, err = _run(capsys, "program", session_dir, "--min-song-s", 1, "--gap", 0.5, "--quiet")
    assert code == 0, err
    return session_dir


def _session_with_killed_take(tmp_path: Path, capsys, label: str = "low") -> Path:
    """A session with a program, and its take ``label`` killed 70 % of the way through."""
    session_dir = _session_with_program(tmp_path, capsys)
    program = Session.load(session_dir).load_program()
    rate = program.sample_rate
    take = np.concatenate([np.zeros(rate // 2, np.float32), 0.5 * program.music])
    killed = round(0.7 * len(take))
    path = session_dir / "takes" / f"{label}.raw.wav"
    write_killed_take(path, take[:killed], rate, killed - rate // 4, label)
    return session_dir


def test_a_killed_take_is_recovered_into_its_session(tmp_path, capsys):
    session_dir = _session_with_killed_take(tmp_path, capsys)
    code, _, err = _run(capsys, "align", session_dir, "--label", "low")
    assert code == 1 and "no take labelled 'low'" in err  # not in the session yet

    path = session_dir / "takes" / "low.raw.wav"
    frames = (path.stat().st_size - 56) // 4
    assert sf.info(path).frames < frames  # the header covers the last sync only

    code, out, err = _run(capsys, "recover", session_dir)
    assert code == 0 and err == ""
    assert out.startswith(f"{path}: ") and "recovered (crashed); stored as take 'low'" in out
    assert f"(next: afp-rig align {session_dir} --label low)" in out
    take = Session.load(session_dir).take("low")
    assert take.notes.startswith("recovered after the recording stopped (crashed)")
    assert sf.info(path).frames == frames  # every frame that reached the file
    # aligned on the markers it holds; ground truth only for the songs it holds whole
    code, out, err = _run(capsys, "align", session_dir, "--label", "low", "--quiet")
    assert code == 0, err
    take = Session.load(session_dir).take("low")
    program = Session.load(session_dir).load_program()
    stop_s = frames / program.sample_rate  # the take starts 0.5 s before the program
    held = [song.title for song in program.songs if 0.5 + song.end_s <= stop_s]
    assert [truth["title"] for truth in take.ground_truth] == held == [program.songs[0].title]
    missing = [song.title for song in program.songs[1:]]
    assert take.alignment is not None
    assert take.alignment["missing_songs"] == missing
    assert take.verdict.status == "flagged"
    assert take.verdict.reasons == (partial_take_note(missing),)
    assert out.rstrip().endswith(f"flagged: {partial_take_note(missing)}")
    stops = [n for n in take.alignment["notes"] if n.startswith("the take stops at ")]
    assert len(stops) == 1 and "before marker 'between 2 and 3'" in stops[0]
    assert all(t["take_end_s"] <= stop_s for t in take.ground_truth)

    code, _, err = _run(capsys, "recover", session_dir)
    assert code == 1 and "nothing to recover" in err


def test_record_over_an_unstored_take_names_recover(tmp_path, capsys):
    session_dir = _session_with_killed_take(tmp_path, capsys)
    path = session_dir / "takes" / "low.raw.wav"
    before = path.read_bytes()
    record = ["record", session_dir, "--label", "low", "--music-out", "out", "--mic", "in"]
    code, _, err = _run(capsys, *record, "--quiet")
    assert code == 1 and err.count("\n") == 1
    assert f"afp-rig recover {session_dir} --label low" in err
    assert path.read_bytes() == before  # the killed take is left as it was


def test_a_killed_record_replace_is_recoverable(tmp_path, capsys):
    # a stored take, then `record --replace` of it killed mid-way: the recorder had
    # removed the old file and written part of the new take when it died
    session_dir = _session_with_killed_take(tmp_path, capsys)
    assert _run(capsys, "recover", session_dir)[0] == 0
    assert _run(capsys, "align", session_dir, "--quiet")[0] == 0
    old = Session.load(session_dir).take("low")
    assert old.aligned_file is not None
    path = session_dir / "takes" / "low.raw.wav"
    path.unlink()
    replacement = 0.25 * np.random.default_rng(3).standard_normal(48000 * 3, np.float32)
    write_killed_take(path, replacement, 48000, 48000, "low")

    from rig_app.jobs import unstored_takes

    assert unstored_takes(Session.load(session_dir)) == ["low"]  # the app offers it too
    record = ["record", session_dir, "--label", "low", "--music-out", "out", "--mic", "in"]
    command = f"afp-rig recover {session_dir} --label low"
    code, _, err = _run(capsys, *record, "--quiet")
    assert code == 1 and err.count("\n") == 1 and command in err
    code, _, err = _run(capsys, "align", session_dir, "--label", "low", "--quiet")
    assert code == 1 and command in err  # not the old take's alignment on the new audio

    code, out, err = _run(capsys, "recover", session_dir, "--label", "low")
    assert code == 0, err
    assert "recovered (crashed); stored as take 'low'" in out
    take = Session.load(session_dir).take("low")
    assert take.notes.startswith("recovered after the recording stopped (crashed): 0:03.0")
    assert take.alignment is None and take.aligned_file is None
    assert not (session_dir / old.aligned_file).exists()  # the old take's, stale now
    assert sf.info(path).frames == 3 * 48000  # nothing of the killed take lost
    code, _, err = _run(capsys, "recover", session_dir)
    assert code == 1 and "nothing to recover" in err


def _session_with_noise(tmp_path: Path) -> Path:
    """A session whose program holds two 2 s songs and a noise track (16 kHz)."""
    session = Session.create(tmp_path / "session")
    session.set_program(*make_room_program(RATE, range(2), 2.0))
    return session.folder


UNKNOWN = "its speaker distance and notes are not known"


def test_a_simulated_take_replacing_a_killed_one_leaves_nothing_to_recover(tmp_path):
    from rig_app.jobs import simulate_session_take, unstored_takes
    from rig_app.room import VirtualRoom

    folder = _session_with_noise(tmp_path)
    record_killed_session_take(folder, "low", room=True)
    session = Session.load(folder)
    assert unstored_takes(session) == ["low"]
    simulate_session_take(TaskState(), session, VirtualRoom(), "low", replace=True)
    assert unstored_takes(Session.load(folder)) == []
    assert Session.load(folder).take("low").devices == {"simulated": "rig_app.room.simulate_take"}


def test_a_killed_take_keeps_its_speaker_distance_and_notes(tmp_path, capsys):
    from rig_app.room import VirtualRoom, room_from_notes

    folder = _session_with_noise(tmp_path)
    kept = folder / "takes" / "mid.settings.json"
    record_killed_session_take(folder, "mid", room=True, speaker_distance_m=0.5, notes="door open")
    written = json.loads(kept.read_text())  # written before it recorded, left by the kill
    assert written["speaker_distance_m"] == 0.5
    assert written["notes"].startswith("door open; virtual room, live through the audio devices")

    code, out, err = _run(capsys, "recover", folder)
    assert code == 0 and err == "", err
    assert "recovered (crashed); stored as take 'mid'" in out
    take = Session.load(folder).take("mid")
    assert take.speaker_distance_m == 0.5
    recovered = "; recovered after the recording stopped (crashed): 0:01.2 of "
    assert take.notes.startswith(written["notes"] + recovered), take.notes
    found = room_from_notes(take.notes)  # the virtual room's record reads back
    assert found is not None and found[0] == VirtualRoom() and found[1]["mode"] == "live"
    assert not kept.exists()  # stored: a later take of mid cannot pick it up

    # a later recording of mid killed by a recorder alone: none of the stored take's settings
    path = folder / "takes" / "mid.raw.wav"
    path.unlink()
    write_killed_take(path, np.zeros(RATE, np.float32), RATE, RATE // 2, "mid")
    assert _run(capsys, "recover", folder)[0] == 0
    take = Session.load(folder).take("mid")
    assert take.speaker_distance_m is None
    assert take.notes.startswith("recovered after the recording stopped (crashed): 0:01.0")
    assert take.notes.endswith(f"; {UNKNOWN} (no takes/mid.settings.json)")


@pytest.mark.parametrize(
    ("settings", "why"),
    [
        (None, "no takes/low.settings.json"),
        ('{"format": "afp-rig-take-settings", "vers', "not valid JSON (line 1: "),
        ('{"format": "afp-rig-room", "version": 1}', "not an afp-rig-take-settings file"),
        ({"notes": 3}, "notes 3 are not text"),
        ({"speaker_distance_m": "far"}, "speaker distance 'far' is not a number"),
        ({"pid": 1}, "written by process 1, not by "),  # another recording's
        ({"written_at": "2099-01-01T00:00:00+00:00"}, "written after this recording started"),
    ],
    ids=["missing", "corrupt", "other-format", "bad-notes", "bad-distance", "pid", "later"],
)
def test_a_killed_take_without_its_settings_is_recovered_all_the_same(
    tmp_path, capsys, settings, why
):
    folder = _session_with_noise(tmp_path)
    path = folder / "takes" / "low.raw.wav"
    write_killed_take(path, np.zeros(RATE, np.float32), RATE, RATE // 2, "low")
    kept = folder / "takes" / "low.settings.json"
    if isinstance(settings, str):
        kept.write_text(settings)
    elif settings is not None:
        pid = json.loads((folder / "takes" / "low.raw.wav.json").read_text())["pid"]
        valid = {"format": "afp-rig-take-settings", "version": 1, "label": "low"}
        valid |= {"speaker_distance_m": 2.0, "notes": "ok", "pid": pid}
        kept.write_text(json.dumps(valid | {"written_at": "2000-01-01T00:00:00+00:00"} | settings))

    code, _, err = _run(capsys, "recover", folder)
    assert code == 0 and err == "", err
    take = Session.load(folder).take("low")
    assert take.speaker_distance_m is None
    assert take.notes.startswith("recovered after the recording stopped (crashed): 0:01.0")
    assert f"; {UNKNOWN} (" in take.notes and why in take.notes, take.notes
    assert "\n" not in take.notes
    assert not kept.exists()


def test_a_recorded_take_keeps_its_settings_only_while_a_recovery_could_need_them(
    tmp_path, monkeypatch
):
    from afp_core.fileutil import utc_now
    from rig_app import jobs
    from rig_app.capture import CaptureError, TakeRecorder, TakeResult
    from rig_app.devices import DeviceError

    folder = _session_with_noise(tmp_path)
    session = Session.load(folder)
    kept = folder / "takes" / "low.settings.json"
    seen: list[dict] = []

    def finished(config, music, noise, out, task, overwrite=False, on_recorder=None):
        seen.append(json.loads(kept.read_text()))
        sf.write(out, music[:RATE], RATE, subtype="FLOAT")
        now = utc_now("milliseconds")
        return TakeResult(out, "low", RATE, len(music), RATE, 1, {}, {}, now, now, "finished")

    def refused(config, music, noise, out, task, overwrite=False, on_recorder=None):
        seen.append(json.loads(kept.read_text()))
        raise DeviceError("mic_in 'mic': cannot open")

    def failed(config, music, noise, out, task, overwrite=False, on_recorder=None):
        # a recording under way when the writer failed: a recovery can store it
        seen.append(json.loads(kept.read_text()))
        recorder = TakeRecorder(config, music, None, out, overwrite=overwrite)
        recorder._started_at = utc_now("milliseconds")
        recorder._create_file()
        assert recorder._file is not None
        recorder._file.append(music[:RATE])
        recorder._file.sync(durable=True)
        raise CaptureError(f"{out}: the disk failed")

    monkeypatch.setattr(jobs, "find_device", lambda wanted, kind: None)
    settings = jobs.TakeSettings("low", "out", "mic", speaker_distance_m=1.5, notes="quiet")
    monkeypatch.setattr(jobs, "record_take", refused)
    with pytest.raises(DeviceError):
        jobs.record_session_take(TaskState(), session, settings)
    assert not kept.exists()  # nothing recorded: nothing to recover

    monkeypatch.setattr(jobs, "record_take", finished)
    jobs.record_session_take(TaskState(), session, settings)
    take = Session.load(folder).take("low")
    assert (take.speaker_distance_m, take.notes) == (1.5, "quiet")
    assert not kept.exists()  # stored

    monkeypatch.setattr(jobs, "record_take", failed)
    replace = dataclasses.replace(settings, speaker_distance_m=3.0, notes="louder", replace=True)
    with pytest.raises(CaptureError):
        jobs.record_session_take(TaskState(), session, replace)
    assert json.loads(kept.read_text())["notes"] == "louder"  # the new recording's
    assert jobs.unstored_takes(session) == ["low"]
    jobs.recover_session_takes(TaskState(), session)
    take = Session.load(folder).take("low")
    assert take.speaker_distance_m == 3.0
    assert take.notes.startswith("louder; recovered after the recording stopped (crashed)")
    assert not kept.exists()
    assert [(s["speaker_distance_m"], s["notes"]) for s in seen] == [
        (1.5, "quiet"),
        (1.5, "quiet"),
        (3.0, "louder"),
    ]


def test_a_take_with_xruns_says_how_many_and_where(virtual_devices, tmp_path, capsys):
    session_dir = _session_with_program(tmp_path, capsys)
    program = Session.load(session_dir).program
    assert program is not None
    rate = int(program["sample_rate"])
    path = session_dir / "takes" / "low.raw.wav"
    record = [sys.executable, "-m", "rig_app.cli", "record", str(session_dir), "--label", "low"]
    record += ["--music-out", virtual_devices.music_out, "--mic", virtual_devices.mic_in]
    record += ["--lead-in", "0.5", "--tail", "1", "--no-align", "--quiet"]
    env = {**os.environ, **virtual_devices.env()}
    process = subprocess.Popen(record, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30.0
        # 2 s recorded, then the process stops for 1 s (what a starved CPU does to it):
        # its streams underrun for real
        while not (path.exists() and path.stat().st_size > 56 + 4 * 2 * rate):
            assert process.poll() is None, process.communicate()[1].decode()
            assert time.monotonic() < deadline, "the recording never started"
            time.sleep(0.02)
        process.send_signal(signal.SIGSTOP)
        time.sleep(1.0)
        process.send_signal(signal.SIGCONT)
        out, err = (text.decode() for text in process.communicate(timeout=60))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 0, err
    take = Session.load(session_dir).take("low")
    assert take.xruns > 0
    assert len(take.xrun_times_s) == take.xruns and take.xrun_times_s == sorted(take.xrun_times_s)
    # where the stop hit: past the 2 s seen on disk, within a sync interval and the stop
    assert all(2.0 <= t <= 2.0 + 1.5 + 0.5 for t in take.xrun_times_s), take.xrun_times_s
    where = describe_xruns(take.xruns, take.xrun_times_s)
    assert where.startswith(f"{take.xruns} xrun") and f" at {take.xrun_times_s[0]:.1f} s" in where
    assert where in out and where in take.notes  # the command's line and the take's notes
