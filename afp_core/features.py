"""Log-mel front-end of the CNN encoders: each 1 s window -> 256 x 32 in [-80, 0] dB.

The parameters and why they are what they are: docs/design.md §1.2.

The mel filterbank is the Slaney one (librosa's default: ``htk=False, norm='slaney'``),
computed here in numpy so that librosa is needed by the tests only.

``KaldiFbank`` is the BEATs front-end: Kaldi's log mel filterbank (128 x 98 for 1 s).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from afp_core.config import KaldiFbankConfig, LogMelConfig
from afp_core.errors import ConfigError

__all__ = [
    "KaldiFbank",
    "LogMel",
    "hz_to_mel",
    "kaldi_mel_banks",
    "kaldi_mel_scale",
    "mel_filterbank",
    "mel_to_hz",
]

# Slaney's mel scale: linear (200/3 Hz per mel) below 1 kHz, logarithmic above.
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = np.log(6.4) / 27.0

_DEFAULT = LogMelConfig()


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Hz -> Slaney mel (float64, same shape)."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _F_SP
    logarithmic = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOG_STEP
    return np.where(hz >= _MIN_LOG_HZ, logarithmic, linear)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Slaney mel -> Hz (float64, same shape); inverse of ``hz_to_mel``."""
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * _F_SP
    logarithmic = _MIN_LOG_HZ * np.exp(_LOG_STEP * (np.maximum(mel, _MIN_LOG_MEL) - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, logarithmic, linear)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float
) -> np.ndarray:
    """Triangular Slaney mel filters, area-normalised: (n_mels, n_fft // 2 + 1) float32.

    Filter ``i`` rises from edge ``i`` to ``i + 1`` and falls to ``i + 2`` of ``n_mels + 2``
    edges equally spaced in mel between ``f_min`` and ``f_max``; each is scaled by
    2 / (its width in Hz) so that filters have equal area (librosa ``norm='slaney'``).
    """
    if not 0 <= f_min < f_max:
        raise ValueError(f"need 0 <= f_min < f_max, got {f_min} and {f_max}")
    fft_hz = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    widths = np.diff(edges_hz)  # (n_mels + 1,)
    # distance[i, k] = edges_hz[i] - fft_hz[k]
    distance = edges_hz[:, None] - fft_hz[None, :]
    rising = -distance[:-2] / widths[:-1, None]
    falling = distance[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return weights.astype(np.float32)


class LogMel(torch.nn.Module):
    """Batched log-mel spectrogram, each item scaled by its own maximum.

    ``forward(waves)``: (B, samples) audio -> (B, 1, n_mels, 1 + samples // hop_length)
    float32 dB in [-top_db, 0]; with the defaults, 8000 samples give (B, 1, 256, 32).
    STFT with a periodic Hann window, ``center=True`` and zero padding (librosa >= 0.10),
    power spectrogram, Slaney mel projection, then ``10 log10(S / max S)`` with ``max S``
    taken over each item alone (never over the batch: an item's output must not depend on
    its batch-mates), ``amin = 1e-10``, floored at ``-top_db``. Always computed in float32,
    also under autocast or for half-precision input. No parameters and no state_dict
    entries: the window and mel matrix are non-persistent float32 buffers that follow
    ``.to(device)`` but keep float32 through ``.half()`` or ``.to(dtype)``.
    """

    amin: float = 1e-10
    window: Tensor  # buffers registered in __init__
    mel_basis: Tensor

    def __init__(self, config: LogMelConfig = _DEFAULT, sample_rate: int = 8000) -> None:
        super().__init__()
        self.config = config
        self.sample_rate = sample_rate
        fb = mel_filterbank(sample_rate, config.n_fft, config.n_mels, config.f_min, config.f_max)
        window = torch.hann_window(config.n_fft, periodic=True, dtype=torch.float32)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("mel_basis", torch.from_numpy(fb), persistent=False)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> LogMel:
        # ``.half()`` / ``.to(dtype)`` would round the mel matrix (fp16 costs up to 1.4 dB):
        # the buffers follow device moves only and stay exact float32.
        kept = {"window": self.window, "mel_basis": self.mel_basis}
        super()._apply(fn, recurse)
        for name, original in kept.items():
            setattr(self, name, original.to(getattr(self, name).device))
        return self

    def output_shape(self, n_samples: int) -> tuple[int, int]:
        """(n_mels, frames) produced for ``n_samples`` of audio."""
        return self.config.n_mels, 1 + n_samples // self.config.hop_length

    def forward(self, waves: Tensor) -> Tensor:
        """(B, samples) -> (B, 1, n_mels, frames) float32 dB in [-top_db, 0]."""
        if waves.ndim != 2:
            raise ValueError(f"LogMel expects (batch, samples), got shape {tuple(waves.shape)}")
        cfg = self.config
        with torch.autocast(device_type=waves.device.type, enabled=False):
            x = waves.float()
            spec = torch.stft(
                x,
                n_fft=cfg.n_fft,
                hop_length=cfg.hop_length,
                win_length=cfg.n_fft,
                window=self.window,
                center=True,
                pad_mode="constant",
                normalized=False,
                onesided=True,
                return_complex=True,
            )
            # re^2 + im^2 rather than abs()^2: no square root to round, nor to differentiate.
            power = torch.view_as_real(spec).square().sum(-1)
            if cfg.power != 2.0:
                power = power.pow(cfg.power / 2.0)
            mel = torch.matmul(self.mel_basis, power)  # (B, n_mels, frames)
            ref = mel.amax(dim=(-2, -1), keepdim=True)  # per item, not per batch
            db = 10.0 * torch.log10(mel.clamp_min(self.amin))
            db = db - 10.0 * torch.log10(ref.clamp_min(self.amin))
            db = db.clamp_min(-cfg.top_db)
        return db.unsqueeze(1)


# --- Kaldi fbank (BEATs) ------------------------------------------------------------------

_DEFAULT_FBANK = KaldiFbankConfig()


def kaldi_mel_scale(hz: np.ndarray | float) -> np.ndarray:
    """Hz -> Kaldi mel, ``1127 ln(1 + f / 700)`` (float64, same shape)."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def kaldi_mel_banks(
    n_mels: int, n_fft: int, sample_rate: int, low_freq: float, high_freq: float
) -> np.ndarray:
    """Kaldi's triangular mel filters: (n_mels, n_fft // 2 + 1) float32.

    ``n_mels + 2`` edges equally spaced on Kaldi's mel scale from ``low_freq`` to
    ``high_freq`` (<= 0: that far below Nyquist); filter ``i`` rises from edge ``i`` to
    ``i + 1`` and falls to ``i + 2``, linearly in mel, peak 1, no area normalisation. As in
    Kaldi, FFT bins 0 .. n_fft / 2 - 1 are weighted and the Nyquist bin gets 0.
    """
    nyquist = sample_rate / 2.0
    high = high_freq if high_freq > 0 else nyquist + high_freq
    if not 0 <= low_freq < high <= nyquist:
        raise ValueError(
            f"need 0 <= low_freq < high_freq <= Nyquist ({nyquist:g} Hz), got low_freq "
            f"{low_freq:g} and high_freq {high:g}"
        )
    edges = np.linspace(kaldi_mel_scale(low_freq), kaldi_mel_scale(high), n_mels + 2)
    fft_mel = kaldi_mel_scale(np.arange(n_fft // 2) * (sample_rate / n_fft))[None, :]
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_mel - left) / (center - left)
    falling = (right - fft_mel) / (right - center)
    weights = np.zeros((n_mels, n_fft // 2 + 1))
    weights[:, :-1] = np.maximum(0.0, np.minimum(rising, falling))
    return weights.astype(np.float32)


class KaldiFbank(torch.nn.Module):
    """Kaldi log mel filterbank with BEATs' scaling and normalisation, per item.

    ``forward(waves)``: (B, samples) audio in [-1, 1] -> (B, 1, n_mels, frames) float32,
    frequency on axis 2 and time on axis 3 like ``LogMel`` (the axes the training masks
    and ``output_shape`` use; the BEATs encoder turns it into its own time x frequency
    layout). With the defaults at 8 kHz, 8000 samples give (B, 1, 128, 98).

    Per frame, after scaling the waveform by ``config.scale`` (2**15: BEATs feeds 16-bit
    sample values): frames of 25 ms every 10 ms that fit entirely in the input (Kaldi's
    ``snip_edges``), the frame's mean removed, pre-emphasis ``x[n] - 0.97 x[n - 1]`` (the
    first sample uses itself as predecessor), the Povey window
    ``(0.5 - 0.5 cos(2 pi n / (L - 1)))^0.85``, zero padding to the next power of two
    (256 at 8 kHz), the power spectrum, Kaldi's mel filters (``kaldi_mel_banks``), natural
    log floored at float32 epsilon, then ``(x - mean) / (2 * std)``. No dither (Kaldi's
    default adds random noise; here the output is deterministic). At 8 kHz with 128 bins
    a few narrow low filters fall between FFT bins (31.25 Hz apart) and stay at the floor:
    Kaldi's own program refuses such settings; torchaudio's port, which BEATs' own
    preprocessing calls, keeps them, and so does this one. Every operation is
    within a frame, so an item never depends on its batch-mates. No parameters and no
    state_dict entries; the buffers stay float32 (see ``LogMel``).
    """

    eps: float = float(torch.finfo(torch.float32).eps)
    window: Tensor  # buffers registered in __init__
    mel_basis: Tensor

    def __init__(self, config: KaldiFbankConfig = _DEFAULT_FBANK, sample_rate: int = 8000) -> None:
        super().__init__()
        self.config = config
        self.sample_rate = sample_rate
        # rounded rather than truncated (Kaldi's int cast) so that 0.1 ms rounding in the
        # product cannot lose a sample; equal for every usual rate and length
        self.frame_length = round(sample_rate * config.frame_length_ms / 1000.0)
        self.frame_shift = round(sample_rate * config.frame_shift_ms / 1000.0)
        if self.frame_length < 2 or self.frame_shift < 1:
            raise ConfigError(
                f"frontend.frame_length_ms: {config.frame_length_ms} ms frames every "
                f"{config.frame_shift_ms} ms are too short at {sample_rate} Hz"
            )
        self.n_fft = 1 << (self.frame_length - 1).bit_length()
        try:
            banks = kaldi_mel_banks(
                config.n_mels, self.n_fft, sample_rate, config.low_freq, config.high_freq
            )
        except ValueError as exc:
            raise ConfigError(f"frontend.high_freq: {exc}") from None
        n = np.arange(self.frame_length)
        povey = (0.5 - 0.5 * np.cos(2 * np.pi * n / (self.frame_length - 1))) ** 0.85
        self.register_buffer("window", torch.from_numpy(povey.astype(np.float32)), persistent=False)
        self.register_buffer("mel_basis", torch.from_numpy(banks), persistent=False)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> KaldiFbank:
        # as LogMel: the buffers follow device moves but never leave float32
        kept = {"window": self.window, "mel_basis": self.mel_basis}
        super()._apply(fn, recurse)
        for name, original in kept.items():
            setattr(self, name, original.to(getattr(self, name).device))
        return self

    def output_shape(self, n_samples: int) -> tuple[int, int]:
        """(n_mels, frames) produced for ``n_samples`` of audio."""
        return self.config.n_mels, 1 + (n_samples - self.frame_length) // self.frame_shift

    def forward(self, waves: Tensor) -> Tensor:
        """(B, samples) -> (B, 1, n_mels, frames) float32, normalised log mel energies."""
        if waves.ndim != 2:
            raise ValueError(f"KaldiFbank expects (batch, samples), got shape {tuple(waves.shape)}")
        if waves.shape[1] < self.frame_length:
            raise ValueError(
                f"KaldiFbank needs at least {self.frame_length} samples (one frame), "
                f"got {waves.shape[1]}"
            )
        cfg = self.config
        with torch.autocast(device_type=waves.device.type, enabled=False):
            x = waves.float() * cfg.scale
            frames = x.unfold(-1, self.frame_length, self.frame_shift)  # (B, T, L)
            frames = frames - frames.mean(dim=-1, keepdim=True)
            previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
            frames = (frames - cfg.preemphasis * previous) * self.window
            spec = torch.fft.rfft(frames, n=self.n_fft)  # zero-padded to n_fft
            power = torch.view_as_real(spec).square().sum(-1)  # (B, T, n_fft // 2 + 1)
            mel = torch.matmul(power, self.mel_basis.T)  # (B, T, n_mels)
            logmel = mel.clamp_min(self.eps).log()
            out = (logmel - cfg.mean) / (2.0 * cfg.std)
        return out.transpose(1, 2).unsqueeze(1)
