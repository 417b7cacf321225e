"""Baseline vs proposed augmentation with an equal budget (paper Table 3).

    nice -n 10 python benchmarks/bench_augmentation.py --config configs/nafp-small-cpu.yaml \
        --epochs 10 --out runs/ablation

Trains two models from the same config, seed and step budget, one with the baseline
augmentation pipeline and one with the proposed low/high-pass addition (each run resumes
if it was interrupted), then evaluates both under the baseline protocol: a database of all
the development music, queries cut from the songs both runs held out (their test split),
speech babble from the test split of the training noise at 0/5/10/15 dB, queries of 1-5 s, a hit =
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
from afp_core.devdata import find_dev_music
from afp_core.fileutil import file_sha256
from afp_core.indexing import index_library, open_database_for_indexing
from afp_core.protocols.baseline import (
    BaselineSettings,
    QuerySong,
    run_baseline_protocol,
)
from afp_core.recogniser import NeuralRecogniser
from afp_core.tasks import TaskState, TqdmProgress
from afp_core.training.config import TrainConfig, load_train_config
from afp_core.training.data import prepare_training_data
from afp_core.training.trainer import train

PIPELINES = ("baseline", "proposed")
SNRS = (0.0, 5.0, 10.0, 15.0)
LENGTHS = (1, 2, 3, 5)


def arm_config(config_path: Path, pipeline: str, epochs: int, out: Path) -> TrainConfig:
    config = load_train_config(config_path)
    return dataclasses.replace(
        config,
        augmentation=dataclasses.replace(config.augmentation, pipeline=pipeline),
        training=dataclasses.replace(config.training, epochs=epochs, max_minutes=0.0),
        output=str(out / pipeline),
    )


def train_arm(config: TrainConfig, out: Path) -> Path:
    resume = (out / "train-state.pt").exists()
    return Path(train(config, out=out, resume=resume).checkpoint)


def evaluate_arm(config: TrainConfig, checkpoint_path: Path, out: Path, excerpts: int) -> dict:
    # the exact test songs and test noise clips of the split the run trained with
    data = prepare_training_data(config)
    test_songs = [song.ref.path for song in data.songs.test]
    db, checkpoint = open_database_for_indexing(out / "db", checkpoint_path)
    with TqdmProgress(unit="s", description=f"indexing ({out.name})") as progress:
        index_library(db, checkpoint.model, find_dev_music(), task=TaskState(progress))
    by_checksum = {s.checksum: s for s in db.songs("indexed")}
    queries = [QuerySong(probe_audio(p), by_checksum[file_sha256(p)]) for p in test_songs]
    seed = config.training.seed
    noise = make_babble(list(data.noise.test), 120.0, 8000, np.random.default_rng(seed))
    settings = BaselineSettings(
        lengths_s=LENGTHS, snrs_db=SNRS, excerpts_per_song=excerpts, seed=seed
    )
    recogniser = NeuralRecogniser(db, checkpoint)
    with TqdmProgress(unit="excerpt", description=f"querying ({out.name})") as progress:
        result = run_baseline_protocol(
            recogniser, queries, noise, settings, task=TaskState(progress)
        )
    return result.summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/nafp-small-cpu.yaml"))
    parser.add_argument("--epochs", type=int, default=10, help="equal budget for both arms")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--excerpts", type=int, default=10, help="excerpts per test song")
    args = parser.parse_args()
    summaries = {}
    for pipeline in PIPELINES:
        config = arm_config(args.config, pipeline, args.epochs, args.out)
        checkpoint = train_arm(config, args.out / pipeline)
        summaries[pipeline] = evaluate_arm(config, checkpoint, args.out / pipeline, args.excerpts)
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
