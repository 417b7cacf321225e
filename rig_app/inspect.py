"""What a channel did to the music: the Inspect page's computations, without Qt.

Every aligned take is on the program clock (sample i of ``takes/<label>.aligned.wav`` is
sample i of ``program/music.wav``), so the clean program and a take can be compared
span by span:

* ``compute_spectra``: the long-term (Welch) spectrum of the clean program and of each
  take, per song and over all songs (paper Figure 3). Each take's curve is shifted so that
  its mean level in ``LEVEL_BAND_HZ`` (300-3000 Hz) equals the clean program's: what is left
  is the channel's coloration, not the recording gain (the shift is kept as ``gain_db``).
  The same pass picks spectral peaks in the clean program and in each take exactly as the
  landmark method does (``afp_core.landmark.find_landmark_peaks`` with its settings,
  scaled to the analysis rate: same Hz, same ms) and counts how many clean peaks the take
  kept (a take peak within ``PEAK_TOLERANCE`` bins and frames).
* ``compute_excerpt``: spectrograms of one excerpt of the clean program and of a take,
  with their peaks and which of them match (paper Figure 2).

Both read the audio span by span (``CHUNK_S`` at a time, seeking in the WAV files), so
memory stays proportional to a chunk however long the program is: nothing holds a whole
take, let alone its spectrogram (a song's peaks are kept: about 30 per second). Both take
an ``afp_core.tasks.TaskState`` first, report progress through it and stop at its next
check when cancelled.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from afp_core.audio import AudioInfo, probe_audio, resample
from afp_core.errors import AfpError, AudioError
from afp_core.spectral import Spectrogram, average_spectrum_db, compute_spectrogram
from afp_core.tasks import TaskState
from rig_app.session import Session

if TYPE_CHECKING:
    from afp_core.landmark import LandmarkSettings

__all__ = [
    "ANALYSIS_RATES",
    "CHUNK_S",
    "COLOUR_RANGE_DB",
    "DEFAULT_EXCERPT_S",
    "LEVEL_BAND_HZ",
    "ExcerptView",
    "InspectError",
    "InspectTake",
    "InspectTargets",
    "PeakCount",
    "SpanTimes",
    "SpectraView",
    "SpectrumScope",
    "compute_excerpt",
    "compute_spectra",
    "inspect_targets",
    "landmark_settings",
    "match_peaks",
    "read_span",
    "smooth_octave",
    "song_titles",
]

ANALYSIS_RATES = (16000, 8000)
"""16 kHz shows the whole band the rig records; 8 kHz is what the model hears."""
LEVEL_BAND_HZ = (300.0, 3000.0)
"""Band where each take's average spectrum is level-matched to the clean program's."""
CHUNK_S = 30.0
DEFAULT_EXCERPT_S = 10.0
WELCH_S = 0.128  # Welch segment: 2048 samples at 16 kHz, 1024 at 8 kHz
COLOUR_RANGE_DB = 70.0
"""Spectrogram colours span this many dB down from the loudest (99.5th percentile) level."""
PEAK_TOLERANCE = (2, 2)  # a clean peak is kept if the take has one within ±2 bins, ±2 frames
_READ_PAD_S = 0.05  # read this much more on each side so resampling has no edge effects


class InspectError(AfpError):
    """The session has nothing to inspect, or an excerpt is outside its song."""


# --- what can be inspected --------------------------------------------------------------


@dataclass(frozen=True)
class SpanTimes:
    """A song's interval [start_s, end_s) on the program clock."""

    title: str
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class InspectTake:
    """An aligned take: its label, file and whether its alignment was flagged."""

    label: str
    path: Path
    flagged: bool = False


@dataclass(frozen=True)
class InspectTargets:
    """The clean program, its songs and the aligned takes of a session."""

    music_path: Path
    program_rate: int
    songs: tuple[SpanTimes, ...]
    takes: tuple[InspectTake, ...]
    unaligned: tuple[str, ...] = ()

    def take(self, label: str) -> InspectTake:
        for take in self.takes:
            if take.label == label:
                return take
        have = ", ".join(t.label for t in self.takes) or "none"
        raise InspectError(f"no aligned take labelled {label!r} (aligned takes: {have})")


def inspect_targets(session: Session) -> InspectTargets:
    """What ``session`` offers to inspect; ``InspectError`` saying what to do if nothing.

    Songs come from the program's song list; a program without songs is inspected as
    one span. Takes without an aligned file are listed in ``unaligned``.
    """
    program = session.program
    if program is None or not program.get("music_file"):
        raise InspectError(
            "this session has no program yet: build it on the Program page, record a take "
            "on the Record page, then inspect it here"
        )
    rate = int(program["sample_rate"])
    duration_s = float(program.get("duration_s") or int(program["samples"]) / rate)
    songs = tuple(
        SpanTimes(str(s["title"]), float(s["start_s"]), float(s["end_s"]))
        for s in program.get("songs", [])
        if float(s["end_s"]) > float(s["start_s"])
    ) or (SpanTimes("program", 0.0, duration_s),)
    takes = []
    unaligned = []
    for entry in session.takes:
        if not entry.aligned_file:
            unaligned.append(entry.label)
            continue
        flagged = not entry.verdict.trusted
        takes.append(InspectTake(entry.label, session.resolve(entry.aligned_file), flagged))
    if not takes:
        what = f" ({', '.join(unaligned)} not aligned)" if unaligned else ""
        raise InspectError(
            f"no aligned take yet{what}: record a take on the Record page (it is aligned "
            "when recording ends) or align it there with Align again"
        )
    return InspectTargets(
        session.resolve(str(program["music_file"])), rate, songs, tuple(takes), tuple(unaligned)
    )


# --- reading ----------------------------------------------------------------------------


def read_span(info: AudioInfo, start: int, stop: int, sample_rate: int) -> np.ndarray:
    """Samples [start, stop) of a file, counted at ``sample_rate``: mono float32.

    Seeks rather than decoding the whole file. A little more is read on each side so the
    resampler has no edge effects there; past the end of the file the result is shorter.
    """
    if stop <= start:
        return np.zeros(0, np.float32)
    ratio = info.sample_rate / sample_rate
    pad = round(_READ_PAD_S * info.sample_rate)
    first = max(0, math.floor(start * ratio) - pad)
    last = min(info.frames, math.ceil(stop * ratio) + pad)
    if last <= first:
        return np.zeros(0, np.float32)
    try:
        data, _ = sf.read(str(info.path), start=first, stop=last, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, ValueError, OSError) as exc:
        raise AudioError(f"{info.path}: cannot read samples {first}-{last} ({exc})") from None
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    out = resample(mono, info.sample_rate, sample_rate)
    skip = round(start - first / ratio)
    return np.ascontiguousarray(out[skip : skip + (stop - start)], dtype=np.float32)


def _chunks(start: int, stop: int, chunk: int, step: int = 1) -> Iterator[tuple[int, int]]:
    """[start, stop) cut into about equal pieces of about ``chunk`` samples, the inner
    edges a whole number of ``step`` from ``start``."""
    count = max(1, math.ceil((stop - start) / chunk))
    steps = np.linspace(0, stop - start, count + 1) / step
    edges = start + step * steps.round().astype(np.int64)
    edges[-1] = stop
    edges = np.unique(edges)
    yield from zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True)


# --- peaks ------------------------------------------------------------------------------


def landmark_settings(sample_rate: int) -> LandmarkSettings:
    """The landmark method's settings at ``sample_rate``: frames, neighbourhood and band
    scaled so that they cover the same Hz and ms as at its own rate."""
    from afp_core.landmark import LandmarkSettings  # faiss & co.: loaded when first needed

    base = LandmarkSettings()
    ratio = sample_rate / base.sample_rate
    return dataclasses.replace(
        base,
        sample_rate=sample_rate,
        n_fft=max(16, round(base.n_fft * ratio)),
        hop=max(1, round(base.hop * ratio)),
        min_hz=base.min_hz * ratio if ratio < 1 else base.min_hz,
        max_hz=base.max_hz * ratio,
    )


def _landmark_peaks(
    blocks: Iterator[np.ndarray] | Sequence[np.ndarray], settings: LandmarkSettings
) -> tuple[tuple[np.ndarray, np.ndarray], int]:
    """((freq bins, frames), frame count) of the landmark method's peaks of ``blocks``."""
    from afp_core.landmark import find_landmark_peaks

    freqs, frames, n_frames, _ = find_landmark_peaks(blocks, settings)
    return (freqs, frames), n_frames


def match_peaks(
    reference: tuple[np.ndarray, np.ndarray],
    other: tuple[np.ndarray, np.ndarray],
    tolerance: tuple[int, int] = PEAK_TOLERANCE,
) -> np.ndarray:
    """For each (freq bin, frame) peak of ``reference``: has ``other`` a peak within
    ``tolerance`` (bins, frames)? Sparse: no spectrogram-sized grid is made."""
    ref_f, ref_t = (np.asarray(a, np.int64) for a in reference)
    other_f, other_t = (np.asarray(a, np.int64) for a in other)
    kept = np.zeros(len(ref_f), bool)
    if not len(ref_f) or not len(other_f):
        return kept
    width = int(max(ref_f.max(), other_f.max())) + 2 * tolerance[0] + 2
    keys = np.unique(other_t * width + other_f)
    for df in range(-tolerance[0], tolerance[0] + 1):
        for dt in range(-tolerance[1], tolerance[1] + 1):
            kept |= np.isin((ref_t + dt) * width + (ref_f + df), keys, assume_unique=False)
    return kept


@dataclass(frozen=True)
class PeakCount:
    """Peaks of the clean program and of a take over a span, and how many clean ones
    the take kept (a take peak within the tolerance)."""

    clean: int = 0
    take: int = 0
    kept: int = 0

    @property
    def share(self) -> float:
        """Share of the clean peaks kept, 0-1 (NaN without clean peaks)."""
        return self.kept / self.clean if self.clean else math.nan

    def __add__(self, other: PeakCount) -> PeakCount:
        return PeakCount(self.clean + other.clean, self.take + other.take, self.kept + other.kept)


# --- average spectra --------------------------------------------------------------------


@dataclass
class SpectrumScope:
    """Average spectra over one song (or all of them): clean and each take, in dB.

    ``takes_db`` are level-matched to ``clean_db`` in ``LEVEL_BAND_HZ``; ``gain_db`` is
    what was taken off each (the take's level relative to the clean program there).
    """

    name: str
    seconds: float
    freqs_hz: np.ndarray
    clean_db: np.ndarray
    takes_db: dict[str, np.ndarray] = field(default_factory=dict)
    gain_db: dict[str, float] = field(default_factory=dict)
    peaks: dict[str, PeakCount] = field(default_factory=dict)

    def coloration_db(self, label: str) -> np.ndarray:
        """The take's level-matched spectrum minus the clean one: the channel's colour."""
        return self.takes_db[label] - self.clean_db

    def band_mean_db(self, label: str, low_hz: float, high_hz: float) -> float:
        """Mean coloration of take ``label`` between ``low_hz`` and ``high_hz``."""
        inside = (self.freqs_hz >= low_hz) & (self.freqs_hz < high_hz)
        return float(np.mean(self.coloration_db(label)[inside]))


@dataclass
class SpectraView:
    """What the Inspect page plots: per-scope average spectra and peak survival.

    ``scopes[0]`` is all songs together, then one scope per song in program order.
    """

    sample_rate: int
    n_fft: int
    band_hz: tuple[float, float]
    takes: list[str]
    flagged: list[str]
    scopes: list[SpectrumScope]

    @property
    def overall(self) -> SpectrumScope:
        return self.scopes[0]


class _Welch:
    """Running average of Welch power spectra over chunks, weighted by segment count."""

    def __init__(self) -> None:
        self.power: np.ndarray | None = None
        self.segments = 0
        self.freqs: np.ndarray | None = None

    def add(self, audio: np.ndarray, sample_rate: int, n_fft: int) -> None:
        if len(audio) < n_fft:
            return
        freqs, db = average_spectrum_db(audio, sample_rate, n_fft)
        segments = 1 + (len(audio) - n_fft) // (n_fft // 2)
        power = 10.0 ** (db / 10.0) * segments
        self.power = power if self.power is None else self.power + power
        self.segments += segments
        self.freqs = freqs

    def merge(self, other: _Welch) -> None:
        if other.power is None:
            return
        self.power = other.power.copy() if self.power is None else self.power + other.power
        self.segments += other.segments
        self.freqs = other.freqs

    def db(self) -> np.ndarray | None:
        if self.power is None:
            return None
        return 10.0 * np.log10(self.power / self.segments + 1e-12)


def _band_mean(freqs: np.ndarray, db: np.ndarray, band: tuple[float, float]) -> float:
    inside = (freqs >= band[0]) & (freqs <= band[1])
    return float(np.mean(db[inside])) if inside.any() else float(np.mean(db))


def _scope(
    name: str,
    seconds: float,
    clean: _Welch,
    takes: dict[str, _Welch],
    peaks: dict[str, PeakCount],
    band: tuple[float, float],
) -> SpectrumScope | None:
    clean_db = clean.db()
    if clean_db is None or clean.freqs is None:
        return None
    freqs = clean.freqs
    reference = _band_mean(freqs, clean_db, band)
    scope = SpectrumScope(name, seconds, freqs, clean_db, peaks=dict(peaks))
    for label, welch in takes.items():
        take_db = welch.db()
        if take_db is None:
            continue
        gain = _band_mean(freqs, take_db, band) - reference
        scope.takes_db[label] = take_db - gain
        scope.gain_db[label] = gain
    return scope


def compute_spectra(
    task: TaskState,
    session: Session,
    sample_rate: int = ANALYSIS_RATES[0],
    *,
    band_hz: tuple[float, float] = LEVEL_BAND_HZ,
    chunk_s: float = CHUNK_S,
) -> SpectraView:
    """Average spectra of the clean program and every aligned take, per song and overall,
    and how many of the clean program's spectral peaks each take kept (module docstring).
    """
    targets = inspect_targets(session)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    band = (band_hz[0], min(band_hz[1], 0.9 * sample_rate / 2))
    n_welch = 1 << round(math.log2(WELCH_S * sample_rate))
    settings = landmark_settings(sample_rate)
    clean_info = probe_audio(targets.music_path)
    take_infos = {t.label: probe_audio(t.path) for t in targets.takes}
    labels = list(take_infos)
    total_s = sum(song.duration_s for song in targets.songs)
    task.set_total(total_s * (1 + len(labels)), f"average spectra of {len(labels) + 1} tracks")
    chunk = max(n_welch, round(chunk_s * sample_rate))

    overall_clean = _Welch()
    overall_takes = {label: _Welch() for label in labels}
    overall_peaks = dict.fromkeys(labels, PeakCount())
    song_scopes: list[SpectrumScope] = []
    for song in targets.songs:
        start, stop = round(song.start_s * sample_rate), round(song.end_s * sample_rate)
        edges = list(_chunks(start, stop, chunk, n_welch // 2))
        clean = _Welch()
        chunks = _read_chunks(
            task, clean_info, edges, sample_rate, clean, n_welch, f"{song.title}: clean program"
        )
        clean_peaks, _ = _landmark_peaks(chunks, settings)
        takes, peaks = {}, {}
        for label, info in take_infos.items():
            takes[label] = _Welch()
            chunks = _read_chunks(
                task, info, edges, sample_rate, takes[label], n_welch, f"{song.title}: {label}"
            )
            take_peaks, _ = _landmark_peaks(chunks, settings)
            kept = match_peaks(clean_peaks, take_peaks)
            peaks[label] = PeakCount(len(kept), len(take_peaks[0]), int(np.count_nonzero(kept)))
        scope = _scope(song.title, song.duration_s, clean, takes, peaks, band)
        if scope is not None:
            song_scopes.append(scope)
        overall_clean.merge(clean)
        for label in labels:
            overall_takes[label].merge(takes[label])
            overall_peaks[label] += peaks[label]
    overall = _scope("All songs", total_s, overall_clean, overall_takes, overall_peaks, band)
    if overall is None:
        raise InspectError(f"{targets.music_path}: the songs are too short to analyse")
    flagged = [t.label for t in targets.takes if t.flagged]
    return SpectraView(sample_rate, n_welch, band, labels, flagged, [overall, *song_scopes])


def _read_chunks(
    task: TaskState,
    info: AudioInfo,
    edges: Sequence[tuple[int, int]],
    sample_rate: int,
    welch: _Welch,
    n_welch: int,
    message: str,
) -> Iterator[np.ndarray]:
    """The chunks [lo, hi) of a file in order, each also added to ``welch``."""
    tail = np.zeros(0, np.float32)
    for lo, hi in edges:
        task.check_cancelled()
        audio = read_span(info, lo, hi, sample_rate)
        # Welch segments straddling the chunk's start, as in one pass over the span
        welch.add(np.concatenate([tail, audio]), sample_rate, n_welch)
        tail = audio[len(audio) - n_welch // 2 :]
        task.advance((hi - lo) / sample_rate, message)
        yield audio


def smooth_octave(freqs_hz: np.ndarray, db: np.ndarray, fraction: int = 12) -> np.ndarray:
    """``db`` smoothed over 1/``fraction`` octave around each frequency (in power).

    For display: a Welch spectrum of music is jagged, its coloration is not.
    """
    freqs_hz = np.asarray(freqs_hz, float)
    power = 10.0 ** (np.asarray(db, float) / 10.0)
    cumulative = np.concatenate([[0.0], np.cumsum(power)])
    half = 2.0 ** (0.5 / fraction)
    lo = np.searchsorted(freqs_hz, freqs_hz / half, side="left")
    hi = np.searchsorted(freqs_hz, freqs_hz * half, side="right")
    hi = np.maximum(hi, lo + 1)
    return 10.0 * np.log10((cumulative[hi] - cumulative[lo]) / (hi - lo) + 1e-12)


# --- excerpt spectrograms ---------------------------------------------------------------


@dataclass
class ExcerptView:
    """Spectrograms of the same excerpt of the clean program and a take, with peaks.

    Times are seconds from the song's start. ``clean_kept[i]``: clean peak i has a take
    peak within the tolerance; ``take_matched[j]``: take peak j is near a clean peak.
    """

    take: str
    song: str
    song_index: int
    start_s: float
    length_s: float
    sample_rate: int
    clean: Spectrogram
    take_spec: Spectrogram
    clean_peaks: tuple[np.ndarray, np.ndarray]
    take_peaks: tuple[np.ndarray, np.ndarray]
    clean_kept: np.ndarray
    take_matched: np.ndarray

    @property
    def count(self) -> PeakCount:
        return PeakCount(
            len(self.clean_kept), len(self.take_matched), int(np.count_nonzero(self.clean_kept))
        )

    def peak_points(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(times_s, freqs_hz) of the ``clean`` or ``take`` peaks."""
        if which == "clean":
            spec, (f, t) = self.clean, self.clean_peaks
        else:
            spec, (f, t) = self.take_spec, self.take_peaks
        return spec.times_s[t], spec.freqs_hz[f]

    def colour_levels(
        self, same: bool = True, range_db: float = COLOUR_RANGE_DB
    ) -> tuple[tuple[float, float], tuple[float, float]]:
        """The (low, high) dB colour ranges of the clean and the take spectrograms.

        ``same``: both from the clean program's loudest level down ``range_db``, so that a
        colour is the same level in both and a quieter take looks darker; otherwise each
        from its own loudest level (the take's detail at its own level).
        """
        clean_top = _loudest_db(self.clean.db)
        take_top = clean_top if same else _loudest_db(self.take_spec.db)
        return (clean_top - range_db, clean_top), (take_top - range_db, take_top)

    @property
    def tolerance_text(self) -> str:
        bin_hz = float(self.clean.freqs_hz[1]) if len(self.clean.freqs_hz) > 1 else 0.0
        frames_ms = PEAK_TOLERANCE[1] * self.clean.hop_s * 1000
        return f"±{PEAK_TOLERANCE[0] * bin_hz:.0f} Hz, ±{frames_ms:.0f} ms"

    @property
    def peak_band_hz(self) -> tuple[float, float]:
        """Where peaks are picked (the landmark method's band at this rate)."""
        settings = landmark_settings(self.sample_rate)
        return settings.min_hz, settings.max_hz

    @property
    def peaks_per_second(self) -> float:
        return landmark_settings(self.sample_rate).peaks_per_second


def compute_excerpt(
    task: TaskState,
    session: Session,
    take: str,
    song_index: int,
    start_s: float = 0.0,
    length_s: float = DEFAULT_EXCERPT_S,
    sample_rate: int = ANALYSIS_RATES[0],
) -> ExcerptView:
    """Spectrograms and peaks of [start_s, start_s + length_s) of song ``song_index``
    (seconds from the song's start, clipped to the song) in the clean program and ``take``.
    """
    targets = inspect_targets(session)
    entry = targets.take(take)
    if not 0 <= song_index < len(targets.songs):
        raise InspectError(f"no song {song_index + 1} (the program has {len(targets.songs)})")
    song = targets.songs[song_index]
    if length_s <= 0:
        raise InspectError(f"the excerpt length must be positive, not {length_s:g} s")
    if not 0 <= start_s < song.duration_s:
        raise InspectError(
            f"{song.title}: excerpt start {start_s:g} s is outside 0-{song.duration_s:.1f} s"
        )
    end_s = min(song.duration_s, start_s + length_s)
    settings = landmark_settings(sample_rate)
    n_fft, hop = settings.n_fft, settings.hop
    task.set_total(3, f"{song.title}: reading the excerpt")
    lo = round((song.start_s + start_s) * sample_rate)
    hi = round((song.start_s + end_s) * sample_rate)
    if hi - lo < n_fft:
        raise InspectError(f"{song.title}: the excerpt is shorter than one spectrogram frame")
    clean_audio = read_span(probe_audio(targets.music_path), lo, hi, sample_rate)
    task.advance(1)
    task.check_cancelled()
    take_audio = read_span(probe_audio(entry.path), lo, hi, sample_rate)
    task.advance(1, f"{song.title}: spectrograms")
    task.check_cancelled()
    # the landmark method's frames start at the first sample, as compute_spectrogram's
    clean = _shift(compute_spectrogram(clean_audio, sample_rate, n_fft, hop), start_s)
    take_spec = _shift(compute_spectrogram(take_audio, sample_rate, n_fft, hop), start_s)
    clean_peaks, _ = _landmark_peaks([clean_audio], settings)
    take_peaks, _ = _landmark_peaks([take_audio], settings)
    view = ExcerptView(
        take=take,
        song=song.title,
        song_index=song_index,
        start_s=start_s,
        length_s=end_s - start_s,
        sample_rate=sample_rate,
        clean=clean,
        take_spec=take_spec,
        clean_peaks=clean_peaks,
        take_peaks=take_peaks,
        clean_kept=match_peaks(clean_peaks, take_peaks),
        take_matched=match_peaks(take_peaks, clean_peaks),
    )
    task.advance(1, f"{song.title}: done")
    return view


def _loudest_db(spec_db: np.ndarray) -> float:
    # a percentile, not the maximum: one click must not darken the whole image
    return float(np.percentile(spec_db, 99.5)) if spec_db.size else 0.0


def _shift(spec: Spectrogram, seconds: float) -> Spectrogram:
    return dataclasses.replace(spec, times_s=spec.times_s + seconds)


def song_titles(songs: Sequence[SpanTimes]) -> list[str]:
    """'1. Title' for each song (titles may repeat)."""
    return [f"{index}. {song.title}" for index, song in enumerate(songs, 1)]
