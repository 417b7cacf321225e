"""The baseline protocol (paper §5.2, Table 3): noise added offline at fixed SNRs.

Excerpts are cut at random positions inside each query song, mixed with noise at each
SNR (default 0, 5, 10 and 15 dB; clean on request), analysed once by the recogniser
(``Recogniser.analyse``) and identified as queries of several lengths (prefixes of the
same excerpt, so the lengths are compared on the same audio) with each decision rule.
A hit is the right song with the returned offset within ±500 ms of the excerpt's start.
Songs that are not in the database measure how often an unknown song is reported as a
match (with a threshold).

``repeats`` runs the whole draw again with seeds ``seed``, ``seed + 1``, ...: each cell
then reports the mean hit rate over the repeats and its spread (standard deviation
across repeats) next to the binomial standard error over all its queries.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from afp_core.audio import AudioInfo, iter_audio_files, load_audio, probe_audio
from afp_core.augment import mix_at_snr
from afp_core.database import Song
from afp_core.errors import AudioError, ConfigError
from afp_core.fileutil import file_sha256
from afp_core.query import load_query
from afp_core.recogniser import Recogniser
from afp_core.tasks import TaskState

DEFAULT_SNRS_DB: tuple[float | None, ...] = (0.0, 5.0, 10.0, 15.0)


@dataclasses.dataclass(frozen=True)
class BaselineSettings:
    """What the protocol varies; the defaults follow paper Table 3 (1-5 s) plus 10 s.

    ``snrs_db``: None stands for clean. ``methods``: None runs every rule of the
    recogniser. ``threshold``: the "no match" threshold applied afterwards to the
    recorded scores: a number, "auto" (the recogniser's calibrated values) or None. Hit
    rates never count rejections (the paper's protocol has none); the rejection
    trade-off is summarised on its own.
    """

    lengths_s: tuple[float, ...] = (1, 2, 3, 4, 5, 10)
    snrs_db: tuple[float | None, ...] = DEFAULT_SNRS_DB
    outsider_snrs_db: tuple[float | None, ...] = (None, 5.0)
    excerpts_per_song: int = 2
    repeats: int = 1
    methods: tuple[str, ...] | None = None
    offset_tolerance_s: float = 0.5
    threshold: float | str | None = None
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class QuerySong:
    """A song to cut queries from; ``song`` is its catalogue row (None: not in the database)."""

    info: AudioInfo
    song: Song | None


@dataclasses.dataclass(frozen=True)
class Trial:
    """One identified query."""

    song: str
    in_database: bool
    excerpt: int
    start_s: float
    condition: str
    length_s: float
    method: str
    found: str | None
    offset_s: float | None
    score: float
    song_hit: bool
    offset_hit: bool
    threshold: float | None = None
    repeat: int = 0

    @property
    def rejected(self) -> bool:
        """Whether the threshold turns this answer into "no match"."""
        return self.found is None or (self.threshold is not None and self.score < self.threshold)


@dataclasses.dataclass
class BaselineResult:
    """One recogniser's run: its description, the trials and their summary."""

    system: str
    recogniser: dict[str, Any]
    settings: BaselineSettings
    trials: list[Trial]
    summary: dict[str, Any]
    notes: list[str]
    elapsed_s: float


def condition_name(snr_db: float | None) -> str:
    return "clean" if snr_db is None else f"{snr_db:g} dB"


def check_baseline_settings(settings: BaselineSettings, recogniser: Recogniser) -> tuple[str, ...]:
    """Refuse settings the recogniser cannot run (before work); returns the rules to run."""
    if not settings.lengths_s or any(
        not (isinstance(x, int | float) and math.isfinite(x) and x > 0) for x in settings.lengths_s
    ):
        raise ConfigError(f"lengths: {settings.lengths_s!r} must be positive seconds")
    short = [x for x in settings.lengths_s if x < recogniser.min_query_s - 1e-9]
    if short:
        raise ConfigError(
            f"lengths: {short[0]:g} s is shorter than the {recogniser.min_query_s:g} s a "
            f"{recogniser.kind} recogniser needs"
        )
    if not settings.snrs_db:
        raise ConfigError("snrs: give at least one condition")
    if settings.excerpts_per_song < 1 or settings.repeats < 1:
        raise ConfigError("excerpts and repeats must be at least 1")
    methods = tuple(settings.methods) if settings.methods else tuple(recogniser.methods)
    unknown = [m for m in methods if m not in recogniser.methods]
    if unknown:
        raise ConfigError(
            f"decision rule {', '.join(unknown)} unknown to a {recogniser.kind} recogniser "
            f"(it has: {', '.join(recogniser.methods)})"
        )
    threshold = settings.threshold
    if not (threshold is None or threshold == "auto" or isinstance(threshold, int | float)):
        raise ConfigError(f"threshold: {threshold!r} is not a number, 'auto' or None")
    return methods


def run_baseline_protocol(
    recogniser: Recogniser,
    songs: Sequence[QuerySong],
    noise: np.ndarray,
    settings: BaselineSettings = BaselineSettings(),
    *,
    task: TaskState | None = None,
    system: str | None = None,
) -> BaselineResult:
    """Identify noisy excerpts of ``songs``; one ``Trial`` per (repeat, excerpt, SNR, length,
    rule). ``noise`` is mono at the recogniser's sample rate."""
    task = task or TaskState()
    methods = check_baseline_settings(settings, recogniser)
    if len(noise) == 0 and any(s is not None for s in settings.snrs_db):
        raise AudioError("the noise for the baseline protocol is empty")
    rate = recogniser.sample_rate
    longest = max(settings.lengths_s)
    usable = [s for s in songs if s.info.duration_s >= longest + 1]
    notes = []
    if len(usable) < len(songs):
        notes.append(
            f"{len(songs) - len(usable)} songs shorter than {longest + 1:g} s left out "
            f"(queries up to {longest:g} s)"
        )
    thresholds = {
        (method, length): _threshold(recogniser, settings, method, length)
        for method in methods
        for length in settings.lengths_s
    }
    started = time.monotonic()
    task.set_total(len(usable) * settings.excerpts_per_song * settings.repeats)
    trials: list[Trial] = []
    for repeat in range(settings.repeats):
        rng = np.random.default_rng(settings.seed + repeat)
        for query in usable:
            info, song = query.info, query.song
            snrs = settings.snrs_db if song is not None else settings.outsider_snrs_db
            for excerpt in range(settings.excerpts_per_song):
                task.check_cancelled()
                start = float(rng.uniform(0, info.duration_s - longest - 0.5))
                clean = load_query(Path(info.path), rate, start, longest)
                needed = round(longest * rate)  # resampling may round a sample off
                if len(clean) < needed:
                    clean = np.pad(clean, (0, needed - len(clean)))
                for snr in snrs:
                    mixed = clean if snr is None else mix_at_snr(clean, noise, snr, rng)
                    analysis = recogniser.analyse(mixed)
                    for length in settings.lengths_s:
                        for method in methods:
                            match = recogniser.identify(analysis, 0.0, length, method)
                            hit = (
                                song is not None
                                and match.song is not None
                                and match.song.id == song.id
                            )
                            near = match.offset_s is not None and (
                                abs(match.offset_s - start) <= settings.offset_tolerance_s
                            )
                            trials.append(
                                Trial(
                                    song=info.path.name,
                                    in_database=song is not None,
                                    excerpt=excerpt,
                                    start_s=start,
                                    condition=condition_name(snr),
                                    length_s=length,
                                    method=method,
                                    found=match.song.title if match.song else None,
                                    offset_s=match.offset_s,
                                    score=float(match.score),
                                    song_hit=hit,
                                    offset_hit=hit and near,
                                    threshold=thresholds[method, length],
                                    repeat=repeat,
                                )
                            )
                task.advance(1, info.path.name)
    description = recogniser.describe()
    summary = summarise_trials(trials, settings, methods=methods, k=description.get("k"))
    return BaselineResult(
        system=system or recogniser.kind,
        recogniser=description,
        settings=settings,
        trials=trials,
        summary=summary,
        notes=notes,
        elapsed_s=round(time.monotonic() - started, 3),
    )


def _threshold(
    recogniser: Recogniser, settings: BaselineSettings, method: str, length: float
) -> float | None:
    if settings.threshold == "auto":
        return recogniser.threshold(method, length)
    return None if settings.threshold is None else float(settings.threshold)


def query_songs(recogniser: Recogniser, paths: Iterable[Path]) -> list[QuerySong]:
    """The audio files under ``paths`` as query songs, found in the catalogue by content.

    Files whose checksum is not in the recogniser's catalogue become songs NOT in the
    database (they measure false matches). Unreadable files: ``AudioError``.
    """
    by_checksum = {song.checksum: song for song in recogniser.songs()}
    return [
        QuerySong(probe_audio(path), by_checksum.get(file_sha256(path)))
        for path in iter_audio_files(paths)
    ]


def load_noise(
    paths: Iterable[Path], sample_rate: int, seed: int = 0, max_s: float = 600.0
) -> np.ndarray:
    """Noise clips under ``paths``, each at unit RMS, joined in a seeded order (<= max_s)."""
    files = list(iter_audio_files(paths))
    if not files:
        raise AudioError(f"{', '.join(str(p) for p in paths)}: no noise audio files found")
    order = np.random.default_rng(seed).permutation(len(files))
    clips, total = [], 0
    for i in order:
        clip = load_audio(files[i], sample_rate)
        rms = float(np.sqrt(np.mean(np.square(clip, dtype=np.float64)))) if len(clip) else 0.0
        if rms <= 1e-9:
            continue  # silent clip: cannot be scaled to an SNR
        clips.append((clip / rms).astype(np.float32))
        total += len(clip)
        if total >= max_s * sample_rate:
            break
    if not clips:
        raise AudioError(f"{files[0].parent}: every noise file is silent")
    return np.concatenate(clips)[: round(max_s * sample_rate)]


def summarise_trials(
    trials: Sequence[Trial],
    settings: BaselineSettings,
    *,
    methods: Sequence[str] | None = None,
    k: int | None = None,
) -> dict:
    """Hit rate per rule, condition and length, with spread across repeats; outsiders.

    ``accuracy`` is the paper's Top-1 hit rate (right song, offset within the tolerance),
    mean over repeats; ``std`` its standard deviation across repeats (None for one);
    ``stderr`` the binomial standard error over all the cell's queries;
    ``song_accuracy`` counts the right song whatever the offset.
    """
    methods = list(methods or settings.methods or dict.fromkeys(t.method for t in trials))
    cell_keys = [
        (m, condition_name(s), q)
        for m in methods
        for s in settings.snrs_db
        for q in settings.lengths_s
    ]
    results: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for method, condition, length in cell_keys:
        rows = [
            t
            for t in trials
            if t.in_database
            and t.method == method
            and t.condition == condition
            and t.length_s == length
        ]
        if not rows:
            continue
        hits = np.array([t.offset_hit for t in rows], float)
        repeats = sorted({t.repeat for t in rows})
        per_repeat = [
            float(np.mean([t.offset_hit for t in rows if t.repeat == r])) for r in repeats
        ]
        results.setdefault(method, {}).setdefault(condition, {})[f"{length:g}"] = {
            "accuracy": float(np.mean(per_repeat)),
            "std": float(np.std(per_repeat, ddof=1)) if len(per_repeat) > 1 else None,
            "per_repeat": per_repeat,
            "stderr": float(hits.std(ddof=0) / np.sqrt(len(rows))),
            "song_accuracy": float(np.mean([t.song_hit for t in rows])),
            "rejected": float(np.mean([t.rejected for t in rows])),
            "accuracy_with_rejection": float(
                np.mean([t.offset_hit and not t.rejected for t in rows])
            ),
            "queries": len(rows),
            "repeats": len(repeats),
        }
    outsiders: dict[str, dict[str, dict[str, float]]] = {}
    for method in methods:
        for length in settings.lengths_s:
            rows = [
                t
                for t in trials
                if not t.in_database and t.method == method and t.length_s == length
            ]
            if rows:
                outsiders.setdefault(method, {})[f"{length:g}"] = {
                    "false_match_rate": float(np.mean([not t.rejected for t in rows])),
                    "median_score": float(np.median([t.score for t in rows])),
                    "queries": len(rows),
                }
    return {
        "settings": dataclasses.asdict(settings),
        "k": k,
        "results": results,
        "not_in_database": outsiders,
    }


METHOD_LABELS = {
    "sequence": "offset-consistent search",
    "vote": "majority vote",
    "landmark": "aligned landmark hashes",
    "fused": "neural and landmark evidence combined",
}


def format_accuracy_tables(summary: dict) -> str:
    """Markdown tables shaped like paper Table 3: rows are query lengths, columns conditions.

    Each cell is the hit rate in % ± its spread across repeats (or, for a single
    repeat, ± the binomial standard error).
    """
    settings = summary["settings"]
    lengths = [f"{x:g}" for x in settings["lengths_s"]]
    conditions = [condition_name(s) for s in settings["snrs_db"]]
    k = summary.get("k")
    lines: list[str] = []
    for method, rows in summary["results"].items():
        first = next(iter(next(iter(rows.values())).values()))
        repeats = first.get("repeats", 1)
        spread = f"± std across {repeats} repeats" if repeats > 1 else "± binomial standard error"
        decision = f", k={k}" if k is not None else ""
        lines += [
            f"Top-1 hit rate % (right song, offset within ±{settings['offset_tolerance_s']:g} s)"
            f" — {METHOD_LABELS.get(method, method)}{decision}, {first['queries']} queries per "
            f"cell, {spread}, no rejection (as the paper)",
            "",
            "| query | " + " | ".join(conditions) + " |",
            "|---|" + "---|" * len(conditions),
        ]
        for length in lengths:
            values = []
            for condition in conditions:
                cell = rows.get(condition, {}).get(length)
                if cell is None:
                    values.append("-")
                    continue
                error = cell["std"] if cell.get("std") is not None else cell["stderr"]
                values.append(f"{100 * cell['accuracy']:.1f} ±{100 * error:.1f}")
            lines.append(f"| {length} s | " + " | ".join(values) + " |")
        lines.append("")
    outsiders = summary["not_in_database"]
    if outsiders and settings["threshold"] is not None:
        lines += [
            f'With the {settings["threshold"]} "no match" threshold: % of queries of songs NOT '
            "in the database reported as a match / % of queries of songs in it rejected",
            "",
            "| rule | " + " | ".join(f"{x} s" for x in lengths) + " |",
            "|---|" + "---|" * len(lengths),
        ]
        for method, cells in outsiders.items():
            inside = summary["results"].get(method, {}).values()
            rejected = {x: [c[x]["rejected"] for c in inside if x in c] for x in lengths}
            values = [
                f"{100 * cells[x]['false_match_rate']:.1f} / "
                + (f"{100 * np.mean(rejected[x]):.1f}" if rejected[x] else "-")
                if x in cells
                else "-"
                for x in lengths
            ]
            lines.append(f"| {METHOD_LABELS.get(method, method)} | " + " | ".join(values) + " |")
    return "\n".join(lines).rstrip() + "\n"
