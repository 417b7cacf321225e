"""Aligning simulated takes: markers, drift, rooms, refusals, markerless takes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soxr
from scipy import signal

from rig_app.align import (
    Alignment,
    AlignmentError,
    align_take,
    align_without_markers,
    resample_to_program,
)
from rig_app.program import Program, ProgramSong, build_program, synthesize_song

RATE = 8000
DELAY_S = 0.73


def room(rate: int, seed: int) -> np.ndarray:
    """Direct sound at 0 (so the true delay is known), a decaying tail from 2 ms."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(0.06 * rate)) / rate
    ir = rng.standard_normal(len(t)) * np.exp(-t / 0.015) * 0.15 * np.sqrt(8000 / rate)
    ir[: round(0.002 * rate)] = 0.0
    ir[0] = 1.0
    return ir


def simulate_take(
    program: np.ndarray,
    rate: int,
    ppm: float,
    *,
    delay_s: float = DELAY_S,
    channel: np.ndarray | None = None,
    noise_db: float | None = None,
    take_rate: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """The program through a channel, on a clock ``ppm`` fast, delayed, with noise."""
    rng = np.random.default_rng(seed)
    x = program.astype(np.float64)
    if channel is not None:
        x = signal.fftconvolve(x, channel)[: len(x)]
    take_rate = take_rate or rate
    y = soxr.resample(x, rate, take_rate * (1 + ppm * 1e-6), quality="VHQ")
    y = np.concatenate([np.zeros(round(delay_s * take_rate)), y, np.zeros(take_rate)])
    if noise_db is not None:
        y += rng.standard_normal(len(y)) * np.std(program) * 10 ** (noise_db / 20)
    return y.astype(np.float32)


@pytest.fixture(scope="module")
def program() -> Program:
    songs = [ProgramSong(synthesize_song(6.0, RATE, seed=i), f"song {i}") for i in range(4)]
    return build_program(songs, RATE, min_song_s=1.0)


@pytest.fixture(scope="module")
def plain_program() -> Program:
    songs = [ProgramSong(synthesize_song(12.0, RATE, seed=10 + i), f"s{i}") for i in range(4)]
    return build_program(songs, RATE, marker=None, gap_s=0.0, normalise=False, min_song_s=1.0)


def band_limited(x: np.ndarray) -> np.ndarray:
    """Below 3 kHz: resamplers differ only in how they cut the band edge."""
    sos = signal.butter(8, 3000, fs=RATE, output="sos")
    return signal.sosfiltfilt(sos, x.astype(np.float64))


def check_song_times(alignment: Alignment, program: Program, ppm: float, tol_s: float) -> None:
    for timing, slot in zip(alignment.songs, program.songs, strict=True):
        assert timing.title == slot.title
        assert timing.program_start_s == pytest.approx(slot.start_s)
        assert abs(timing.take_start_s - (DELAY_S + slot.start_s * (1 + ppm * 1e-6))) < tol_s
        assert abs(timing.take_end_s - (DELAY_S + slot.end_s * (1 + ppm * 1e-6))) < tol_s


@pytest.mark.parametrize("ppm", [100.0, -100.0])
def test_take_with_drift_room_and_noise(program: Program, ppm: float) -> None:
    take = simulate_take(program.music, RATE, ppm, channel=room(RATE, 1), noise_db=-20, seed=2)
    alignment = align_take(take, RATE, program, name="sim.wav")
    assert abs(alignment.offset_s - DELAY_S) < 0.1e-3
    assert abs(alignment.drift_ppm - ppm) < 2.0
    assert all(a.used for a in alignment.anchors)
    for anchor in alignment.anchors:
        assert anchor.residual_ms is not None and abs(anchor.residual_ms) < 1.0
    assert alignment.max_residual_ms < 1.0 and alignment.ok
    check_song_times(alignment, program, ppm, 1e-3)
    assert alignment.aligned is not None and len(alignment.aligned) == program.samples
    # Sample i of the aligned take is sample i of the program (through the room).
    expected = signal.fftconvolve(program.music, room(RATE, 1))[: program.samples]
    corr = np.corrcoef(alignment.aligned[RATE:-RATE], expected[RATE:-RATE])[0, 1]
    assert corr > 0.99


def test_clean_take_is_exact(program: Program) -> None:
    take = simulate_take(program.music, RATE, 37.0)
    alignment = align_take(take, RATE, program)
    assert abs(alignment.offset_s - DELAY_S) < 1e-6
    assert abs(alignment.drift_ppm - 37.0) < 0.05
    assert alignment.max_residual_ms < 0.001
    assert alignment.aligned is not None
    inner = slice(RATE, program.samples - RATE)
    error = band_limited(alignment.aligned)[inner] - band_limited(program.music)[inner]
    assert np.max(np.abs(error)) < 1e-3


def test_take_at_another_rate(program: Program) -> None:
    take = simulate_take(program.music, RATE, -60.0, take_rate=16000, noise_db=-30)
    alignment = align_take(take, 16000, program)
    assert alignment.recording_rate == 16000 and alignment.program_rate == RATE
    assert abs(alignment.offset_s - DELAY_S) < 0.1e-3
    assert abs(alignment.drift_ppm + 60.0) < 2.0
    assert alignment.max_residual_ms < 1.0


def test_channel_response_from_the_markers(program: Program) -> None:
    channel = np.zeros(16)
    channel[0], channel[3] = 1.0, 0.5  # a comb: +3.5 dB at DC-ish, -6 dB at its notches
    take = simulate_take(program.music, RATE, 0.0, channel=channel, noise_db=-40)
    alignment = align_take(take, RATE, program)
    response = alignment.channel
    assert response is not None and response.measurements == len(program.markers)
    truth = 20 * np.log10(np.abs(1 + 0.5 * np.exp(-2j * np.pi * response.freqs * 3 / RATE)))
    inner = (response.freqs > 400) & (response.freqs < 3000)
    assert np.max(np.abs(response.magnitude_db[inner] - truth[inner])) < 0.5


def test_noise_only_take_is_refused(program: Program) -> None:
    noise = np.random.default_rng(5).standard_normal(program.samples + RATE).astype(np.float32)
    with pytest.raises(AlignmentError, match="first marker") as info:
        align_take(noise * 0.1, RATE, program, name="empty.wav")
    assert str(info.value).startswith("empty.wav: ") and "\n" not in str(info.value)


def test_take_stopped_early_is_aligned_on_the_markers_it_holds(program: Program) -> None:
    # a killed recording: the file holds a prefix of the take
    take = simulate_take(program.music, RATE, 40.0, noise_db=-30)

    def stopped_at(program_s: float) -> np.ndarray:
        return take[: round((DELAY_S + program_s * (1 + 40e-6)) * RATE)]

    # just before the end marker: every song is in it, so nothing is missing
    whole = align_take(stopped_at(program.markers[-1].position / RATE), RATE, program)
    assert whole.ok and whole.missing_songs == [] and whole.verdict().trusted
    assert whole.offset_s == pytest.approx(DELAY_S, abs=1e-4)
    assert whole.drift_ppm == pytest.approx(40.0, abs=2.0)
    assert whole.anchors[-1].take_s is None and "stopped early" in whole.anchors[-1].note
    assert any("before marker 'end'" in note for note in whole.notes)

    # in the middle of the last song: the songs before it keep their ground truth
    last = program.songs[-1]
    partial = align_take(stopped_at(last.start_s + 1.0), RATE, program, name="killed.wav")
    assert partial.missing_songs == [last.title]
    assert [song.title for song in partial.songs] == [s.title for s in program.songs[:-1]]
    assert partial.ok and partial.offset_s == pytest.approx(DELAY_S, abs=1e-4)
    verdict = partial.verdict()
    assert verdict.status == "flagged" and verdict.reasons[0].startswith("partial take: 1 song")
    assert Alignment.from_dict(partial.to_dict()).missing_songs == [last.title]

    # before the second marker: one marker cannot give a clock
    with pytest.raises(AlignmentError, match=r"before its second marker") as info:
        align_take(stopped_at(program.markers[1].position / RATE), RATE, program, name="s.wav")
    assert str(info.value).startswith("s.wav: ") and "\n" not in str(info.value)


def test_a_displaced_marker_is_dropped_and_reported(program: Program) -> None:
    take = simulate_take(program.music, RATE, 50.0, noise_db=-30)
    # A glitch around one inner marker only: 40 samples lost before it, 40 added after.
    marker = program.markers[2]
    at = round((DELAY_S + marker.position / RATE) * RATE)
    glitched = np.concatenate(
        [
            take[: at - 2000],
            take[at - 1960 : at + 6000],
            np.zeros(40, np.float32),
            take[at + 6000 :],
        ]
    )
    alignment = align_take(glitched, RATE, program)
    dropped = [a for a in alignment.anchors if not a.used]
    assert [a.label for a in dropped] == [marker.label]
    assert dropped[0].fit_residual_ms == pytest.approx(-5.0, abs=0.1)
    assert any(marker.label in note for note in alignment.notes)
    assert not alignment.ok
    assert abs(alignment.offset_s - DELAY_S) < 0.1e-3 and abs(alignment.drift_ppm - 50) < 2


def test_alignment_round_trips_through_json(program: Program) -> None:
    take = simulate_take(program.music, RATE, 20.0, channel=room(RATE, 3), noise_db=-30)
    alignment = align_take(take, RATE, program)
    data = json.loads(json.dumps(alignment.to_dict(), allow_nan=False))
    assert data["format"] == "afp-rig-alignment" and data["version"] == 1
    again = Alignment.from_dict(data)
    assert again.offset_s == alignment.offset_s and again.drift_ppm == alignment.drift_ppm
    assert again.anchors == alignment.anchors and again.songs == alignment.songs
    assert again.channel is not None and alignment.channel is not None
    assert np.allclose(again.channel.magnitude_db, alignment.channel.magnitude_db, atol=1e-4)
    assert again.take_time(10.0) == pytest.approx(DELAY_S + 10.0 * (1 + 20e-6), abs=1e-4)
    with pytest.raises(AlignmentError, match="not an afp-rig-alignment"):
        Alignment.from_dict({**data, "format": "x"}, where="low.json")
    with pytest.raises(AlignmentError, match="missing key 'offset_s'"):
        Alignment.from_dict({k: v for k, v in data.items() if k != "offset_s"})


def test_program_without_markers_is_refused_by_align_take(plain_program: Program) -> None:
    with pytest.raises(AlignmentError, match="align_without_markers"):
        align_take(plain_program.music, RATE, plain_program)


def test_resample_to_program_handles_a_late_start() -> None:
    rate = 8000
    program = synthesize_song(3.0, rate, seed=4)
    # The take starts 0.25 s into the program (negative offset) on a slow clock.
    ratio = 1 - 80e-6
    take = soxr.resample(program.astype(np.float64), rate, rate * ratio, quality="VHQ")
    take = take[round(0.25 * rate * ratio) :]
    aligned = resample_to_program(take, rate, rate, -0.25, -80.0, len(program))
    assert np.all(aligned[: round(0.25 * rate) - 1] == 0.0)
    inner = slice(round(0.3 * rate), len(program) - rate // 4)
    assert np.max(np.abs(band_limited(aligned)[inner] - band_limited(program)[inner])) < 1e-3


@pytest.mark.parametrize("ppm", [100.0, -100.0])
def test_markerless_take_recovers_offset_and_drift(plain_program: Program, ppm: float) -> None:
    take = simulate_take(
        plain_program.music, RATE, ppm, channel=room(RATE, 4), noise_db=-10, seed=6
    )
    alignment = align_without_markers(
        take,
        RATE,
        plain_program.music,
        RATE,
        songs=plain_program.songs,
        name="authors-low.wav",
        segment_s=8.0,
        edge_margin_s=1.0,
        checkpoints=3,
    )
    assert alignment.method == "markerless"
    assert abs(alignment.offset_s - DELAY_S) < 0.1e-3
    assert abs(alignment.drift_ppm - ppm) < 2.0
    assert [a.label for a in alignment.anchors] == ["start", "check 1", "check 2", "check 3", "end"]
    for anchor in alignment.anchors:
        assert anchor.residual_ms is not None and abs(anchor.residual_ms) < 1.0
        assert anchor.fit_residual_ms is not None and abs(anchor.fit_residual_ms) < 1.0
    assert alignment.ok
    check_song_times(alignment, plain_program, ppm, 1e-3)
    assert alignment.channel is not None and alignment.channel.method == "h1"


def test_markerless_refuses_a_take_of_something_else(plain_program: Program) -> None:
    other = synthesize_song(len(plain_program.music) / RATE, RATE, seed=99)
    with pytest.raises(AlignmentError, match="does not match the reference"):
        align_without_markers(
            other, RATE, plain_program.music, RATE, segment_s=8.0, edge_margin_s=1.0
        )
