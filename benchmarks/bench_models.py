"""Architectures compared: extraction speed, and equal-budget training (paper Tables 3, 4).

    nice -n 15 python benchmarks/bench_models.py speed
    nice -n 15 python benchmarks/bench_models.py train --steps 300 [--beats-checkpoint PATH]
    nice -n 15 python benchmarks/bench_models.py evaluate [--session demo-output/session]

``speed``: windows fingerprinted per second (front-end + encoder + head, eval mode,
batches of 256 random 1 s windows) by every registered model at its paper size and at
its CPU config size, with 1 and 2 torch threads. Seconds of audio per second count 0.5 s
per window (the hop: a stream of audio is cut into windows every 0.5 s).

``train``: every arm (nafp, resnet_sta, beats from configs/*-small-cpu.yaml; beats-tl
with --beats-checkpoint) trained for the same number of optimiser steps, with everything
else (batch, learning rate, augmentation, seed, data split) from its config, into
``<out>/<arm>``. Interrupted runs resume. Wall time and step times go to
``<out>/<arm>/bench-train.json``.

``evaluate``: for every trained arm, the baseline protocol (paper §5.2): a database of
the arms' test-split songs plus distractors (the other development songs, all of them by
default), queries cut from the test songs, speech babble from the test split of the
training noise at 0/5/10/15 dB, a hit = right song with offset within ±500 ms; printed
like paper Table 3 (rows model x query length, columns SNR, one table per decision rule).
With --session, the real-world protocol (afp_core.protocols.realworld) on that recorded
session, printed like paper Table 4; the session's songs are added to each database.
Results are kept as ``<out>/<arm>/baseline-<db>.json`` (``--force`` recomputes).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from afp_core.audio import probe_audio
from afp_core.augment import make_babble
from afp_core.config import BEATsConfig
from afp_core.devdata import find_dev_music
from afp_core.fileutil import file_sha256
from afp_core.indexing import index_library, open_database_for_indexing
from afp_core.models import Fingerprinter, ModelSpec, build_model, count_parameters, list_models
from afp_core.protocols.baseline import BaselineSettings, QuerySong, run_baseline_protocol
from afp_core.recogniser import NeuralRecogniser
from afp_core.tasks import TaskState, TqdmProgress
from afp_core.training.config import TrainConfig, load_train_config
from afp_core.training.data import prepare_training_data
from afp_core.training.trainer import STATE_FILE, Trainer

CPU_CONFIGS = {
    "nafp": Path("configs/nafp-small-cpu.yaml"),
    "resnet_sta": Path("configs/resnet-sta-small-cpu.yaml"),
    "beats": Path("configs/beats-small-cpu.yaml"),
}
# BEATs+TL: the official weights exist at full size only, so its model is the paper's;
# data, batch, schedule and augmentation come from the small BEATs config (equal budget).
BEATS_TL_MODEL = Path("configs/beats-tl-paper.yaml")
SNRS = (0.0, 5.0, 10.0, 15.0)
METHOD_NAMES = {"vote": "majority vote", "sequence": "offset-consistent search"}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, no GPU; "
        f"load average {load} (shared machine)"
    )


# ------------------------------------------------------------------------------- speed


def time_extraction(model: Fingerprinter, batch: int, threads: int, min_s: float) -> float:
    """Windows per second: one warm-up batch, then at least 2 batches and ``min_s``."""
    torch.set_num_threads(threads)
    waves = 0.1 * torch.randn(batch, model.window, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.inference_mode():
        model(waves)
        runs, started = 0, time.perf_counter()
        while runs < 2 or time.perf_counter() - started < min_s:
            model(waves)
            runs += 1
    return runs * batch / (time.perf_counter() - started)


def run_speed(args: argparse.Namespace) -> None:
    rows = []
    for entry in list_models():
        if args.models and entry.name not in args.models:
            continue
        specs = [("paper", ModelSpec(entry.name))]
        if entry.name in CPU_CONFIGS:
            specs.append(("CPU config", load_train_config(CPU_CONFIGS[entry.name]).model))
        for size, spec in specs:
            model = build_model(spec, seed=0)
            rates = [time_extraction(model, args.batch, t, args.min_seconds) for t in args.threads]
            rows.append((entry.name, size, count_parameters(model), spec, rates))
            cells = " ".join(f"{r:.0f}" for r in rates)
            print(f"{entry.name} ({size}): {cells} windows/s", flush=True)
    hop = rows[0][3].audio.hop_s
    print(f"\nmachine: {machine()}")
    print(
        f"\nExtraction speed, batch {args.batch}, eval mode (front-end + encoder + head): "
        f"windows/s and seconds of audio per second ({hop:g} s per window)\n"
    )
    head = " | ".join(f"{t} thread{'s' * (t > 1)}: windows/s | audio s/s" for t in args.threads)
    print(f"| model | size | parameters | input | {head} |")
    print("|---|---|---|---|" + "---|---|" * len(args.threads))
    for name, size, params, spec, rates in rows:
        entry = next(e for e in list_models() if e.name == name)
        cells = " | ".join(f"{r:.0f} | {r * spec.audio.hop_s:.0f}" for r in rates)
        print(f"| {name} | {size} | {params / 1e6:.2f} M | {entry.frontend_name} | {cells} |")


# ------------------------------------------------------------------------------- train


def arm_config(arm: str, args: argparse.Namespace) -> TrainConfig:
    config = load_train_config(CPU_CONFIGS["beats" if arm == "beats-tl" else arm])
    if arm == "beats-tl":
        model = load_train_config(BEATS_TL_MODEL).model
        assert isinstance(model.arch, BEATsConfig), f"{BEATS_TL_MODEL}: not a BEATs model"
        arch = dataclasses.replace(model.arch, pretrained=str(args.beats_checkpoint))
        config = dataclasses.replace(config, model=dataclasses.replace(model, arch=arch))
    spe = args.steps_per_epoch or config.training.steps_per_epoch
    if args.steps % spe:
        raise SystemExit(f"--steps {args.steps} is not a multiple of {spe} steps per epoch")
    training = dataclasses.replace(
        config.training, epochs=args.steps // spe, steps_per_epoch=spe, max_minutes=0.0
    )
    if args.warmup_steps is not None:  # for short trial runs only
        training = dataclasses.replace(training, warmup_steps=args.warmup_steps)
    return dataclasses.replace(config, training=training, output=str(args.out / arm))


def arms(args: argparse.Namespace) -> list[str]:
    names = list(args.arms)
    if args.beats_checkpoint is not None and "beats-tl" not in names:
        names.append("beats-tl")
    return names


def run_train(args: argparse.Namespace) -> None:
    if args.beats_checkpoint is None:
        print("beats-tl: not trained (no --beats-checkpoint: no official BEATs weights here)")
    for arm in arms(args):
        config = arm_config(arm, args)
        out = args.out / arm
        record_file = out / "bench-train.json"
        record = json.loads(record_file.read_text()) if record_file.exists() else {}
        stamps: list[float] = []

        def stamp(trainer: Trainer, step: int, loss: float, stamps: list = stamps) -> None:
            stamps.append(time.monotonic())

        trainer = Trainer(config, out=out, on_step=stamp)
        started = time.monotonic()
        result = trainer.run(resume=(out / STATE_FILE).exists())
        wall = time.monotonic() - started
        steps = [b - a for a, b in itertools.pairwise(stamps)]
        record = {
            "arm": arm,
            "steps": result.steps,
            "stopped": result.stopped,
            "wall_s": round(record.get("wall_s", 0.0) + wall, 1),
            "median_step_s": (
                round(statistics.median(steps), 3) if steps else record.get("median_step_s")
            ),
            "parameters": count_parameters(trainer.model),
            "threads": torch.get_num_threads(),
            "machine": machine(),
        }
        record_file.write_text(json.dumps(record, indent=1) + "\n")
        print(f"{arm}: {json.dumps(record)}", flush=True)
    print_train_table(args)


def print_train_table(args: argparse.Namespace) -> None:
    print("\n| arm | parameters | steps | median step | wall time | val top-1 (last epoch) |")
    print("|---|---|---|---|---|---|")
    for arm in arms(args):
        file = args.out / arm / "bench-train.json"
        if not file.exists():
            continue
        r = json.loads(file.read_text())
        log = (args.out / arm / "log.csv").read_text().splitlines()
        top1 = f"{float(log[-1].split(',')[4]):.2f}" if len(log) > 1 else "-"
        print(
            f"| {arm} | {r['parameters'] / 1e6:.2f} M | {r['steps']} | {r['median_step_s']:.2f} s "
            f"| {r['wall_s'] / 60:.1f} min | {top1} |"
        )


# ---------------------------------------------------------------------------- evaluate


def session_files(session: Path | None) -> list[Path]:
    if session is None:
        return []
    from afp_core.protocols.sessions import read_session

    by_title = {path.stem.casefold(): path for path in find_dev_music()}
    files = []
    for song in read_session(session).songs:
        file = song.file or by_title.get(song.title.casefold())
        if file is None:
            raise SystemExit(f"{session}: song {song.title!r} is not in the development music")
        files.append(file)
    return files


def evaluate_arm(arm: str, args: argparse.Namespace) -> dict | None:
    out = args.out / arm
    if not (out / "model.pt").exists():
        print(f"{arm}: not trained ({out / 'model.pt'} missing), left out")
        return None
    tag = "all" if args.distractors < 0 else f"d{args.distractors}"
    result_file = out / f"baseline-{tag}.json"
    config = load_train_config(out / "config.yaml")
    data = prepare_training_data(config)
    test = [song.ref.path for song in data.songs.test]
    others = sorted(set(find_dev_music()) - set(test))
    if args.distractors >= 0:
        rng = np.random.default_rng(config.training.seed)
        others = [others[i] for i in sorted(rng.permutation(len(others))[: args.distractors])]
    db, checkpoint = open_database_for_indexing(out / f"db-{tag}", out / "model.pt")
    with TqdmProgress(unit="s", description=f"indexing ({arm})") as progress:
        index_library(
            db,
            checkpoint.model,
            [*test, *others, *session_files(args.session)],
            task=TaskState(progress),
        )
    recogniser = NeuralRecogniser(db, checkpoint)
    summary = None
    if result_file.exists() and not args.force:
        summary = json.loads(result_file.read_text())
    else:
        by_checksum = {s.checksum: s for s in db.songs("indexed")}
        queries = [QuerySong(probe_audio(p), by_checksum[file_sha256(p)]) for p in test]
        seed = config.training.seed
        noise = make_babble(list(data.noise.test), 120.0, 8000, np.random.default_rng(seed))
        settings = BaselineSettings(
            lengths_s=tuple(args.lengths),
            snrs_db=SNRS,
            excerpts_per_song=args.excerpts,
            repeats=args.repeats,
            seed=seed,
        )
        started = time.monotonic()
        with TqdmProgress(unit="excerpt", description=f"querying ({arm})") as progress:
            task = TaskState(progress)
            result = run_baseline_protocol(recogniser, queries, noise, settings, task=task)
        summary = dict(result.summary)
        summary["bench"] = {
            "test_songs": len(test),
            "database_songs": len(db.songs("indexed")),
            "steps": json.loads((out / "bench-train.json").read_text())["steps"]
            if (out / "bench-train.json").exists()
            else None,
            "seconds": round(time.monotonic() - started, 1),
        }
        result_file.write_text(json.dumps(summary, indent=1) + "\n")
    realworld = None
    if args.session is not None:
        from afp_core.protocols.realworld import RealWorldSettings, run_realworld_protocol

        realworld = run_realworld_protocol(
            recogniser,
            args.session,
            RealWorldSettings(lengths_s=tuple(args.session_lengths)),
            system=arm,
        )
    return {"summary": summary, "realworld": realworld}


def run_evaluate(args: argparse.Namespace) -> None:
    results = {arm: r for arm in arms(args) if (r := evaluate_arm(arm, args)) is not None}
    if not results:
        raise SystemExit("no trained arm to evaluate; run the train subcommand first")
    if args.beats_checkpoint is None:
        print("beats-tl: not evaluated (no --beats-checkpoint: no official BEATs weights here)")
    first = next(iter(results.values()))["summary"]
    bench = first["bench"]
    print(f"\nmachine: {machine()}")
    print(
        f"database: {bench['database_songs']} development songs; queries from the "
        f"{bench['test_songs']} test-split songs, {args.excerpts} excerpts each x "
        f"{args.repeats} repeats; speech babble (test split of the training noise)"
    )
    for method in first["results"]:
        print(
            f"\nTop-1 hit rate % ({METHOD_NAMES.get(method, method)}; right song, offset "
            "within ±0.5 s; ± std across repeats, or binomial s.e. for one repeat)\n"
        )
        print("| model | steps | query | " + " | ".join(f"{s:g} dB" for s in SNRS) + " |")
        print("|---|---|---|" + "---|" * len(SNRS))
        for length in args.lengths:
            for arm, r in results.items():
                cells = r["summary"]["results"][method]
                row = []
                for s in SNRS:
                    c = cells[f"{s:g} dB"][f"{length:g}"]
                    err = c["std"] if c.get("std") is not None else c["stderr"]
                    row.append(f"{100 * c['accuracy']:.1f} ±{100 * err:.1f}")
                steps = r["summary"]["bench"]["steps"] or "-"
                print(f"| {arm} | {steps} | {length:g} s | " + " | ".join(row) + " |")
    worlds = [r["realworld"] for r in results.values() if r["realworld"] is not None]
    if worlds:
        print_realworld(worlds)
    elif args.session is None:
        print("\nreal-world protocol: not run (no --session)")


def print_realworld(results: list) -> None:
    takes = list(results[0].takes)
    lengths = results[0].settings["lengths_s"]
    session = results[0].session
    print(
        f"\nReal-world protocol, session {session.get('folder')} ({len(session['songs'])} "
        f"songs, {session.get('notes') or session.get('origin', '')})"
    )
    for method in results[0].methods:
        print(
            f"\nAccuracy % ({METHOD_NAMES.get(method, method)}; right song, no rejection: "
            "the paper's Table 4 measure)\n"
        )
        print("| model | query | queries per take | " + " | ".join(takes) + " |")
        print("|---|---|---|" + "---|" * len(takes))
        for length in lengths:
            for r in results:
                cells = [r.cell(t, method, float(length)) for t in takes]
                row = [f"{100 * c.accuracy:.1f}" if c else "-" for c in cells]
                n = "/".join(sorted({str(c.queries) for c in cells if c})) or "-"
                print(f"| {r.system} | {length:g} s | {n} | " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    speed = sub.add_parser("speed", help="extraction speed of every registered model")
    speed.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    speed.add_argument("--batch", type=int, default=256)
    speed.add_argument("--min-seconds", type=float, default=10.0)
    speed.add_argument("--models", nargs="+", help="default: every registered model")
    for name in ("train", "evaluate"):
        p = sub.add_parser(name)
        p.add_argument("--out", type=Path, default=Path("runs/models"))
        p.add_argument("--arms", nargs="+", default=list(CPU_CONFIGS), choices=list(CPU_CONFIGS))
        p.add_argument("--beats-checkpoint", type=Path, help="BEATs weights: adds beats-tl")
        p.add_argument("--threads", type=int, default=2)
        if name == "train":
            p.add_argument("--steps", type=int, default=300, help="the equal budget")
            p.add_argument("--steps-per-epoch", type=int, default=0, help="0: the config's")
            p.add_argument("--warmup-steps", type=int, help="default: the config's")
        else:
            p.add_argument("--distractors", type=int, default=-1, help="-1: every other song")
            p.add_argument("--excerpts", type=int, default=10, help="excerpts per test song")
            p.add_argument("--repeats", type=int, default=1)
            p.add_argument("--lengths", type=float, nargs="+", default=[1, 2, 3, 5])
            p.add_argument("--session", type=Path, help="a recorded session folder (Table 4)")
            p.add_argument("--session-lengths", type=float, nargs="+", default=[1, 2, 3, 5, 10, 15])
            p.add_argument("--force", action="store_true", help="recompute saved results")
    args = parser.parse_args()
    if args.command == "speed":
        run_speed(args)
        return
    torch.set_num_threads(args.threads)
    run_train(args) if args.command == "train" else run_evaluate(args)


if __name__ == "__main__":
    main()
