"""The baseline protocol (paper §5.2, Table 3): noise added offline at fixed SNRs.

Excerpts are cut at random positions inside each query song, mixed with noise at each
SNR, cut into queries of several lengths (prefixes of the same excerpt, so the lengths
are compared on the same audio) and identified with each decision rule. A hit is the
right song with the returned offset within ±500 ms. Songs that are not in the database
measure how often an unknown song is reported as a match (with a threshold).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from afp_core.audio import AudioInfo
from afp_core.augment import mix_at_snr
from afp_core.database import FingerprintDB, Song
from afp_core.models import Fingerprinter
from afp_core.query import embed_audio, load_query
from afp_core.search import identify_vectors, stored_threshold
from afp_core.tasks import TaskState


@dataclasses.dataclass(frozen=True)
class BaselineSettings:
    """What the protocol varies; the defaults follow paper Table 3 (1-5 s) plus 10 s."""

    lengths_s: tuple[float, ...] = (1, 2, 3, 4, 5, 10)
    snrs_db: tuple[float | None, ...] = (None, 15.0, 10.0, 5.0, 0.0)  # None: clean
    outsider_snrs_db: tuple[float | None, ...] = (None, 5.0)
    excerpts_per_song: int = 2
    methods: tuple[str, ...] = ("sequence", "vote")
    k: int = 4
    offset_tolerance_s: float = 0.5
    # "no match" threshold applied afterwards to the recorded scores: a number, "auto" (the
    # database's calibrated values) or None. Hit rates never count rejections (the paper's
    # protocol has none); the rejection trade-off is summarised on its own.
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

    @property
    def rejected(self) -> bool:
        """Whether the threshold turns this answer into "no match"."""
        return self.found is None or (self.threshold is not None and self.score < self.threshold)


def condition_name(snr_db: float | None) -> str:
    return "clean" if snr_db is None else f"{snr_db:g} dB"


def run_baseline_protocol(
    db: FingerprintDB,
    model: Fingerprinter,
    songs: Sequence[QuerySong],
    noise: np.ndarray,
    settings: BaselineSettings = BaselineSettings(),
    *,
    task: TaskState | None = None,
    device: str | torch.device = "cpu",
) -> list[Trial]:
    """Identify noisy excerpts of ``songs``; one ``Trial`` per (excerpt, SNR, length, rule)."""
    task = task or TaskState()
    audio = model.spec.audio
    rng = np.random.default_rng(settings.seed)
    longest = max(settings.lengths_s)
    usable = [s for s in songs if s.info.duration_s >= longest + 1]
    windows = [round((q - audio.window_s) / audio.hop_s) + 1 for q in settings.lengths_s]
    thresholds = {
        (method, n): _threshold(db, settings, method, n)
        for method in settings.methods
        for n in windows
    }
    task.set_total(len(usable) * settings.excerpts_per_song)
    trials: list[Trial] = []
    for query in usable:
        info, song = query.info, query.song
        snrs = settings.snrs_db if song is not None else settings.outsider_snrs_db
        for excerpt in range(settings.excerpts_per_song):
            task.check_cancelled()
            start = float(rng.uniform(0, info.duration_s - longest - 0.5))
            clean = load_query(Path(info.path), audio.sample_rate, start, longest)
            for snr in snrs:
                mixed = clean if snr is None else mix_at_snr(clean, noise, snr, rng)
                vectors = embed_audio(model, mixed, device=device)
                for length in settings.lengths_s:
                    n = round((length - audio.window_s) / audio.hop_s) + 1
                    for method in settings.methods:
                        match = identify_vectors(
                            db, vectors[:n], method=method, k=settings.k, hop_s=audio.hop_s
                        )
                        hit = song is not None and match.song is not None
                        hit = hit and match.song.id == song.id
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
                                threshold=thresholds[method, n],
                            )
                        )
            task.advance(1, info.path.name)
    return trials


def _threshold(db: FingerprintDB, settings: BaselineSettings, method: str, n: int) -> float | None:
    if settings.threshold == "auto":
        return stored_threshold(db, method, n, k=settings.k)
    return None if settings.threshold is None else float(settings.threshold)


def summarise_trials(trials: Sequence[Trial], settings: BaselineSettings) -> dict:
    """Accuracy per rule, condition and length (with its standard error); outsiders.

    ``accuracy`` is the paper's Top-1 hit rate (right song, offset within the tolerance),
    ``song_accuracy`` counts the right song whatever the offset.
    """
    cell_keys = [
        (m, condition_name(s), q)
        for m in settings.methods
        for s in settings.snrs_db
        for q in settings.lengths_s
    ]
    results: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
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
        results.setdefault(method, {}).setdefault(condition, {})[f"{length:g}"] = {
            "accuracy": float(hits.mean()),
            "stderr": float(hits.std(ddof=0) / np.sqrt(len(rows))),
            "song_accuracy": float(np.mean([t.song_hit for t in rows])),
            "rejected": float(np.mean([t.rejected for t in rows])),
            "accuracy_with_rejection": float(
                np.mean([t.offset_hit and not t.rejected for t in rows])
            ),
            "queries": len(rows),
        }
    outsiders: dict[str, dict[str, dict[str, float]]] = {}
    for method in settings.methods:
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
        "results": results,
        "not_in_database": outsiders,
    }


METHOD_LABELS = {"sequence": "offset-consistent search", "vote": "majority vote"}


def format_accuracy_tables(summary: dict) -> str:
    """Markdown tables like paper Table 3: rows are conditions, columns query lengths."""
    settings = summary["settings"]
    lengths = [f"{x:g}" for x in settings["lengths_s"]]
    lines: list[str] = []
    for method, rows in summary["results"].items():
        first = next(iter(next(iter(rows.values())).values()))
        rejection = "no rejection (as the paper)"
        lines += [
            f"Top-1 hit rate % (right song, offset within ±{settings['offset_tolerance_s']:g} s)"
            f" — {METHOD_LABELS.get(method, method)}, k={settings['k']}, "
            f"{first['queries']} queries per cell, {rejection}",
            "",
            "| condition | " + " | ".join(f"{x} s" for x in lengths) + " |",
            "|---|" + "---|" * len(lengths),
        ]
        for condition, cells in rows.items():
            values = [
                f"{100 * cells[x]['accuracy']:.1f} ±{100 * cells[x]['stderr']:.1f}"
                if x in cells
                else "-"
                for x in lengths
            ]
            lines.append(f"| {condition} | " + " | ".join(values) + " |")
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
