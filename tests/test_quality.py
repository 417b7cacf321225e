"""Take quality records: the music-to-noise ratio measured over the program's calibration
segments agrees with the virtual room's known truth; clipping, dropouts and xruns are
found where they were put, and flagged with their reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from afp_core.tasks import TaskState
from rig_app import cli
from rig_app.jobs import align_session_take, simulate_session_take
from rig_app.program import (
    Program,
    ProgramSong,
    build_program,
    load_program,
    synthesize_song,
)
from rig_app.quality import QualityError, measure_take_quality, update_take_quality
from rig_app.room import VirtualRoom, music_to_noise_db, render_paths
from rig_app.session import Session
from tests.rig_fixtures import make_room_session

RATE = 16000
ROOM = VirtualRoom()


def _session(tmp_path) -> Session:
    return make_room_session(tmp_path / "session", labels=())


def _noise_file(session: Session) -> Path:
    assert session.program is not None  # the session has its program
    return session.resolve(session.program["noise_file"])


def _stored_quality(session: Session, label: str) -> dict[str, Any]:
    """The quality record stored with the take, which must have one."""
    record = Session.load(session.folder).take(label).quality
    assert record is not None, label
    return record


def _take(session: Session, label: str) -> None:
    simulate_session_take(TaskState(), session, ROOM, label)
    align_session_take(TaskState(), session, label)


def test_calibration_segments_lie_before_the_songs_and_the_noise_is_silent_where_it_must_be(
    tmp_path,
):
    session = _session(tmp_path)
    program = load_program(session.program_folder())
    kinds = [segment.kind for segment in program.calibration]
    assert kinds == ["silence", "music", "noise"]
    assert program.markers[0].position + program.markers[0].length <= program.calibration[0].start
    assert program.calibration[-1].end < program.songs[0].start
    noise, _ = sf.read(_noise_file(session), dtype="float32")
    silence, music, alone = program.calibration
    assert not np.any(program.music[silence.start : silence.end])
    assert not np.any(program.music[alone.start : alone.end])
    assert np.sqrt(np.mean(program.music[music.start : music.end] ** 2)) > 0.01
    assert not np.any(noise[silence.start + 800 : music.end - 800])  # past the duck ramps
    assert np.sqrt(np.mean(noise[alone.start + 800 : alone.end] ** 2)) > 0.01
    assert program.calibration == Program.from_dict(program.to_dict(), program.music).calibration


def test_measured_music_to_noise_agrees_with_the_virtual_room_within_1_db(tmp_path):
    session = _session(tmp_path)
    program = session.load_program()
    noise, _ = sf.read(_noise_file(session), dtype="float32")
    for label in ("low", "mid", "high"):
        _take(session, label)
        record = Session.load(session.folder).take(label).quality
        assert record is not None and record["format"] == "afp-rig-quality"
        # the truth: the room's own music and noise at the microphone, per song
        music_at_mic, noise_at_mic = render_paths(ROOM, program.music, noise, RATE, label)
        songs = [(slot.start, slot.end) for slot in program.songs]
        truth = music_to_noise_db(music_at_mic, noise_at_mic, songs)
        assert record["intended_music_to_noise_db"] == pytest.approx(truth, abs=0.01)
        assert record["music_to_noise_db"] == pytest.approx(truth, abs=1.0), label
        for song, span in zip(record["songs"], songs, strict=True):
            own = music_to_noise_db(music_at_mic, noise_at_mic, [span])
            assert song["music_to_noise_db"] == pytest.approx(own, abs=1.0)
        assert record["flags"] == [], record["flags"]
        assert record["alignment"]["ok"] and record["clipped_samples"] == 0
    ratios = [_stored_quality(session, x)["music_to_noise_db"] for x in ("low", "mid", "high")]
    assert ratios[0] > ratios[1] > ratios[2]


def test_clipping_dropouts_and_xruns_are_found_in_their_song_and_flagged(tmp_path):
    session = _session(tmp_path)
    _take(session, "high")
    take = session.take("high")
    raw = session.resolve(take.raw_file)
    audio, rate = sf.read(raw, dtype="float32")
    truth = take.ground_truth
    first = round((truth[0]["take_start_s"] + 1.0) * rate)
    audio[first : first + 50] = 1.0  # 50 samples at full scale in song 1
    second = round((truth[1]["take_start_s"] + 2.0) * rate)
    audio[second : second + round(0.1 * rate)] = 0.0  # a 0.1 s dropout in song 2
    sf.write(raw, audio, rate, subtype="FLOAT")
    take.xrun_times_s = [truth[2]["take_start_s"] + 0.5]  # the stream reported one in song 3
    take.xruns = 1

    record = update_take_quality(session, "high")

    song1, song2, song3 = record["songs"]
    assert song1["clipped_samples"] == 50 and song1["peak_dbfs"] == 0.0
    assert any(flag.startswith("clipped: 50 samples") for flag in song1["flags"])
    assert song2["silence"] == [
        [pytest.approx(truth[1]["take_start_s"] + 2.0, abs=2e-3),
         pytest.approx(truth[1]["take_start_s"] + 2.1, abs=2e-3)]
    ]  # fmt: skip
    assert any(flag.startswith("digital silence: 1 dropout") for flag in song2["flags"])
    assert song3["xrun_times_s"] == take.xrun_times_s
    assert any("1 xrun inside the song" in flag for flag in song3["flags"])
    assert not song1["silence"] and not song2["clipped_samples"] and not song1["xrun_times_s"]
    assert "1 xrun while recording (at " in " ".join(record["flags"])
    assert record["flags"] == [f"1 xrun while recording (at {take.xrun_times_s[0]:.1f} s)"]
    assert Session.load(session.folder).take("high").quality == record  # stored


def test_a_program_without_calibration_segments_says_the_ratio_was_not_measured(tmp_path):
    session = Session.create(tmp_path / "session")
    songs = [ProgramSong(synthesize_song(4.0, RATE, seed=i), f"song {i}") for i in range(2)]
    program = build_program(songs, RATE, gap_s=0.5, min_song_s=0.0, calibration=None)
    assert program.calibration == [] and program.calibration_segment("music") is None
    session.set_program(program)
    _take(session, "low")
    record = session.take("low").quality
    assert record is not None and record["music_to_noise_db"] is None
    assert record["ratio_note"] == "not measured: the program has no calibration segments"
    assert all(song["music_to_noise_db"] is None for song in record["songs"])


def test_quality_of_an_unaligned_take_is_one_line(tmp_path):
    session = _session(tmp_path)
    simulate_session_take(TaskState(), session, ROOM, "low")
    with pytest.raises(QualityError, match=r"take 'low' is not aligned; align it first"):
        measure_take_quality(session, "low")


def test_quality_command_prints_the_table_json_and_recomputes(tmp_path, capsys):
    session = _session(tmp_path)
    _take(session, "low")
    simulate_session_take(TaskState(), session, ROOM, "high")  # stored, not aligned
    folder = str(session.folder)

    assert cli.main(["quality", folder]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["take", "music/noise", "intended"]
    assert out.splitlines()[1].startswith("low ") and " dB" in out.splitlines()[1]
    assert "high" in out and "not measured (align the take" in out

    stored = _stored_quality(session, "low")
    assert cli.main(["quality", folder, "--label", "low", "--recompute", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert set(records) == {"low"}
    assert records["low"]["computed_at"] >= stored["computed_at"]
    assert records["low"]["music_to_noise_db"] == stored["music_to_noise_db"]

    assert cli.main(["quality", folder, "--label", "far"]) == 1
    assert "no take labelled 'far'" in capsys.readouterr().err

    # a threshold is a setting: measured again with it, kept in the record, flags follow
    assert cli.main(["quality", folder, "--threshold", "ratio_tolerance_db=0.01"]) == 0
    assert "from the intended" in capsys.readouterr().out
    record = _stored_quality(session, "low")
    assert record["thresholds"]["ratio_tolerance_db"] == 0.01
    for bad, says in (("foo=1", "NAME one of clip_level_dbfs"), ("quiet_lufs=x", "not a number")):
        assert cli.main(["quality", folder, "--threshold", bad]) == 1
        assert says in capsys.readouterr().err
