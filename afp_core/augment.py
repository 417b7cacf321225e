"""Distortions applied to audio: noise at a chosen SNR, speech babble, training pipelines.

``Augmenter`` is the training pipeline of docs/design.md §1.6 (baseline, or proposed =
baseline plus low/high-pass filters); ``draw_spec_masks``/``apply_spec_masks`` the weak
spectrogram masks; ``synthesise_noise`` background noises for machines without a noise
data set.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from afp_core.audio import load_audio
from afp_core.config import AugmentConfig
from afp_core.errors import AudioError

EPS = 1e-12


def mix_at_snr(
    signal: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator
) -> np.ndarray:
    """``signal`` plus a random excerpt of ``noise`` scaled to ``snr_db`` (power ratio).

    The noise is looped when shorter than the signal. Returns float32.
    """
    n = len(signal)
    if len(noise) == 0:
        raise ValueError("noise is empty")
    reps = int(np.ceil(n / len(noise))) + 1
    looped = np.tile(noise, reps) if reps > 1 else noise
    start = int(rng.integers(0, len(looped) - n + 1))
    excerpt = looped[start : start + n].astype(np.float64)
    p_signal = float(np.mean(np.square(signal, dtype=np.float64)))
    p_noise = float(np.mean(np.square(excerpt)))
    gain = np.sqrt(p_signal / (max(p_noise, EPS) * 10 ** (snr_db / 10)))
    return (signal + gain * excerpt).astype(np.float32)


def overdrive(signal: np.ndarray, drive_db: float, peak: float | None = None) -> np.ndarray:
    """A loudspeaker pushed past its limit: tanh soft clipping ``drive_db`` above ``peak``.

    ``peak`` (default: the signal's own) is driven ``drive_db`` into the clipper's knee
    and comes out at its own level again, so the peaks are squashed and harmonics added
    while the loudest sample keeps its value. Pass the whole program's peak to process it
    in blocks. Returns float32.
    """
    x = np.asarray(signal, dtype=np.float32)
    if peak is None:
        peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if peak <= EPS:
        return x.copy()
    drive = 10 ** (drive_db / 20)
    return (np.tanh(x * np.float32(drive / peak)) * np.float32(peak / np.tanh(drive))).astype(
        np.float32
    )


def make_babble(
    files: Sequence[Path],
    duration_s: float,
    sample_rate: int,
    rng: np.random.Generator,
    speakers: int = 4,
) -> np.ndarray:
    """Speech babble: ``speakers`` streams of randomly chosen clips, summed, unit RMS."""
    if not files:
        raise AudioError("no speech files for babble noise")
    n = round(duration_s * sample_rate)
    babble = np.zeros(n, np.float64)
    cache: dict[int, np.ndarray] = {}
    for _ in range(speakers):
        stream: list[np.ndarray] = []
        length = 0
        while length < n:
            i = int(rng.integers(len(files)))
            if i not in cache:
                cache[i] = load_audio(files[i], sample_rate=sample_rate)
            clip = cache[i]
            clip = clip / (np.sqrt(np.mean(np.square(clip, dtype=np.float64))) + EPS)
            stream.append(clip)
            length += len(clip)
        babble += np.concatenate(stream)[:n]
    return (babble / (np.sqrt(np.mean(babble**2)) + EPS)).astype(np.float32)


# --- training pipelines (docs/design.md §1.6, paper §2.2) ----------------------------------


@contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed Python's and numpy's global generators (audiomentations draws from them).

    The previous states are restored on exit, so a caller's own use of ``random`` or
    ``np.random`` is not disturbed by the augmentation.
    """
    py_state = random.getstate()
    np_state = np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@dataclass(frozen=True)
class AugmentedPair:
    """A clean anchor window and its distorted positive (both float32, ``window`` samples)."""

    anchor: np.ndarray
    positive: np.ndarray
    shift: int  # samples the positive starts after the anchor (negative: before)


class Augmenter:
    """The baseline or proposed pipeline applied to one training excerpt at a time.

    Built once per data-loader worker. ``make_pair(excerpt, rng)`` takes an excerpt of
    ``excerpt_length`` samples (pre-roll, margin, window, margin), cuts the
    clean anchor from its middle and returns it with the positive: the excerpt through
    background noise, room IR, microphone IR and (proposed) low/high-pass filters, cut at
    the anchor's position, shifted with ``shift_p``. All randomness comes from ``rng``:
    audiomentations' transforms draw from the global generators, which are seeded from
    ``rng`` for each excerpt and restored afterwards.

    audiomentations provides the noise (``AddBackgroundNoise`` in a weighted ``OneOf``, one
    per SNR band), the impulse responses (``ApplyImpulseResponse``) and the filters
    (``LowPassFilter``/``HighPassFilter``, zero-phase so the roll-off is drawn from
    multiples of 12 dB/octave). Noise and IR files should be 8 kHz mono WAV (see
    ``afp_core.training.data.prepare_clips``): they are read from disk at each use.
    """

    def __init__(
        self,
        config: AugmentConfig,
        noise_files: Sequence[Path] = (),
        room_ir_files: Sequence[Path] = (),
        mic_ir_files: Sequence[Path] = (),
        sample_rate: int = 8000,
        window: int = 8000,
        margin_s: float = 0.0,
    ) -> None:
        import audiomentations as am

        self.config = config
        self.sample_rate = sample_rate
        self.window = window
        self.preroll = round(config.preroll_s * sample_rate)
        self.max_shift = round(config.shift_max_s * sample_rate)
        self.min_shift = round(config.shift_min_s * sample_rate)
        # Audio kept on each side of the anchor: the largest shift, or more on request
        # (validation shifts queries by 0.2 s whatever the training range).
        self.margin = max(self.max_shift, round(margin_s * sample_rate))
        self.noise = None
        if noise_files and config.noise_p > 0:
            noise_paths = [str(p) for p in noise_files]
            self.noise = am.OneOf(
                [
                    am.AddBackgroundNoise(noise_paths, min_snr_db=lo, max_snr_db=hi, p=1.0)
                    for lo, hi, _ in config.snr_bands_db
                ],
                weights=[w for _, _, w in config.snr_bands_db],
                p=config.noise_p,
            )
        self.room_ir = _impulse_response(am, room_ir_files, config.room_ir_p)
        self.mic_ir = _impulse_response(am, mic_ir_files, config.mic_ir_p)
        self.filters = None
        if config.pipeline == "proposed" and config.filter_p > 0:
            rolloff = {"min_rolloff": config.rolloff_db[0], "max_rolloff": config.rolloff_db[-1]}
            self.filters = am.Compose(
                [
                    am.LowPassFilter(
                        min_cutoff_freq=config.lowpass_hz[0],
                        max_cutoff_freq=config.lowpass_hz[1],
                        zero_phase=True,
                        p=config.filter_p,
                        **rolloff,
                    ),
                    am.HighPassFilter(
                        min_cutoff_freq=config.highpass_hz[0],
                        max_cutoff_freq=config.highpass_hz[1],
                        zero_phase=True,
                        p=config.filter_p,
                        **rolloff,
                    ),
                ]
            )

    @property
    def excerpt_length(self) -> int:
        """Samples an excerpt must have: pre-roll + margin + window + margin."""
        return self.preroll + 2 * self.margin + self.window

    @property
    def anchor_offset(self) -> int:
        """Where the anchor window starts inside an excerpt."""
        return self.preroll + self.margin

    def draw_shift(self, rng: np.random.Generator) -> int:
        """0, or with ``shift_p`` a shift of ``shift_min_s``-``shift_max_s`` either way."""
        if self.max_shift == 0 or rng.random() >= self.config.shift_p:
            return 0
        size = int(rng.integers(self.min_shift, self.max_shift + 1))
        return size if rng.random() < 0.5 else -size

    def distort(self, excerpt: np.ndarray, seed: int) -> np.ndarray:
        """The whole excerpt through an overdriven speaker (if drawn), noise, room IR,
        microphone IR and filters (float32)."""
        x = np.ascontiguousarray(excerpt, dtype=np.float32)
        sr = self.sample_rate
        cfg = self.config
        if cfg.distortion_p > 0:
            draw = np.random.default_rng([seed, 1])
            if draw.random() < cfg.distortion_p:
                low_db, high_db = cfg.distortion_drive_db  # validated: [low, high]
                x = overdrive(x, float(draw.uniform(low_db, high_db)))
        with seeded_global_rngs(seed), warnings.catch_warnings():
            # "too silent to be added as noise" for a quiet stretch of a noise clip: the
            # excerpt then stays noise-free, which is what the warning says anyway.
            warnings.simplefilter("ignore", UserWarning)
            for transform in (self.noise, self.room_ir, self.mic_ir, self.filters):
                if transform is not None:
                    x = transform(samples=x, sample_rate=sr)
        return np.asarray(x, dtype=np.float32)

    def make_pair(
        self, excerpt: np.ndarray, rng: np.random.Generator, shift: int | None = None
    ) -> AugmentedPair:
        """Clean anchor and distorted positive from one excerpt; ``shift`` overrides the draw."""
        if len(excerpt) != self.excerpt_length:
            raise ValueError(
                f"excerpt has {len(excerpt)} samples, the pipeline needs {self.excerpt_length}"
            )
        if shift is None:
            shift = self.draw_shift(rng)
        elif abs(shift) > self.margin:
            raise ValueError(f"shift {shift} exceeds the margin of {self.margin} samples")
        seed = int(rng.integers(2**63))
        distorted = self.distort(excerpt, seed)
        start = self.anchor_offset
        anchor = np.array(excerpt[start : start + self.window], dtype=np.float32)
        positive = distorted[start + shift : start + shift + self.window].copy()
        return AugmentedPair(anchor=anchor, positive=positive, shift=shift)


def _impulse_response(am: Any, files: Sequence[Path], p: float) -> Any:
    if not files or p <= 0:
        return None
    return am.ApplyImpulseResponse(
        [str(f) for f in files], p=p, lru_cache_size=len(files) + 1, leave_length_unchanged=True
    )


def draw_spec_masks(
    rng: np.random.Generator, n: int, n_freq: int, n_time: int, max_freq: float, max_time: float
) -> np.ndarray:
    """(n, 4) int64 rows (freq start, freq width, time start, time width) of weak masks.

    Each width is uniform in 0..floor(max * axis length); the start uniform where it fits.
    """
    out = np.zeros((n, 4), dtype=np.int64)
    for axis, (length, share) in enumerate(((n_freq, max_freq), (n_time, max_time))):
        widest = int(share * length)
        widths = rng.integers(0, widest + 1, size=n)
        starts = (rng.random(n) * (length - widths + 1)).astype(np.int64)
        out[:, 2 * axis] = starts
        out[:, 2 * axis + 1] = widths
    return out


def apply_spec_masks(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Fill each item's masked frequency rows and time columns with the item's mean.

    ``features`` (B, C, F, T), ``masks`` (B, 4) from ``draw_spec_masks``; a new tensor.
    """
    if masks.shape != (features.shape[0], 4):
        raise ValueError(f"masks must be (batch, 4), got {tuple(masks.shape)}")
    n_freq, n_time = features.shape[-2:]
    masks = masks.to(features.device)
    freq = torch.arange(n_freq, device=features.device)
    time = torch.arange(n_time, device=features.device)
    f0, fw, t0, tw = (masks[:, i, None] for i in range(4))
    in_freq = (freq >= f0) & (freq < f0 + fw)  # (B, F)
    in_time = (time >= t0) & (time < t0 + tw)  # (B, T)
    hidden = in_freq[:, None, :, None] | in_time[:, None, None, :]
    mean = features.mean(dim=(1, 2, 3), keepdim=True)
    return torch.where(hidden, mean.expand_as(features), features)


# --- synthetic background noises -----------------------------------------------------------

NOISE_KINDS: tuple[str, ...] = ("colored", "hum", "rain", "wind", "crowd")


def synthesise_noise(
    kind: str, duration_s: float, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """A unit-RMS float32 noise of one ``kind`` (``NOISE_KINDS``), random in every detail.

    colored: Gaussian noise with a random spectral slope and band; hum: mains hum with
    harmonics over a little noise; rain: dense random clicks through a resonant band;
    wind: low-passed noise with slow gusts; crowd: several amplitude-modulated
    formant-like noise bands (a speech-free stand-in for babble).
    """
    n = round(duration_s * sample_rate)
    if n <= 0:
        raise ValueError(f"duration must be positive, got {duration_s}")
    t = np.arange(n) / sample_rate
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    nyquist = sample_rate / 2
    if kind == "colored":
        slope = rng.uniform(-2.0, 0.5)  # spectral power ~ f ** slope (brown -2 ... blue-ish)
        low, high = rng.uniform(20, 300), rng.uniform(0.5, 1.0) * nyquist
        x = _shape_spectrum(rng.standard_normal(n), freqs, slope, low, high)
    elif kind == "hum":
        f0 = rng.choice([50.0, 60.0]) * rng.uniform(0.99, 1.01)
        x = sum(
            rng.uniform(0.1, 1.0) / h * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi))
            for h in range(1, int(min(20, nyquist // f0)))
        )
        x = x + 0.05 * rng.standard_normal(n)
    elif kind == "rain":
        clicks = (rng.random(n) < rng.uniform(50, 400) / sample_rate) * rng.standard_normal(n)
        centre = rng.uniform(800, 0.8 * nyquist)
        x = _shape_spectrum(clicks, freqs, 0.0, centre / 2, min(centre * 2, nyquist))
        x = x + 0.2 * np.std(x) * rng.standard_normal(n)
    elif kind == "wind":
        cutoff = rng.uniform(150, 600)
        x = _shape_spectrum(rng.standard_normal(n), freqs, -1.0, 10, cutoff)
        gust = _shape_spectrum(rng.standard_normal(n), freqs, 0.0, 0.0, rng.uniform(0.2, 1.0))
        x = x * (1.0 + 0.8 * gust / (np.max(np.abs(gust)) + EPS))
    elif kind == "crowd":
        x = np.zeros(n)
        for _ in range(int(rng.integers(4, 9))):
            centre = rng.uniform(250, min(3000, 0.8 * nyquist))
            band = _shape_spectrum(rng.standard_normal(n), freqs, 0.0, centre * 0.8, centre * 1.25)
            rate = rng.uniform(2.0, 6.0)  # syllable-like modulation
            envelope = np.clip(np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)), 0, None)
            x += band * envelope**2
    else:
        raise ValueError(f"unknown noise kind {kind!r} (known: {', '.join(NOISE_KINDS)})")
    x = np.asarray(x, dtype=np.float64)
    return (x / (np.sqrt(np.mean(x**2)) + EPS)).astype(np.float32)


def _shape_spectrum(
    x: np.ndarray, freqs: np.ndarray, slope: float, low: float, high: float
) -> np.ndarray:
    """``x`` with power ~ f**slope inside [low, high] Hz (smooth edges), zero outside."""
    spectrum = np.fft.rfft(x)
    f = np.maximum(freqs, freqs[1] if len(freqs) > 1 else 1.0)
    gain = f ** (slope / 2)
    edge_low = 1.0 / (1.0 + (max(low, EPS) / f) ** 8) if low > 0 else 1.0
    gain = gain * edge_low / (1.0 + (f / max(high, EPS)) ** 8)
    return np.fft.irfft(spectrum * gain, n=len(x))
