"""Aligning a recorded take to the program clock, with or without markers.

Clock model: a take's own time ``t_take`` (seconds on the recording's nominal clock) and
program time ``t_prog`` are related by ``t_take = offset_s + t_prog * (1 + drift_ppm * 1e-6)``.
``offset_s`` is where program sample 0 lies in the take; ``drift_ppm`` > 0 means the take
holds more samples per program second than nominal (its clock runs fast relative to the
player's).

``align_take`` (programs with markers):
1. coarse: the matched-filter envelope of the whole take (at 8 kHz, which holds the
   sweep) gives candidate sweeps; every (candidate, program marker) pair proposes an
   offset, and the offset that the most candidates agree with wins (so a click or a
   missing marker cannot shift the alignment by a whole song);
2. fine: each marker is searched near its predicted place at the take's own rate with
   sub-sample interpolation (``find_marker``); the first and last must be found, or the
   take is refused. A take that stops early (a recording killed mid-way: the file holds
   a prefix of the take) is aligned on the markers it holds, at least two; it is
   *partial*, and only the songs wholly inside it get ground truth (``missing_songs``
   names the others);
3. offset and drift by least squares over all found markers; markers whose residual is
   far off (an under/overrun inserts or drops audio) are dropped and reported;
4. the take is resampled to the program clock with soxr, whose input rate is given as
   ``recording_rate * (1 + drift)``: soxr takes arbitrary real ratios, so a 37 ppm drift
   needs no rational approximation (scipy's resample_poly would need up/down factors
   near 10^5 and a filter to match). The fractional part of the offset is applied with
   a windowed-sinc FIR; sample i of the aligned take is then sample i of the program;
5. checks: every marker is searched again in the aligned take, where it should sit
   exactly at its program position; the differences are the residuals reported (ms);
6. the channel (loudspeaker, room, microphone) is measured from the aligned markers by
   Farina's method: the IRs are averaged and the magnitude response kept in the sweep's
   band.

``align_without_markers`` (takes such as the paper authors', recorded without markers):
1. coarse: a 10 s segment near the start of the take is cross-correlated (whitened, FFT)
   with the whole reference at 2 kHz, once per trial drift on a grid fine enough that
   the segment is never smeared by more than a sample; later segments are tried if the
   first one matches nowhere (a lead-in of silence). The same near the end, within the
   window that ``max_drift_ppm`` allows, gives a first offset and drift;
2. fine: 30 s segments at 8 kHz against the reference stretched to the take's clock,
   iterated until the stretch and the drift agree. A room turns the correlation peak
   into a cluster (direct sound, reflections) whose tallest member can change from
   segment to segment; every segment is therefore located by matching the start
   segment's whole cluster, so all of them refer to the same member;
3. offset and drift come from the start and end segments only; segments at
   ``checkpoints`` places in between are measured the same way and their residuals
   (and those of every segment found again in the aligned take) say how well it worked,
   next to the correlation quality at each place;
4. the channel's transfer function is estimated from the music itself (H1: cross
   spectrum over the reference's power spectrum; the uncorrelated noise program adds
   variance, not bias).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import soxr
from scipy import fft as sfft
from scipy import ndimage, signal

from afp_core.audio import resample
from afp_core.errors import AfpError
from afp_core.fileutil import check_document
from afp_core.protocols.sessions import (
    ALIGNMENT_FORMAT,
    ALIGNMENT_VERSION,
    TakeVerdict,
    judge_take,
    partial_take_note,
)
from rig_app.markers import (
    SweepSpec,
    analytic_template,
    find_marker,
    frequency_response,
    measure_impulse_response,
)
from rig_app.program import Program

__all__ = [
    "ALIGNMENT_FORMAT",
    "ALIGNMENT_VERSION",
    "Alignment",
    "AlignmentError",
    "Anchor",
    "ChannelResponse",
    "SongTiming",
    "align_take",
    "align_without_markers",
    "resample_to_program",
]


_COARSE_RATE = 8000  # holds the whole 300 Hz - 3.5 kHz sweep
_COARSE_BIN_S = 0.05
_COARSE_FLOOR_S = 10.0
_FINE_RADIUS_S = 0.05
_CHECK_RADIUS_S = 0.01
_CHECK_SLACK_S = 0.05  # more than the pattern's half-width, so it can slide
_PATTERN_HALF_S = 0.02  # the channel's early part: direct sound and first reflections
_WEAK_FINE_DB = 18.0  # a +-0.1 s window of pure noise peaks at about 15 dB over its median
_FRACTIONAL_TAPS = 32  # each side; Kaiser-windowed sinc, about -80 dB error below 0.45 fs
_WHITEN_BAND_HZ = (80.0, 0.45)  # lower edge in Hz, upper edge as a fraction of the rate
_WHITEN_SMOOTH_HZ = 20.0
_WHITEN_FLOOR = 0.01  # of the median spectral scale: bands with nothing in them stay quiet


class AlignmentError(AfpError):
    """A take cannot be aligned to its program (markers or music not found)."""


class _SongLike(Protocol):
    @property
    def title(self) -> str: ...

    @property
    def start_s(self) -> float: ...

    @property
    def end_s(self) -> float: ...


@dataclass
class Anchor:
    """A point tying take time to program time: a marker, or a markerless checkpoint.

    ``fit_residual_ms``: measured take time minus the fitted clock model (before
    resampling). ``residual_ms``: the independent check after alignment (the marker or
    segment found again in the aligned take, minus where it should be).
    """

    label: str
    program_s: float | None
    take_s: float | None
    snr_db: float | None
    used: bool
    fit_residual_ms: float | None = None
    residual_ms: float | None = None
    note: str = ""


@dataclass(frozen=True)
class SongTiming:
    """A song's interval [start, end) in program time and in the take's own time."""

    title: str
    program_start_s: float
    program_end_s: float
    take_start_s: float
    take_end_s: float


@dataclass
class ChannelResponse:
    """The measured channel: impulse response (``ir[ir_pre]`` = zero delay) and magnitude."""

    sample_rate: int
    ir: np.ndarray
    ir_pre: int
    freqs: np.ndarray
    magnitude_db: np.ndarray
    band_hz: tuple[float, float]
    measurements: int
    method: str = "farina"

    def to_dict(self) -> dict[str, Any]:
        return {
            "sample_rate": self.sample_rate,
            "method": self.method,
            "measurements": self.measurements,
            "band_hz": list(self.band_hz),
            "ir_pre": self.ir_pre,
            "ir": _round_list(self.ir),
            "freqs": _round_list(self.freqs),
            "magnitude_db": _round_list(self.magnitude_db),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChannelResponse:
        low, high = data["band_hz"]
        return cls(
            sample_rate=int(data["sample_rate"]),
            ir=np.asarray(data["ir"], dtype=np.float64),
            ir_pre=int(data["ir_pre"]),
            freqs=np.asarray(data["freqs"], dtype=np.float64),
            magnitude_db=np.asarray(data["magnitude_db"], dtype=np.float64),
            band_hz=(float(low), float(high)),
            measurements=int(data["measurements"]),
            method=str(data.get("method", "farina")),
        )


def _round_list(values: np.ndarray) -> list[float]:
    return [float(f"{v:.6g}") for v in np.asarray(values, dtype=np.float64)]


@dataclass
class Alignment:
    """How a take maps onto its program, how well, and (optionally) the aligned audio.

    ``aligned`` (program rate, ``program_samples`` long) is not serialised. ``songs``:
    the songs wholly inside the take; ``missing_songs``: the titles of the others (a
    partial take, see ``align_take``).
    """

    method: str  # "markers" or "markerless"
    recording_rate: int
    program_rate: int
    program_samples: int
    take_samples: int
    offset_s: float
    drift_ppm: float
    anchors: list[Anchor]
    songs: list[SongTiming]
    rms_residual_ms: float
    max_residual_ms: float
    min_snr_db: float
    ok: bool
    notes: list[str] = field(default_factory=list)
    channel: ChannelResponse | None = None
    missing_songs: list[str] = field(default_factory=list)
    aligned: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def ratio(self) -> float:
        """Take seconds per program second."""
        return 1.0 + self.drift_ppm * 1e-6

    def take_time(self, program_s: float) -> float:
        """Take time (s) of program time ``program_s``."""
        return self.offset_s + program_s * self.ratio

    def program_time(self, take_s: float) -> float:
        """Program time (s) of take time ``take_s``."""
        return (take_s - self.offset_s) / self.ratio

    def verdict(self, xruns: int = 0, xrun_times_s: Sequence[float] = ()) -> TakeVerdict:
        """The take's verdict once aligned like this (``xruns``: counted while recording,
        ``xrun_times_s``: where)."""
        summary = {"ok": self.ok, "notes": self.notes, "missing_songs": self.missing_songs}
        return judge_take(True, summary, xruns, xrun_times_s)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": ALIGNMENT_FORMAT,
            "version": ALIGNMENT_VERSION,
            "method": self.method,
            "recording_rate": self.recording_rate,
            "program_rate": self.program_rate,
            "program_samples": self.program_samples,
            "take_samples": self.take_samples,
            "offset_s": self.offset_s,
            "drift_ppm": self.drift_ppm,
            "rms_residual_ms": _finite(self.rms_residual_ms),
            "max_residual_ms": _finite(self.max_residual_ms),
            "min_snr_db": _finite(self.min_snr_db),
            "ok": self.ok,
            "notes": list(self.notes),
            "missing_songs": list(self.missing_songs),
            "anchors": [
                {
                    "label": a.label,
                    "program_s": _finite(a.program_s),
                    "take_s": _finite(a.take_s),
                    "snr_db": _finite(a.snr_db),
                    "used": a.used,
                    "fit_residual_ms": _finite(a.fit_residual_ms),
                    "residual_ms": _finite(a.residual_ms),
                    "note": a.note,
                }
                for a in self.anchors
            ],
            "songs": [
                {
                    "title": s.title,
                    "program_start_s": s.program_start_s,
                    "program_end_s": s.program_end_s,
                    "take_start_s": s.take_start_s,
                    "take_end_s": s.take_end_s,
                }
                for s in self.songs
            ],
            "channel": None if self.channel is None else self.channel.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "alignment") -> Alignment:
        """Inverse of ``to_dict``; ``AlignmentError`` naming ``where`` if malformed."""
        check_document(data, ALIGNMENT_FORMAT, ALIGNMENT_VERSION, where, AlignmentError)
        try:
            return cls(
                method=str(data["method"]),
                recording_rate=int(data["recording_rate"]),
                program_rate=int(data["program_rate"]),
                program_samples=int(data["program_samples"]),
                take_samples=int(data["take_samples"]),
                offset_s=float(data["offset_s"]),
                drift_ppm=float(data["drift_ppm"]),
                rms_residual_ms=_nan_if_none(data["rms_residual_ms"]),
                max_residual_ms=_nan_if_none(data["max_residual_ms"]),
                min_snr_db=_nan_if_none(data["min_snr_db"]),
                ok=bool(data["ok"]),
                notes=[str(n) for n in data.get("notes", [])],
                anchors=[
                    Anchor(
                        label=str(a["label"]),
                        program_s=_opt(a.get("program_s")),
                        take_s=_opt(a.get("take_s")),
                        snr_db=_opt(a.get("snr_db")),
                        used=bool(a["used"]),
                        fit_residual_ms=_opt(a.get("fit_residual_ms")),
                        residual_ms=_opt(a.get("residual_ms")),
                        note=str(a.get("note", "")),
                    )
                    for a in data["anchors"]
                ],
                songs=[
                    SongTiming(
                        title=str(s["title"]),
                        program_start_s=float(s["program_start_s"]),
                        program_end_s=float(s["program_end_s"]),
                        take_start_s=float(s["take_start_s"]),
                        take_end_s=float(s["take_end_s"]),
                    )
                    for s in data["songs"]
                ],
                channel=None
                if data.get("channel") is None
                else ChannelResponse.from_dict(data["channel"]),
                missing_songs=[str(t) for t in data.get("missing_songs") or ()],
            )
        except KeyError as exc:
            raise AlignmentError(f"{where}: missing key {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise AlignmentError(f"{where}: malformed alignment ({exc})") from None


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)


def _nan_if_none(value: Any) -> float:
    return math.nan if value is None else float(value)


def _mono(x: np.ndarray) -> np.ndarray:
    """1-D float audio; float32 stays float32 (a 50-minute take at 48 kHz is 576 MB)."""
    x = np.asarray(x)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=x.dtype if x.dtype == np.float32 else np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected (samples,) or (samples, channels), got {x.shape}")
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)


# --- resampling to the program clock ----------------------------------------------------


def resample_to_program(
    recording: np.ndarray,
    recording_rate: int,
    program_rate: int,
    offset_s: float,
    drift_ppm: float,
    program_samples: int,
) -> np.ndarray:
    """The take on the program clock: sample i is program sample i (zeros where no take).

    Program sample i lies at take sample ``(offset_s + i / program_rate * ratio) *
    recording_rate``; soxr resamples from the drifted input rate and a windowed-sinc
    FIR applies the remaining fraction of a sample.
    """
    x = _mono(recording)
    ratio = 1.0 + drift_ppm * 1e-6
    step = recording_rate * ratio / program_rate  # take samples per program sample
    first = offset_s * recording_rate
    lead = max(0, math.ceil(-first / step - 1e-9))  # program samples before the take starts
    source = first + lead * step
    whole = math.floor(source)
    out = np.zeros(program_samples, dtype=np.float32)
    if lead >= program_samples or whole >= len(x):
        return out
    y = soxr.resample(x[whole:], recording_rate * ratio, program_rate, quality="VHQ")
    y = _advance(np.asarray(y, dtype=np.float64), (source - whole) / step)
    count = min(len(y), program_samples - lead)
    out[lead : lead + count] = y[:count]
    return out


def _advance(y: np.ndarray, delta: float) -> np.ndarray:
    """y read ``delta`` (0 <= delta < 1) samples later: z[i] = y(i + delta), band-limited."""
    if delta < 1e-9:
        return y
    taps = np.arange(-_FRACTIONAL_TAPS, _FRACTIONAL_TAPS + 1)
    u = taps - delta
    window = np.i0(8.0 * np.sqrt(np.clip(1.0 - (u / (_FRACTIONAL_TAPS + 1)) ** 2, 0.0, 1.0)))
    h = np.sinc(u) * window
    h /= h.sum()
    return signal.oaconvolve(y, h[::-1], mode="same")


# --- markers ------------------------------------------------------------------------------


def align_take(
    recording: np.ndarray,
    recording_rate: int,
    program: Program,
    *,
    name: str = "take",
    min_snr_db: float = 20.0,
    max_drift_ppm: float = 1000.0,
    outlier_ms: float = 1.0,
    max_residual_ms: float = 1.0,
    resample_take: bool = True,
    measure_channel: bool = True,
    ir_length_s: float = 0.25,
) -> Alignment:
    """Align a take of ``program`` (which must have markers); see the module docstring.

    ``name`` (e.g. the take's file) prefixes every message. Markers with a detection
    SNR under ``min_snr_db`` count as not found; found markers more than ``outlier_ms``
    off the fitted clock are dropped. ``ok`` is true when no marker was dropped and every
    residual after alignment is within ``max_residual_ms``. A take that stops before its
    last marker (a killed recording) is aligned on the markers it holds, at least two;
    its notes and ``missing_songs`` say which songs it does not hold whole.
    """
    spec = program.marker_spec
    if spec is None or len(program.markers) < 2:
        raise AlignmentError(
            f"{name}: the program has no markers to align with (use align_without_markers)"
        )
    if recording_rate <= 2 * spec.f1:
        raise AlignmentError(
            f"{name}: sample rate {recording_rate} Hz cannot hold the {spec.f1:g} Hz sweep"
        )
    x = _mono(recording)
    duration = len(x) / recording_rate
    if duration < 2 * spec.duration_s:
        raise AlignmentError(f"{name}: {duration:.2f} s long, too short to hold a marker")
    marker_times = np.array([m.position / program.sample_rate for m in program.markers])
    labels = [m.label for m in program.markers]

    offset, ratio = _coarse_marker_fit(
        x, recording_rate, spec, marker_times, labels, name, min_snr_db, max_drift_ppm
    )

    anchors = _find_markers(
        x, recording_rate, spec, labels, marker_times, offset, ratio, min_snr_db
    )
    cut = _cut_off(anchors, offset, ratio, duration, spec)
    if anchors[0].used and (anchors[-1].used or (cut and _count_used(anchors) >= 2)):
        # Again with the template stretched by the drift the first pass measured.
        offset, ratio, _ = _robust_fit(anchors, outlier_ms)
        anchors = _find_markers(
            x, recording_rate, spec, labels, marker_times, offset, ratio, min_snr_db
        )
        cut = _cut_off(anchors, offset, ratio, duration, spec)

    for which, anchor in (("first", anchors[0]), ("last", anchors[-1])):
        if which == "last" and cut:
            if _count_used(anchors) < 2:
                raise AlignmentError(
                    f"{name}: the take stops at {duration:.2f} s, before its second marker "
                    f"('{labels[1]}', expected at {offset + marker_times[1] * ratio:.2f} s): "
                    "a partial take needs two markers to align"
                )
            continue
        if not anchor.used:
            expected = offset + float(anchor.program_s or 0.0) * ratio
            why = anchor.note
            if expected > duration - spec.duration_s:
                why = f"expected at {expected:.2f} s but the take ends at {duration:.2f} s"
            raise AlignmentError(
                f"{name}: {which} marker ('{anchor.label}') not found near {expected:.2f} s: {why}"
            )

    offset, ratio, notes = _robust_fit(anchors, outlier_ms)
    songs = _song_timings(program.songs, offset, ratio)
    missing = [song.title for song in songs if song.take_end_s > duration]
    if cut:
        notes.append(
            f"the take stops at {duration:.2f} s, {(duration - offset) / ratio:.2f} s into "
            f"the {program.duration_s:.2f} s program, before marker '{cut[0].label}'"
        )
    if missing:
        notes.append(partial_take_note(missing))
    alignment = Alignment(
        method="markers",
        recording_rate=recording_rate,
        program_rate=program.sample_rate,
        program_samples=program.samples,
        take_samples=len(x),
        offset_s=offset,
        drift_ppm=(ratio - 1.0) * 1e6,
        anchors=anchors,
        songs=[song for song in songs if song.take_end_s <= duration],
        rms_residual_ms=math.nan,
        max_residual_ms=math.nan,
        min_snr_db=min(a.snr_db for a in anchors if a.used and a.snr_db is not None),
        ok=False,
        notes=notes,
        missing_songs=missing,
    )
    if resample_take:
        aligned = resample_to_program(
            x, recording_rate, program.sample_rate, offset, alignment.drift_ppm, program.samples
        )
        alignment.aligned = aligned
        _check_markers(aligned, program, spec, anchors)
        if measure_channel:
            alignment.channel = _measure_channel(aligned, program, spec, anchors, ir_length_s)
    _summarise(
        alignment,
        max_residual_ms,
        dropped=any(a.take_s is not None and not a.used for a in anchors),
    )
    return alignment


def _find_markers(
    x: np.ndarray,
    rate: int,
    spec: SweepSpec,
    labels: list[str],
    marker_times: np.ndarray,
    offset: float,
    ratio: float,
    min_snr_db: float,
) -> list[Anchor]:
    """Every marker searched near where the clock model puts it, at the take's own rate."""
    sweep = spec.render(rate, stretch=ratio)
    template = analytic_template(sweep)
    radius = round(_FINE_RADIUS_S * rate)
    anchors: list[Anchor] = []
    for label, program_s in zip(labels, marker_times, strict=True):
        predicted = offset + program_s * ratio
        anchor = Anchor(label, float(program_s), take_s=None, snr_db=None, used=False)
        try:
            hit = find_marker(x, sweep, round(predicted * rate), radius, template=template)
        except ValueError:
            anchor.note = f"outside the take (expected at {predicted:.2f} s)"
        else:
            anchor.snr_db = hit.snr_db
            if hit.snr_db >= min_snr_db:
                anchor.take_s = hit.position / rate
                anchor.used = True
            else:
                anchor.note = f"detection {hit.snr_db:.1f} dB < {min_snr_db:g} dB"
        anchors.append(anchor)
    return anchors


def _count_used(anchors: list[Anchor]) -> int:
    return sum(anchor.used for anchor in anchors)


def _cut_off(
    anchors: list[Anchor], offset: float, ratio: float, duration: float, spec: SweepSpec
) -> list[Anchor]:
    """The markers a take stopped before, when it stopped before its last one (a killed
    recording), else none: those not found whose sweep would end after the take does."""
    late = [
        anchor
        for anchor in anchors
        if not anchor.used
        and offset + float(anchor.program_s or 0.0) * ratio + spec.duration_s > duration
    ]
    if not late or late[-1] is not anchors[-1]:
        return []
    for anchor in late:
        anchor.note = "after the end of the take (it stopped early)"
    return late


def _coarse_marker_fit(
    x: np.ndarray,
    rate: int,
    spec: SweepSpec,
    marker_times: np.ndarray,
    labels: list[str],
    name: str,
    min_snr_db: float,
    max_drift_ppm: float,
) -> tuple[float, float]:
    """Offset (s) and ratio from sweeps found anywhere in the take, by voting."""
    coarse_rate = min(rate, _COARSE_RATE)
    xc = resample(x, rate, coarse_rate).astype(np.float64) if coarse_rate != rate else x
    times, scores, best = _sweep_candidates(xc, spec.render(coarse_rate), coarse_rate, min_snr_db)
    if not len(times):
        raise AlignmentError(
            f"{name}: first marker ('{labels[0]}') not found: no sweep stands out anywhere in "
            f"the take (best detection {best:.1f} dB, need {min_snr_db:g} dB)"
        )
    span = float(marker_times[-1] - marker_times[0])
    tolerance = 0.02 + max_drift_ppm * 1e-6 * span
    best_key: tuple[int, float] = (0, 0.0)
    best_pairs: list[tuple[float, float]] = []
    for candidate in times:
        for program_s in marker_times:
            predicted = candidate - program_s + marker_times
            if predicted[0] < -tolerance:
                # the first marker must lie in the take (it is needed below); without
                # this a take cut short can match its markers to later ones
                continue
            nearest = _nearest(times, predicted)
            matched = np.abs(times[nearest] - predicted) <= tolerance
            key = (int(matched.sum()), float(scores[nearest[matched]].sum()))
            if key > best_key:
                best_key = key
                best_pairs = [
                    (float(marker_times[k]), float(times[nearest[k]]))
                    for k in np.flatnonzero(matched)
                ]
    if not best_pairs:
        raise AlignmentError(
            f"{name}: first marker ('{labels[0]}') not found: every sweep in the take would "
            "put it before the take's start"
        )
    if len(best_pairs) >= 2:
        p, t = np.array(best_pairs).T
        ratio, offset = np.polyfit(p, t, 1)
        if abs(ratio - 1.0) > max_drift_ppm * 1e-6:
            ratio, offset = 1.0, float(np.median(t - p))
    else:
        (p0, t0), ratio = best_pairs[0], 1.0
        offset = t0 - p0
    return float(offset), float(ratio)


def _nearest(sorted_values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    index = np.clip(np.searchsorted(sorted_values, queries), 1, max(1, len(sorted_values) - 1))
    if len(sorted_values) == 1:
        return np.zeros(len(queries), dtype=int)
    left = sorted_values[index - 1]
    right = sorted_values[index]
    return np.where(np.abs(queries - left) <= np.abs(right - queries), index - 1, index)


def _sweep_candidates(
    x: np.ndarray, sweep: np.ndarray, rate: int, min_snr_db: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Times (s) and scores (dB) of sweep-like peaks in the whole of ``x``, and the best score.

    The matched-filter envelope is computed block by block and pooled in 50 ms bins; a
    bin's score is its maximum over the running median (10 s) of the bin medians, the
    same peak-to-median measure as ``find_marker``'s SNR.
    """
    n_s = len(sweep)
    valid = len(x) - n_s + 1
    if valid <= 0:
        return np.zeros(0), np.zeros(0), -math.inf
    template = analytic_template(sweep)
    envelope = np.empty(valid, dtype=np.float32)
    block = 60 * rate
    for start in range(0, valid, block):
        stop = min(valid, start + block)
        segment = x[start : stop + n_s - 1]
        envelope[start:stop] = np.abs(signal.fftconvolve(segment, template, mode="valid"))
    width = max(1, round(_COARSE_BIN_S * rate))
    bins = valid // width
    if bins == 0:
        bins, width = 1, valid
    pooled = envelope[: bins * width].reshape(bins, width)
    peak_index = np.argmax(pooled, axis=1)
    peaks = pooled[np.arange(bins), peak_index].astype(np.float64)
    medians = np.median(pooled, axis=1).astype(np.float64)
    span = max(1, round(_COARSE_FLOOR_S / _COARSE_BIN_S)) | 1
    floor = ndimage.median_filter(medians, size=min(span, bins | 1), mode="nearest")
    # In digital silence the floor is the sweep's own sidelobes, or nothing at all: a
    # floor 80 dB under the strongest peak keeps such bins from scoring without bound.
    floor = np.maximum(floor, 1e-4 * float(np.max(peaks)) + 1e-30)
    score = np.minimum(20.0 * np.log10(np.maximum(peaks, 1e-30) / floor), 200.0)
    best = float(np.max(score))
    # Peaks, not scores, decide which bin holds a sweep: a sidelobe in a quieter
    # neighbourhood can outscore the main lobe.
    neighbourhood = max(3, round(0.3 / _COARSE_BIN_S) * 2 + 1)
    local = peaks >= ndimage.maximum_filter1d(peaks, size=neighbourhood, mode="nearest")
    keep = np.flatnonzero(local & (score >= min_snr_db))
    positions = keep * width + peak_index[keep]
    return positions / rate, score[keep], best


def _robust_fit(anchors: list[Anchor], outlier_ms: float) -> tuple[float, float, list[str]]:
    """Least-squares clock fit over the used anchors, dropping the worst outliers one by one."""
    notes: list[str] = []
    while True:
        used = [a for a in anchors if a.used]
        p = np.array([a.program_s for a in used], dtype=np.float64)
        t = np.array([a.take_s for a in used], dtype=np.float64)
        ratio, offset = np.polyfit(p, t, 1) if len(used) >= 2 else (1.0, t[0] - p[0])
        residual = (t - (offset + p * ratio)) * 1e3
        for anchor, r in zip(used, residual, strict=True):
            anchor.fit_residual_ms = float(r)
        worst = int(np.argmax(np.abs(residual)))
        if abs(residual[worst]) <= outlier_ms or len(used) <= 2:
            break
        dropped = used[worst]
        dropped.used = False
        dropped.note = f"dropped: {residual[worst]:+.2f} ms off the clock fit"
        notes.append(
            f"marker '{dropped.label}' dropped ({residual[worst]:+.2f} ms off the fit of the "
            "others): audio was inserted or lost around it (an xrun, or a sound server "
            "adjusting its rate; the take's xrun count tells which)"
        )
    # Residuals of dropped markers against the final fit, for the report.
    for anchor in anchors:
        if anchor.take_s is not None and anchor.program_s is not None:
            anchor.fit_residual_ms = (anchor.take_s - (offset + anchor.program_s * ratio)) * 1e3
    if len(notes) and len([a for a in anchors if a.used]) <= 2:
        notes.append("only two markers agree: the clock fit has no redundancy left")
    return float(offset), float(ratio), notes


def _check_markers(
    aligned: np.ndarray, program: Program, spec: SweepSpec, anchors: list[Anchor]
) -> None:
    rate = program.sample_rate
    sweep = spec.render(rate)
    template = analytic_template(sweep)
    radius = round(_CHECK_RADIUS_S * rate)
    for marker, anchor in zip(program.markers, anchors, strict=True):
        if anchor.take_s is None:
            continue
        try:
            hit = find_marker(aligned, sweep, marker.position, radius, template=template)
        except ValueError:
            continue
        anchor.residual_ms = (hit.position - marker.position) / rate * 1e3


def _measure_channel(
    aligned: np.ndarray,
    program: Program,
    spec: SweepSpec,
    anchors: list[Anchor],
    ir_length_s: float,
) -> ChannelResponse | None:
    rate = program.sample_rate
    sweep = spec.render(rate)
    # The deconvolved impulse is band-limited and rings before zero delay too; harmonic
    # distortion lands much earlier (-140 ms for the 2nd harmonic of the default sweep).
    pre = round(0.025 * rate)
    # Only the silence after a marker is free of music: the IR cannot be longer.
    length = round(min(ir_length_s, max(program.gap_s, 0.01)) * rate)
    irs = []
    for marker, anchor in zip(program.markers, anchors, strict=True):
        start, stop = marker.position - pre, marker.position + len(sweep) + length
        if not anchor.used or start < 0 or stop > len(aligned):
            continue
        irs.append(
            measure_impulse_response(
                aligned[start:stop], sweep, spec.f0, spec.f1, rate, length=pre + length
            )
        )
    if not irs:
        return None
    # The sweep's level in the program is part of the template, not of the channel.
    ir = np.mean(irs, axis=0)
    band = (spec.band[0], min(spec.band[1], 0.45 * rate))
    n_fft = max(1024, 1 << (len(ir) - 1).bit_length())
    freqs, magnitude = frequency_response(ir, rate, n_fft, band)
    return ChannelResponse(rate, ir, pre, freqs, magnitude, band, len(irs))


def _song_timings(songs: Sequence[_SongLike], offset: float, ratio: float) -> list[SongTiming]:
    return [
        SongTiming(
            title=song.title,
            program_start_s=song.start_s,
            program_end_s=song.end_s,
            take_start_s=offset + song.start_s * ratio,
            take_end_s=offset + song.end_s * ratio,
        )
        for song in songs
    ]


def _summarise(alignment: Alignment, max_residual_ms: float, dropped: bool) -> None:
    used = [a for a in alignment.anchors if a.used]
    checks = [a.residual_ms for a in used if a.residual_ms is not None]
    if not checks:  # not resampled: fall back on the fit residuals
        checks = [a.fit_residual_ms for a in used if a.fit_residual_ms is not None]
    values = np.abs(np.array(checks, dtype=np.float64))
    alignment.rms_residual_ms = float(np.sqrt(np.mean(values**2))) if len(values) else math.nan
    alignment.max_residual_ms = float(np.max(values)) if len(values) else math.nan
    alignment.ok = (
        (not dropped) and bool(len(values)) and alignment.max_residual_ms <= (max_residual_ms)
    )
    if len(values) and alignment.max_residual_ms > max_residual_ms:
        alignment.notes.append(
            f"largest residual {alignment.max_residual_ms:.3f} ms exceeds {max_residual_ms:g} ms"
        )


# --- without markers --------------------------------------------------------------------


@dataclass
class _Match:
    lag: float  # sub-sample start of the needle in the haystack
    quality_db: float


class _Haystack:
    """A signal prepared once for many whitened cross-correlations against needles.

    Whitening divides the cross-spectrum by the geometric mean of the two power spectra
    smoothed over ``_WHITEN_SMOOTH_HZ`` (not by the cross-spectrum's own magnitude, as
    PHAT does): every band counts alike, whatever the music's spectrum, while a short
    needle against a long haystack keeps the matched filter's processing gain, which
    PHAT loses to the haystack's unrelated content.
    """

    def __init__(self, x: np.ndarray, rate: float, needle_len: int) -> None:
        self.rate = rate
        self.length = len(x)
        self.n = sfft.next_fast_len(len(x) + needle_len)
        self.spectrum = sfft.rfft(x, self.n)
        freqs = sfft.rfftfreq(self.n, 1.0 / rate)
        self.band = (freqs >= _WHITEN_BAND_HZ[0]) & (freqs <= _WHITEN_BAND_HZ[1] * rate)
        self.width = max(1, round(_WHITEN_SMOOTH_HZ * self.n / rate))
        self.power = ndimage.uniform_filter1d(np.abs(self.spectrum) ** 2, self.width)

    def correlate(self, needle: np.ndarray) -> np.ndarray:
        """Whitened cross-correlation; index k: ``needle`` starting at haystack sample k."""
        lags = self.length - len(needle) + 1
        if lags < 1 or len(needle) + self.length > self.n:
            raise ValueError("the haystack is shorter than the needle")
        spectrum = sfft.rfft(needle, self.n)
        power = ndimage.uniform_filter1d(np.abs(spectrum) ** 2, self.width)
        scale = np.sqrt(self.power * power)
        floor = _WHITEN_FLOOR * float(np.median(scale[self.band])) + 1e-30
        weight = np.where(self.band, 1.0 / (scale + floor), 0.0)
        return sfft.irfft(self.spectrum * np.conj(spectrum) * weight, self.n)[:lags]

    def locate(self, needle: np.ndarray) -> _Match:
        """Where ``needle`` starts in the haystack (sub-sample), and the match quality."""
        return _peak(self.correlate(needle))


def _peak(corr: np.ndarray, refine: bool = False) -> _Match:
    """Sub-sample position of the largest |corr| and its quality (over the median, dB).

    ``refine`` interpolates the band-limited sequence itself (``_refine``); otherwise a
    parabola through three samples, which is biased by up to ~0.1 sample on peaks as
    sharp as whitened correlations.
    """
    strength = np.abs(corr)
    k = int(np.argmax(strength))
    sign = 1.0 if corr[k] >= 0 else -1.0  # a polarity flip in the chain is no mismatch
    lag = _refine(sign * corr, k) if refine else k + _vertex(sign * corr, k)
    outside = np.concatenate([strength[: max(0, k - 3)], strength[k + 4 :]])
    median = float(np.median(outside)) if len(outside) else 0.0
    quality = 200.0 if median <= 0 else min(200.0, 20 * math.log10(strength[k] / median))
    return _Match(lag=lag, quality_db=quality)


def _vertex(y: np.ndarray, k: int) -> float:
    """Offset of the vertex of the parabola through y[k-1], y[k], y[k+1]."""
    if not 0 < k < len(y) - 1:
        return 0.0
    a, b, c = float(y[k - 1]), float(y[k]), float(y[k + 1])
    if a - 2 * b + c >= 0:
        return 0.0
    return float(np.clip(0.5 * (a - c) / (a - 2 * b + c), -0.5, 0.5))


def _refine(y: np.ndarray, k: int, steps: int = 32) -> float:
    """Maximum of band-limited ``y`` near sample ``k``, evaluated from its DFT.

    The sequence is treated as one period of a band-limited signal; on a grid of
    1/``steps`` sample around ``k`` the best point, then a parabola, gives the peak.
    """
    n = len(y)
    spectrum = np.fft.fft(y)
    freqs = np.fft.fftfreq(n) * n
    grid = k + np.arange(-steps, steps + 1) / steps
    values = (np.exp(2j * np.pi * np.outer(grid, freqs) / n) @ spectrum).real / n
    j = int(np.argmax(values))
    return float(grid[j] + _vertex(values, j) / steps)


def _room_for(needle_s: float, rate: float) -> int:
    """FFT room for a needle of ``needle_s`` after any trial stretch (at most 1 %)."""
    return math.ceil(needle_s * rate * 1.01) + 8


def _drift_grid(max_drift_ppm: float, needle_s: float, rate: float) -> list[float]:
    """Trial drifts (ppm) so close that a needle is never smeared by more than a sample."""
    step = 1e6 / (rate * needle_s)
    count = math.ceil(max_drift_ppm / step)
    return [0.0, *[sign * i * step for i in range(1, count + 1) for sign in (1, -1)]]


@dataclass(frozen=True)
class _CoarseMatch:
    """A take segment matched in the reference at the coarse rate."""

    take_s: float  # where the segment starts in the take
    program_s: float  # where it starts in the reference
    drift_ppm: float  # the trial drift that matched best
    quality_db: float


def _coarse_search(
    take: np.ndarray,
    haystack: _Haystack,
    start_s: float,
    needle_s: float,
    lo_s: float,
    drifts: list[float],
) -> _CoarseMatch:
    """Where the take segment starting at ``start_s`` lies in the haystack, best drift first.

    The take's needle is compressed by each trial drift before it is matched, so that a
    drifting take matches as sharply as a steady one. ``lo_s`` is the haystack's start.
    """
    rate = haystack.rate
    needle = take[round(start_s * rate) : round((start_s + needle_s) * rate)]
    best = _Match(0.0, -math.inf)
    best_drift = 0.0
    for drift in drifts:
        trial = needle if drift == 0 else soxr.resample(needle, rate * (1 + drift * 1e-6), rate)
        try:
            match = haystack.locate(np.asarray(trial, dtype=np.float64))
        except ValueError:
            continue
        if match.quality_db > best.quality_db:
            best, best_drift = match, drift
    return _CoarseMatch(start_s, lo_s + best.lag / rate, best_drift, best.quality_db)


@dataclass(frozen=True)
class _Tracks:
    """A take and its reference, mono, at their own, the analysis and the coarse rates."""

    take: np.ndarray
    ref: np.ndarray
    take_a: np.ndarray
    ref_a: np.ndarray
    take_c: np.ndarray
    ref_c: np.ndarray
    analysis_rate: int
    coarse_rate: int

    @classmethod
    def prepare(
        cls,
        recording: np.ndarray,
        recording_rate: int,
        reference: np.ndarray,
        reference_rate: int,
        analysis_rate: int,
        coarse_rate: int,
    ) -> _Tracks:
        take = _mono(recording)
        ref = _mono(reference)
        take_a = resample(take, recording_rate, analysis_rate).astype(np.float64)
        ref_a = resample(ref, reference_rate, analysis_rate).astype(np.float64)
        return cls(
            take=take,
            ref=ref,
            take_a=take_a,
            ref_a=ref_a,
            take_c=resample(take_a, analysis_rate, coarse_rate).astype(np.float64),
            ref_c=resample(ref_a, analysis_rate, coarse_rate).astype(np.float64),
            analysis_rate=analysis_rate,
            coarse_rate=coarse_rate,
        )

    @property
    def take_len(self) -> float:
        return len(self.take_a) / self.analysis_rate

    @property
    def ref_len(self) -> float:
        return len(self.ref_a) / self.analysis_rate


@dataclass(frozen=True)
class _CoarseFit:
    """The coarse stage: the clock (take time = offset + program time * ratio) from a
    segment matched near each end of the take."""

    offset: float
    ratio: float
    start: _CoarseMatch
    end: _CoarseMatch
    needle_s: float  # the coarse segments' length
    notes: list[str]


@dataclass(frozen=True)
class _FineFit:
    """The fine stage: the clock from the start and end segments at the analysis rate."""

    offset: float
    ratio: float
    centres: tuple[float, float]  # take time of the start and end segments' centres
    pattern: _Pattern  # the start segment's correlation cluster, which locates every other


def align_without_markers(
    recording: np.ndarray,
    recording_rate: int,
    reference_music: np.ndarray,
    reference_rate: int,
    *,
    songs: Sequence[_SongLike] = (),
    name: str = "take",
    segment_s: float = 30.0,
    coarse_segment_s: float = 10.0,
    edge_margin_s: float = 10.0,
    checkpoints: int = 5,
    max_drift_ppm: float = 300.0,
    max_offset_s: float | None = None,
    min_quality_db: float = 25.0,
    max_residual_ms: float = 1.0,
    analysis_rate: int = 8000,
    coarse_rate: int = 2000,
    resample_take: bool = True,
    measure_channel: bool = True,
) -> Alignment:
    """Align a take recorded without markers to ``reference_music`` (see the module docstring).

    ``songs`` (objects with ``title``, ``start_s``, ``end_s`` in reference time, e.g.
    ``Program.songs``) are mapped to take time. ``max_offset_s`` bounds where the take's
    start may lie in the reference (None: anywhere). A take whose start or end cannot be
    matched with a quality of ``min_quality_db`` (correlation peak over its median):
    ``AlignmentError``.
    """
    tracks = _Tracks.prepare(
        recording, recording_rate, reference_music, reference_rate, analysis_rate, coarse_rate
    )
    segment = min(segment_s, (tracks.take_len - 2 * edge_margin_s) / 2, tracks.ref_len / 2)
    if segment < 2.0:
        raise AlignmentError(
            f"{name}: too short to align without markers ({tracks.take_len:.1f} s take, "
            f"{tracks.ref_len:.1f} s reference)"
        )
    coarse = _coarse_stage(
        tracks,
        name=name,
        needle_s=min(coarse_segment_s, segment),
        edge_margin_s=edge_margin_s,
        max_offset_s=max_offset_s,
        max_drift_ppm=max_drift_ppm,
        min_quality_db=min_quality_db,
    )
    fine = _fine_stage(tracks, coarse, name, segment, edge_margin_s)
    anchors = _checkpoint_anchors(tracks, fine, segment, checkpoints)
    alignment = Alignment(
        method="markerless",
        recording_rate=recording_rate,
        program_rate=reference_rate,
        program_samples=len(tracks.ref),
        take_samples=len(tracks.take),
        offset_s=float(fine.offset),
        drift_ppm=float((fine.ratio - 1.0) * 1e6),
        anchors=anchors,
        songs=_song_timings(songs, fine.offset, fine.ratio),
        rms_residual_ms=math.nan,
        max_residual_ms=math.nan,
        min_snr_db=min(a.snr_db for a in anchors if a.snr_db is not None),
        ok=False,
        notes=list(coarse.notes),
    )
    if resample_take:
        _check_stage(alignment, tracks, fine.pattern, segment, measure_channel)
    # The ends were fitted exactly; the checkpoints between them are the honest test.
    _summarise(alignment, max_residual_ms, dropped=False)
    weak = [a.label for a in anchors if a.note]
    if weak:
        alignment.ok = False
        alignment.notes.append(f"weak matches at: {', '.join(weak)}")
    return alignment


def _coarse_stage(
    tracks: _Tracks,
    *,
    name: str,
    needle_s: float,
    edge_margin_s: float,
    max_offset_s: float | None,
    max_drift_ppm: float,
    min_quality_db: float,
) -> _CoarseFit:
    """Offset and drift from a segment matched near the start and one near the end."""
    rate = tracks.coarse_rate
    drifts = _drift_grid(max_drift_ppm, needle_s, rate)
    # the first take segment that matches somewhere in the reference
    start = _find_start(tracks, needle_s, edge_margin_s, max_offset_s, min_quality_db, drifts)
    if start.quality_db < min_quality_db:
        raise AlignmentError(
            f"{name}: the start of the take does not match the reference anywhere (best "
            f"correlation quality {start.quality_db:.1f} dB, need {min_quality_db:g} dB)"
        )
    offset = start.take_s - start.program_s
    notes = [
        f"start: take {start.take_s:.1f} s matched with quality {start.quality_db:.1f} dB "
        f"({rate} Hz, {start.drift_ppm:+.0f} ppm trial)"
    ]

    # the end, in the window the drift allows; stepping back over a bad tail (the music
    # stopped early, noise covered it) while at least half the span is left
    last_take = min(tracks.take_len - edge_margin_s, offset + tracks.ref_len - 0.5) - needle_s
    if last_take - start.take_s < 2 * needle_s:
        raise AlignmentError(f"{name}: take and reference overlap too little to measure drift")
    end = _find_end(
        tracks, needle_s, start, last_take, offset, max_drift_ppm, min_quality_db, drifts
    )
    notes.append(
        f"end: take {end.take_s:.1f} s matched with quality {end.quality_db:.1f} dB "
        f"({end.drift_ppm:+.0f} ppm trial)"
    )
    if end.quality_db < min_quality_db:
        raise AlignmentError(
            f"{name}: the end of the take (from {last_take:.1f} s back to {end.take_s:.1f} s) "
            f"does not match the reference within +-{max_drift_ppm:g} ppm (best quality "
            f"{end.quality_db:.1f} dB < {min_quality_db:g} dB)"
        )
    ratio = (end.take_s - start.take_s) / (end.program_s - start.program_s)
    return _CoarseFit(
        offset=start.take_s - start.program_s * ratio,
        ratio=ratio,
        start=start,
        end=end,
        needle_s=needle_s,
        notes=notes,
    )


def _fine_stage(
    tracks: _Tracks, coarse: _CoarseFit, name: str, segment: float, edge_margin_s: float
) -> _FineFit:
    """The clock from the waveforms' start and end segments, the reference stretched to the
    take's clock, refined until the stretch used for matching agrees with the drift found."""
    rate = tracks.analysis_rate
    offset, ratio = coarse.offset, coarse.ratio
    first = max(coarse.start.take_s + segment / 2, offset + segment / 2 + 0.2)
    last = min(
        tracks.take_len - edge_margin_s - segment / 2,
        offset + tracks.ref_len * ratio - segment / 2 - 0.2,
        coarse.end.take_s + coarse.needle_s - segment / 2,
    )
    centres = (first, max(first + segment, last))
    pattern: _Pattern | None = None
    for _ in range(6):
        try:
            head, tail = (
                _fine_correlation(tracks.take_a, tracks.ref_a, rate, c, segment, offset, ratio)
                for c in centres
            )
        except ValueError:
            raise AlignmentError(
                f"{name}: the fine match runs off the reference (offset {offset:.2f} s, "
                f"drift {(ratio - 1) * 1e6:.0f} ppm): the coarse match was wrong"
            ) from None
        pattern = _Pattern.around(head.corr, rate)
        p0, p1 = head.program_s(pattern.find(head.corr)), tail.program_s(pattern.find(tail.corr))
        new_ratio = (tail.take_s - head.take_s) / (p1 - p0)
        new_offset = head.take_s - p0 * new_ratio
        converged = abs(new_ratio - ratio) < 1e-8 and abs(new_offset - offset) < 1e-6
        offset, ratio = new_offset, new_ratio
        if converged:
            break
    if pattern is None:  # cannot happen: the loop above runs at least once
        raise AlignmentError(f"{name}: no fine match was made")
    return _FineFit(offset=offset, ratio=ratio, centres=centres, pattern=pattern)


def _checkpoint_anchors(
    tracks: _Tracks, fine: _FineFit, segment: float, checkpoints: int
) -> list[Anchor]:
    """The start and end segments and ``checkpoints`` between them, each located with the
    start segment's pattern; their residuals from the clock model test it."""
    rate = tracks.analysis_rate
    head, tail = fine.centres
    inner = [head + (tail - head) * (i + 1) / (checkpoints + 1) for i in range(max(0, checkpoints))]
    labels = ["start", *[f"check {i + 1}" for i in range(len(inner))], "end"]
    anchors: list[Anchor] = []
    for label, centre in zip(labels, [head, *inner, tail], strict=True):
        found = _fine_correlation(
            tracks.take_a, tracks.ref_a, rate, centre, segment, fine.offset, fine.ratio
        )
        program_s = found.program_s(fine.pattern.find(found.corr))
        anchor = Anchor(label, program_s, found.take_s, found.quality_db, used=True)
        anchor.fit_residual_ms = (found.take_s - (fine.offset + program_s * fine.ratio)) * 1e3
        if found.quality_db < _WEAK_FINE_DB:
            anchor.note = f"weak match ({found.quality_db:.1f} dB)"
        anchors.append(anchor)
    return anchors


def _check_stage(
    alignment: Alignment,
    tracks: _Tracks,
    pattern: _Pattern,
    segment: float,
    measure_channel: bool,
) -> None:
    """Resample the take to the reference's clock, find every anchor's segment again in
    it (its residual) and, if asked, measure the channel from the music."""
    rate = tracks.analysis_rate
    aligned = resample_to_program(
        tracks.take,
        alignment.recording_rate,
        alignment.program_rate,
        alignment.offset_s,
        alignment.drift_ppm,
        len(tracks.ref),
    )
    alignment.aligned = aligned
    aligned_a = resample(aligned, alignment.program_rate, rate).astype(np.float64)
    for anchor in alignment.anchors:
        anchor.residual_ms = _check_segment(aligned_a, tracks.ref_a, rate, anchor, segment, pattern)
    if measure_channel:
        alignment.channel = _transfer_function(aligned, tracks.ref, alignment.program_rate)


def _find_end(
    tracks: _Tracks,
    needle_s: float,
    start: _CoarseMatch,
    last_take: float,
    offset: float,
    max_drift_ppm: float,
    min_quality_db: float,
    drifts: list[float],
) -> _CoarseMatch:
    """The last take segment that matches, or the best tried when none reaches
    ``min_quality_db``.

    From ``last_take`` backwards, one segment at a time, while at least half of the span
    from the start is left; each is searched where the drift limit allows it to be.
    """
    take_c, ref_c, rate = tracks.take_c, tracks.ref_c, tracks.coarse_rate
    start_take = start.take_s
    best = _CoarseMatch(last_take, 0.0, 0.0, -math.inf)
    end_take = last_take
    ref_len = len(ref_c) / rate
    while end_take - start_take >= max(2 * needle_s, (last_take - start_take) / 2):
        slack = max_drift_ppm * 1e-6 * (end_take - start_take) + 1.0
        predicted = (end_take - offset) / (1 + start.drift_ppm * 1e-6)
        lo = round(max(0.0, predicted - slack) * rate)
        hi = round(min(ref_len, predicted + needle_s + slack) * rate)
        match = _coarse_search(
            take_c,
            _Haystack(ref_c[lo:hi], rate, _room_for(needle_s, rate)),
            end_take,
            needle_s,
            lo / rate,
            drifts,
        )
        if match.quality_db >= min_quality_db:
            return match
        if match.quality_db > best.quality_db:
            best = match
        end_take -= needle_s
    return best


def _find_start(
    tracks: _Tracks,
    needle_s: float,
    margin: float,
    max_offset_s: float | None,
    min_quality_db: float,
    drifts: list[float],
) -> _CoarseMatch:
    """The first take segment that matches, or the best tried when none reaches
    ``min_quality_db``.

    Segments are tried one after the other from ``margin`` on, over the first half of the
    take: a long lead-in of silence or noise before the music is skipped.
    """
    take_c, ref_c, rate = tracks.take_c, tracks.ref_c, tracks.coarse_rate
    take_len = tracks.take_len
    best = _CoarseMatch(margin, 0.0, 0.0, -math.inf)
    start = margin
    whole: _Haystack | None = None  # the whole reference, built once when first needed
    while start + needle_s <= take_len / 2 or start == margin:
        if max_offset_s is None:
            if whole is None:
                whole = _Haystack(ref_c, rate, _room_for(needle_s, rate))
            haystack, lo = whole, 0
        else:
            lo = max(0, round((start - max_offset_s) * rate))
            hi = min(len(ref_c), round((start + needle_s + max_offset_s) * rate))
            haystack = _Haystack(ref_c[lo:hi], rate, _room_for(needle_s, rate))
        match = _coarse_search(take_c, haystack, start, needle_s, lo / rate, drifts)
        if match.quality_db >= min_quality_db:
            return match
        if match.quality_db > best.quality_db:
            best = match
        start += needle_s
    return best


@dataclass
class _Fine:
    """Whitened correlation of one take segment against the reference around it."""

    take_s: float  # centre of the take segment
    origin_s: float  # program time of the segment's centre at correlation lag 0
    step_s: float  # program seconds per lag
    corr: np.ndarray
    quality_db: float

    def program_s(self, lag: float) -> float:
        return self.origin_s + lag * self.step_s


@dataclass
class _Pattern:
    """The shape of one anchor's correlation peak (the whitened channel response).

    A room makes that peak a cluster (direct sound and reflections) whose tallest member
    can differ from segment to segment; locating every anchor by matching this one shape
    instead of by its own tallest peak keeps them all on the same member.
    """

    shape: np.ndarray
    peak: float  # where, inside ``shape``, the reference point lies

    @classmethod
    def around(cls, corr: np.ndarray, rate: int) -> _Pattern:
        found = _peak(corr, refine=True)
        half = round(_PATTERN_HALF_S * rate)
        lo = max(0, round(found.lag) - half)
        return cls(shape=corr[lo : round(found.lag) + half + 1], peak=found.lag - lo)

    def find(self, corr: np.ndarray) -> float:
        """Lag in ``corr`` that corresponds to the pattern's reference point."""
        if len(corr) < len(self.shape) + 16:
            return _peak(corr, refine=True).lag
        score = signal.correlate(corr, self.shape, mode="valid", method="fft")
        return _refine(score, int(np.argmax(score))) + self.peak


def _fine_correlation(
    take: np.ndarray,
    ref: np.ndarray,
    rate: int,
    centre: float,
    segment: float,
    offset: float,
    ratio: float,
    slack_s: float = 0.1,
) -> _Fine:
    """Correlate the take segment centred at ``centre`` with the reference around it.

    The reference around the predicted place is resampled to the take's clock first, so
    the two segments have the same length and the correlation peak is not smeared.
    """
    half = segment / 2
    first = round((centre - half) * rate)
    needle = take[first : first + round(segment * rate)]
    program_centre = (centre - offset) / ratio
    lo = max(0, round((program_centre - (half + slack_s) / ratio) * rate))
    hi = min(len(ref), round((program_centre + (half + slack_s) / ratio) * rate))
    stretched = np.asarray(soxr.resample(ref[lo:hi], rate, rate * ratio, quality="VHQ"))
    corr = _Haystack(stretched, rate, len(needle)).correlate(needle)
    return _Fine(
        take_s=(first + len(needle) / 2) / rate,
        origin_s=lo / rate + len(needle) / 2 / rate / ratio,
        step_s=1.0 / (rate * ratio),
        corr=corr,
        quality_db=_peak(corr).quality_db,
    )


def _check_segment(
    aligned: np.ndarray,
    ref: np.ndarray,
    rate: int,
    anchor: Anchor,
    segment: float,
    pattern: _Pattern,
) -> float | None:
    """Lag (ms) of the aligned take against the reference at ``anchor``: should be 0."""
    if anchor.program_s is None:
        return None
    slack = round(_CHECK_SLACK_S * rate)
    start = round((anchor.program_s - segment / 2) * rate)
    stop = start + round(segment * rate)
    if start - slack < 0 or stop + slack > len(ref) or stop > len(aligned):
        return None
    needle = aligned[start:stop].astype(np.float64)
    corr = _Haystack(ref[start - slack : stop + slack], rate, len(needle)).correlate(needle)
    return (pattern.find(corr) - slack) / rate * 1e3


def _transfer_function(
    aligned: np.ndarray, ref: np.ndarray, rate: int, max_s: float = 600.0
) -> ChannelResponse | None:
    """H1 estimate (cross-spectrum over auto-spectrum) of the channel from the music.

    The noise program is uncorrelated with the music, so it adds variance, not bias.
    """
    n = min(len(aligned), len(ref))
    take = round(max_s * rate)
    start = max(0, (n - take) // 2)
    stop = min(n, start + take)
    a = aligned[start:stop].astype(np.float64)
    r = ref[start:stop].astype(np.float64)
    nperseg = 2048 if rate > 12000 else 1024
    if len(a) < 4 * nperseg or not np.any(r):
        return None
    freqs, cross = signal.csd(r, a, fs=rate, nperseg=nperseg)
    _, power = signal.welch(r, fs=rate, nperseg=nperseg)
    h = cross / np.maximum(power, 1e-30)
    ir = np.roll(sfft.irfft(h, nperseg), nperseg // 8)
    band = (100.0, 0.45 * rate)
    keep = (freqs >= band[0]) & (freqs <= band[1])
    magnitude = 20.0 * np.log10(np.maximum(np.abs(h[keep]), 1e-12))
    return ChannelResponse(rate, ir, nperseg // 8, freqs[keep], magnitude, band, 1, method="h1")
