"""The "no match" threshold, calibrated on queries that sound like real takes.

A threshold is the score that a query of a song which is *not* in the database should not
reach: with it, at most ``false_match_rate`` (default 1 %) of such queries are answered
with a song. The database's own songs stand in for unknown ones: excerpts of indexed
songs are played through a simulated playback path (a synthetic room and a
microphone/speaker impulse response from ``afp_core.training.irs``, then background
noise at 0-20 dB SNR from ``afp_core.augment.synthesise_noise``) and searched with their
own song left out, so that each is an impostor with the sound of a recording rather than
of a clean file. Each excerpt gives one impostor score per query length (its first L
seconds) and decision rule; the threshold for a length is the score that lets
``false_match_rate`` of them through (``threshold_at_false_match_rate``).

Copies are not impostors: an excerpt whose *clean* version matches another song almost
exactly (mean similarity >= ``copy_similarity`` over the longest length, e.g. the same
recording filed twice, or a shared intro) is drawn again, else the few copies a library
holds would set the threshold alone.

Calibrating from the database's vectors alone (``afp_core.search.calibrate_threshold``,
clean spans of indexed songs) is the fallback when the songs' files cannot be read.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import signal

from afp_core.audio import probe_audio
from afp_core.augment import NOISE_KINDS, mix_at_snr, synthesise_noise
from afp_core.config import SearchConfig
from afp_core.database import FingerprintDB, Song
from afp_core.errors import AfpError
from afp_core.faults import fault_point
from afp_core.models import Fingerprinter
from afp_core.query import embed_audio, load_query
from afp_core.search import METHODS, identify_vectors, search_offset_consistent
from afp_core.tasks import TaskState
from afp_core.training.irs import make_mic_ir, make_room_ir

CALIBRATED_QUERY_S: tuple[float, ...] = (1, 2, 3, 4, 5, 10, 15)
SOURCE = "distorted excerpts of the database's songs, each searched without its own song"


@dataclasses.dataclass(frozen=True)
class CalibrationSettings:
    """How the impostor queries are made; the defaults are what ``afp index`` uses."""

    false_match_rate: float = 0.01
    lengths_s: tuple[float, ...] = CALIBRATED_QUERY_S
    excerpts: int = 300  # at most; 20 per song in a small library (few songs, few impostors)
    excerpts_per_song: int = 20
    snr_db: tuple[float, float] = (0.0, 20.0)
    copy_similarity: float = 0.9
    tries: int = 5
    seed: int = 0


def threshold_at_false_match_rate(scores: Sequence[float] | None, rate: float) -> float | None:
    """The lowest score that lets at most ``rate`` of the impostor ``scores`` through.

    A score counts as a match when it is >= the threshold; the threshold sits just above
    the impostor score ranked ``floor(rate * n)`` from the top (None without impostors).
    """
    if not scores:
        return None
    ranked = np.sort(np.asarray(scores, np.float64))[::-1]
    allowed = math.floor(rate * len(ranked))
    return float(np.nextafter(ranked[allowed], np.inf))


def play_through_room(
    audio: np.ndarray,
    sample_rate: int,
    rng: np.random.Generator,
    snr_db: tuple[float, float] = CalibrationSettings.snr_db,
) -> np.ndarray:
    """``audio`` as a microphone in a random room would record it (float32, same length):
    a room and a microphone response, then noise at an SNR drawn from ``snr_db``."""
    x = np.asarray(audio, np.float64)
    for ir in (make_room_ir(rng, sample_rate), make_mic_ir(rng, sample_rate)):
        x = signal.fftconvolve(x, ir)[: len(audio)]
    kind = NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))]
    noise = synthesise_noise(kind, len(x) / sample_rate, sample_rate, rng)
    snr = float(rng.uniform(*snr_db))
    return mix_at_snr(x.astype(np.float32), noise, snr, rng)


def calibrate_from_audio(
    db: FingerprintDB,
    model: Fingerprinter,
    *,
    k: int = SearchConfig.k,
    settings: CalibrationSettings = CalibrationSettings(),
    device: str | torch.device = "cpu",
    task: TaskState | None = None,
    save: bool = True,
) -> dict[str, dict[float, float]] | None:
    """Thresholds per rule and query length (s) from impostor excerpts (module docstring).

    Lengths longer than every readable song are left out. Returns None, with nothing
    saved, when fewer than two indexed songs can be read (the caller falls back). With
    ``save`` the thresholds go into the manifest's search settings, keyed by window count
    as ``afp_core.search.stored_threshold`` reads them, with the ``k`` and nprobe they
    were measured with and how they were made.
    """
    audio = model.spec.audio
    rate = audio.sample_rate
    songs = [s for s in db.songs("indexed") if _readable(s)]
    if len(songs) < 2:
        return None
    longest_s = max(s.duration_s for s in songs)
    lengths = sorted(x for x in settings.lengths_s if x <= longest_s)
    if not lengths:
        return None
    windows = {x: audio.windows_in(x) for x in lengths}
    rng = np.random.default_rng(settings.seed)
    weights = np.array([max(s.duration_s, 0.0) for s in songs])
    scores: dict[str, dict[float, list[float]]] = {m: {x: [] for x in lengths} for m in METHODS}
    count = min(settings.excerpts, settings.excerpts_per_song * len(songs))
    task = task or TaskState()
    task.set_total(count, "calibrating the no-match threshold")
    for pick in rng.choice(len(songs), size=count, p=weights / weights.sum()):
        task.check_cancelled()
        song = songs[int(pick)]
        span = min(max(lengths), song.duration_s)
        excerpt = _impostor_excerpt(db, model, song, span, rng, k, settings, device)
        if excerpt is not None:
            recorded = play_through_room(excerpt, rate, rng, settings.snr_db)
            heard = embed_audio(model, recorded, device=device)
            for length in lengths:
                n = windows[length]
                if n > len(heard):
                    continue
                for method in METHODS:
                    match = identify_vectors(db, heard[:n], method, k=k, exclude_song=song.id)
                    scores[method][length].append(float(match.score))
        fault_point("index.calibrate")
        task.advance(1)
    table = {
        method: {
            x: t
            for x, values in by_length.items()
            if (t := threshold_at_false_match_rate(values, settings.false_match_rate)) is not None
        }
        for method, by_length in scores.items()
    }
    if save:
        means = {m: {x: float(np.mean(v)) for x, v in by.items() if v} for m, by in scores.items()}
        _save(db, table, means, windows, k, settings)
    return table


def _readable(song: Song) -> bool:
    try:
        return probe_audio(Path(song.source)).duration_s > 0
    except (AfpError, OSError):
        return False


def _impostor_excerpt(
    db: FingerprintDB,
    model: Fingerprinter,
    song: Song,
    span_s: float,
    rng: np.random.Generator,
    k: int,
    settings: CalibrationSettings,
    device: str | torch.device,
) -> np.ndarray | None:
    """A clean excerpt of ``song`` that no other song copies, or None after ``tries``."""
    audio = model.spec.audio
    for _ in range(settings.tries):
        start = float(rng.uniform(0.0, max(song.duration_s - span_s, 0.0)))
        try:
            excerpt = load_query(Path(song.source), audio.sample_rate, start, span_s)
        except AfpError:
            return None
        if len(excerpt) < audio.window or not np.any(excerpt):
            continue  # too short, or digital silence: every song's silence is the same
        clean = embed_audio(model, excerpt, device=device)
        # plain similarity: a copy is a copy however hub-like its windows are
        copy = search_offset_consistent(db, clean, k=k, exclude_song=song.id, hub_weight=0.0)
        if copy.score < settings.copy_similarity:
            return excerpt
    return None


def _save(
    db: FingerprintDB,
    table: dict[str, dict[float, float]],
    means: dict[str, dict[float, float]],
    windows: dict[float, int],
    k: int,
    settings: CalibrationSettings,
) -> None:
    """The manifest entry per rule; ``impostor_mean_by_windows`` is what a fused decision
    (``afp_core.fusion``) scales the score by."""
    thresholds: dict[str, Any] = {}
    for method, by_length in table.items():
        thresholds[method] = {
            "k": k,
            "nprobe": db.nprobe,
            "by_windows": {str(windows[x]): t for x, t in by_length.items()},
            "impostor_mean_by_windows": {str(windows[x]): m for x, m in means[method].items()},
            "false_match_rate": settings.false_match_rate,
            "source": SOURCE,
        }
    db.save_search_settings(thresholds=thresholds, calibrated_generation=db.generation)
