"""afp_core.features.KaldiFbank (the BEATs front-end) against a direct numpy computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from afp_core.config import KaldiFbankConfig
from afp_core.errors import ConfigError
from afp_core.features import KaldiFbank, kaldi_mel_banks, kaldi_mel_scale

EPS32 = float(np.finfo(np.float32).eps)
MEAN, STD = 15.41663, 6.55582


def reference_fbank(
    wave: np.ndarray,
    sr: int,
    n_mels: int = 128,
    low: float = 20.0,
    high: float | None = None,
    preemph: float = 0.97,
) -> np.ndarray:
    """Kaldi's fbank written out frame by frame in float64, then BEATs' normalisation.

    Deliberately plain (loops, Kaldi's own if-conditions for the filters) so that it
    shares nothing with the implementation but the definition: (n_mels, frames).
    """
    x = wave.astype(np.float64) * 2.0**15
    length, shift = round(0.025 * sr), round(0.010 * sr)
    n_fft = 1
    while n_fft < length:
        n_fft *= 2
    high = sr / 2 if high is None else high

    def mel(f: float) -> float:
        return 1127.0 * math.log(1.0 + f / 700.0)

    mel_low, mel_high = mel(low), mel(high)
    delta = (mel_high - mel_low) / (n_mels + 1)
    weights = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        left, center, right = (mel_low + (m + i) * delta for i in range(3))
        for k in range(n_fft // 2):  # Kaldi: the Nyquist bin is not used
            f = mel(k * sr / n_fft)
            if left < f < right:
                weights[m, k] = (
                    (f - left) / (center - left) if f <= center else (right - f) / (right - center)
                )
    window = np.array(
        [(0.5 - 0.5 * math.cos(2 * math.pi * n / (length - 1))) ** 0.85 for n in range(length)]
    )
    frames = []
    for t in range(1 + (len(x) - length) // shift):
        frame = x[t * shift : t * shift + length].copy()
        frame -= frame.mean()
        emphasised = np.empty_like(frame)
        emphasised[0] = frame[0] - preemph * frame[0]
        emphasised[1:] = frame[1:] - preemph * frame[:-1]
        power = np.abs(np.fft.rfft(emphasised * window, n=n_fft)) ** 2
        frames.append(np.log(np.maximum(weights @ power, EPS32)))
    return ((np.array(frames) - MEAN) / (2 * STD)).T


def signal(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """Tones, a chirp and noise at several levels, with an exactly silent stretch."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sr)) / sr
    x = (
        0.4 * np.sin(2 * np.pi * 220 * t)
        + 0.2 * np.sin(2 * np.pi * (300 + 900 * t) * t)
        + 0.05 * np.sin(2 * np.pi * 0.45 * sr * t)
        + 0.01 * rng.standard_normal(len(t))
        + 0.1  # a DC offset: removed per frame
    )
    x[len(x) // 2 : len(x) // 2 + sr // 5] = 0.0
    return x


@pytest.mark.parametrize(("sr", "seconds"), [(8000, 1.0), (8000, 1.37), (16000, 0.5)])
def test_matches_direct_numpy_computation(sr: int, seconds: float) -> None:
    x = signal(seconds, sr, seed=sr)
    fbank = KaldiFbank(KaldiFbankConfig(), sample_rate=sr)
    ours = fbank(torch.from_numpy(x).float()[None])[0, 0].numpy()
    ref = reference_fbank(x.astype(np.float32), sr)
    assert ours.shape == ref.shape == (128, 1 + (len(x) - fbank.frame_length) // fbank.frame_shift)
    assert fbank.output_shape(len(x)) == ours.shape
    # float32 against float64: 1e-4 here is 0.006 dB; the silent frames sit at the floor
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    floor = (math.log(EPS32) - MEAN) / (2 * STD)
    assert np.isclose(ours, floor, atol=1e-6).all(axis=0).any()  # the silent stretch
    assert ours.max() > floor + 2.0


def test_one_second_at_8k_is_98_frames_of_128() -> None:
    fbank = KaldiFbank()
    assert (fbank.frame_length, fbank.frame_shift, fbank.n_fft) == (200, 80, 256)
    out = fbank(0.1 * torch.randn(3, 8000))
    assert out.shape == (3, 1, 128, 98)
    assert out.dtype == torch.float32
    assert fbank.output_shape(8000) == (128, 98)
    assert fbank.output_shape(16000) == (128, 198)
    assert list(fbank.state_dict()) == []
    assert list(fbank.parameters()) == []


def test_each_item_is_independent_of_its_batch() -> None:
    gen = torch.Generator().manual_seed(1)
    quiet = 1e-3 * torch.randn(1, 8000, generator=gen)
    loud = 0.9 * torch.randn(4, 8000, generator=gen).clamp(-1, 1)
    fbank = KaldiFbank()
    alone = fbank(quiet)
    batch = fbank(torch.cat([loud[:2], quiet, loud[2:]]))
    torch.testing.assert_close(batch[2:3], alone, atol=1e-5, rtol=0)
    # absolute levels (no per-batch or per-item scaling): the quiet item stays lower
    assert batch[2].mean() < batch[0].mean() - 0.5


def test_level_shifts_log_energies_by_the_gain() -> None:
    x = torch.from_numpy(signal(1.0, 8000)).float()[None]
    fbank = KaldiFbank()
    base, louder = fbank(x), fbank(2.0 * x)
    floor = (math.log(EPS32) - MEAN) / (2 * STD)
    active = base > floor + 1.0
    # power doubles twice: ln 4 / (2 std) in normalised units wherever above the floor
    shift = (louder - base)[active]
    torch.testing.assert_close(shift, torch.full_like(shift, math.log(4.0) / (2 * STD)))


def test_filters_follow_kaldis_mel_scale() -> None:
    assert kaldi_mel_scale(700.0) == pytest.approx(1127.0 * math.log(2.0))
    banks = kaldi_mel_banks(128, 256, 8000, 20.0, 0.0)
    assert banks.shape == (128, 129)
    assert banks.dtype == np.float32
    assert banks.max() <= 1.0 and banks.min() >= 0.0
    assert not banks[:, -1].any()  # no weight on the Nyquist bin
    # centres rise with the filter index; at 8 kHz a few of the narrow low filters fall
    # between FFT bins (31.25 Hz apart) and stay empty, as in torchaudio's Kaldi port
    nonempty = banks.sum(axis=1) > 0
    assert 0 < (~nonempty).sum() <= 8
    peaks = banks[nonempty].argmax(axis=1)
    assert (np.diff(peaks) >= 0).all()
    # high_freq <= 0 counts down from Nyquist
    np.testing.assert_array_equal(
        kaldi_mel_banks(40, 512, 16000, 20.0, -400.0), kaldi_mel_banks(40, 512, 16000, 20.0, 7600.0)
    )


def test_buffers_stay_float32_and_output_is_float32() -> None:
    fbank = KaldiFbank().half()
    assert fbank.window.dtype == fbank.mel_basis.dtype == torch.float32
    x = 0.1 * torch.randn(2, 8000, dtype=torch.float64)
    out = fbank(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, KaldiFbank()(x.float()))


def test_bad_input_and_config() -> None:
    fbank = KaldiFbank()
    with pytest.raises(ValueError, match="batch, samples"):
        fbank(torch.zeros(8000))
    with pytest.raises(ValueError, match="at least 200 samples"):
        fbank(torch.zeros(1, 199))
    with pytest.raises(ConfigError, match=r"frontend\.high_freq"):
        KaldiFbank(KaldiFbankConfig(high_freq=5000.0), sample_rate=8000)
    with pytest.raises(ConfigError, match=r"frontend\.n_mels"):
        KaldiFbankConfig(n_mels=0)
    with pytest.raises(ConfigError, match=r"frontend\.preemphasis"):
        KaldiFbankConfig(preemphasis=1.5)
