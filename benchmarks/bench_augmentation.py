"""Baseline vs proposed augmentation with an equal budget (paper Table 3, issue 3).

    nice -n 10 python benchmarks/bench_augmentation.py --config configs/nafp-small-cpu.yaml \
        --epochs 10 --out runs/ablation

Trains two models from the same config, seed and step budget, one with the baseline
augmentation pipeline and one with the proposed low/high-pass addition (each run resumes
if it was interrupted), then evaluates both under the baseline protocol: a database of all
the development music, queries cut from the songs both runs held out (their test split),
speech babble from the held-out speech prompts at 0/5/10/15 dB, queries of 1-5 s, a hit =
right song with offset within ±500 ms. Prints a table shaped like paper Table 3.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
from pathlib import Path

import numpy as np
import torch

from afp_core.audio import probe_audio
from afp_core.augment import make_babble
from afp_core.checkpoint import load_checkpoint
from afp_core.devdata import find_dev_music, find_dev_speech
from afp_core.indexing import index_library, open_database_for_indexing
from afp_core.protocols.baseline import (
    BaselineSettings,
    QuerySong,
    run_baseline_protocol,
    summarise_trials,
)
from afp_core.tasks import TaskState, TqdmProgress
from afp_core.training.config import load_train_config
from afp_core.training.data import split_items
from afp_core.training.trainer import train

PIPELINES = ("baseline", "proposed")
SNRS = (0.0, 5.0, 10.0, 15.0)
LENGTHS = (1, 2, 3, 5)


def train_arm(config_path: Path, pipeline: str, epochs: int, out: Path) -> Path:
    config = load_train_config(config_path)
    config = dataclasses.replace(
        config,
        augmentation=dataclasses.replace(config.augmentation, pipeline=pipeline),
        training=dataclasses.replace(config.training, epochs=epochs, max_minutes=0.0),
        output=str(out / pipeline),
    )
    resume = (out / pipeline / "train-state.pt").exists()
    result = train(config, out=out / pipeline, resume=resume)
    return Path(result.checkpoint)


def evaluate_arm(checkpoint_path: Path, out: Path, excerpts: int, seed: int) -> dict:
    checkpoint = load_checkpoint(checkpoint_path)
    data = checkpoint.meta["config"]["data"]
    songs = find_dev_music()
    test_titles = set(checkpoint.meta["data"]["test_titles"])
    db, checkpoint = open_database_for_indexing(out / "db", checkpoint_path)
    with TqdmProgress(unit="s", description=f"indexing ({out.name})") as progress:
        index_library(db, checkpoint.model, songs, task=TaskState(progress))
    by_source = {s.source: s for s in db.songs("indexed")}
    queries = [
        QuerySong(probe_audio(p), by_source[str(p.resolve())])
        for p in songs
        if p.stem in test_titles and str(p.resolve()) in by_source
    ]
    speech = split_items(
        find_dev_speech(), data["noise_val_share"], data["noise_test_share"], data["split_seed"]
    ).test
    noise = make_babble(list(speech), 120.0, 8000, np.random.default_rng(seed))
    settings = BaselineSettings(
        lengths_s=LENGTHS, snrs_db=SNRS, excerpts_per_song=excerpts, seed=seed
    )
    with TqdmProgress(unit="excerpt", description=f"querying ({out.name})") as progress:
        trials = run_baseline_protocol(
            db, checkpoint.model, queries, noise, settings, task=TaskState(progress)
        )
    return summarise_trials(trials, settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/nafp-small-cpu.yaml"))
    parser.add_argument("--epochs", type=int, default=10, help="equal budget for both arms")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--excerpts", type=int, default=10, help="excerpts per test song")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    summaries = {}
    for pipeline in PIPELINES:
        checkpoint = train_arm(args.config, pipeline, args.epochs, args.out)
        summaries[pipeline] = evaluate_arm(
            checkpoint, args.out / pipeline, args.excerpts, args.seed
        )
    print(f"\nmachine: {platform.machine()}, {torch.get_num_threads()} threads, no GPU")
    for method in ("vote", "sequence"):
        print(f"\nTop-1 hit rate % ({method}), {args.epochs} epochs each, config {args.config}")
        print("| augmentation | query | " + " | ".join(f"{s:g} dB" for s in SNRS) + " |")
        print("|---|---|" + "---|" * len(SNRS))
        for length in LENGTHS:
            for pipeline, summary in summaries.items():
                cells = summary["results"][method]
                row = [f"{100 * cells[f'{s:g} dB'][f'{length:g}']['accuracy']:.1f}" for s in SNRS]
                print(f"| {pipeline} | {length} s | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
