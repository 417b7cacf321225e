"""The music and noise programs a take plays (paper §3), with alignment markers.

The music program is, in samples of the program clock::

    [lead] M0 [silence | music | noise] [gap song 1 gap] M1 [gap song 2 gap] M2 ...
    [gap song N gap] MN [tail]

where each ``M`` is a sweep marker (``rig_app.markers``): one at the start, one between
every two songs and one at the end, each in silence so that nothing masks it. After the
start marker come three short *calibration segments* (``CalibrationSpec``): silence on
both outputs, music alone (excerpts of the songs) and noise alone. A take recorded over
them measures the room itself: the microphone's floor, and how loud each loudspeaker
arrives, hence the music-to-noise ratio at the microphone (``rig_app.quality``). They lie
outside every song, so no query ever includes them. Songs are
loudness-normalised (ITU-R BS.1770 integrated loudness via pyloudnorm) to a common target;
a song whose peak would then pass the ceiling is never clipped: by default its gain is
lowered until it fits (it plays a little quieter, and says so), or with
``on_overload="limit"`` a look-ahead limiter holds the peaks.

The noise program has exactly the music program's length: shuffled noise clips, each
brought to the same loudness, joined with equal-power crossfades and looped, then scaled
so that its loudness is the music's plus a chosen relative level. It is ducked to silence
around every marker and over the silence and music-alone segments
(``Program.noise_quiet_ranges``): the songs never overlap those, so the evaluation loses
nothing, and clean markers make alignment and the channel measurement (Farina IR) exact
rather than noise-limited.

``write_program`` stores ``music.wav`` and ``noise.wav`` (32-bit float) and
``program.json`` ({"format": "afp-rig-program", "version": 1, ...}).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyloudnorm
import soxr
from scipy import ndimage

from afp_core.audio import load_audio, resample, write_audio_atomic
from afp_core.errors import AfpError
from afp_core.fileutil import atomic_write_bytes, check_document, one_line, read_json_object
from afp_core.protocols.sessions import PROGRAM_FORMAT, PROGRAM_VERSION, SampleSpan
from rig_app.markers import SweepSpec

__all__ = [
    "PROGRAM_FORMAT",
    "PROGRAM_VERSION",
    "CalibrationSpec",
    "NormalisedSong",
    "Program",
    "ProgramError",
    "ProgramMarker",
    "ProgramSegment",
    "ProgramSlot",
    "ProgramSong",
    "build_noise_program",
    "build_program",
    "load_noise_track",
    "load_program",
    "measure_loudness",
    "measure_peak_db",
    "normalise_loudness",
    "synthesize_song",
    "write_program",
]

log = logging.getLogger(__name__)

MUSIC_FILE = "music.wav"
NOISE_FILE = "noise.wav"
PROGRAM_FILE = "program.json"

Overload = Literal["lower_gain", "limit"]

_BLOCK_S = 0.4  # BS.1770 gating block: nothing shorter has a loudness
_LIMITER_LOOKAHEAD_S = 0.005
_TRUE_PEAK_OVERSAMPLING = 4


class ProgramError(AfpError):
    """A song, noise clip or program file cannot be used as asked."""


@dataclass
class ProgramSong:
    """A song to put in the program: mono (or multi-channel, downmixed) audio."""

    audio: np.ndarray
    title: str
    sample_rate: int | None = None  # None: already at the program's rate
    artist: str = ""
    source: str = ""
    # where ``audio`` starts inside the original song (an excerpt), so that an evaluation
    # knows the true offset of a query in the song the database holds
    source_start_s: float = 0.0


@dataclass
class NormalisedSong:
    """What ``normalise_loudness`` did to one song."""

    audio: np.ndarray
    loudness_before: float
    loudness_after: float
    gain_db: float
    limited: bool
    note: str


@dataclass(frozen=True)
class ProgramMarker:
    """A marker in the music program: first sample (program clock) and length."""

    label: str
    position: int
    length: int


SegmentKind = Literal["silence", "music", "noise"]


@dataclass(frozen=True)
class CalibrationSpec:
    """Lengths of the calibration segments after the start marker (seconds)."""

    silence_s: float = 1.0
    music_s: float = 3.0
    noise_s: float = 3.0

    def __post_init__(self) -> None:
        if min(self.silence_s, self.music_s, self.noise_s) < 0.5:
            raise ValueError("calibration segments must be at least 0.5 s long")


@dataclass(frozen=True)
class ProgramSegment(SampleSpan):
    """A calibration segment: samples [start, end) where only ``kind`` plays
    (``silence``: neither output; ``music``: the music output alone; ``noise``: the
    noise output alone)."""

    kind: SegmentKind
    start: int
    end: int
    sample_rate: int


@dataclass(frozen=True)
class ProgramSlot(SampleSpan):
    """A song's place in the program: samples [start, end) and its loudness history."""

    index: int
    title: str
    start: int
    end: int
    sample_rate: int
    artist: str = ""
    source: str = ""
    loudness_before: float | None = None
    loudness_after: float | None = None
    gain_db: float = 0.0
    limited: bool = False
    note: str = ""
    source_start_s: float = 0.0


@dataclass
class Program:
    """A music program: the track, its markers and where every song lies."""

    music: np.ndarray
    sample_rate: int
    markers: list[ProgramMarker]
    songs: list[ProgramSlot]
    marker_spec: SweepSpec | None = None
    gap_s: float = 0.0
    lead_s: float = 0.0
    target_lufs: float | None = None
    peak_ceiling_db: float | None = None
    notes: list[str] = field(default_factory=list)
    calibration: list[ProgramSegment] = field(default_factory=list)

    @property
    def samples(self) -> int:
        return len(self.music)

    @property
    def duration_s(self) -> float:
        return len(self.music) / self.sample_rate

    def marker_ranges(self, pre_s: float = 0.1, post_s: float = 0.5) -> list[tuple[int, int]]:
        """Sample ranges [start, end) around each marker (with its reverberation) to keep quiet."""
        pre, post = round(pre_s * self.sample_rate), round(post_s * self.sample_rate)
        return [
            (max(0, m.position - pre), min(self.samples, m.position + m.length + post))
            for m in self.markers
        ]

    def noise_quiet_ranges(self) -> list[tuple[int, int]]:
        """Where the noise program must be silent: around every marker
        (``marker_ranges``) and over the silence and music-alone calibration segments."""
        segments = [(c.start, c.end) for c in self.calibration if c.kind != "noise"]
        return sorted(self.marker_ranges() + segments)

    def calibration_segment(self, kind: SegmentKind) -> ProgramSegment | None:
        """The calibration segment of ``kind`` (None: the program has none)."""
        return next((c for c in self.calibration if c.kind == kind), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (everything except the audio)."""
        return {
            "format": PROGRAM_FORMAT,
            "version": PROGRAM_VERSION,
            "sample_rate": self.sample_rate,
            "samples": self.samples,
            "duration_s": self.duration_s,
            "marker": None if self.marker_spec is None else self.marker_spec.to_dict(),
            "gap_s": self.gap_s,
            "lead_s": self.lead_s,
            "target_lufs": self.target_lufs,
            "peak_ceiling_db": self.peak_ceiling_db,
            "markers": [
                {
                    "label": m.label,
                    "position": m.position,
                    "position_s": m.position / self.sample_rate,
                    "length": m.length,
                }
                for m in self.markers
            ],
            "songs": [
                {
                    "index": s.index,
                    "title": s.title,
                    "artist": s.artist,
                    "source": s.source,
                    "start": s.start,
                    "end": s.end,
                    "start_s": s.start_s,
                    "end_s": s.end_s,
                    "duration_s": s.duration_s,
                    "loudness_before": s.loudness_before,
                    "loudness_after": s.loudness_after,
                    "gain_db": s.gain_db,
                    "limited": s.limited,
                    "note": s.note,
                    "source_start_s": s.source_start_s,
                }
                for s in self.songs
            ],
            "calibration": [
                {
                    "kind": c.kind,
                    "start": c.start,
                    "end": c.end,
                    "start_s": c.start_s,
                    "end_s": c.end_s,
                }
                for c in self.calibration
            ],
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], music: np.ndarray, where: str = "program") -> Program:
        """Inverse of ``to_dict``; ``where`` names the source in ``ProgramError`` messages."""
        check_document(data, PROGRAM_FORMAT, PROGRAM_VERSION, where, ProgramError)
        try:
            rate = int(data["sample_rate"])
            if int(data["samples"]) != len(music):
                raise ProgramError(
                    f"{where}: music has {len(music)} samples, the program says {data['samples']}"
                )
            markers = [
                ProgramMarker(str(m["label"]), int(m["position"]), int(m["length"]))
                for m in data["markers"]
            ]
            songs = [
                ProgramSlot(
                    index=int(s["index"]),
                    title=str(s["title"]),
                    start=int(s["start"]),
                    end=int(s["end"]),
                    sample_rate=rate,
                    artist=str(s.get("artist", "")),
                    source=str(s.get("source", "")),
                    loudness_before=_opt_float(s.get("loudness_before")),
                    loudness_after=_opt_float(s.get("loudness_after")),
                    gain_db=float(s.get("gain_db", 0.0)),
                    limited=bool(s.get("limited", False)),
                    note=str(s.get("note", "")),
                    source_start_s=float(s.get("source_start_s", 0.0)),
                )
                for s in data["songs"]
            ]
            calibration = [
                ProgramSegment(_segment_kind(c["kind"]), int(c["start"]), int(c["end"]), rate)
                for c in data.get("calibration") or []
            ]
            spec = data.get("marker")
            return cls(
                music=np.asarray(music, dtype=np.float32),
                sample_rate=rate,
                markers=markers,
                songs=songs,
                marker_spec=None if spec is None else SweepSpec.from_dict(spec),
                gap_s=float(data.get("gap_s", 0.0)),
                lead_s=float(data.get("lead_s", 0.0)),
                target_lufs=_opt_float(data.get("target_lufs")),
                peak_ceiling_db=_opt_float(data.get("peak_ceiling_db")),
                notes=[str(n) for n in data.get("notes", [])],
                calibration=calibration,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProgramError(
                f"{where}: malformed program description ({one_line(exc)})"
            ) from None


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _segment_kind(value: Any) -> SegmentKind:
    for kind in ("silence", "music", "noise"):
        if value == kind:
            return kind
    raise ValueError(f"unknown calibration segment kind {value!r}")


# --- loudness -------------------------------------------------------------------------


def _mono(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if x.ndim != 1:
        raise ValueError(f"expected (samples,) or (samples, channels) audio, got {x.shape}")
    return x


def measure_loudness(x: np.ndarray, sample_rate: int, name: str = "audio") -> float:
    """Integrated loudness (LUFS, BS.1770 gated) of mono ``x``.

    Returns ``-inf`` for silence (every 400 ms block below the -70 LUFS absolute gate).
    Audio shorter than one block has no loudness: ``ProgramError`` naming ``name``.
    """
    x = _mono(x)
    if len(x) < _BLOCK_S * sample_rate:
        raise ProgramError(
            f"{name}: too short to measure loudness ({len(x) / sample_rate:.2f} s < {_BLOCK_S} s)"
        )
    if not np.any(x):
        return -math.inf
    value = float(pyloudnorm.Meter(sample_rate).integrated_loudness(x))
    return value if math.isfinite(value) else -math.inf


def measure_peak_db(x: np.ndarray, sample_rate: int, true_peak: bool = True) -> float:
    """Peak level in dBFS; with ``true_peak`` also between samples (4x oversampled)."""
    x = _mono(x)
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if true_peak and len(x):
        stream = soxr.ResampleStream(
            sample_rate, sample_rate * _TRUE_PEAK_OVERSAMPLING, 1, dtype="float64", quality="HQ"
        )
        block = 1 << 18
        for start in range(0, len(x), block):
            chunk = x[start : start + block]
            up = stream.resample_chunk(chunk, last=start + block >= len(x))
            if len(up):
                peak = max(peak, float(np.max(np.abs(up))))
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf


def _limit(x: np.ndarray, ceiling: float, sample_rate: int) -> tuple[np.ndarray, float, float]:
    """Look-ahead peak limiter holding |x| <= ``ceiling`` with smooth gain changes.

    The needed gain is spread by a minimum filter over +-look-ahead, then smoothed by a
    moving average over the same +-look-ahead: every averaged value is a minimum over a
    window that contains the peak, so the smoothed gain still holds it under the ceiling.
    Returns (limited audio, largest reduction in dB, fraction of samples reduced).
    """
    magnitude = np.abs(x)
    if float(np.max(magnitude, initial=0.0)) <= ceiling:
        return x, 0.0, 0.0
    need = np.minimum(1.0, ceiling / np.maximum(magnitude, 1e-30))
    half = max(1, round(_LIMITER_LOOKAHEAD_S * sample_rate))
    gain = ndimage.minimum_filter1d(need, size=2 * half + 1, mode="nearest")
    gain = ndimage.uniform_filter1d(gain, size=2 * half + 1, mode="nearest")
    gain = np.minimum(gain, need)  # guards float rounding in the average
    reduced = gain < 1.0
    worst = -20.0 * math.log10(float(np.min(gain)))
    return x * gain, worst, float(np.mean(reduced))


def normalise_loudness(
    x: np.ndarray,
    sample_rate: int,
    target_lufs: float = -23.0,
    peak_ceiling_db: float = -1.0,
    on_overload: Overload = "lower_gain",
    *,
    name: str = "audio",
) -> NormalisedSong:
    """Bring ``x`` to ``target_lufs`` without letting its (true) peak pass the ceiling.

    ``on_overload="lower_gain"`` lowers the gain until the peak fits (the song ends up
    quieter than the target); ``"limit"`` keeps the target and limits the peaks. Either
    way ``note`` says what happened. Silent or too short audio: ``ProgramError``.
    """
    if on_overload not in ("lower_gain", "limit"):
        raise ValueError(f"on_overload must be 'lower_gain' or 'limit', got {on_overload!r}")
    x = _mono(x)
    before = measure_loudness(x, sample_rate, name)
    if not math.isfinite(before):
        raise ProgramError(f"{name}: silent (no block above -70 LUFS); cannot normalise")
    peak_before = measure_peak_db(x, sample_rate)
    gain_db = target_lufs - before
    limited = False
    note = ""
    if peak_before + gain_db <= peak_ceiling_db:
        y = x * 10.0 ** (gain_db / 20.0)
    elif on_overload == "lower_gain":
        wanted = gain_db
        gain_db = peak_ceiling_db - peak_before
        y = x * 10.0 ** (gain_db / 20.0)
        note = (
            f"gain lowered by {wanted - gain_db:.1f} dB to keep the peak at "
            f"{peak_ceiling_db:.1f} dBFS; reaches {before + gain_db:.1f} LUFS "
            f"instead of {target_lufs:.1f}"
        )
    else:
        y, gain_db, note = _normalise_with_limiter(
            x, sample_rate, before, target_lufs, peak_ceiling_db, name
        )
        limited = True
    after = measure_loudness(y, sample_rate, name)
    if note and on_overload == "limit":
        note += f"; reaches {after:.1f} LUFS"
    return NormalisedSong(
        audio=y.astype(np.float32),
        loudness_before=before,
        loudness_after=after,
        gain_db=gain_db,
        limited=limited,
        note=note,
    )


def _normalise_with_limiter(
    x: np.ndarray, sample_rate: int, before: float, target: float, ceiling_db: float, name: str
) -> tuple[np.ndarray, float, str]:
    # The limiter holds sample peaks; peaks between samples can still pass the ceiling,
    # so its own ceiling starts a little lower and drops by whatever still passed.
    limit_db = ceiling_db - 0.3
    gain_db = target - before
    y, worst, share, over = x, 0.0, 0.0, 0.0
    for _ in range(6):  # limiting costs loudness: raise the gain and limit again
        y, worst, share = _limit(
            x * 10.0 ** (gain_db / 20.0), 10.0 ** (limit_db / 20.0), sample_rate
        )
        reached = measure_loudness(y, sample_rate, name)
        over = measure_peak_db(y, sample_rate) - ceiling_db
        if abs(reached - target) < 0.1 and over <= 0:
            break
        gain_db += target - reached
        if over > 0:
            limit_db -= over + 0.05
    note = f"peaks limited by up to {worst:.1f} dB on {100.0 * share:.2f}% of samples"
    if over > 0:
        y = y * 10.0 ** (-over / 20.0)
        gain_db -= over
        note += f", then {over:.2f} dB less gain for peaks between samples"
    return y, gain_db, note


# --- programs -------------------------------------------------------------------------


def build_program(
    songs: Sequence[ProgramSong],
    sample_rate: int,
    marker: SweepSpec | None = SweepSpec(),  # noqa: B008 - frozen, so a shared default is safe
    gap_s: float = 1.0,
    *,
    normalise: bool = True,
    target_lufs: float = -23.0,
    peak_ceiling_db: float = -1.0,
    on_overload: Overload = "lower_gain",
    min_song_s: float = 60.0,
    lead_s: float = 0.5,
    calibration: CalibrationSpec | None = CalibrationSpec(),
) -> Program:
    """Concatenate ``songs`` into a music program with markers (see the module docstring).

    ``calibration``: the segments after the start marker (None: none). With
    ``marker=None`` the songs are joined with ``gap_s`` of silence between them and no
    lead, markers, calibration or tail. With ``normalise=False`` the songs keep their level (their
    loudness is still measured and recorded). Songs shorter than ``min_song_s``:
    ``ProgramError`` naming the song.
    """
    if not songs:
        raise ProgramError("no songs to build a program from")
    if gap_s < 0 or lead_s < 0:
        raise ValueError("gap_s and lead_s must not be negative")
    prepared: list[tuple[ProgramSong, NormalisedSong]] = []
    for number, song in enumerate(songs, 1):
        name = f"song {number} '{song.title}'"
        audio = _mono(song.audio)
        if song.sample_rate is not None and song.sample_rate != sample_rate:
            audio = resample(audio, song.sample_rate, sample_rate).astype(np.float64)
        duration = len(audio) / sample_rate
        if duration < min_song_s:
            raise ProgramError(
                f"{name}: {duration:.1f} s long, shorter than the minimum of {min_song_s:g} s"
            )
        if normalise:
            result = normalise_loudness(
                audio, sample_rate, target_lufs, peak_ceiling_db, on_overload, name=name
            )
        else:
            loudness = measure_loudness(audio, sample_rate, name)
            result = NormalisedSong(audio.astype(np.float32), loudness, loudness, 0.0, False, "")
        prepared.append((song, result))

    sweep = None if marker is None else marker.render(sample_rate).astype(np.float32)
    gap = np.zeros(round(gap_s * sample_rate), dtype=np.float32)
    pieces: list[np.ndarray] = []
    markers: list[ProgramMarker] = []
    slots: list[ProgramSlot] = []
    cursor = 0

    def put(piece: np.ndarray) -> int:
        nonlocal cursor
        start = cursor
        pieces.append(piece)
        cursor += len(piece)
        return start

    def put_marker(sweep: np.ndarray, label: str) -> None:
        markers.append(ProgramMarker(label, put(sweep), len(sweep)))

    count = len(prepared)
    segments: list[ProgramSegment] = []
    if sweep is not None:
        put(np.zeros(round(lead_s * sample_rate), dtype=np.float32))
        put_marker(sweep, "start")
        if calibration is not None:
            parts: list[tuple[SegmentKind, np.ndarray]] = [
                ("silence", np.zeros(round(calibration.silence_s * sample_rate), np.float32)),
                ("music", _song_excerpts([r.audio for _, r in prepared], calibration, sample_rate)),
                ("noise", np.zeros(round(calibration.noise_s * sample_rate), np.float32)),
            ]
            for kind, piece in parts:
                start = put(piece)
                segments.append(ProgramSegment(kind, start, cursor, sample_rate))
    for number, (song, result) in enumerate(prepared, 1):
        if sweep is not None or number > 1:
            put(gap)
        start = put(result.audio)
        slots.append(
            ProgramSlot(
                index=number - 1,
                title=song.title,
                start=start,
                end=cursor,
                sample_rate=sample_rate,
                artist=song.artist,
                source=song.source,
                loudness_before=result.loudness_before,
                loudness_after=result.loudness_after,
                gain_db=result.gain_db,
                limited=result.limited,
                note=result.note,
                source_start_s=song.source_start_s,
            )
        )
        if sweep is not None:
            put(gap)
            put_marker(sweep, "end" if number == count else f"between {number} and {number + 1}")
    if sweep is not None:
        put(gap)  # the last marker's reverberation, and room for the channel measurement
    notes = [f"{slot.title}: {slot.note}" for slot in slots if slot.note]
    return Program(
        music=np.concatenate(pieces).astype(np.float32, copy=False),
        sample_rate=sample_rate,
        markers=markers,
        songs=slots,
        marker_spec=marker,
        gap_s=gap_s,
        lead_s=lead_s if sweep is not None else 0.0,
        target_lufs=target_lufs if normalise else None,
        peak_ceiling_db=peak_ceiling_db if normalise else None,
        notes=notes,
        calibration=segments,
    )


_EXCERPTS = 8  # songs the music-alone segment samples: its spectrum is their average
_EXCERPT_FADE_S = 0.01


def _song_excerpts(
    songs: Sequence[np.ndarray], calibration: CalibrationSpec, sample_rate: int
) -> np.ndarray:
    """The music-alone segment: equal pieces from the middle of up to ``_EXCERPTS`` songs
    (as levelled for the program), faded in and out so no edge clicks."""
    chosen = list(songs)[:_EXCERPTS]
    length = round(calibration.music_s * sample_rate)
    bounds = np.linspace(0, length, len(chosen) + 1).round().astype(int)
    out = np.zeros(length, np.float32)
    fade = round(_EXCERPT_FADE_S * sample_rate)
    ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(fade) + 0.5) / fade)).astype(np.float32)
    for audio, lo, hi in zip(chosen, bounds[:-1], bounds[1:], strict=True):
        n = min(hi - lo, len(audio))
        middle = (len(audio) - n) // 2
        piece = np.array(audio[middle : middle + n], np.float32)
        k = min(fade, n // 2)
        piece[:k] *= ramp[:k]
        piece[n - k :] *= ramp[:k][::-1]
        out[lo : lo + n] = piece
    return out


def _load_noise_clip(
    item: Path | str | np.ndarray, sample_rate: int, index: int
) -> tuple[str, np.ndarray]:
    if isinstance(item, np.ndarray):
        return f"noise clip {index}", _mono(item)
    path = Path(item)
    return str(path), load_audio(path, sample_rate).astype(np.float64)


def build_noise_program(
    noise_files_or_arrays: Sequence[Path | str | np.ndarray],
    length: int,
    sample_rate: int,
    level_db_relative_to_music: float = 0.0,
    music_loudness_lufs: float = -23.0,
    seed: int = 0,
    *,
    quiet_ranges: Sequence[tuple[int, int]] = (),
    crossfade_s: float = 0.5,
    duck_fade_s: float = 0.05,
    peak_ceiling_db: float = -1.0,
) -> np.ndarray:
    """A noise track of exactly ``length`` samples at ``music_loudness_lufs + level``.

    Clips (files are decoded to mono at ``sample_rate``; arrays must already be at it) are
    levelled to a common loudness, shuffled with ``seed``, crossfaded (equal power) and
    looped; each pass is a new shuffle. ``quiet_ranges`` (e.g. ``Program.noise_quiet_ranges()``)
    are ducked to silence with raised-cosine ramps of ``duck_fade_s`` outside them. Peaks
    above ``peak_ceiling_db`` are limited (logged): the noise is not what is evaluated.
    """
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    if not noise_files_or_arrays:
        raise ProgramError("no noise clips to build a noise program from")
    fade = round(crossfade_s * sample_rate)
    shortest = max(_BLOCK_S, 2.0 * crossfade_s)
    clips: list[np.ndarray] = []
    for index, item in enumerate(noise_files_or_arrays):
        name, clip = _load_noise_clip(item, sample_rate, index)
        if len(clip) < shortest * sample_rate:
            raise ProgramError(
                f"{name}: {len(clip) / sample_rate:.2f} s long, noise clips need at least "
                f"{shortest:.2f} s"
            )
        loudness = measure_loudness(clip, sample_rate, name)
        if not math.isfinite(loudness):
            raise ProgramError(f"{name}: silent (no block above -70 LUFS)")
        clips.append(clip * 10.0 ** ((-23.0 - loudness) / 20.0))

    track = _join_clips(clips, length, fade, np.random.default_rng(seed))
    edge = min(round(0.05 * sample_rate), length // 4)
    if edge:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(edge) / edge)
        track[:edge] *= ramp
        track[length - edge :] *= ramp[::-1]
    if quiet_ranges:
        track *= _duck_envelope(length, quiet_ranges, round(duck_fade_s * sample_rate))
    loudness = measure_loudness(track, sample_rate, "noise program")
    if not math.isfinite(loudness):
        raise ProgramError("noise program: silent after ducking the markers")
    target = music_loudness_lufs + level_db_relative_to_music
    track *= 10.0 ** ((target - loudness) / 20.0)
    ceiling = 10.0 ** ((peak_ceiling_db - 0.3) / 20.0)
    if float(np.max(np.abs(track))) > ceiling:
        track, worst, share = _limit(track, ceiling, sample_rate)
        log.info(
            "noise program: peaks limited by up to %.1f dB on %.2f%% of samples",
            worst,
            100.0 * share,
        )
    return track.astype(np.float32)


def _join_clips(
    clips: list[np.ndarray], length: int, fade: int, rng: np.random.Generator
) -> np.ndarray:
    """Shuffled, crossfaded, looped clips, cut to ``length`` samples."""
    t = (np.arange(fade) + 0.5) / max(fade, 1)
    fade_in, fade_out = np.sin(0.5 * np.pi * t), np.cos(0.5 * np.pi * t)
    pieces: list[np.ndarray] = []
    held: np.ndarray | None = None  # last clip; its tail still has to cross into the next
    total = 0
    last_index = -1
    while True:
        order = list(rng.permutation(len(clips)))
        if len(order) > 1 and order[0] == last_index:
            order.append(order.pop(0))  # never the same clip twice in a row
        for index in order:
            clip = clips[index]
            last_index = index
            if held is None:
                held = clip.copy()
            else:
                joined = held[len(held) - fade :] * fade_out + clip[:fade] * fade_in
                pieces.append(held[: len(held) - fade])
                total += len(held) - fade
                held = np.concatenate([joined, clip[fade:]])
            if total + len(held) >= length:
                pieces.append(held)
                return np.concatenate(pieces)[:length]


def _duck_envelope(length: int, ranges: Sequence[tuple[int, int]], fade: int) -> np.ndarray:
    envelope = np.ones(length)
    ramp = 0.5 + 0.5 * np.cos(np.pi * (np.arange(fade) + 0.5) / max(fade, 1))  # 1 -> 0
    for start, end in ranges:
        start, end = max(0, int(start)), min(length, int(end))
        if end <= start:
            continue
        envelope[start:end] = 0.0
        lo = max(0, start - fade)
        envelope[lo:start] = np.minimum(envelope[lo:start], ramp[fade - (start - lo) :])
        hi = min(length, end + fade)
        envelope[end:hi] = np.minimum(envelope[end:hi], ramp[::-1][: hi - end])
    return envelope


def synthesize_song(duration_s: float, sample_rate: int, seed: int = 0) -> np.ndarray:
    """Music-like test content: notes with harmonics, drums and a pink bed, float32.

    For self-tests of the rig and for the test suite: onsets, pitch and a falling
    spectrum like music's, without needing any recording. Peak about -6 dBFS.
    """
    rng = np.random.default_rng(seed)
    n = round(duration_s * sample_rate)
    out = np.zeros(n)
    beat = 60.0 / rng.uniform(80.0, 160.0)
    nyquist = 0.45 * sample_rate
    note_t = np.arange(round(0.8 * sample_rate)) / sample_rate
    for onset in np.arange(0.0, duration_s, beat / 2):
        start = round(onset * sample_rate)
        f0 = 110.0 * 2.0 ** (rng.integers(0, 30) / 12.0)
        decay = rng.uniform(0.08, 0.4)
        env = np.exp(-note_t / decay) * np.minimum(1.0, note_t / 0.005)
        tone = sum(
            np.sin(2 * np.pi * k * f0 * note_t + rng.uniform(0, 2 * np.pi)) / k
            for k in range(1, 6)
            if k * f0 < nyquist
        )
        piece = (rng.uniform(0.3, 1.0) * env * tone)[: n - start]
        out[start : start + len(piece)] += piece
    drum_len = round(0.15 * sample_rate)
    drum_t = np.arange(drum_len) / sample_rate
    kick = np.sin(2 * np.pi * 60.0 * drum_t * (1 + 2 * np.exp(-drum_t / 0.02))) * np.exp(
        -drum_t / 0.06
    )
    hat = np.diff(rng.standard_normal(drum_len + 1)) * np.exp(-drum_t / 0.015) * 0.3
    for index, onset in enumerate(np.arange(0.0, duration_s, beat)):
        start = round(onset * sample_rate)
        drum = (kick if index % 2 == 0 else hat)[: n - start]
        out[start : start + len(drum)] += 1.5 * drum
    bed = np.cumsum(rng.standard_normal(n)) * 0.002  # brown-ish, then high-passed
    bed -= ndimage.uniform_filter1d(bed, size=max(3, sample_rate // 50))
    out += bed
    return (0.5 * out / max(float(np.max(np.abs(out))), 1e-9)).astype(np.float32)


# --- files ----------------------------------------------------------------------------


def write_program(folder: Path | str, program: Program, noise: np.ndarray | None = None) -> Path:
    """Write music.wav, noise.wav (if given) and program.json to ``folder``; returns the JSON path.

    Audio is 32-bit float WAV, written atomically; the JSON is written last, so a folder
    with a program.json always has its audio.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = program.to_dict()
    write_audio_atomic(folder / MUSIC_FILE, program.music, program.sample_rate, subtype="FLOAT")
    data["music_file"] = MUSIC_FILE
    data["noise_file"] = None
    data["noise"] = None
    if noise is not None:
        noise = np.asarray(noise, dtype=np.float32)
        if noise.shape != (program.samples,):
            raise ValueError(
                f"noise has shape {noise.shape}, the program needs ({program.samples},)"
            )
        write_audio_atomic(folder / NOISE_FILE, noise, program.sample_rate, subtype="FLOAT")
        loudness = measure_loudness(noise, program.sample_rate, "noise program")
        data["noise_file"] = NOISE_FILE
        data["noise"] = {
            "loudness_lufs": loudness if math.isfinite(loudness) else None,
            "peak_dbfs": measure_peak_db(noise, program.sample_rate, true_peak=False),
        }
    path = folder / PROGRAM_FILE
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())
    return path


def _read_program_json(folder: Path) -> dict[str, Any]:
    path = folder / PROGRAM_FILE
    data = read_json_object(path, ProgramError)
    check_document(data, PROGRAM_FORMAT, PROGRAM_VERSION, path, ProgramError)
    return data


def load_program(folder: Path | str) -> Program:
    """Read a folder written by ``write_program`` (the music track included)."""
    folder = Path(folder)
    data = _read_program_json(folder)
    rate = data.get("sample_rate")
    if not isinstance(rate, int) or rate <= 0:
        raise ProgramError(f"{folder / PROGRAM_FILE}: bad sample_rate {rate!r}")
    music = load_audio(folder / str(data.get("music_file") or MUSIC_FILE), rate)
    return Program.from_dict(data, music, str(folder / PROGRAM_FILE))


def load_noise_track(folder: Path | str) -> np.ndarray | None:
    """The noise track of a program folder, or None when it has none."""
    folder = Path(folder)
    data = _read_program_json(folder)
    name = data.get("noise_file")
    if not name:
        return None
    return load_audio(folder / str(name), int(data["sample_rate"]))
