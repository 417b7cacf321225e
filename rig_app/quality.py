"""How good a take is, measured from the take itself: one quality record per take.

Made after alignment (the take must be on the program clock), stored in the session as
the take's ``quality`` (docs/session-format.md, "Quality record"), shown on the Dataset
page and printed by ``afp-rig quality``. It holds:

- the **music-to-noise ratio at the microphone**, per song and for the take. The
  program's calibration segments (``rig_app.program.CalibrationSpec``) play silence,
  the music alone and the noise alone; over them the take gives the microphone's floor
  and the power each loudspeaker delivers per unit of program power, per octave band
  (its gain, floor subtracted). A song's music at the microphone is then its program
  power in each band times the music gain there, its noise likewise: a measurement of
  the room, not the configured distance. The take's ratio pools the songs' energies;
- per song, from the raw recording (ground truth interval): peak, samples at or near
  full scale (clipping), runs of digital silence (exact zeros: a dropped buffer), the
  xruns that fall inside it, and its loudness (BS.1770);
- for the take: its loudness (energy mean of the songs'), xruns with their positions,
  the alignment's checks (residuals, drift, weakest marker) and a summary of the
  measured channel response;
- flags, each with its reason, from ``QualityThresholds`` (every default is here).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import soundfile as sf
from scipy import signal

from afp_core.errors import AfpError
from afp_core.fileutil import utc_now
from afp_core.protocols.realworld import take_sort_key
from rig_app.program import Program, ProgramSegment, measure_loudness
from rig_app.room import find_take_room
from rig_app.session import Session, TakeEntry

QUALITY_FORMAT = "afp-rig-quality"
QUALITY_VERSION = 1


class QualityError(AfpError):
    """A take's quality cannot be measured (not aligned, files unreadable)."""


@dataclasses.dataclass(frozen=True)
class QualityThresholds:
    """When a take or a song is flagged. The defaults are the rig's settings."""

    clip_level_dbfs: float = -0.1  # a sample this close to full scale counts as clipped
    clipped_share: float = 1e-5  # a song with a larger share of clipped samples is flagged
    silence_min_s: float = 0.02  # exact zeros this long are a dropout, not a quiet room
    ratio_tolerance_db: float = 3.0  # a take's ratio this far from the one intended
    song_ratio_spread_db: float = 6.0  # a song's ratio this far from its take's
    quiet_lufs: float = -60.0  # a take this quiet did not hear the music
    settle_s: float = 0.4  # skipped at the start of a calibration segment (reverberation)


def parse_thresholds(settings: Sequence[str]) -> QualityThresholds:
    """``QualityThresholds`` with ``NAME=VALUE`` settings (numbers only) over the defaults;
    ``QualityError`` in one line for an unknown name or a value that is not a number."""
    known = {f.name for f in dataclasses.fields(QualityThresholds)}
    values: dict[str, float] = {}
    for setting in settings:
        name, sep, value = setting.partition("=")
        name = name.strip()
        if not sep or name not in known:
            names = ", ".join(sorted(known))
            raise QualityError(f"--threshold {setting!r}: give NAME=VALUE, NAME one of {names}")
        try:
            number = float(value)
        except ValueError:
            raise QualityError(f"--threshold {setting!r}: {value!r} is not a number") from None
        if not math.isfinite(number):
            raise QualityError(f"--threshold {setting!r}: {value!r} is not a finite number")
        values[name] = number
    return dataclasses.replace(QualityThresholds(), **values)


def measure_take_quality(
    session: Session,
    label: str,
    thresholds: QualityThresholds = QualityThresholds(),
    *,
    program: Program | None = None,
) -> dict[str, Any]:
    """The quality record of take ``label`` (see the module docstring); nothing stored."""
    take = session.take(label)
    if not take.aligned_file or take.alignment is None or not take.ground_truth:
        raise QualityError(
            f"{session.path}: take {label!r} is not aligned; align it first "
            f"(afp-rig align {session.folder} --label {label})"
        )
    program = program or session.load_program()
    songs = [
        _measure_song(session, take, program, i, thresholds) for i in range(len(program.songs))
    ]
    ratio, calibration, note = _measure_ratio(session, take, program, songs, thresholds)
    heard = [
        (s["loudness_lufs"], s["duration_s"]) for s in songs if math.isfinite(s["loudness_lufs"])
    ]
    seconds = sum(duration for _, duration in heard)
    loudness = (
        _db(sum(10.0 ** (lufs / 10.0) * d for lufs, d in heard) / seconds) if seconds else None
    )
    intended = _intended_ratio(take)
    record: dict[str, Any] = {
        "format": QUALITY_FORMAT,
        "version": QUALITY_VERSION,
        "computed_at": utc_now(),
        "thresholds": dataclasses.asdict(thresholds),
        "music_to_noise_db": _rounded(ratio),
        "intended_music_to_noise_db": intended,
        "ratio_note": note,
        "calibration": calibration,
        "loudness_lufs": _rounded(loudness),
        "clipped_samples": sum(s["clipped_samples"] for s in songs),
        "xruns": take.xruns,
        "xrun_times_s": list(take.xrun_times_s),
        "alignment": _alignment_summary(take.alignment),
        "channel": _channel_summary(take.alignment.get("channel")),
        "songs": songs,
    }
    for song in songs:
        song["loudness_lufs"] = _rounded(song["loudness_lufs"])
    record["flags"] = _take_flags(record, take, thresholds)
    return record


def update_take_quality(
    session: Session,
    label: str,
    thresholds: QualityThresholds = QualityThresholds(),
    *,
    program: Program | None = None,
) -> dict[str, Any]:
    """Measure take ``label``'s quality and store it in the session (saved)."""
    record = measure_take_quality(session, label, thresholds, program=program)
    session.take(label).quality = record
    session.save()
    return record


def update_session_quality(
    session: Session,
    thresholds: QualityThresholds = QualityThresholds(),
    *,
    labels: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Measure every aligned take (or ``labels``) and store the records; the program is
    read once."""
    chosen = labels if labels is not None else [t.label for t in session.takes if t.aligned_file]
    program = session.load_program() if chosen else None
    return {
        label: update_take_quality(session, label, thresholds, program=program)
        for label in sorted(chosen, key=take_sort_key)
    }


# --- the ratio ---------------------------------------------------------------------------


def _measure_ratio(
    session: Session,
    take: TakeEntry,
    program: Program,
    songs: list[dict[str, Any]],
    thresholds: QualityThresholds,
) -> tuple[float | None, dict[str, Any] | None, str]:
    """(take ratio, the calibration measurement, why not measured); fills each song's
    ``music_to_noise_db``."""
    for song in songs:
        song["music_to_noise_db"] = None
    segments = {kind: program.calibration_segment(kind) for kind in ("silence", "music", "noise")}
    noise_name = (session.program or {}).get("noise_file")
    if any(segment is None for segment in segments.values()):
        return None, None, "not measured: the program has no calibration segments"
    if not noise_name:
        return None, None, "not measured: the program has no noise track"
    aligned = session.resolve(str(take.aligned_file))
    noise_file = session.resolve(str(noise_name))
    rate = program.sample_rate
    settle = round(thresholds.settle_s * rate)
    silence, music, noise = (_window(segments[k], settle) for k in ("silence", "music", "noise"))
    floor = _band_powers(_read(aligned, *silence), rate)
    music_mic = _band_powers(_read(aligned, *music), rate)
    noise_mic = _band_powers(_read(aligned, *noise), rate)
    music_program = _band_powers(program.music[music[0] : music[0] + music[1]], rate)
    noise_program = _band_powers(_read(noise_file, *noise), rate)
    calibration: dict[str, Any] = {
        "floor_dbfs": _rounded(_db(floor.sum())),
        "music_alone_dbfs": _rounded(_db(music_mic.sum())),
        "noise_alone_dbfs": _rounded(_db(noise_mic.sum())),
    }
    # a loudspeaker is heard when it lifts the level clearly (3 dB) above the floor
    if not music_mic.sum() > 2.0 * floor.sum() or not music_program.sum() > 0:
        return None, calibration, "not measured: the music was not heard over the floor"
    if not noise_mic.sum() > 2.0 * floor.sum() or not noise_program.sum() > 0:
        return None, calibration, "not measured: the noise was not heard over the floor"
    music_gain = _band_gains(music_mic - floor, music_program)
    noise_gain = _band_gains(noise_mic - floor, noise_program)
    calibration["music_gain_db"] = [_rounded(_db(g)) for g in music_gain]
    calibration["noise_gain_db"] = [_rounded(_db(g)) for g in noise_gain]
    calibration["bands_hz"] = [round(edge, 1) for edge in _band_edges(rate)]
    total_music = total_noise = 0.0
    for song, slot in zip(songs, program.songs, strict=True):
        span = slot.end - slot.start
        at_mic = float(music_gain @ _band_powers(program.music[slot.start : slot.end], rate))
        noise_at_mic = float(noise_gain @ _band_powers(_read(noise_file, slot.start, span), rate))
        total_music += at_mic * span
        total_noise += noise_at_mic * span
        song["music_to_noise_db"] = (
            _rounded(_db(at_mic / noise_at_mic)) if noise_at_mic > 0 else None
        )
    if not total_noise > 0:
        return None, calibration, "not measured: the noise program is silent under the songs"
    return _db(total_music / total_noise), calibration, ""


_LOWEST_BAND_HZ = 44.0  # octave bands from here up (below: one band)
_WELCH_S = 0.128  # Welch segments: 8 Hz resolution, enough for octave bands


def _band_edges(rate: int) -> list[float]:
    """Octave band edges from 0 Hz to Nyquist: [0, 44, 88, 177, ..., rate / 2]."""
    edges = [0.0]
    edge = _LOWEST_BAND_HZ
    while edge < rate / 2:
        edges.append(edge)
        edge *= 2.0
    return [*edges, rate / 2]


def _band_powers(x: np.ndarray, rate: int) -> np.ndarray:
    """Mean power of ``x`` in each octave band (``_band_edges``); they sum to its power."""
    edges = _band_edges(rate)
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return np.zeros(len(edges) - 1)
    freqs, psd = signal.welch(x, rate, nperseg=min(len(x), round(_WELCH_S * rate)))
    power = psd * (freqs[1] - freqs[0])
    bands = np.digitize(freqs, edges[1:-1])
    return np.bincount(bands, weights=power, minlength=len(edges) - 1)


def _band_gains(at_mic: np.ndarray, played: np.ndarray) -> np.ndarray:
    """Power gain per band, loudspeaker to microphone. A band the calibration hardly
    played (60 dB under its strongest) has no measurable gain: it takes its nearest
    measured neighbour's, and the songs rarely put energy there either."""
    measured = played > played.max() * 1e-6
    gains = np.where(measured, np.maximum(at_mic, 0.0) / np.where(measured, played, 1.0), 0.0)
    known = np.flatnonzero(measured)
    for band in np.flatnonzero(~measured):
        gains[band] = gains[known[np.argmin(np.abs(known - band))]]
    return gains


def _window(segment: ProgramSegment | None, settle: int) -> tuple[int, int]:
    """(first sample, frames) of a calibration segment after its reverberation settles."""
    assert segment is not None
    start = min(segment.start + settle, segment.end - 1)
    return start, segment.end - start


def _intended_ratio(take: TakeEntry) -> float | None:
    """The ratio a virtual-room take was made with (its notes say), else None."""
    found = find_take_room(take.notes)
    if found is None:
        return None
    value = found[1].get("music_to_noise_db")
    return None if value is None else float(value)


# --- per song ----------------------------------------------------------------------------


def _measure_song(
    session: Session,
    take: TakeEntry,
    program: Program,
    index: int,
    thresholds: QualityThresholds,
) -> dict[str, Any]:
    slot = program.songs[index]
    truth = take.ground_truth[index] if index < len(take.ground_truth) else None
    song: dict[str, Any] = {
        "index": slot.index,
        "title": slot.title,
        "duration_s": round(slot.duration_s, 3),
    }
    if truth is None or truth.get("take_start_s") is None or truth.get("take_end_s") is None:
        song.update(
            take_start_s=None,
            peak_dbfs=None,
            clipped_samples=0,
            silence=[],
            xrun_times_s=[],
            loudness_lufs=-math.inf,
            flags=["no interval in the take (not recorded)"],
        )
        return song
    rate = take.recording_rate
    start_s, end_s = float(truth["take_start_s"]), float(truth["take_end_s"])
    start = max(0, round(start_s * rate))
    audio = _read(session.resolve(take.raw_file), start, max(0, round(end_s * rate) - start))
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    clipped = int(np.count_nonzero(np.abs(audio) >= 10.0 ** (thresholds.clip_level_dbfs / 20)))
    silence = [
        [round(start_s + lo / rate, 3), round(start_s + hi / rate, 3)]
        for lo, hi in _zero_runs(audio, round(thresholds.silence_min_s * rate))
    ]
    xruns = [t for t in take.xrun_times_s if start_s <= t < end_s]
    song.update(
        take_start_s=round(start_s, 4),
        peak_dbfs=_rounded(_db(peak * peak)),
        clipped_samples=clipped,
        silence=silence,
        xrun_times_s=xruns,
        loudness_lufs=measure_loudness(audio, rate, slot.title) if len(audio) else -math.inf,
    )
    flags = []
    if len(audio) and clipped > thresholds.clipped_share * len(audio):
        flags.append(f"clipped: {clipped} samples at or above {thresholds.clip_level_dbfs:g} dBFS")
    if xruns:
        where = ", ".join(f"{t:.1f} s" for t in xruns[:3]) + (" ..." if len(xruns) > 3 else "")
        flags.append(f"{len(xruns)} xrun{'s' * (len(xruns) > 1)} inside the song (at {where})")
    if silence:
        total = sum(hi - lo for lo, hi in silence)
        flags.append(f"digital silence: {len(silence)} dropout(s), {total:.2f} s")
    song["flags"] = flags
    return song


def _zero_runs(audio: np.ndarray, shortest: int) -> list[tuple[int, int]]:
    """Runs [start, end) of exact zeros at least ``shortest`` samples long."""
    if not len(audio) or shortest < 1:
        return []
    zero = np.concatenate([[False], audio == 0, [False]])
    edges = np.flatnonzero(np.diff(zero.astype(np.int8)))
    starts, ends = edges[::2], edges[1::2]
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True) if b - a >= shortest]


# --- the take ----------------------------------------------------------------------------


def _alignment_summary(alignment: dict[str, Any]) -> dict[str, Any]:
    keys = ("method", "ok", "offset_s", "drift_ppm", "rms_residual_ms", "max_residual_ms")
    summary = {key: alignment.get(key) for key in keys}
    summary["min_snr_db"] = alignment.get("min_snr_db")
    summary["notes"] = list(alignment.get("notes") or [])
    return summary


def _channel_summary(channel: Any) -> dict[str, Any] | None:
    """The measured response in a few numbers: its band and how far from flat it is."""
    if not isinstance(channel, dict) or not channel.get("magnitude_db"):
        return None
    magnitude = np.asarray(channel["magnitude_db"], dtype=np.float64)
    finite = magnitude[np.isfinite(magnitude)]
    return {
        "method": channel.get("method"),
        "band_hz": channel.get("band_hz"),
        "spread_db": _rounded(float(np.ptp(finite))) if len(finite) else None,
    }


def _take_flags(
    record: dict[str, Any], take: TakeEntry, thresholds: QualityThresholds
) -> list[str]:
    flags: list[str] = []
    alignment = record["alignment"]
    if not alignment.get("ok"):
        flags.extend(alignment["notes"] or ["the alignment failed its checks"])
    if take.xruns:
        times = take.xrun_times_s
        where = f" (at {', '.join(f'{t:.1f} s' for t in times[:3])})" if times else ""
        flags.append(f"{take.xruns} xrun{'s' * (take.xruns > 1)} while recording{where}")
    loudness = record["loudness_lufs"]
    if loudness is None or loudness < thresholds.quiet_lufs:
        level = "silent" if loudness is None else f"{loudness:.1f} LUFS"
        flags.append(f"too quiet to have heard the music ({level})")
    ratio, intended = record["music_to_noise_db"], record["intended_music_to_noise_db"]
    off = None if ratio is None or intended is None else ratio - intended
    if off is not None and abs(off) > thresholds.ratio_tolerance_db:
        flags.append(
            f"music-to-noise {ratio:+.1f} dB, {off:+.1f} dB from the intended {intended:+.1f} dB"
        )
    if ratio is not None:
        for song in record["songs"]:
            own = song["music_to_noise_db"]
            if own is not None and abs(own - ratio) > thresholds.song_ratio_spread_db:
                song["flags"].append(
                    f"music-to-noise {own:+.1f} dB, {own - ratio:+.1f} dB from the take's"
                )
    return flags


# --- numbers -----------------------------------------------------------------------------


def _read(path: Any, start: int, frames: int) -> np.ndarray:
    """``frames`` samples of ``path`` from ``start``, mono float32 (fewer at its end)."""
    try:
        data, _ = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise QualityError(f"{path}: cannot read ({' '.join(str(exc).split())})") from None
    return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]


def _db(power: float) -> float:
    return 10.0 * math.log10(power) if power > 0 else -math.inf


def _rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def format_quality(session: Session, labels: Sequence[str] | None = None) -> str:
    """The session's quality records (or those of ``labels``) as a table: a line per
    take, then its flags and its flagged songs."""
    lines = [
        f"{'take':<8}{'music/noise':>12}{'intended':>10}{'LUFS':>8}{'clipped':>9}"
        f"{'xruns':>7}{'drift ppm':>11}{'resid ms':>10}  flags"
    ]
    takes = [t for t in session.takes if labels is None or t.label in labels]
    for take in sorted(takes, key=lambda t: take_sort_key(t.label)):
        q = take.quality
        if q is None:
            lines.append(f"{take.label:<8}  not measured (align the take, then run quality)")
            continue
        a = q["alignment"]
        lines.append(
            f"{take.label:<8}{_cell(q['music_to_noise_db'], '+.1f', ' dB'):>12}"
            f"{_cell(q['intended_music_to_noise_db'], '+.1f'):>10}"
            f"{_cell(q['loudness_lufs'], '.1f'):>8}{q['clipped_samples']:>9}{q['xruns']:>7}"
            f"{_cell(a.get('drift_ppm'), '.1f'):>11}{_cell(a.get('max_residual_ms'), '.3f'):>10}"
            f"  {len(q['flags']) or 'none'}"
        )
        if q.get("ratio_note"):
            lines.append(f"    {q['ratio_note']}")
        lines.extend(f"    ! {flag}" for flag in q["flags"])
        for song in q["songs"]:
            lines.extend(
                f"    ! song {song['index'] + 1} {song['title']!r}: {f}" for f in song["flags"]
            )
    return "\n".join(lines)


def _cell(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"
