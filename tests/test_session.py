"""Session folders: round trip, validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from rig_app.align import align_take
from rig_app.program import (
    ProgramSong,
    build_noise_program,
    build_program,
    synthesize_song,
)
from rig_app.session import Session, SessionError

RATE = 8000


def make_take(music: np.ndarray, rate: int, ppm: float, delay_s: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = soxr.resample(music.astype(np.float64), rate, rate * (1 + ppm * 1e-6), quality="VHQ")
    y = np.concatenate([np.zeros(round(delay_s * rate)), y, np.zeros(rate)])
    return (y + rng.standard_normal(len(y)) * 0.01 * np.std(music)).astype(np.float32)


@pytest.fixture
def session_with_take(tmp_path: Path) -> Session:
    songs = [ProgramSong(synthesize_song(4.0, RATE, seed=i), f"song {i}") for i in range(2)]
    program = build_program(songs, RATE, min_song_s=1.0)
    noise = build_noise_program(
        [synthesize_song(3.0, RATE, seed=9)],
        program.samples,
        RATE,
        -10.0,
        quiet_ranges=program.noise_quiet_ranges(),
    )
    session = Session.create(tmp_path / "s1")
    session.set_program(program, noise)
    take = make_take(program.music, RATE, 40.0, 0.3, seed=1)
    alignment = align_take(take, RATE, program, name="low")
    session.add_take(
        "low",
        take,
        RATE,
        alignment=alignment,
        devices={"music_out": "music_out", "noise_out": "noise_out", "mic_in": "mic_in"},
        sample_rates={"music_out": 8000, "noise_out": 8000, "mic_in": 8000},
        speaker_distance_m=3.0,
        notes="far",
        xruns=0,
    )
    return session


def test_session_round_trip(session_with_take: Session) -> None:
    session = session_with_take
    loaded = Session.load(session.folder)
    assert loaded.to_dict() == session.to_dict()
    data = json.loads((session.folder / "session.json").read_text())
    assert data["format"] == "afp-rig-session" and data["version"] == 1
    assert [s["title"] for s in data["songs"]] == ["song 0", "song 1"]
    assert data["program"]["music_file"] == "program/music.wav"
    assert data["program"]["noise_file"] == "program/noise.wav"
    assert len(data["program"]["markers"]) == 3
    take = loaded.take("low")
    assert take.raw_file == "takes/low.raw.wav" and take.aligned_file == "takes/low.aligned.wav"
    assert take.devices["mic_in"] == "mic_in" and take.sample_rates["noise_out"] == 8000
    assert take.speaker_distance_m == 3.0 and take.xruns == 0
    alignment = take.load_alignment()
    assert alignment is not None and abs(alignment.offset_s - 0.3) < 1e-4
    assert [g["title"] for g in take.ground_truth] == ["song 0", "song 1"]
    assert take.ground_truth[0]["take_start_s"] == pytest.approx(
        0.3 + take.ground_truth[0]["program_start_s"] * (1 + 40e-6), abs=1e-4
    )
    aligned = sf.read(loaded.resolve(take.aligned_file), dtype="float32")[0]
    program = loaded.load_program()
    assert len(aligned) == program.samples
    with pytest.raises(SessionError, match="no take labelled 'mid'"):
        loaded.take("mid")


def test_takes_are_not_overwritten_by_accident(session_with_take: Session) -> None:
    session = session_with_take
    with pytest.raises(SessionError, match="exists already"):
        session.add_take("low", np.zeros(RATE, np.float32), RATE)
    session.add_take("low", np.zeros(RATE, np.float32), RATE, replace=True, notes="again")
    assert [t.label for t in Session.load(session.folder).takes] == ["low"]
    with pytest.raises(SessionError, match="slug"):
        session.add_take("Low Take!", np.zeros(RATE, np.float32), RATE)
    with pytest.raises(SessionError, match="already exists"):
        Session.create(session.folder)


def test_corrupt_session_files_are_one_line_errors(session_with_take: Session) -> None:
    folder = session_with_take.folder
    path = folder / "session.json"
    good = path.read_text()

    def refused(text: str, pattern: str) -> str:
        path.write_text(text)
        with pytest.raises(SessionError, match=pattern) as info:
            Session.load(folder)
        message = str(info.value)
        assert "\n" not in message and str(path) in message
        return message

    refused(good[: len(good) // 2], "not valid JSON")
    data = json.loads(good)
    refused(json.dumps({**data, "format": "afp-rig-program"}), "not an afp-rig-session")
    refused(json.dumps({**data, "version": 2}), "version 2 is newer")
    refused(json.dumps({k: v for k, v in data.items() if k != "takes"}), "missing key 'takes'")
    refused(json.dumps({**data, "takes": "low"}), "'takes' must be a list")
    bad_alignment = json.loads(good)
    bad_alignment["takes"][0]["alignment"]["format"] = "nope"
    refused(json.dumps(bad_alignment), "take 'low'")
    path.write_text(good)
    (folder / "takes" / "low.aligned.wav").unlink()
    assert "takes/low.aligned.wav is missing" in refused(good, "missing")
    with pytest.raises(SessionError, match="no such file"):
        Session.load(folder / "elsewhere")
