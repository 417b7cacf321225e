"""Spectrograms, average spectra and spectral peaks, shared by the landmark method and the
rig's Inspect page (paper Figures 2 and 3)."""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage, signal

_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class Spectrogram:
    """Power in dB: ``db[f, t]`` at ``freqs_hz[f]`` and frame centres ``times_s[t]``."""

    db: np.ndarray
    freqs_hz: np.ndarray
    times_s: np.ndarray

    @property
    def hop_s(self) -> float:
        return float(self.times_s[1] - self.times_s[0]) if len(self.times_s) > 1 else 0.0


def compute_spectrogram(
    audio: np.ndarray, sample_rate: int, n_fft: int = 1024, hop: int = 256
) -> Spectrogram:
    """Hann-windowed STFT power in dB (re 1.0 full scale), frames centred without padding.

    Audio shorter than one frame gives an empty time axis.
    """
    audio = np.asarray(audio, np.float32)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    if len(audio) < n_fft:
        return Spectrogram(np.empty((len(freqs), 0), np.float32), freqs, np.empty(0))
    frames = np.lib.stride_tricks.sliding_window_view(audio, n_fft)[::hop]
    window = signal.get_window("hann", n_fft, fftbins=True).astype(np.float32)
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2 / np.sum(window**2)
    times = (np.arange(len(frames)) * hop + n_fft / 2) / sample_rate
    return Spectrogram((10 * np.log10(power.T + _EPS)).astype(np.float32), freqs, times)


def average_spectrum_db(
    audio: np.ndarray, sample_rate: int, n_fft: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """(freqs_hz, power dB) by Welch's method: the long-term spectrum of ``audio``."""
    audio = np.asarray(audio, np.float64)
    if len(audio) < n_fft:
        raise ValueError(f"need at least {n_fft} samples for the average spectrum")
    freqs, power = signal.welch(audio, sample_rate, nperseg=n_fft, scaling="spectrum")
    return freqs, 10 * np.log10(power + _EPS)


def find_spectral_peaks(
    spec_db: np.ndarray,
    neighbourhood: tuple[int, int] = (15, 11),
    min_db: float | None = None,
    max_per_second: float | None = None,
    frames_per_second: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of a dB spectrogram: (freq_index, time_index), sorted by time then freq.

    A peak is the largest value in its ``neighbourhood`` (bins x frames) and louder than
    ``min_db`` (default: the spectrogram's median + 10 dB, so silence has no peaks).
    ``max_per_second`` keeps the strongest peaks of each second (``frames_per_second``
    frames), which bounds the density of a landmark index.
    """
    spec_db = np.asarray(spec_db)
    if spec_db.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    floor = float(np.median(spec_db)) + 10.0 if min_db is None else min_db
    local_max = ndimage.maximum_filter(spec_db, size=neighbourhood, mode="constant", cval=-np.inf)
    mask = (spec_db == local_max) & (spec_db > floor)
    freq_idx, time_idx = np.nonzero(mask)
    if max_per_second is not None and len(time_idx):
        values = spec_db[freq_idx, time_idx]
        second = np.floor(time_idx / frames_per_second).astype(np.int64)
        # strongest first within each second, then keep the first max_per_second of each
        order = np.lexsort((-values, second))
        second_sorted = second[order]
        starts = np.searchsorted(second_sorted, second_sorted, side="left")
        rank = np.arange(len(order)) - starts
        limit = max(1, round(max_per_second))
        keep = order[rank < limit]
        freq_idx, time_idx = freq_idx[keep], time_idx[keep]
    order = np.lexsort((freq_idx, time_idx))
    return freq_idx[order].astype(np.int64), time_idx[order].astype(np.int64)
