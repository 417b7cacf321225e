"""Alignment markers: faded exponential sweeps, matched-filter detection and Farina IRs.

A marker is a short exponential ("log") sine sweep, by default 0.5 s from 300 Hz to
3.5 kHz, so that an 8 kHz copy of a take still holds all of it, with raised-cosine fades.
``find_marker`` finds one in a recording by matched filtering: the recording is correlated
(FFT) with the analytic sweep, whose magnitude is the Hilbert envelope of the matched-filter
output. The envelope does not care about the phase a room or loudspeaker adds, where the
raw correlation peak can jump by a carrier half-period. The sub-sample position comes from
evaluating the band-limited envelope on a fine grid around the integer peak ("zoom"):
tests/test_markers.py measures the methods (see ``INTERPOLATIONS``) and "zoom-envelope" is
the most accurate of them, clean and through a room alike.

The same sweep measures the channel (Farina): convolving the recorded sweep with the
time-reversed, amplitude-compensated sweep leaves the impulse response, with harmonic
distortion products pushed to negative times, where they are cut away.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import fft as sfft
from scipy import signal

__all__ = [
    "INTERPOLATIONS",
    "MarkerHit",
    "SweepSpec",
    "analytic_template",
    "find_marker",
    "frequency_response",
    "inverse_sweep_filter",
    "make_sweep",
    "measure_impulse_response",
    "sweep_band",
]

Interpolation = Literal["zoom-envelope", "parabolic-envelope", "parabolic-raw", "zoom-raw"]
INTERPOLATIONS: tuple[Interpolation, ...] = (
    "zoom-envelope",
    "parabolic-envelope",
    "parabolic-raw",
    "zoom-raw",
)

# Fine-grid step of the "zoom" interpolation, in samples; a parabola through the best
# three grid points then leaves an error far below 1e-3 samples.
_ZOOM_STEPS = 32
# SNR reported when the envelope has no floor at all (a digital copy in digital silence).
_MAX_SNR_DB = 200.0


@dataclass(frozen=True)
class SweepSpec:
    """The marker's parameters; ``render`` makes the sweep at any sample rate."""

    duration_s: float = 0.5
    f0: float = 300.0
    f1: float = 3500.0
    fade_s: float = 0.02
    level_dbfs: float = -20.0  # peak level in the program: about the loudness of -23 LUFS music

    def render(self, sample_rate: int, stretch: float = 1.0) -> np.ndarray:
        """The sweep at ``sample_rate`` with its peak at ``level_dbfs``.

        ``stretch`` renders it as a clock running ``stretch`` times slow records it,
        ``s(t / stretch)``: a log sweep's matched-filter peak otherwise moves by about
        (stretch - 1) x its length, 0.05 ms at 100 ppm for a 0.5 s sweep.
        """
        return make_sweep(
            sample_rate,
            self.duration_s * stretch,
            self.f0 / stretch,
            self.f1 / stretch,
            self.fade_s * stretch,
            amplitude=10.0 ** (self.level_dbfs / 20.0),
        )

    def length(self, sample_rate: int) -> int:
        """Sweep length in samples at ``sample_rate``."""
        return round(self.duration_s * sample_rate)

    @property
    def band(self) -> tuple[float, float]:
        """The band the sweep covers at full level (outside its fades)."""
        return sweep_band(self.f0, self.f1, self.duration_s, self.fade_s)

    def to_dict(self) -> dict[str, float]:
        return {key: float(value) for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepSpec:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown sweep parameters: {', '.join(sorted(unknown))}")
        return cls(**{key: float(value) for key, value in data.items()})


@dataclass(frozen=True)
class MarkerHit:
    """Where ``find_marker`` found the sweep.

    ``position``: sub-sample index of the sweep's first sample in the recording.
    ``peak``: matched-filter envelope peak over the template's energy, i.e. the marker's
    gain in the recording (1.0 for an exact copy). ``snr_db``: that peak over the median
    of the envelope in the search window outside the main lobe.
    """

    position: float
    peak: float
    snr_db: float


def sweep_band(f0: float, f1: float, duration_s: float, fade_s: float) -> tuple[float, float]:
    """Frequencies an exponential sweep covers outside its fades."""
    rate = duration_s / math.log(f1 / f0)  # seconds per e-fold of frequency
    return f0 * math.exp(fade_s / rate), f1 * math.exp(-fade_s / rate)


def make_sweep(
    sample_rate: int,
    duration_s: float = 0.5,
    f0: float = 300.0,
    f1: float = 3500.0,
    fade_s: float = 0.02,
    *,
    amplitude: float = 1.0,
) -> np.ndarray:
    """Exponential sine sweep ``f0`` -> ``f1`` with raised-cosine fades, float64."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not 0 < f0 < f1 < sample_rate / 2:
        raise ValueError(
            f"need 0 < f0 < f1 < sample_rate/2, got f0={f0}, f1={f1} at {sample_rate} Hz"
        )
    n = round(duration_s * sample_rate)
    fade = round(fade_s * sample_rate)
    if n < 16 or 2 * fade > n:
        raise ValueError(f"sweep of {duration_s} s with {fade_s} s fades is too short")
    t = np.arange(n) / sample_rate
    rate = duration_s / math.log(f1 / f0)
    x = np.sin(2 * np.pi * f0 * rate * np.expm1(t / rate))
    if fade:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
        x[:fade] *= ramp
        x[n - fade :] *= ramp[::-1]
    return amplitude * x


def analytic_template(sweep: np.ndarray) -> np.ndarray:
    """The matched filter for ``sweep``: its analytic signal, conjugated and reversed.

    Convolving a recording with it gives the analytic matched-filter output, whose
    magnitude is the envelope and whose real part is the plain cross-correlation.
    """
    sweep = np.asarray(sweep, dtype=np.float64)
    return np.conj(signal.hilbert(sweep))[::-1]


def find_marker(
    recording: np.ndarray,
    sweep: np.ndarray,
    expected_at: int | None = None,
    search_radius: int | None = None,
    *,
    interpolation: Interpolation = "zoom-envelope",
    template: np.ndarray | None = None,
) -> MarkerHit:
    """Find ``sweep`` in ``recording`` by matched filtering.

    With ``expected_at`` only start positions within ``search_radius`` samples of it are
    searched (default radius: one sweep length); without, the whole recording. ``template``
    may pass a precomputed ``analytic_template(sweep)``. Raises ``ValueError`` when the
    window holds no complete sweep.
    """
    x = np.asarray(recording)  # converted window by window: takes can be long
    s = np.asarray(sweep, dtype=np.float64)
    if x.ndim != 1 or s.ndim != 1:
        raise ValueError("recording and sweep must be 1-D")
    n_s = len(s)
    max_lag = len(x) - n_s
    if expected_at is None:
        lo, hi = 0, max_lag
    else:
        radius = n_s if search_radius is None else int(search_radius)
        lo, hi = max(0, int(expected_at) - radius), min(max_lag, int(expected_at) + radius)
    if max_lag < 0 or lo > hi:
        raise ValueError("the search window holds no complete sweep")
    kernel = analytic_template(s) if template is None else template
    segment = x[lo : hi + n_s].astype(np.float64)
    corr = signal.fftconvolve(segment, kernel, mode="valid")
    envelope = np.abs(corr)
    k = int(np.argmax(envelope))
    energy = float(np.dot(s, s))
    peak = float(envelope[k])
    snr_db = _peak_to_median_db(envelope, k, _main_lobe(n_s))

    if interpolation == "parabolic-envelope":
        offset = _parabola_vertex(envelope, k)
    elif interpolation == "parabolic-raw":
        raw = corr.real
        j = max(0, k - 2) + int(np.argmax(raw[max(0, k - 2) : k + 3]))
        offset = _parabola_vertex(raw, j) + (j - k)
    elif interpolation in ("zoom-envelope", "zoom-raw"):
        offset, zoomed = _zoom_peak(
            segment, kernel, k, use_envelope=interpolation == "zoom-envelope"
        )
        peak = max(peak, zoomed)
    else:
        raise ValueError(f"unknown interpolation {interpolation!r}")
    return MarkerHit(position=lo + k + offset, peak=peak / energy, snr_db=snr_db)


def _main_lobe(n_sweep: int) -> int:
    """Half-width (samples) kept out of the noise-floor median around a peak."""
    return max(8, n_sweep // 50)


def _peak_to_median_db(envelope: np.ndarray, k: int, half_width: int) -> float:
    outside = np.concatenate([envelope[: max(0, k - half_width)], envelope[k + half_width + 1 :]])
    if not len(outside):
        outside = envelope
    floor = float(np.median(outside))
    if floor <= 0.0:
        return _MAX_SNR_DB
    return min(_MAX_SNR_DB, 20.0 * math.log10(float(envelope[k]) / floor))


def _parabola_vertex(y: np.ndarray, k: int) -> float:
    """Offset in (-0.5, 0.5) of the vertex of the parabola through y[k-1], y[k], y[k+1]."""
    if k <= 0 or k >= len(y) - 1:
        return 0.0
    a, b, c = float(y[k - 1]), float(y[k]), float(y[k + 1])
    denom = a - 2.0 * b + c
    if denom >= 0.0:
        return 0.0
    return float(np.clip(0.5 * (a - c) / denom, -0.5, 0.5))


def _zoom_peak(
    segment: np.ndarray, kernel: np.ndarray, k: int, *, use_envelope: bool
) -> tuple[float, float]:
    """Sub-sample peak offset near lag ``k`` from the band-limited correlation.

    The correlation of a short snippet around the peak is evaluated at fractional lags by
    its DFT (exact band-limited interpolation of the finite correlation sequence).
    Returns (offset from ``k``, envelope value there).
    """
    n_s = len(kernel)
    pad = 4
    start = max(0, k - pad)
    snippet = segment[start : k + pad + n_s]
    n = sfft.next_fast_len(len(snippet) + n_s - 1)
    spectrum = sfft.fft(snippet, n) * sfft.fft(kernel, n)
    # Lag 0 of the correlation sits at index n_s - 1 of the convolution.
    centre = k - start + n_s - 1
    grid = centre + np.arange(-_ZOOM_STEPS, _ZOOM_STEPS + 1) / _ZOOM_STEPS
    freqs = sfft.fftfreq(n) * n
    values = np.exp(2j * np.pi * np.outer(grid, freqs) / n) @ spectrum / n
    curve = np.abs(values) if use_envelope else values.real
    j = int(np.argmax(curve))
    fine = (j - _ZOOM_STEPS + _parabola_vertex(curve, j)) / _ZOOM_STEPS
    return float(fine), float(np.max(np.abs(values)))


def inverse_sweep_filter(sweep: np.ndarray, f0: float, f1: float, sample_rate: int) -> np.ndarray:
    """Farina's inverse filter: the reversed sweep with a 6 dB/octave amplitude tilt.

    An exponential sweep dwells longer on low frequencies (energy per Hz falls as 1/f);
    the decaying envelope of the reversed copy undoes that, and the scale is set so that
    ``sweep`` convolved with the filter has 0 dB gain in mid-band.
    """
    s = np.asarray(sweep, dtype=np.float64)
    n = len(s)
    rate = (n / sample_rate) / math.log(f1 / f0)
    t = np.arange(n) / sample_rate
    inverse = s[::-1] * np.exp(-t / rate)
    n_fft = sfft.next_fast_len(2 * n)
    gain = np.abs(sfft.rfft(s, n_fft) * sfft.rfft(inverse, n_fft))
    freqs = sfft.rfftfreq(n_fft, 1.0 / sample_rate)
    centre = (freqs >= 2.0 * f0) & (freqs <= f1 / 2.0)
    if not centre.any():
        centre = (freqs >= f0) & (freqs <= f1)
    return inverse / float(np.median(gain[centre]))


def measure_impulse_response(
    recorded_marker_segment: np.ndarray,
    sweep: np.ndarray,
    f0: float,
    f1: float,
    sample_rate: int,
    *,
    length: int | None = None,
    pre: int = 0,
) -> np.ndarray:
    """The channel's impulse response from a recorded sweep (Farina's method).

    ``recorded_marker_segment`` starts where the sweep starts (sample 0 = zero delay) and
    should run on past the sweep by the reverberation time. The result starts ``pre``
    samples before zero delay and is ``length`` samples long (default: everything up to
    the end of the segment).
    """
    x = np.asarray(recorded_marker_segment, dtype=np.float64)
    n_s = len(sweep)
    if len(x) < n_s:
        raise ValueError("the segment is shorter than the sweep")
    if not 0 <= pre < n_s:
        raise ValueError(f"pre must be in [0, {n_s}), got {pre}")
    out = signal.fftconvolve(x, inverse_sweep_filter(sweep, f0, f1, sample_rate))
    start = n_s - 1 - pre
    available = len(x) - n_s + 1 + pre
    length = available if length is None else min(int(length), available)
    return out[start : start + length]


def frequency_response(
    ir: np.ndarray,
    sample_rate: int,
    n_fft: int | None = None,
    band: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude response (frequencies in Hz, dB) of ``ir``, only inside ``band`` if given.

    Outside the sweep's band a measured IR holds only noise, so callers pass
    ``SweepSpec.band`` to keep the meaningful part.
    """
    ir = np.asarray(ir, dtype=np.float64)
    n_fft = n_fft or max(256, 1 << (len(ir) - 1).bit_length())
    spectrum = np.abs(sfft.rfft(ir, n_fft))
    freqs = sfft.rfftfreq(n_fft, 1.0 / sample_rate)
    magnitude_db = 20.0 * np.log10(np.maximum(spectrum, 1e-12))
    if band is not None:
        keep = (freqs >= band[0]) & (freqs <= band[1])
        freqs, magnitude_db = freqs[keep], magnitude_db[keep]
    return freqs, magnitude_db
