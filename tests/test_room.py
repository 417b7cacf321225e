"""The virtual room: transducer responses, room impulse responses, levels per take, and
takes made through it (offline and live through the virtual devices) that still align."""

from __future__ import annotations

import json
import math
from datetime import datetime

import numpy as np
import pytest
from scipy import signal

from afp_core.tasks import TaskState
from rig_app import cli
from rig_app.align import align_take
from rig_app.capture import read_take_info
from rig_app.jobs import record_or_simulate_takes
from rig_app.program import (
    Program,
)
from rig_app.room import (
    SPEED_OF_SOUND,
    RoomError,
    VirtualRoom,
    convolve_blocks,
    microphone_ir,
    music_to_noise_db,
    render_paths,
    room_from_notes,
    room_impulse_responses,
    simulate_take,
    speaker_ir,
    write_channel_ir,
)
from rig_app.session import Session
from tests.rig_fixtures import make_room_program

ROOM = VirtualRoom()


def _program(rate: int, seconds: float = 3.0) -> tuple[Program, np.ndarray]:
    return make_room_program(rate, (1, 2), seconds, noise_seed=7)  # markers start/middle/end


def _song_ranges(program: Program) -> list[tuple[int, int]]:
    return [(slot.start, slot.end) for slot in program.songs]


def _band_db(x: np.ndarray, rate: int, low: float, high: float) -> float:
    freqs, power = signal.welch(x, rate, nperseg=8192)
    inside = (freqs >= low) & (freqs <= high)
    return 10.0 * math.log10(float(np.mean(power[inside])))


def test_speaker_and_microphone_responses_attenuate_outside_their_bands():
    rate = 48000
    white = np.random.default_rng(0).standard_normal(10 * rate)
    speaker = convolve_blocks(white, speaker_ir(ROOM, rate))
    mid = _band_db(speaker, rate, 1500, 2500)
    assert _band_db(speaker, rate, 30, 60) < mid - 30  # 150 Hz, 4th order: about -40 dB
    assert _band_db(speaker, rate, 15000, 18000) < mid - 20  # 8 kHz, 4th order
    assert _band_db(speaker, rate, 800, 1000) > mid + 2  # the resonance at 900 Hz
    mic = convolve_blocks(white, microphone_ir(ROOM, rate))
    mid = _band_db(mic, rate, 800, 1200)
    assert _band_db(mic, rate, 20, 40) < mid - 15  # 100 Hz high-pass, 2nd order
    assert _band_db(mic, rate, 3500, 4500) > mid + 2  # presence bump at 4 kHz
    assert _band_db(mic, rate, 20000, 23000) < mid - 6  # roll-off above 11 kHz
    assert abs(_band_db(white, rate, 800, 1200) - mid) < 1.0  # unity gain in the band


def test_block_convolution_matches_a_direct_one():
    rng = np.random.default_rng(1)
    x, h = rng.standard_normal(10_000), rng.standard_normal(700)
    expected = signal.fftconvolve(x, h)[: len(x)]
    assert np.allclose(convolve_blocks(x, h, block=1024), expected, atol=1e-4)


def test_room_impulse_responses_direct_path_and_decay():
    rate = 48000
    for label in ROOM.labels:
        music, noise = room_impulse_responses(ROOM, rate, label)
        assert room_impulse_responses(ROOM, rate, label)[0] is music  # cached
        for ir, distance in ((music, ROOM.music_distance_m), (noise, ROOM.noise_distance(label))):
            arrival = distance / SPEED_OF_SOUND * rate
            early = np.abs(ir[: round(arrival) + 20])
            assert abs(int(np.argmax(early)) - arrival) <= 1.0, label
            # nothing arrives before the direct sound (the delay filter's ringing aside)
            before = ir[: max(0, round(arrival) - 40)]
            assert float(np.sum(before**2)) < 1e-4 * float(np.sum(ir**2))
            # direct sound at 1/distance, relative to the music speaker's
            direct = float(np.sqrt(np.sum(ir[round(arrival) - 40 : round(arrival) + 41] ** 2)))
            assert direct == pytest.approx(ROOM.music_distance_m / distance, rel=0.1)
        # the reverberation decays: Schroeder's energy decay, and RT60 near Sabine's
        decay = np.cumsum(noise[::-1] ** 2)[::-1]
        decay_db = 10 * np.log10(decay / decay[0] + 1e-30)
        t5, t25 = (int(np.argmax(decay_db < level)) / rate for level in (-5.0, -25.0))
        assert 0 < t5 < t25
        rt60 = 3.0 * (t25 - t5)
        assert 0.5 * ROOM.rt60_s < rt60 < 1.5 * ROOM.rt60_s, (rt60, ROOM.rt60_s)
        tail = [float(np.sum(noise[round(a * rate) : round(b * rate)] ** 2)) for a, b in
                ((0.02, 0.07), (0.07, 0.12), (0.12, 0.17))]  # fmt: skip
        assert tail[0] > tail[1] > tail[2]


def test_noise_at_the_microphone_grows_from_low_to_mid_to_high():
    rate = 16000
    program, noise = _program(rate, seconds=6.0)
    ratios = {}
    for label in ("low", "mid", "high"):
        music_at_mic, noise_at_mic = render_paths(ROOM, program.music, noise, rate, label)
        assert music_at_mic is not None and noise_at_mic is not None
        assert len(music_at_mic) == len(noise_at_mic) == program.samples
        ceiling = 10 ** (ROOM.peak_ceiling_db / 20)
        assert np.max(np.abs(music_at_mic)) + np.max(np.abs(noise_at_mic)) <= ceiling * 1.0001
        ratios[label] = music_to_noise_db(music_at_mic, noise_at_mic, _song_ranges(program))
    print("\nmusic-to-noise at the microphone (dB):", {k: round(v, 1) for k, v in ratios.items()})
    assert ratios["low"] > ratios["mid"] + 1.0
    assert ratios["mid"] > ratios["high"] + 3.0
    # the room makes the noise count more than in the program, where the two are level
    dry = music_to_noise_db(program.music, noise, _song_ranges(program))
    assert ratios["high"] < dry + 10.0


@pytest.mark.parametrize(
    ("label", "offset_s", "drift_ppm"),
    [("low", 0.7, 35.0), ("mid", 1.3, -80.0), ("high", 0.2, 250.0)],
)
def test_simulated_takes_align_with_the_offset_and_drift_put_in(label, offset_s, drift_ppm):
    rate = 16000
    program, noise = _program(rate)
    take = simulate_take(ROOM, program.music, noise, rate, label, offset_s, drift_ppm, -75.0, 5)
    assert take.dtype == np.float32 and np.max(np.abs(take)) < 1.0
    ratio = 1 + drift_ppm * 1e-6
    expected_len = round(offset_s * rate) + program.samples * ratio + 2 * rate
    assert abs(len(take) - expected_len) <= 2

    alignment = align_take(take, rate, program, name=f"{label}.raw.wav")

    assert alignment.ok, alignment.notes
    assert all(anchor.used for anchor in alignment.anchors)
    assert alignment.max_residual_ms < 0.5
    # program sample 0 leaves the speaker and reaches the microphone after distance / c;
    # the speaker and microphone responses add a fraction of a millisecond
    path_s = ROOM.music_distance_m / SPEED_OF_SOUND
    assert 0.0 <= (alignment.offset_s - offset_s - path_s) * 1000 < 0.4
    assert alignment.drift_ppm == pytest.approx(drift_ppm, abs=1.0)
    for timing, slot in zip(alignment.songs, program.songs, strict=True):
        assert timing.take_start_s == pytest.approx(offset_s + slot.start_s * ratio, abs=1e-3)


def test_room_description_round_trips_and_errors_are_one_line(tmp_path):
    distances = (("low", 2.5), ("mid", 1.0), ("high", 0.3))
    room = VirtualRoom(absorption=0.5, noise_distances_m=distances)
    path = room.save(tmp_path / "room.json")
    assert VirtualRoom.load(path) == room
    assert json.loads(path.read_text())["noise_distances_m"] == {
        "low": 2.5,
        "mid": 1.0,
        "high": 0.3,
    }
    assert room.with_noise_distance("mid", 2.0).noise_distance("mid") == 2.0
    with pytest.raises(RoomError, match="no noise distance for take 'far'"):
        room.noise_distance("far")
    with pytest.raises(RoomError, match=r"noise speaker of 'low'.*outside"):
        VirtualRoom(noise_distances_m=(("low", 9.0),))
    bad = {**room.to_dict(), "absorbtion": 0.3}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(RoomError, match="unknown key 'absorbtion'") as info:
        VirtualRoom.load(tmp_path / "bad.json")
    assert "\n" not in str(info.value)


def _similarity(x: np.ndarray, y: np.ndarray, rate: int, max_lag_s: float = 0.01) -> float:
    """Largest normalised cross-correlation of x and y within +-max_lag_s."""
    x = (x - x.mean()) / np.linalg.norm(x - x.mean())
    y = (y - y.mean()) / np.linalg.norm(y - y.mean())
    corr = signal.correlate(x, y, mode="full", method="fft")
    middle, lag = len(y) - 1, round(max_lag_s * rate)
    return float(np.max(np.abs(corr[middle - lag : middle + lag + 1])))


def _session(tmp_path, rate: int) -> tuple[Session, Program]:
    program, noise = _program(rate, seconds=1.5)
    session = Session.create(tmp_path / "session")
    session.set_program(program, noise)
    return session, program


def test_simulate_command_stores_marked_takes_that_align(tmp_path, capsys):
    session, program = _session(tmp_path, 16000)
    room_file = tmp_path / "used-room.json"

    code = cli.main(["simulate", str(session.folder), "--quiet", "--save-room", str(room_file)])

    out, err = capsys.readouterr()
    assert code == 0, err
    loaded = Session.load(session.folder)
    assert [take.label for take in loaded.takes] == ["low", "mid", "high"]
    for take in loaded.takes:
        assert take.alignment is not None and take.alignment["ok"], take.label
        assert (session.folder / take.raw_file).is_file()
        assert take.aligned_file and (session.folder / take.aligned_file).is_file()
        assert len(take.ground_truth) == len(program.songs)
        assert take.notes.startswith("virtual room, simulated offline")
        found = room_from_notes(take.notes)
        assert found is not None
        room, details = found
        assert room == VirtualRoom.load(room_file) == ROOM
        assert details["mode"] == "simulated" and details["drift_ppm"] == 35.0
        assert take.speaker_distance_m == ROOM.noise_distance(take.label)
        assert abs(take.alignment["drift_ppm"] - 35.0) < 1.0
    assert "music-to-noise" in out and "low: offset" in out
    # the same take again: refused unless replaced
    assert cli.main(["simulate", str(session.folder), "low", "--quiet"]) == 1
    assert "exists already" in capsys.readouterr().err
    assert cli.main(["simulate", str(session.folder), "far", "--quiet"]) == 1
    assert "no noise distance for take 'far'" in capsys.readouterr().err


def test_record_or_simulate_offline(tmp_path):
    session, _ = _session(tmp_path, 16000)
    made = record_or_simulate_takes(TaskState(), session, ROOM, ["high"], live=False)
    assert [(m.label, m.mode) for m in made] == [("high", "simulated")]
    assert made[0].alignment is not None and made[0].alignment.ok
    assert made[0].error is None and math.isfinite(made[0].music_to_noise_db)


def test_live_takes_through_the_virtual_devices_align(
    virtual_devices, tmp_path, capsys, record_property
):
    rate = 48000
    session, program = _session(tmp_path, rate)

    made = record_or_simulate_takes(
        TaskState(), session, ROOM, ["high"], live=True, devices=virtual_devices
    )

    (high,) = made
    assert high.mode == "live" and high.error is None, high.error
    assert high.details["xruns"] == 0
    alignment = high.alignment
    assert alignment is not None and alignment.ok, alignment and alignment.notes
    assert all(anchor.used for anchor in alignment.anchors)
    take = Session.load(session.folder).take("high")
    found = room_from_notes(take.notes)
    assert found is not None and found[1]["mode"] == "live"
    assert found[1]["music_to_noise_db"] == pytest.approx(high.music_to_noise_db, abs=0.01)
    # what was recorded went through the room: the aligned take is nearer the music as
    # it arrives at the microphone than the dry program
    music_at_mic, _ = render_paths(ROOM, program.music, None, rate, "high")
    aligned = alignment.aligned
    assert aligned is not None
    first, last = program.songs[0].start, program.songs[-1].end
    near_mic, near_dry = (_similarity(aligned[first:last], x[first:last], rate)
                          for x in (music_at_mic, program.music))  # fmt: skip
    # kept in the JUnit XML (--junitxml), not printed into the test output
    record_property("similarity_to_music_at_mic", round(near_mic, 3))
    record_property("similarity_to_dry_music", round(near_dry, 3))
    assert near_mic > near_dry + 0.2, (
        f"live take vs the music at the microphone {near_mic:.3f}, vs dry {near_dry:.3f}"
    )

    # the command line's --virtual-room takes the same path
    argv = ["record", str(session.folder), "--label", "low", "--quiet", "--virtual-room"]
    argv += ["--music-out", virtual_devices.music_out, "--noise-out", virtual_devices.noise_out]
    argv += ["--mic", virtual_devices.mic_in, "--distance", "2.5"]
    code = cli.main(argv)
    _, err = capsys.readouterr()
    assert code == 0, err
    low = Session.load(session.folder).take("low")
    assert low.alignment is not None and low.alignment["ok"]
    assert low.speaker_distance_m == 2.5
    found = room_from_notes(low.notes)
    assert found is not None and found[0].noise_distance("low") == 2.5


def test_record_page_virtual_room_option(qtbot):
    pytest.importorskip("PySide6")
    from rig_app.ui.pages.record import RecordPage
    from rig_app.ui.state import RigState

    page = RecordPage(RigState())
    qtbot.addWidget(page)
    page.music_out.addItem("music_out", "music_out")
    page.mic_in.addItem("mic_in", "mic_in")
    settings = page.settings("mid")
    assert settings is not None and settings.room is None
    page.virtual_room.setChecked(True)
    page.rows["mid"].distance.setValue(2.0)
    settings = page.settings("mid")
    assert settings is not None and settings.room is not None
    assert settings.room.noise_distance("mid") == 2.0
    assert settings.room.noise_distance("low") == ROOM.noise_distance("low")
    page.rows["mid"].distance.setValue(40.0)  # does not fit the room: said, not raised
    assert page.record("mid") is None
    assert "outside" in page.take_message.text()


def test_a_measured_channel_can_stand_in_for_the_simulated_music_path(tmp_path):
    rate = 16000
    program, noise = _program(rate)
    take = simulate_take(ROOM, program.music, noise, rate, "low", 0.5, 20.0, -75.0, 1)
    channel = align_take(take, rate, program).channel
    assert channel is not None
    path = write_channel_ir(channel.to_dict(), tmp_path / "channel.wav")
    room = VirtualRoom(measured_ir="channel.wav")
    (tmp_path / "room.json").write_text(json.dumps(room.to_dict()))
    room = VirtualRoom.load(tmp_path / "room.json")  # relative to the room file
    assert room.measured_ir == str(path)

    music_at_mic, _ = render_paths(room, program.music, None, rate, "low")
    # the measured path holds the sweep's band only: the music loses what lies outside
    assert _band_db(music_at_mic, rate, 4500, 7000) < _band_db(music_at_mic, rate, 800, 2500) - 20
    again = simulate_take(room, program.music, noise, rate, "low", 0.3, -20.0, -75.0, 2)
    alignment = align_take(again, rate, program)
    assert alignment.ok and alignment.drift_ppm == pytest.approx(-20.0, abs=1.0)


def test_live_takes_side_by_side_each_in_its_own_room(virtual_devices, tmp_path):
    # virtual_devices: only to skip where PulseAudio cannot run; the call starts its own
    session, _ = _session(tmp_path, 16000)
    seen: list[tuple[float, float]] = []
    task = TaskState(lambda done, total, _message: seen.append((done, total)))

    made = record_or_simulate_takes(task, session, ROOM, ["low", "high"], live=True)

    assert [(m.label, m.mode) for m in made] == [("low", "live"), ("high", "live")]
    for take in made:
        assert take.error is None, take.error
        assert take.alignment is not None and take.alignment.ok
    # each take had its own room: the close noise speaker is louder at the microphone
    assert made[1].music_to_noise_db < made[0].music_to_noise_db - 3
    # both recorded at once: the progress total counts both takes' frames together
    assert max(total for _, total in seen) > 0
    # and started together, every room rendered first (none renders beside a recording)
    infos = [read_take_info(session.raw_take_path(label)) for label in ("low", "high")]
    started = [datetime.fromisoformat(info["started_at"]) for info in infos if info is not None]
    assert len(started) == 2
    assert abs((started[0] - started[1]).total_seconds()) < 0.5, started
    stored = Session.load(session.folder)
    assert {t.label for t in stored.takes} == {"low", "high"}
    # measured from the live takes over the calibration segments: the rooms' own ratio
    for entry in stored.takes:
        quality = entry.quality
        assert quality is not None and quality["intended_music_to_noise_db"] is not None
        assert quality["music_to_noise_db"] == pytest.approx(
            quality["intended_music_to_noise_db"], abs=1.0
        ), entry.label


def test_an_overdriven_speaker_adds_harmonics_and_the_take_still_aligns(tmp_path):
    rate = 16000
    t = np.arange(2 * rate) / rate
    tone = (0.5 * np.sin(2 * np.pi * 400.0 * t)).astype(np.float32)
    loud = VirtualRoom(speaker_drive_db=12.0)
    clean_at_mic, _ = render_paths(ROOM, tone, None, rate, "low")
    driven_at_mic, _ = render_paths(loud, tone, None, rate, "low")

    def third_harmonic_db(x: np.ndarray) -> float:
        return _band_db(x, rate, 1150, 1250) - _band_db(x, rate, 350, 450)

    assert third_harmonic_db(driven_at_mic) > third_harmonic_db(clean_at_mic) + 30.0
    assert "speaker overdriven by 12 dB" in loud.describe("low")
    with pytest.raises(RoomError, match="speaker_drive_db"):
        VirtualRoom(speaker_drive_db=-1.0)
    assert VirtualRoom.load(loud.save(tmp_path / "loud.json")) == loud

    program, noise = _program(rate)
    take = simulate_take(loud, program.music, noise, rate, "mid", 0.4, 30.0, -75.0, 5)
    alignment = align_take(take, rate, program, name="mid.raw.wav")
    assert alignment.ok, alignment.notes
    assert alignment.drift_ppm == pytest.approx(30.0, abs=1.0)
