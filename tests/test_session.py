"""Session folders: round trip, validation, song lists, the authors' layout."""

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
from rig_app.session import (
    Session,
    SessionError,
    import_authors_layout,
    read_song_list,
)

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
        quiet_ranges=program.marker_ranges(),
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


def write_song(path: Path, seconds: float, rate: int, seed: int) -> np.ndarray:
    audio = synthesize_song(seconds, rate, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, rate)
    return audio


def test_song_list_variants(tmp_path: Path) -> None:
    for name in ("a.wav", "b.flac", "sub/c.wav"):
        write_song(tmp_path / name, 0.5, RATE, seed=len(name))
    (tmp_path / "header.csv").write_text("index,file,title\n1,a.wav,First\n2,b.flac,Second\n")
    rows = read_song_list(tmp_path / "header.csv")
    assert [(r.file.name, r.title) for r in rows] == [("a.wav", "First"), ("b.flac", "Second")]

    (tmp_path / "plain.csv").write_text("a.wav\n\n# a comment\nc.wav\n")
    rows = read_song_list(tmp_path / "plain.csv")
    assert [r.file for r in rows] == [tmp_path / "a.wav", tmp_path / "sub" / "c.wav"]
    assert [r.title for r in rows] == ["a", "c"]

    (tmp_path / "semi.csv").write_text("Artist;Title;Path\nX;Song A;a.wav\nY;Song B;b.flac\n")
    rows = read_song_list(tmp_path / "semi.csv")
    assert [(r.artist, r.title, r.file.name) for r in rows] == [
        ("X", "Song A", "a.wav"),
        ("Y", "Song B", "b.flac"),
    ]

    (tmp_path / "tabs.tsv").write_text("b.flac\tsecond song\na.wav\tfirst song\n")
    assert [r.file.name for r in read_song_list(tmp_path / "tabs.tsv")] == ["b.flac", "a.wav"]

    (tmp_path / "missing.csv").write_text("file\na.wav\nnothere.wav\n")
    with pytest.raises(SessionError, match=r"line 3: song file 'nothere\.wav' not found"):
        read_song_list(tmp_path / "missing.csv")


def test_import_authors_layout(tmp_path: Path) -> None:
    rate = 16000
    layout = tmp_path / "authors"
    songs = [
        write_song(layout / "songs" / f"{i:02d} track.wav", 10.0, rate, seed=20 + i)
        for i in range(3)
    ]
    (layout / "test_songs.csv").write_text(
        "song,file\n" + "".join(f"Track {i},{i:02d} track.wav\n" for i in range(3))
    )
    program = np.concatenate(songs)
    sf.write(layout / "low.wav", make_take(program, rate, -50.0, 0.4, seed=2), rate)
    high = make_take(program, rate, 80.0, 0.4, seed=3)
    sf.write(layout / "high.wav", soxr.resample(high, rate, 22050), 22050)

    session = import_authors_layout(
        layout,
        tmp_path / "imported",
        sample_rate=rate,
        min_song_s=1.0,
        segment_s=6.0,
        edge_margin_s=1.0,
        checkpoints=2,
    )
    assert session.origin == "authors-layout" and "mid" in session.notes
    assert [s.title for s in session.songs] == ["Track 0", "Track 1", "Track 2"]
    assert session.program is not None and session.program["markers"] == []
    assert session.program["noise_file"] is None
    loaded = Session.load(tmp_path / "imported")
    assert [t.label for t in loaded.takes] == ["low", "high"]
    for label, ppm, take_rate in (("low", -50.0, rate), ("high", 80.0, 22050)):
        take = loaded.take(label)
        assert take.recording_rate == take_rate
        assert Path(take.raw_file) == (layout / f"{label}.wav").resolve()
        alignment = take.load_alignment()
        assert alignment is not None and alignment.method == "markerless"
        assert abs(alignment.offset_s - 0.4) < 0.5e-3
        assert abs(alignment.drift_ppm - ppm) < 3.0
        second = take.ground_truth[1]
        assert second["program_start_s"] == pytest.approx(10.0)
        assert second["take_start_s"] == pytest.approx(0.4 + 10.0 * (1 + ppm * 1e-6), abs=1e-3)
        aligned = sf.read(loaded.resolve(str(take.aligned_file)))[0]
        assert len(aligned) == len(program)


def test_import_needs_recordings_and_one_list(tmp_path: Path) -> None:
    layout = tmp_path / "empty"
    write_song(layout / "a.wav", 2.0, RATE, seed=1)
    (layout / "list.csv").write_text("a.wav\n")
    with pytest.raises(SessionError, match="none of the recordings"):
        import_authors_layout(layout, tmp_path / "out", min_song_s=1.0)
    (layout / "other.csv").write_text("a.wav\n")
    with pytest.raises(SessionError, match="expected one CSV song list"):
        import_authors_layout(layout, tmp_path / "out", min_song_s=1.0)
