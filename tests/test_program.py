"""Music and noise programs: loudness, layout with markers, files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rig_app.markers import SweepSpec, find_marker
from rig_app.program import (
    Program,
    ProgramError,
    ProgramSong,
    build_noise_program,
    build_program,
    load_noise_track,
    load_program,
    measure_loudness,
    measure_peak_db,
    normalise_loudness,
    synthesize_song,
    write_program,
)

RATE = 8000


def pink(seconds: float, seed: int, level: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = round(seconds * RATE)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
    x = np.fft.irfft(spectrum, n)
    return level * x / np.std(x)


def spiky(seconds: float) -> np.ndarray:
    """Quiet music-like bed with rare full-scale clicks: normalising it would clip."""
    x = pink(seconds, 7, level=0.02)
    x[:: RATE // 2] = 0.9
    return x


def make_songs(count: int = 3, seconds: float = 4.0) -> list[ProgramSong]:
    return [
        ProgramSong(synthesize_song(seconds, RATE, seed=i) * (0.3 + 0.3 * i), f"song {i}")
        for i in range(count)
    ]


def test_normalise_reaches_the_target() -> None:
    x = pink(6.0, 1, level=0.01)
    before = measure_loudness(x, RATE)
    result = normalise_loudness(x, RATE, target_lufs=-23.0)
    assert result.loudness_before == pytest.approx(before)
    assert abs(result.loudness_after - (-23.0)) < 0.5
    assert result.gain_db == pytest.approx(-23.0 - before)
    assert not result.limited and result.note == ""
    assert result.audio.dtype == np.float32


def test_loud_song_gets_less_gain_and_never_passes_the_ceiling() -> None:
    result = normalise_loudness(spiky(6.0), RATE, target_lufs=-14.0, peak_ceiling_db=-1.0)
    assert measure_peak_db(result.audio, RATE) <= -1.0 + 1e-3
    assert result.loudness_after < -14.5
    assert "gain lowered by" in result.note and "LUFS" in result.note
    assert not result.limited


def test_limiter_keeps_the_target_under_the_ceiling() -> None:
    result = normalise_loudness(
        spiky(6.0), RATE, target_lufs=-14.0, peak_ceiling_db=-1.0, on_overload="limit"
    )
    assert measure_peak_db(result.audio, RATE) <= -1.0 + 1e-3
    assert abs(result.loudness_after - (-14.0)) < 0.5
    assert result.limited and "limited" in result.note


def test_silent_and_short_audio_are_refused() -> None:
    with pytest.raises(ProgramError, match="silent") as info:
        normalise_loudness(np.zeros(RATE), RATE, name="quiet.wav")
    assert "quiet.wav" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ProgramError, match="too short"):
        measure_loudness(np.ones(100), RATE)
    assert measure_loudness(np.zeros(RATE), RATE) == -np.inf


def test_program_layout_has_markers_at_start_between_and_end() -> None:
    songs = make_songs(3)
    spec = SweepSpec()
    program = build_program(songs, RATE, spec, gap_s=1.0, min_song_s=1.0)
    labels = [m.label for m in program.markers]
    assert labels == ["start", "between 1 and 2", "between 2 and 3", "end"]
    sweep = spec.render(RATE).astype(np.float32)
    for marker in program.markers:
        assert np.array_equal(program.music[marker.position : marker.position + len(sweep)], sweep)
        hit = find_marker(program.music, sweep, marker.position, 2000)
        assert abs(hit.position - marker.position) < 0.01
    # Every song sits between two markers with a gap on each side and nothing overlaps;
    # the first one after the calibration segments, which follow the start marker.
    gap = round(1.0 * RATE)
    start = program.markers[0]
    assert program.calibration[0].start == start.position + start.length
    assert [c.duration_s for c in program.calibration] == [1.0, 3.0, 3.0]
    for slot, before, after in zip(
        program.songs, program.markers[:-1], program.markers[1:], strict=True
    ):
        end_before = before.position + before.length
        if before is start:
            end_before = program.calibration[-1].end
        assert slot.start == end_before + gap
        assert slot.end + gap == after.position
        assert slot.start_s == pytest.approx(slot.start / RATE)
        assert slot.loudness_after is not None and abs(slot.loudness_after - (-23.0)) < 0.5
        assert np.allclose(program.music[slot.start - gap : slot.start], 0.0)
    assert program.music.dtype == np.float32
    assert len(program.music) == program.markers[-1].position + len(sweep) + gap


def test_short_song_is_refused_unless_allowed() -> None:
    songs = make_songs(2, seconds=3.0)
    with pytest.raises(ProgramError, match="song 1 'song 0'") as info:
        build_program(songs, RATE)
    assert "60 s" in str(info.value) and "\n" not in str(info.value)
    assert len(build_program(songs, RATE, min_song_s=2.0).songs) == 2


def test_program_without_markers_just_joins_songs() -> None:
    songs = make_songs(2)
    program = build_program(songs, RATE, marker=None, gap_s=0.0, normalise=False, min_song_s=1)
    assert program.markers == []
    assert len(program.music) == sum(len(s.audio) for s in songs)
    assert np.allclose(program.music[: len(songs[0].audio)], songs[0].audio)
    assert program.songs[1].start == len(songs[0].audio)


def test_songs_at_other_rates_are_resampled() -> None:
    song = ProgramSong(synthesize_song(3.0, 16000, seed=3), "hi-rate", sample_rate=16000)
    program = build_program([song], RATE, min_song_s=1)
    assert program.songs[0].end - program.songs[0].start == 3 * RATE


def test_noise_program_length_level_and_ducking(tmp_path: Path) -> None:
    program = build_program(make_songs(3), RATE, min_song_s=1)
    clip_file = tmp_path / "rain.wav"
    sf.write(clip_file, pink(2.5, 5), RATE)
    clips: list[np.ndarray | Path] = [pink(3.0, 3), pink(1.5, 4, level=0.3), clip_file]
    quiet = program.marker_ranges()
    noise = build_noise_program(
        clips, program.samples, RATE, -6.0, -23.0, seed=1, quiet_ranges=quiet
    )
    assert noise.shape == (program.samples,) and noise.dtype == np.float32
    assert abs(measure_loudness(noise, RATE) - (-29.0)) < 1.0
    for start, end in quiet:
        assert np.all(noise[start:end] == 0.0)
    again = build_noise_program(clips, program.samples, RATE, -6.0, seed=1, quiet_ranges=quiet)
    other = build_noise_program(clips, program.samples, RATE, -6.0, seed=2, quiet_ranges=quiet)
    assert np.array_equal(noise, again) and not np.array_equal(noise, other)


def test_noise_clip_problems_name_the_clip(tmp_path: Path) -> None:
    with pytest.raises(ProgramError, match="noise clip 1"):
        build_noise_program([pink(2.0, 1), pink(0.2, 2)], RATE * 10, RATE)
    silent = tmp_path / "silence.wav"
    sf.write(silent, np.zeros(RATE * 2), RATE)
    with pytest.raises(ProgramError, match=r"silence\.wav: silent"):
        build_noise_program([silent], RATE * 10, RATE)


def test_write_and_load_program(tmp_path: Path) -> None:
    songs = make_songs(2)
    songs[1].source_start_s = 42.5  # an excerpt: the evaluation's true offsets start there
    program = build_program(songs, RATE, min_song_s=1)
    assert [s.source_start_s for s in program.songs] == [0.0, 42.5]
    noise = build_noise_program([pink(3.0, 1)], program.samples, RATE, 0.0)
    json_path = write_program(tmp_path / "prog", program, noise)
    data = json.loads(json_path.read_text())
    assert data["format"] == "afp-rig-program" and data["version"] == 1
    assert data["music_file"] == "music.wav" and data["noise_file"] == "noise.wav"
    assert abs(data["noise"]["loudness_lufs"] - (-23.0)) < 1.0
    assert [s["start_s"] for s in data["songs"]] == [s.start_s for s in program.songs]
    assert sf.info(tmp_path / "prog" / "music.wav").subtype == "FLOAT"
    loaded = load_program(tmp_path / "prog")
    assert np.array_equal(loaded.music, program.music)
    assert loaded.markers == program.markers and loaded.songs == program.songs
    assert loaded.marker_spec == program.marker_spec
    loaded_noise = load_noise_track(tmp_path / "prog")
    assert loaded_noise is not None and np.array_equal(loaded_noise, noise)


def test_program_file_problems_are_one_line(tmp_path: Path) -> None:
    program = build_program(make_songs(1), RATE, min_song_s=1)
    folder = tmp_path / "prog"
    write_program(folder, program)
    path = folder / "program.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "version": 9}))
    with pytest.raises(ProgramError, match="version 9 is newer"):
        load_program(folder)
    path.write_text(json.dumps({**data, "format": "something"}))
    with pytest.raises(ProgramError, match="not an afp-rig-program"):
        load_program(folder)
    path.write_text(path.read_text()[:40])
    with pytest.raises(ProgramError, match="not valid JSON") as info:
        load_program(folder)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ProgramError, match="missing key 'markers'"):
        Program.from_dict({k: v for k, v in data.items() if k != "markers"}, program.music)
