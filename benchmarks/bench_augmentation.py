"""Arms of one training config with an equal budget and several seeds (paper Tables 3, 4).

    nice -n 19 python benchmarks/bench_augmentation.py [--arms baseline proposed elu]
        [--seeds 0 1 2] [--epochs 6] [--steps-per-epoch 100]
        [--protocol realworld|baseline] [--library full|dev] [--out runs/bench-arms]
        [--print-only]

What it answers: does the proposed augmentation (the baseline's plus the paper's
low/high-pass filters) beat the baseline on real-world takes, and what does NAFP's ELU
(the authors' code, docs/design.md §2.2 "NAFP's activation") change against our ReLU?

**Arms** are named variations of ``--config`` (default ``configs/nafp-small-cpu.yaml``:
NAFP width 0.25, 2N = 64), each a set of config keys (``ARMS``):

- ``baseline``: ``augmentation.pipeline: baseline``;
- ``proposed``: ``augmentation.pipeline: proposed``;
- ``elu``: ``proposed`` with ``model.arch.activation: elu``.

**Runs**: every arm is trained once per seed (``training.seed``: weight init, batches,
augmentation draws; the song split keeps ``data.split_seed``, so every run holds out the
same validation and test songs), all with the same budget of ``--epochs`` x
``--steps-per-epoch`` optimiser steps and no time limit, into ``<out>/<arm>/seed<k>``
(``config.yaml`` there is the run's whole config). A folder holding ``train-state.pt``
resumes; seeds go in the outer loop, so the arms of a seed finish together and give
paired differences early. The last checkpoint of each run (``model.pt``) is evaluated.
The default budget, 6 x 100 = 600 steps, is about 7 min per run on the 2 idle cores:
0.66 s per step with validation (the 4,000 steps of configs/nafp-small-cpu.yaml took
44 min); a 61-step run measured here beside other work (load 10-15) took 8.7 s per step,
so at nice 19 on a shared machine the runs take hours and resume across sessions.

**Evaluation** (``--protocol realworld``, the default): the validation sessions of
``benchmarks/bench_realworld.py`` (its functions; ``--sessions`` is the folder it keeps
them in, so sessions already made are reused): the 10 validation songs, 40 s each,
played through the ``demo`` and ``harsh`` rooms, three takes each (low / mid / high),
aligned by their markers. The real-world protocol (``afp_core.protocols.realworld``)
cuts queries of 1, 2, 3 and 5 s back to back from each take (400 / 200 / 130 / 80 per
take) and scores song accuracy without rejection (the paper's Table 4 measure) for both
neural rules (offset-consistent search and majority vote). Each run's database is built
of bench_realworld's library (``--library full``: the 101 development tracks plus the
training-only music, about 230 songs and 20 h, so the figures sit beside the validation
tables of docs/training.md); indexing it takes about 4 min per run at width 0.25 on the
2 idle cores, less than the training, so the full library is the default. ``--library
dev`` (the 101 development tracks, about 1.5 min) is the quicker choice. The validation
songs are used, never the test ones: arms are a training choice (docs/training.md's
data policy).

``--protocol baseline`` (paper §5.2, Table 3) instead: a database of the 101
development tracks, queries cut from the runs' test-split songs, speech babble from the
test split of the training noise at 0/5/10/15 dB, a hit = right song with offset within
±500 ms; ``--excerpts`` per song. Its query draws use seed 0 for every run, so all runs
answer the same queries.

**Results**: each run's cells go to ``<run>/result-<protocol>.json`` with its config,
the evaluation settings (checkpoint checksum included) and the machine; a rerun with the
same settings reads it instead of evaluating again (``--print-only`` trains and
evaluates nothing, and prints the runs finished so far). Printed per rule: every arm's
mean over its seeds ± the standard error (sample std / sqrt(n)) per take x query length,
a ``mean`` column (the mean over takes) and an ``all`` row (over query lengths); then the
paired differences proposed − baseline and elu − proposed, computed seed by seed on
the seeds both arms finished, mean ± standard error, in points.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_models import machine
from bench_realworld import library, load_room, log, make_session, neural_database

from afp_core.audio import probe_audio
from afp_core.augment import make_babble
from afp_core.checkpoint import load_checkpoint
from afp_core.config import IndexConfig
from afp_core.devdata import find_dev_music
from afp_core.fileutil import file_sha256
from afp_core.protocols.baseline import BaselineSettings, QuerySong, run_baseline_protocol
from afp_core.protocols.realworld import RealWorldSettings, run_realworld_protocol
from afp_core.protocols.sessions import read_session
from afp_core.recogniser import open_recogniser
from afp_core.tasks import progress_task
from afp_core.training.config import TrainConfig, load_train_config
from afp_core.training.data import prepare_training_data
from afp_core.training.trainer import MODEL_FILE, STATE_FILE, train

ARMS: dict[str, dict[str, Any]] = {
    "baseline": {"augmentation.pipeline": "baseline"},
    "proposed": {"augmentation.pipeline": "proposed"},
    "elu": {"augmentation.pipeline": "proposed", "model.arch.activation": "elu"},
}
# (a, b): the paired difference a − b is printed when both arms ran
PAIRS = (("proposed", "baseline"), ("elu", "proposed"))
METHOD_NAMES = {"sequence": "offset-consistent search", "vote": "majority vote"}
SNRS = (0.0, 5.0, 10.0, 15.0)
EVAL_SEED = 0  # the baseline protocol's query draws: the same queries for every run

Key = tuple[str, str, float | None]  # (rule, condition, query length; None: all lengths)


# ------------------------------------------------------------------------- arms and runs


def run_dir(out: Path, arm: str, seed: int) -> Path:
    return out / arm / f"seed{seed}"


def arm_config(
    base: TrainConfig, arm: str, seed: int, epochs: int, steps_per_epoch: int, out: Path
) -> TrainConfig:
    """``base`` with ``arm``'s keys, the seed and the step budget (no time limit)."""
    data = base.to_dict()
    keys = {
        **ARMS[arm],
        "training.seed": seed,
        "training.epochs": epochs,
        "training.steps_per_epoch": steps_per_epoch,
        "training.max_minutes": 0.0,
        "output": str(run_dir(out, arm, seed)),
    }
    for key, value in keys.items():
        *parents, leaf = key.split(".")
        node = data
        for name in parents:
            node = node[name]
        node[leaf] = value
    return TrainConfig.from_dict(data)


def train_run(config: TrainConfig) -> Path:
    """Train (or resume, or find finished) the run in ``config.output``; its last model."""
    folder = Path(config.output)
    resume = (folder / STATE_FILE).exists()
    return Path(train(config, out=folder, resume=resume).checkpoint)


def read_cached(path: Path, evaluation: dict[str, Any]) -> dict[str, Any] | None:
    """The result in ``path`` if it was evaluated with exactly ``evaluation``."""
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    return result if result["evaluation"] == evaluation else None


# ------------------------------------------------------------------------- evaluation


def evaluate_realworld(
    folder: Path,
    model: Path,
    sessions: dict[str, Path],
    music: list[Path],
    lengths: tuple[float, ...],
    library_name: str,
) -> list[dict[str, Any]]:
    """Song accuracy per room take, rule and length (no rejection, no impostors)."""
    db_dir = neural_database(folder / f"library-{library_name}", model, music, IndexConfig())
    recogniser = open_recogniser(db_dir)
    settings = RealWorldSettings(lengths_s=lengths, threshold=None, impostors=False)
    cells = []
    for room, session in sessions.items():
        with progress_task(False, "s", f"evaluating {folder} on {session.name}") as task:
            result = run_realworld_protocol(recogniser, read_session(session), settings, task=task)
        cells += [
            {
                "method": c.method,
                "condition": f"{room} {c.take}",
                "length_s": c.length_s,
                "accuracy": c.accuracy,
                "queries": c.queries,
            }
            for c in result.summary
        ]
    return cells


def evaluate_baseline(
    config: TrainConfig, folder: Path, model: Path, lengths: tuple[float, ...], excerpts: int
) -> list[dict[str, Any]]:
    """Hit rate (right song and offset) per SNR, rule and length: paper §5.2."""
    data = prepare_training_data(config)  # the run's test songs and test noise clips
    db_dir = neural_database(folder / "library-dev", model, find_dev_music(), IndexConfig())
    recogniser = open_recogniser(db_dir)
    by_checksum = {s.checksum: s for s in recogniser.songs()}
    queries = [
        QuerySong(probe_audio(s.ref.path), by_checksum[file_sha256(s.ref.path)])
        for s in data.songs.test
    ]
    rng = np.random.default_rng(EVAL_SEED)
    noise = make_babble(list(data.noise.test), 120.0, 8000, rng)
    settings = BaselineSettings(
        lengths_s=lengths, snrs_db=SNRS, excerpts_per_song=excerpts, seed=EVAL_SEED
    )
    with progress_task(False, "excerpt", f"querying {folder}") as task:
        summary = run_baseline_protocol(recogniser, queries, noise, settings, task=task).summary
    return [
        {
            "method": method,
            "condition": condition,
            "length_s": float(length),
            "accuracy": cell["accuracy"],
            "queries": cell["queries"],
        }
        for method, conditions in summary["results"].items()
        for condition, by_length in conditions.items()
        for length, cell in by_length.items()
    ]


# ------------------------------------------------------------------------- statistics


def mean_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and its standard error (sample std / sqrt(n)); no error for one value."""
    array = np.asarray(values, dtype=float)
    if len(array) < 2:
        return float(array.mean()), None
    return float(array.mean()), float(array.std(ddof=1) / np.sqrt(len(array)))


def run_cells(result: dict[str, Any]) -> dict[Key, float]:
    """A run's accuracies, plus per rule the mean over conditions (condition "mean") of
    each length, and over lengths (length None) of each condition and of everything."""
    cells: dict[Key, float] = {
        (c["method"], c["condition"], float(c["length_s"])): c["accuracy"] for c in result["cells"]
    }
    means: dict[Key, list[float]] = {}
    for (method, condition, length), value in cells.items():
        for key in ((method, "mean", length), (method, condition, None), (method, "mean", None)):
            means.setdefault(key, []).append(value)
    return cells | {key: float(np.mean(values)) for key, values in means.items()}


def arm_stats(runs: dict[int, dict[Key, float]]) -> dict[Key, tuple[float, float | None, int]]:
    """Per cell over an arm's seeds: mean, standard error, number of seeds."""
    keys = set().union(*runs.values()) if runs else set()
    return {
        key: (*mean_stderr(values), len(values))
        for key in keys
        if (values := [cells[key] for cells in runs.values() if key in cells])
    }


def paired_stats(
    a: dict[int, dict[Key, float]], b: dict[int, dict[Key, float]]
) -> dict[Key, tuple[float, float | None, int]]:
    """Per cell, a − b seed by seed on the seeds both ran: mean, standard error, seeds."""
    seeds = sorted(set(a) & set(b))
    return arm_stats(
        {seed: {k: a[seed][k] - b[seed][k] for k in a[seed] if k in b[seed]} for seed in seeds}
    )


def format_cell(cell: tuple[float, float | None, int] | None, signed: bool = False) -> str:
    """A fraction as % (or points) with its standard error: "62.5 ±1.2", "+3.0 ±0.8"."""
    if cell is None:
        return "-"
    mean, stderr, _ = cell
    text = f"{100 * mean:+.1f}" if signed else f"{100 * mean:.1f}"
    return text if stderr is None else f"{text} ±{100 * stderr:.1f}"


def format_table(
    title: str,
    rows: Iterable[tuple[str, dict[Key, tuple[float, float | None, int]]]],
    method: str,
    conditions: Sequence[str],
    lengths: Sequence[float],
    signed: bool = False,
) -> str:
    """Markdown: rows label x query length (then "all"), columns conditions and "mean";
    cells in % (points) as mean ±s.e."""
    columns = [*conditions, "mean"]
    lines = [
        title,
        "",
        f"| | query | seeds | {' | '.join(columns)} |",
        "|---|---|---|" + "---|" * len(columns),
    ]
    rows = list(rows)
    for length in [*lengths, None]:
        for label, stats in rows:
            cells = [stats.get((method, c, length)) for c in columns]
            if not any(cells):
                continue
            seeds = max(cell[2] for cell in cells if cell)
            text = [format_cell(cell, signed) for cell in cells]
            query = "all" if length is None else f"{length:g} s"
            lines.append(f"| {label} | {query} | {seeds} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def print_tables(results: dict[str, dict[int, dict[str, Any]]], lengths: Sequence[float]) -> None:
    runs = {
        arm: {seed: run_cells(r) for seed, r in by_seed.items()} for arm, by_seed in results.items()
    }
    first = next(r for by_seed in results.values() for r in by_seed.values())
    conditions = list(dict.fromkeys(c["condition"] for c in first["cells"]))
    methods = list(dict.fromkeys(c["method"] for c in first["cells"]))
    measure = (
        "song accuracy, no rejection"
        if first["evaluation"]["protocol"] == "realworld"
        else "hit: right song, offset within ±0.5 s"
    )
    for method in methods:
        name = METHOD_NAMES.get(method, method)
        print()
        print(
            format_table(
                f"Accuracy % ({name}; {measure}), mean ±s.e. over seeds",
                [(arm, arm_stats(by_seed)) for arm, by_seed in runs.items()],
                method,
                conditions,
                lengths,
            )
        )
        pairs = [
            (f"{a} − {b}", paired_stats(runs[a], runs[b]))
            for a, b in PAIRS
            if a in runs and b in runs
        ]
        if pairs:
            print()
            print(
                format_table(
                    f"Paired difference, points ({name}), mean ±s.e. over the seeds both arms ran",
                    pairs,
                    method,
                    conditions,
                    lengths,
                    signed=True,
                )
            )


# ------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/nafp-small-cpu.yaml"))
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6, help="the same for every run")
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--protocol", choices=("realworld", "baseline"), default="realworld")
    parser.add_argument(
        "--library",
        choices=("full", "dev"),
        default="full",
        help="realworld: the database's songs (see above)",
    )
    parser.add_argument("--rooms", nargs="+", default=["demo", "harsh"])
    parser.add_argument(
        "--sessions",
        type=Path,
        default=Path("runs/bench-realworld"),
        help="where bench_realworld keeps its validation sessions",
    )
    parser.add_argument("--lengths", nargs="+", type=float, default=[1, 2, 3, 5])
    parser.add_argument("--excerpts", type=int, default=10, help="baseline: excerpts per song")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-arms"))
    parser.add_argument(
        "--print-only",
        action="store_true",
        help="train and evaluate nothing: print the runs evaluated so far",
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    base = load_train_config(args.config)
    lengths = tuple(args.lengths)
    evaluation: dict[str, Any] = {"protocol": args.protocol, "lengths_s": list(lengths)}
    if args.protocol == "realworld":
        music = library() if args.library == "full" else find_dev_music()
        evaluation |= {
            "library": args.library,
            "library_songs": len(music),
            "split": "validation",
            "rooms": list(args.rooms),
        }
        sessions: dict[str, Path] = {}
        if not args.print_only:
            for room in args.rooms:
                folder = args.sessions / f"validation-{room}"
                sessions[room] = make_session(folder, "validation", load_room(room))
    else:
        evaluation |= {"library": "dev", "excerpts": args.excerpts, "seed": EVAL_SEED}
    results: dict[str, dict[int, dict[str, Any]]] = {arm: {} for arm in args.arms}
    for seed in args.seeds:
        for arm in args.arms:
            config = arm_config(base, arm, seed, args.epochs, args.steps_per_epoch, args.out)
            folder = Path(config.output)
            result_file = folder / f"result-{args.protocol}.json"
            if args.print_only:
                if (folder / MODEL_FILE).exists():
                    wanted = evaluation | {
                        "checkpoint": load_checkpoint(folder / MODEL_FILE).sha256
                    }
                    if cached := read_cached(result_file, wanted):
                        results[arm][seed] = cached
                continue
            model = train_run(config)
            wanted = evaluation | {"checkpoint": load_checkpoint(model).sha256}
            cached = read_cached(result_file, wanted)
            if cached is None:
                log(f"evaluating {folder}")
                if args.protocol == "realworld":
                    cells = evaluate_realworld(
                        folder, model, sessions, music, lengths, args.library
                    )
                else:
                    cells = evaluate_baseline(config, folder, model, lengths, args.excerpts)
                cached = {
                    "arm": arm,
                    "seed": seed,
                    "evaluation": wanted,
                    "config": config.to_dict(),
                    "machine": machine(),
                    "cells": cells,
                }
                result_file.write_text(json.dumps(cached, indent=1) + "\n")
            results[arm][seed] = cached
    results = {arm: by_seed for arm, by_seed in results.items() if by_seed}
    print(f"machine: {machine()}")
    print(
        f"config {args.config}, arms {', '.join(args.arms)}, seeds {args.seeds}, "
        f"{args.epochs} x {args.steps_per_epoch} steps each; {json.dumps(evaluation)}"
    )
    for arm in args.arms:
        done = sorted(results.get(arm, {}))
        print(f"{arm}: {ARMS[arm]}; seeds evaluated: {done or 'none'}")
    if results:
        print_tables(results, lengths)


if __name__ == "__main__":
    main()
