"""afp_core.features: the Slaney mel filterbank and the LogMel front-end, against librosa."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from afp_core.config import LogMelConfig
from afp_core.features import LogMel, hz_to_mel, mel_filterbank, mel_to_hz

librosa = pytest.importorskip("librosa")

SR = 8000


def make_signal(seconds: float = 4.0, seed: int = 0) -> np.ndarray:
    """Tones + noise with a near-silent stretch, float64: windows reach the -80 dB floor."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    x = (
        0.5 * np.sin(2 * np.pi * 440 * t)
        + 0.2 * np.sin(2 * np.pi * 1234.5 * t)
        + 0.05 * np.sin(2 * np.pi * 3100 * t)
        + 1e-3 * rng.standard_normal(len(t))
    )
    x[9000:12000] *= 1e-4
    x[20000:] += 0.05 * rng.standard_normal(len(x) - 20000)
    return x


def windows(x: np.ndarray, scales: list[float] | None = None) -> np.ndarray:
    """1 s windows, 0.5 s hop, each optionally scaled: (n, 8000) float64."""
    w = np.lib.stride_tricks.sliding_window_view(x, SR)[:: SR // 2].copy()
    if scales is not None:
        w = w[: len(scales)] * np.asarray(scales)[:, None]
    return w


def librosa_logmel(w: np.ndarray) -> np.ndarray:
    """The reference in float64: librosa melspectrogram, then power_to_db(ref=max) per window."""
    S = librosa.feature.melspectrogram(
        y=w, sr=SR, n_fft=1024, hop_length=256, n_mels=256, fmin=0, fmax=4000, power=2.0
    )
    return librosa.power_to_db(S, ref=np.max, amin=1e-10, top_db=80)


@pytest.mark.parametrize(
    ("sr", "n_fft", "n_mels", "f_min", "f_max"),
    [(8000, 1024, 256, 0.0, 4000.0), (16000, 512, 64, 300.0, 7000.0), (22050, 2048, 128, 0, 11025)],
)
def test_mel_filterbank_matches_librosa(
    sr: int, n_fft: int, n_mels: int, f_min: float, f_max: float
) -> None:
    ours = mel_filterbank(sr, n_fft, n_mels, f_min, f_max)
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max)
    assert ours.shape == ref.shape == (n_mels, n_fft // 2 + 1)
    assert ours.dtype == np.float32
    # Both are float64 maths rounded to float32: at most an ulp or so apart (measured 7e-9
    # absolute for the default, weights up to 0.11), and the same bins are non-zero.
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6 * ref.max())
    assert np.array_equal(ours > 0, ref > 0)
    assert (ours.sum(axis=1) > 0).all()  # no empty filter


def test_mel_scale_round_trip_and_slaney_points() -> None:
    hz = np.array([0.0, 500.0, 1000.0, 2000.0, 4000.0, 11025.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz)), hz, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(hz_to_mel(hz), librosa.hz_to_mel(hz), rtol=1e-12)
    assert hz_to_mel(1000.0) == pytest.approx(15.0)


def test_logmel_matches_librosa_per_window() -> None:
    w = windows(make_signal(), scales=[1, 0.1, 1e-3, 3, 1e-2, 1, 0.5])
    ours = LogMel()(torch.from_numpy(w.astype(np.float32))).numpy()
    assert ours.shape == (len(w), 1, 256, 32) == (7, 1, 256, 32)
    worst = {"all": 0.0, "above -60": 0.0, "above -40": 0.0}
    floored = 0
    for i, window in enumerate(w):
        ref = librosa_logmel(window)
        diff = np.abs(ours[i, 0] - ref)
        worst["all"] = max(worst["all"], diff.max())
        worst["above -60"] = max(worst["above -60"], diff[ref > -60].max())
        worst["above -40"] = max(worst["above -40"], diff[ref > -40].max())
        floored += int((ref <= -80).sum())
    assert floored > 1000  # the floor is exercised
    # float32 STFT against librosa's float64 one; the error in dB grows as the bin's level
    # falls (an absolute float32 error, relative to a small power). Measured: 0.0021 dB
    # over all bins, 4.3e-4 above -60 dB, 1.5e-5 above -40 dB.
    assert worst["all"] < 1e-2, worst
    assert worst["above -60"] < 2e-3, worst
    assert worst["above -40"] < 1e-4, worst


def test_logmel_silence_is_finite_like_librosa() -> None:
    out = LogMel()(torch.zeros(2, SR))
    assert torch.isfinite(out).all()
    np.testing.assert_array_equal(out[0, 0].numpy(), librosa_logmel(np.zeros(SR)))


def test_logmel_shape_range_and_output_shape() -> None:
    module = LogMel()
    x = torch.from_numpy(windows(make_signal(), scales=[1, 1e-3, 10]).astype(np.float32))[:3]
    out = module(x)
    assert out.shape == (3, 1, 256, 32) and out.dtype == torch.float32
    assert module.output_shape(SR) == (256, 32)
    assert out.min() >= -80.0 and out.max() <= 0.0
    assert (out.amax(dim=(1, 2, 3)) == 0).all()  # each window reaches 0 dB at its maximum
    assert out.min() == -80.0  # and the floor is reached

    other = LogMel(LogMelConfig(n_fft=512, hop_length=160, n_mels=64, top_db=60.0), 16000)
    out = other(torch.randn(2, 16000))
    assert out.shape == (2, 1, *other.output_shape(16000)) == (2, 1, 64, 101)
    assert out.min() >= -60.0


def test_each_window_is_normalised_by_its_own_maximum() -> None:
    module = LogMel()
    w = torch.from_numpy(windows(make_signal()).astype(np.float32))
    a, b = w[0], w[3]
    alone = module(a[None])[0]
    quiet_mate = module(torch.stack([a, 1e-3 * b]))[0]
    loud_mate = module(torch.stack([1e3 * b, a, b]))[1]
    # A batch maximum would shift `a` by up to 120 dB here; per window it does not move.
    torch.testing.assert_close(quiet_mate, alone, rtol=0, atol=1e-4)
    torch.testing.assert_close(loud_mate, alone, rtol=0, atol=1e-4)
    # Scaling a window does not change its image either (float32 rounding shows at the
    # lowest bins: measured 2.6e-3 dB).
    torch.testing.assert_close(module((37.0 * a)[None])[0], alone, rtol=0, atol=1e-2)


def test_no_state_and_buffers_follow_to() -> None:
    module = LogMel()
    assert module.state_dict() == {}
    assert list(module.parameters()) == []
    assert {name for name, _ in module.named_buffers()} == {"window", "mel_basis"}
    assert module.mel_basis.shape == (256, 513)
    module.to(torch.float64)
    assert module.mel_basis.dtype == module.window.dtype == torch.float32
    np.testing.assert_array_equal(module.mel_basis.numpy(), mel_filterbank(SR, 1024, 256, 0, 4000))


def test_half_input_and_autocast_compute_in_float32() -> None:
    module = LogMel()
    x = torch.from_numpy(windows(make_signal()).astype(np.float32))[:2]
    x_half = x.half()
    expected = module(x_half.float())
    out = module(x_half)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # A module cast with .half() (as a whole encoder might be) keeps exact float32 buffers.
    half_module = LogMel().half()
    assert half_module.mel_basis.dtype == torch.float32
    torch.testing.assert_close(half_module(x_half), expected, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, module(x), rtol=0, atol=0)


def test_gradient_flows_to_the_audio() -> None:
    x = torch.from_numpy(windows(make_signal()).astype(np.float32))[:2].requires_grad_()
    LogMel()(x).mean().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


def test_rejects_unbatched_input() -> None:
    with pytest.raises(ValueError, match="batch, samples"):
        LogMel()(torch.zeros(SR))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu() -> None:
    x = torch.from_numpy(windows(make_signal()).astype(np.float32))
    cpu = LogMel()(x)
    module = LogMel().to("cuda")
    assert module.window.device.type == "cuda" and module.mel_basis.device.type == "cuda"
    with torch.autocast("cuda", dtype=torch.float16):
        gpu = module(x.cuda().half())
    assert gpu.dtype == torch.float32 and gpu.device.type == "cuda"
    torch.testing.assert_close(module(x.cuda()).cpu(), cpu, rtol=0, atol=1e-2)
    torch.testing.assert_close(gpu.cpu(), LogMel()(x.half().float()), rtol=0, atol=1e-2)
