"""Sweep markers: generation, detection accuracy, Farina impulse responses."""

from __future__ import annotations

import numpy as np
import pytest
import soxr
from scipy import signal

from rig_app.markers import (
    Interpolation,
    SweepSpec,
    find_marker,
    frequency_response,
    inverse_sweep_filter,
    make_sweep,
    measure_impulse_response,
)


def delayed(x: np.ndarray, delay: float, length: int) -> np.ndarray:
    """``x`` delayed by a fractional number of samples (exact, band-limited)."""
    n = 1 << (length + len(x)).bit_length()
    freqs = np.fft.rfftfreq(n)
    shifted = np.fft.irfft(np.fft.rfft(x, n) * np.exp(-2j * np.pi * freqs * delay), n)
    return shifted[:length]


def room(rate: int, rng: np.random.Generator) -> np.ndarray:
    """A short room: direct sound at 0, then an exponentially decaying tail from 2 ms."""
    t = np.arange(round(0.08 * rate)) / rate
    ir = rng.standard_normal(len(t)) * np.exp(-t / 0.02) * 0.15 * np.sqrt(8000 / rate)
    ir[: round(0.002 * rate)] = 0.0
    ir[0] = 1.0
    return ir


def test_sweep_shape_and_band() -> None:
    rate = 8000
    sweep = make_sweep(rate)
    assert len(sweep) == 4000
    assert np.max(np.abs(sweep)) <= 1.0
    assert abs(sweep[0]) < 1e-9 and abs(sweep[-1]) < 1e-2  # faded in and out
    power = np.abs(np.fft.rfft(sweep)) ** 2
    freqs = np.fft.rfftfreq(len(sweep), 1 / rate)
    inside = power[(freqs >= 250) & (freqs <= 3700)].sum()
    assert inside / power.sum() > 0.99  # an 8 kHz copy holds all of it
    low, high = SweepSpec().band
    assert 300 < low < 340 and 3150 < high < 3500


def test_sweep_rejects_impossible_parameters() -> None:
    with pytest.raises(ValueError, match="f1"):
        make_sweep(6000)  # 3.5 kHz is above the 3 kHz Nyquist limit
    with pytest.raises(ValueError, match="too short"):
        make_sweep(8000, duration_s=0.03, fade_s=0.02)


def test_spec_round_trip_and_level() -> None:
    spec = SweepSpec(level_dbfs=-12.0)
    assert SweepSpec.from_dict(spec.to_dict()) == spec
    assert np.max(np.abs(spec.render(8000))) == pytest.approx(10 ** (-12 / 20), rel=1e-3)
    with pytest.raises(ValueError, match="unknown"):
        SweepSpec.from_dict({"duration_s": 0.5, "colour": 1})


@pytest.mark.parametrize("rate", [8000, 16000])
def test_clean_marker_found_to_a_twentieth_of_a_sample(rate: int) -> None:
    rng = np.random.default_rng(1)
    sweep = make_sweep(rate)
    for _ in range(5):
        true = 1000 + rng.uniform(0, 500)
        x = delayed(sweep, true, 3 * len(sweep))
        hit = find_marker(x, sweep)
        assert abs(hit.position - true) < 0.05
        assert hit.peak == pytest.approx(1.0, abs=0.01)
        assert hit.snr_db > 40


def test_marker_through_band_pass_reverb_and_noise_at_0_db() -> None:
    rate = 8000
    rng = np.random.default_rng(2)
    sweep = make_sweep(rate)
    sos = signal.butter(4, [200, 3800], "bandpass", fs=rate, output="sos")
    for _ in range(5):
        true = 2000 + rng.uniform(0, 800)
        n = 4 * len(sweep)
        x = signal.fftconvolve(delayed(sweep, true, n), room(rate, rng))[:n]
        x = signal.sosfiltfilt(sos, x)  # zero phase: the direct sound stays at ``true``
        x += rng.standard_normal(n) * np.sqrt(np.mean(sweep**2))  # 0 dB SNR
        hit = find_marker(x, sweep)
        assert abs(hit.position - true) / rate < 0.5e-3
        assert hit.snr_db > 20


def test_envelope_interpolation_beats_raw_peak() -> None:
    """The measurement behind the default: envelope + zoom is exact when clean and does
    not jump by carrier cycles through a loudspeaker-like (causal) band-pass."""
    rate = 8000
    rng = np.random.default_rng(3)
    sweep = make_sweep(rate)
    clean_errors: dict[Interpolation, list[float]] = {"zoom-envelope": [], "parabolic-raw": []}
    for _ in range(6):
        true = 500 + rng.uniform(0, 1)
        x = delayed(sweep, true, 2 * len(sweep))
        for method, errors in clean_errors.items():
            errors.append(abs(find_marker(x, sweep, interpolation=method).position - true))
    assert max(clean_errors["zoom-envelope"]) < 0.005
    assert max(clean_errors["zoom-envelope"]) < max(clean_errors["parabolic-raw"])

    sos = signal.butter(4, [300, 3000], "bandpass", fs=rate, output="sos")
    spread: dict[Interpolation, list[float]] = {"zoom-envelope": [], "zoom-raw": []}
    for _ in range(12):
        true = 500 + rng.uniform(0, 1)
        x = signal.sosfilt(sos, delayed(sweep, true, 2 * len(sweep)))
        x += rng.standard_normal(len(x)) * np.sqrt(np.mean(sweep**2))
        for method, found in spread.items():
            found.append(find_marker(x, sweep, interpolation=method).position - true)
    # A constant delay is harmless (it is the channel's); the scatter is not.
    assert np.std(spread["zoom-envelope"]) < 0.1
    assert np.std(spread["zoom-envelope"]) < np.std(spread["zoom-raw"])


def test_search_window_picks_the_expected_marker() -> None:
    rate = 8000
    sweep = make_sweep(rate)
    x = np.zeros(10 * len(sweep))
    x[4000:8000] += sweep
    x[24000:28000] += 0.5 * sweep
    assert find_marker(x, sweep).position == pytest.approx(4000, abs=0.01)
    hit = find_marker(x, sweep, expected_at=24100, search_radius=400)
    assert hit.position == pytest.approx(24000, abs=0.01)
    assert hit.peak == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="no complete sweep"):
        find_marker(x, sweep, expected_at=len(x) + 5000, search_radius=10)


def test_noise_alone_scores_low() -> None:
    rate = 8000
    sweep = make_sweep(rate)
    noise = np.random.default_rng(4).standard_normal(20 * rate)
    assert find_marker(noise, sweep).snr_db < 20


def test_stretched_template_removes_drift_bias() -> None:
    """A log sweep recorded 100 ppm slow moves its matched-filter peak by ~0.4 samples
    (at 8 kHz); the stretched template does not."""
    rate = 8000
    spec = SweepSpec()
    ratio = 1 + 100e-6
    x = np.zeros(6 * rate)
    x[rate : rate + spec.length(rate)] = spec.render(rate)
    take = soxr.resample(x, rate, rate * ratio, quality="VHQ")
    plain = find_marker(take, spec.render(rate)).position - rate * ratio
    stretched = find_marker(take, spec.render(rate, stretch=ratio)).position - rate * ratio
    assert abs(plain) > 0.3
    assert abs(stretched) < 0.02


def test_farina_recovers_a_known_channel() -> None:
    rate = 8000
    sweep = make_sweep(rate)
    channel = np.zeros(64)
    channel[0], channel[9], channel[30] = 0.8, 0.4, -0.2
    recorded = signal.fftconvolve(np.concatenate([sweep, np.zeros(rate // 4)]), channel)
    # The deconvolved impulse is band-limited and rings on both sides: keep 25 ms before.
    ir = measure_impulse_response(recorded, sweep, 300, 3500, rate, length=600, pre=200)
    band = SweepSpec().band
    freqs, measured = frequency_response(ir, rate, 4096, band)
    _, truth = frequency_response(np.concatenate([np.zeros(200), channel]), rate, 4096, band)
    assert freqs.min() >= band[0] and freqs.max() <= band[1]
    inner = (freqs > 400) & (freqs < 3000)
    assert np.max(np.abs(measured[inner] - truth[inner])) < 0.2
    assert int(np.argmax(np.abs(ir))) == 200  # zero delay sits ``pre`` samples in


def test_inverse_filter_has_unit_mid_band_gain() -> None:
    rate = 16000
    sweep = make_sweep(rate)
    response = np.fft.rfft(signal.fftconvolve(sweep, inverse_sweep_filter(sweep, 300, 3500, rate)))
    freqs = np.fft.rfftfreq(2 * len(sweep) - 1, 1 / rate)
    mid = np.abs(response[(freqs > 600) & (freqs < 1750)])
    assert np.allclose(20 * np.log10(mid), 0.0, atol=0.3)
