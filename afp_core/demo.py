"""The README's main job: an end-to-end demo on the development music.

Builds (or reuses) a database of the development music with the default model, keeps a
few songs out of it, and runs the baseline protocol (``afp_core.protocols.baseline``):
excerpts of 1-10 s of songs in the database, clean and with speech babble at 15, 10, 5
and 0 dB SNR, identified with both decision rules and the calibrated "no match"
threshold; excerpts of the songs kept out measure how often an unknown song is reported
as a match. Queries come from songs the model did not train on when its checkpoint says
which those are. Prints the tables and writes ``report.json`` and ``report.md``.
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
from afp_core.augment import make_babble
from afp_core.checkpoint import Checkpoint
from afp_core.devdata import INSTALL_HINT, find_dev_music, find_dev_speech
from afp_core.errors import AfpError, AudioError
from afp_core.fileutil import atomic_write_text, file_sha256
from afp_core.indexing import index_library, open_database_for_indexing
from afp_core.protocols.baseline import (
    BaselineSettings,
    QuerySong,
    format_accuracy_tables,
    run_baseline_protocol,
)
from afp_core.recogniser import NeuralRecogniser
from afp_core.tasks import progress_task

SETTINGS = BaselineSettings(snrs_db=(None, 15.0, 10.0, 5.0, 0.0), threshold="auto")


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    library: list[Path] | None = None
    noise: list[Path] | None = None
    out: Path = Path("demo-output")
    songs: int = 0
    held_out: int = 5
    excerpts: int = 2
    seed: int = 0
    model: Path | None = None
    device: str = "cpu"
    batch_size: int = 256
    quiet: bool = False


def unseen_titles(checkpoint: Checkpoint) -> set[str]:
    """Titles of the songs the model's training kept for validation and test."""
    data = checkpoint.meta.get("data", {}) if isinstance(checkpoint.meta, dict) else {}
    return set(data.get("validation_titles", [])) | set(data.get("test_titles", []))


def run_demo_job(options: DemoOptions) -> dict:
    """Run the demo end to end; returns the report it wrote."""
    log = (lambda _: None) if options.quiet else (lambda text: print(text, file=sys.stderr))
    music = list(options.library) if options.library else find_dev_music()
    if not music:
        raise AfpError(INSTALL_HINT)
    candidates: list[AudioInfo] = []
    for path in iter_audio_files(music):
        try:
            info = probe_audio(path)
        except AudioError as exc:
            log(f"skipped: {exc}")
            continue
        if info.duration_s >= max(SETTINGS.lengths_s) + 2:
            candidates.append(info)
    if len(candidates) < 3:
        raise AfpError(f"the demo needs at least 3 songs of 12 s or more, found {len(candidates)}")

    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    db, checkpoint = open_database_for_indexing(out / "db", options.model, on_notice=log)
    model = checkpoint.model.to(options.device)

    # Query songs the model never trained on when the checkpoint names them; songs kept
    # out of the database come from the same pool.
    unseen = unseen_titles(checkpoint)
    pool = [i for i in candidates if i.path.stem in unseen]
    from_unseen = len(pool) >= 3
    if not from_unseen:
        pool = candidates
    rng = np.random.default_rng(options.seed)
    order = rng.permutation(len(pool))
    held_n = min(options.held_out, len(pool) // 3)
    held = [pool[i] for i in order[:held_n]]
    held_paths = {i.path for i in held}
    indexed = [i for i in candidates if i.path not in held_paths]
    if options.songs:
        indexed = indexed[: options.songs]
    if any(db.has_song(file_sha256(i.path)) for i in held):
        raise AfpError(
            f"{out / 'db'}: holds songs this run keeps out of the database (another --seed?); "
            "use another --out or delete that folder"
        )
    log(
        f"indexing {len(indexed)} songs into {out / 'db'}; queries from "
        f"{'songs the model did not train on' if from_unseen else 'all songs'}, "
        f"{len(held)} of them kept out of the database"
    )
    with progress_task(options.quiet, "s", "indexing") as task:
        result = index_library(
            db,
            model,
            [i.path for i in indexed],
            batch_size=options.batch_size,
            device=options.device,
            task=task,
            on_skip=lambda s: log(f"skipped: {s.reason}"),
        )
    log(result.summary())

    sample_rate = model.spec.audio.sample_rate
    noise_files = list(options.noise) if options.noise else find_dev_speech()
    if noise_files:
        noise = make_babble(noise_files, 120.0, sample_rate, np.random.default_rng(options.seed))
        noise_kind = "speech babble" if not options.noise else "given noise"
    else:
        log("no speech found for babble: using pink noise")
        noise = make_pink_noise(120 * sample_rate, np.random.default_rng(options.seed))
        noise_kind = "pink noise"

    # by content, not path: a database built earlier from copies elsewhere still matches
    by_checksum = {song.checksum: song for song in db.songs("indexed")}
    in_pool = {i.path for i in pool}
    queries = [
        QuerySong(i, song)
        for i in indexed
        if i.path in in_pool and (song := by_checksum.get(file_sha256(i.path))) is not None
    ]
    if not queries:
        raise AfpError(
            f"{out / 'db'}: none of the query songs is in the database "
            "(--songs too small for the songs the model did not train on?)"
        )
    queries += [QuerySong(i, None) for i in held]
    settings = dataclasses.replace(SETTINGS, excerpts_per_song=options.excerpts, seed=options.seed)
    started = time.monotonic()
    recogniser = NeuralRecogniser(
        db, checkpoint, device=options.device, batch_size=options.batch_size
    )
    with progress_task(options.quiet, "excerpt", "querying") as task:
        evaluation = run_baseline_protocol(recogniser, queries, noise, settings, task=task)
    summary = evaluation.summary
    report = {
        "afp_version": __version__,
        "torch_version": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "options": {k: str(v) for k, v in dataclasses.asdict(options).items()},
        "model": {"sha256": checkpoint.sha256, "spec": checkpoint.spec.to_dict()},
        "database": db.info(),
        "noise": noise_kind,
        "query_songs": {
            "in_database": len(queries) - len(held),
            "not_in_database": len(held),
            "unseen_in_training": from_unseen,
        },
        "query_time_s": round(time.monotonic() - started, 1),
        "indexing": {
            "added": len(result.added),
            "already_indexed": len(result.duplicates),
            "skipped": [s.reason for s in result.skipped],
            "audio_s": result.audio_s,
            "elapsed_s": result.elapsed_s,
        },
        **summary,
    }
    header = (
        f"afp demo: {report['database']['songs']} songs in the database, queries from "
        f"{len(queries) - len(held)} of them"
        f"{' (songs the model did not train on)' if from_unseen else ''} and {len(held)} "
        f"songs not in it; noise: {noise_kind}\n\n"
    )
    tables = header + format_accuracy_tables(summary)
    print(tables)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=str))
    atomic_write_text(out / "report.md", "# afp demo\n\n" + tables)
    log(f"report written to {out / 'report.json'} and {out / 'report.md'}")
    return report


def make_pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Pink (1/f power) noise of unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
    pink = np.fft.irfft(spectrum, n)
    return (pink / np.sqrt(np.mean(pink**2))).astype(np.float32)
