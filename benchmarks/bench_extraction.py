"""Extraction speed of ``afp index --workers N`` and ``afp index-shards`` under torchrun:
seconds of audio per second.

    python benchmarks/bench_extraction.py                  # all dev music, 1 and 2 workers
    python benchmarks/bench_extraction.py --files 4        # a quick smoke on 4 files
    python benchmarks/bench_extraction.py --workers 1 2 4 --across --torchrun 2

Each row runs the indexing loop of ``afp index`` (``afp_core.ingest.index_files`` with the
neural database's fingerprinting: decode, resample, front-end, encoder, staging) into a
new database with the default model (the shipped one), without the commit and the
calibration, which do not depend on the workers. Worker processes are started inside the
timed span: their start-up (importing torch, receiving the model) is part of the cost.
``--torchrun N`` runs ``torchrun --nproc-per-node N -m afp_core.cli index-shards`` on the
same files: its row counts the slowest rank's extraction (as each rank reports it, from
its first file to its last; start-up and the commit excluded), and the whole launch,
start-up and commit included, is printed beside it.
``--across`` adds rows for the ``--device cuda`` path run on the CPU (files decoded by the
workers, windows batched across files in the indexing process). Run it on an idle
machine: another job on the cores makes every row slower, the parallel ones most.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from afp_core.devdata import find_dev_music
from afp_core.indexing import open_database_for_indexing, vector_fingerprinting
from afp_core.ingest import index_files
from afp_core.tasks import progress_task


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads in one "
        f"process, torch {torch.__version__}, load average {load} at the start"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", type=Path, nargs="+", help="default: the dev music")
    parser.add_argument("--files", type=int, default=0, help="use the first N files (0: all)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts")
    parser.add_argument("--across", action="store_true", help="also batch across files")
    parser.add_argument(
        "--torchrun", type=int, nargs="*", default=[], help="torchrun process counts"
    )
    parser.add_argument("--model", type=Path, help="checkpoint (default: the shipped model)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    library = args.library or find_dev_music()
    if not library:
        raise SystemExit("no development music: run ./dev data")
    if args.files:
        library = library[: args.files]
    print(f"machine: {machine()}")
    print(f"library: {len(library)} files")
    rows = []
    for across in (False, True) if args.across else (False,):
        for workers in args.workers:
            with tempfile.TemporaryDirectory() as tmp:
                db, checkpoint = open_database_for_indexing(Path(tmp) / "db", args.model)
                fingerprinting = dataclasses.replace(
                    vector_fingerprinting(db, checkpoint.model, batch_across_files=across),
                    commit=lambda cancel: None,
                    calibrate=lambda _task: None,
                )
                label = f"{workers} worker{'s' if workers > 1 else ''}"
                label += ", batched across files" if across else ""
                with progress_task(args.quiet, unit="s", description=label) as task:
                    result = index_files(db, library, fingerprinting, workers=workers, task=task)
            rate = result.audio_s / result.elapsed_s
            rows.append((label, result.audio_s, result.elapsed_s, rate))
    for procs in args.torchrun:
        audio_s, elapsed_s = time_torchrun(procs, library, args.model)
        rows.append((f"{procs} torchrun processes", audio_s, elapsed_s, audio_s / elapsed_s))
    print()
    print("| extraction | audio (min) | time (s) | s of audio per s | speed-up |")
    print("|---|---|---|---|---|")
    for label, audio_s, elapsed_s, rate in rows:
        print(
            f"| {label} | {audio_s / 60:.1f} | {elapsed_s:.1f} | {rate:.0f} | "
            f"{rate / rows[0][3]:.2f} |"
        )


RANK_LINE = re.compile(r"rank \d+/\d+: staged .*\(([\d.]+) min of audio in ([\d.]+) s,")


def time_torchrun(procs: int, library: list[Path], model: Path | None) -> tuple[float, float]:
    """Audio seconds and the slowest rank's extraction seconds of one ``index-shards`` launch."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            *(sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs)),
            *("-m", "afp_core.cli", "index-shards", str(Path(tmp) / "db"), *map(str, library)),
            *("--staging", str(Path(tmp) / "staging"), "--quiet"),
            *(("--model", str(model)) if model else ()),
        ]
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - began
    if done.returncode:
        raise SystemExit(f"torchrun with {procs} processes failed:\n{done.stderr[-2000:]}")
    ranks = [RANK_LINE.search(line) for line in done.stdout.splitlines()]
    found = [(float(m[1]) * 60, float(m[2])) for m in ranks if m]
    if len(found) != procs:
        raise SystemExit(f"torchrun: {len(found)} of {procs} ranks reported:\n{done.stdout}")
    audio_s = sum(a for a, _ in found)
    elapsed_s = max(e for _, e in found)
    print(f"{procs} torchrun processes: {wall:.1f} s from launch to committed database")
    return audio_s, elapsed_s


if __name__ == "__main__":
    main()
