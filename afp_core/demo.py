"""The README's main job: an end-to-end demo on the development music.

Builds (or reuses) a database from the development music, keeps a few songs out of it,
cuts excerpts of indexed songs, distorts them with speech babble at several SNRs, and
identifies them with both decision rules; excerpts of the held-out songs measure how
often a song that is not in the database is reported as a match. Prints a table and
writes ``report.json`` and ``report.md``.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from afp_core import __version__
from afp_core.audio import AudioInfo, iter_audio_files, probe_audio
from afp_core.augment import make_babble, mix_at_snr
from afp_core.database import FingerprintDB, Song
from afp_core.devdata import INSTALL_HINT, find_dev_music, find_dev_speech
from afp_core.errors import AfpError, AudioError
from afp_core.fileutil import atomic_write_text, file_sha256
from afp_core.indexing import index_library, open_database_for_indexing
from afp_core.models import Fingerprinter
from afp_core.query import embed_audio, load_query
from afp_core.search import identify_vectors
from afp_core.tasks import TaskState, TqdmProgress

QUERY_LENGTHS_S = (1, 2, 3, 5, 10)
SNRS_DB = (None, 10.0, 5.0, 0.0)  # None: clean
METHODS = ("sequence", "vote")
OFFSET_TOLERANCE_S = 0.5


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    library: list[Path] | None = None
    noise: list[Path] | None = None
    out: Path = Path("demo-output")
    songs: int = 0
    held_out: int = 10
    excerpts: int = 2
    seed: int = 0
    model: Path | None = None
    device: str = "cpu"
    batch_size: int = 256
    quiet: bool = False


def condition_name(snr_db: float | None) -> str:
    return "clean" if snr_db is None else f"babble {snr_db:g} dB"


def run_demo_job(options: DemoOptions) -> dict:
    """Run the demo end to end; returns the report it wrote."""
    log = (lambda _: None) if options.quiet else (lambda text: print(text, file=sys.stderr))
    rng = np.random.default_rng(options.seed)
    music = list(options.library) if options.library else find_dev_music()
    if not music:
        raise AfpError(INSTALL_HINT)
    candidates = []
    for path in iter_audio_files(music):
        try:
            info = probe_audio(path)
        except AudioError as exc:
            log(f"skipped: {exc}")
            continue
        if info.duration_s >= max(QUERY_LENGTHS_S) + 2:
            candidates.append(info)
    if len(candidates) < 3:
        raise AfpError(f"the demo needs at least 3 songs of 12 s or more, found {len(candidates)}")
    order = rng.permutation(len(candidates))
    held_n = min(options.held_out, len(candidates) // 3)
    held = [candidates[i] for i in order[:held_n]]
    indexed = [candidates[i] for i in order[held_n:]]
    if options.songs:
        indexed = indexed[: options.songs]

    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    db, checkpoint = open_database_for_indexing(out / "db", options.model, on_notice=log)
    held_sums = {file_sha256(i.path) for i in held}
    if any(db.has_song(s) for s in held_sums):
        raise AfpError(
            f"{out / 'db'}: holds songs this run keeps out of the database (another --seed?); "
            "use another --out or delete that folder"
        )
    model = checkpoint.model.to(options.device)
    log(
        f"indexing {len(indexed)} songs into {out / 'db'} ({len(held)} kept out for no-match tests)"
    )
    progress = None if options.quiet else TqdmProgress(unit="s", description="indexing")
    try:
        result = index_library(
            db,
            model,
            [i.path for i in indexed],
            batch_size=options.batch_size,
            device=options.device,
            task=TaskState(progress),
            on_skip=lambda s: log(f"skipped: {s.reason}"),
        )
    finally:
        if progress is not None:
            progress.close()
    log(result.summary())

    sample_rate = model.spec.audio.sample_rate
    noise_files = list(options.noise) if options.noise else find_dev_speech()
    if noise_files:
        noise = make_babble(noise_files, 120.0, sample_rate, rng)
        noise_kind = "speech babble" if not options.noise else "given noise"
    else:
        log("no speech found for babble: using pink noise")
        noise = make_pink_noise(120 * sample_rate, rng)
        noise_kind = "pink noise"

    by_source = {song.source: song for song in db.songs()}
    started = time.monotonic()
    trials = run_trials(db, model, indexed, held, by_source, noise, rng, options)
    elapsed = time.monotonic() - started
    report = summarise(trials, options, db, checkpoint.sha256, noise_kind, elapsed)
    report["indexing"] = {
        "added": len(result.added),
        "already_indexed": len(result.duplicates),
        "skipped": [s.reason for s in result.skipped],
        "audio_s": result.audio_s,
        "elapsed_s": result.elapsed_s,
    }
    table = format_table(report)
    print(table)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=str))
    atomic_write_text(out / "report.md", "# afp demo\n\n" + table + "\n")
    log(f"report written to {out / 'report.json'} and {out / 'report.md'}")
    return report


def make_pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Pink (1/f power) noise of unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
    pink = np.fft.irfft(spectrum, n)
    return (pink / np.sqrt(np.mean(pink**2))).astype(np.float32)


def run_trials(
    db: FingerprintDB,
    model: Fingerprinter,
    indexed: list[AudioInfo],
    held: list[AudioInfo],
    by_source: dict[str, Song],
    noise: np.ndarray,
    rng: np.random.Generator,
    options: DemoOptions,
) -> list[dict]:
    """One record per (excerpt, condition, query length, method)."""
    sample_rate = model.spec.audio.sample_rate
    hop_s = model.spec.audio.hop_s
    longest = max(QUERY_LENGTHS_S)
    jobs = [(info, True) for info in indexed] + [(info, False) for info in held]
    progress = None if options.quiet else TqdmProgress(unit="excerpt", description="querying")
    task = TaskState(progress)
    task.set_total(len(jobs) * options.excerpts)
    trials = []
    try:
        for info, in_db in jobs:
            song = by_source.get(str(info.path.resolve()))
            if in_db and song is None:
                task.advance(options.excerpts)
                continue
            for _ in range(options.excerpts):
                start = float(rng.uniform(0, info.duration_s - longest - 1))
                clean = load_query(info.path, sample_rate, start, longest)
                snrs = SNRS_DB if in_db else (None, 5.0)
                for snr in snrs:
                    audio = clean if snr is None else mix_at_snr(clean, noise, snr, rng)
                    vectors = embed_audio(model, audio, device=options.device)
                    for length in QUERY_LENGTHS_S:
                        n = round((length - model.spec.audio.window_s) / hop_s) + 1
                        for method in METHODS:
                            match = identify_vectors(
                                db, vectors[:n], method=method, hop_s=hop_s, threshold="auto"
                            )
                            trials.append(
                                {
                                    "song": info.path.name,
                                    "in_database": in_db,
                                    "start_s": start,
                                    "condition": condition_name(snr),
                                    "length_s": length,
                                    "method": method,
                                    "found": match.song.source if match.song else None,
                                    "offset_s": match.offset_s,
                                    "score": float(match.score),
                                    "rejected": match.song is None,
                                    "song_hit": bool(
                                        song and match.song and match.song.id == song.id
                                    ),
                                    "offset_hit": bool(
                                        song
                                        and match.song
                                        and match.song.id == song.id
                                        and match.offset_s is not None
                                        and abs(match.offset_s - start) <= OFFSET_TOLERANCE_S
                                    ),
                                }
                            )
                task.advance(1, info.path.name)
    finally:
        if progress is not None:
            progress.close()
    return trials


def summarise(
    trials: list[dict],
    options: DemoOptions,
    db: FingerprintDB,
    model_sha: str,
    noise_kind: str,
    elapsed: float,
) -> dict:
    """Accuracy per (method, condition, length) for indexed songs; scores of outsiders."""
    results: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    conditions = [condition_name(s) for s in SNRS_DB]
    for method in METHODS:
        results[method] = {}
        for condition in conditions:
            results[method][condition] = {}
            for length in QUERY_LENGTHS_S:
                rows = [
                    t
                    for t in trials
                    if t["in_database"]
                    and t["method"] == method
                    and t["condition"] == condition
                    and t["length_s"] == length
                ]
                if rows:
                    results[method][condition][str(length)] = {
                        "song_accuracy": float(np.mean([t["song_hit"] for t in rows])),
                        "offset_accuracy": float(np.mean([t["offset_hit"] for t in rows])),
                        "queries": len(rows),
                    }
    outsiders: dict[str, dict[str, dict[str, float]]] = {}
    for method in METHODS:
        outsiders[method] = {}
        for length in QUERY_LENGTHS_S:
            inside = [
                t
                for t in trials
                if t["in_database"] and t["method"] == method and t["length_s"] == length
            ]
            outside = [
                t
                for t in trials
                if not t["in_database"] and t["method"] == method and t["length_s"] == length
            ]
            if outside:
                outsiders[method][str(length)] = {
                    "false_match_rate": float(np.mean([not t["rejected"] for t in outside])),
                    "rejected_in_database": float(np.mean([t["rejected"] for t in inside])),
                    "median_score_in_database": float(np.median([t["score"] for t in inside])),
                    "median_score_not_in_database": float(np.median([t["score"] for t in outside])),
                    "queries_not_in_database": len(outside),
                }
    return {
        "afp_version": __version__,
        "torch_version": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''} "
        f"{torch.get_num_threads()} threads".strip(),
        "options": {k: str(v) for k, v in dataclasses.asdict(options).items()},
        "database": db.info(),
        "model_sha256": model_sha,
        "noise": noise_kind,
        "query_lengths_s": list(QUERY_LENGTHS_S),
        "offset_tolerance_s": OFFSET_TOLERANCE_S,
        "results": results,
        "not_in_database": outsiders,
        "query_time_s": elapsed,
    }


def format_table(report: dict) -> str:
    """Markdown tables: song accuracy (and offset accuracy) per condition and query length."""
    lines = []
    lengths = [str(x) for x in report["query_lengths_s"]]
    for method, label in (("sequence", "offset-consistent search"), ("vote", "majority vote k=4")):
        rows = report["results"][method]
        any_row = next(iter(rows.values()), {})
        n = next(iter(any_row.values()), {}).get("queries", 0)
        lines.append(
            f"Song accuracy % (offset within ±{report['offset_tolerance_s']} s) — {label}, "
            f"{n} queries per cell, noise: {report['noise']}"
        )
        lines.append("")
        lines.append("| condition | " + " | ".join(f"{x} s" for x in lengths) + " |")
        lines.append("|---|" + "---|" * len(lengths))
        for condition, cells in rows.items():
            values = [
                f"{100 * cells[x]['song_accuracy']:.1f} ({100 * cells[x]['offset_accuracy']:.1f})"
                if x in cells
                else "-"
                for x in lengths
            ]
            lines.append(f"| {condition} | " + " | ".join(values) + " |")
        lines.append("")
    outsiders = report["not_in_database"]
    if any(outsiders.values()):
        n = next(iter(next(iter(outsiders.values())).values()))["queries_not_in_database"]
        lines.append(
            f"Songs NOT in the database ({n} queries per cell, clean and babble 5 dB): "
            "% wrongly matched / % of in-database queries rejected (calibrated threshold)"
        )
        lines.append("")
        lines.append("| method | " + " | ".join(f"{x} s" for x in lengths) + " |")
        lines.append("|---|" + "---|" * len(lengths))
        for method, cells in outsiders.items():
            values = [
                f"{100 * cells[x]['false_match_rate']:.1f} / "
                f"{100 * cells[x]['rejected_in_database']:.1f}"
                if x in cells
                else "-"
                for x in lengths
            ]
            lines.append(f"| {method} | " + " | ".join(values) + " |")
    return "\n".join(lines)
