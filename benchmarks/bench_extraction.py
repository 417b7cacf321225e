"""Extraction speed of ``afp index --workers N``: seconds of audio per second, 1 and 2 workers.

    python benchmarks/bench_extraction.py                  # all dev music, 1 and 2 workers
    python benchmarks/bench_extraction.py --files 4        # a quick smoke on 4 files
    python benchmarks/bench_extraction.py --workers 1 2 4 --across

Each row runs the indexing loop of ``afp index`` (``afp_core.ingest.index_files`` with the
neural database's fingerprinting: decode, resample, front-end, encoder, staging) into a
new database with the default model (the shipped one), without the commit and the
calibration, which do not depend on the workers. Worker processes are started inside the
timed span: their start-up (importing torch, receiving the model) is part of the cost.
``--across`` adds rows for the ``--device cuda`` path run on the CPU (files decoded by the
workers, windows batched across files in the indexing process). Run it on an idle
machine: another job on the cores makes every row slower, the parallel ones most.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import tempfile
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
                    calibrate=lambda: None,
                )
                label = f"{workers} worker{'s' if workers > 1 else ''}"
                label += ", batched across files" if across else ""
                with progress_task(args.quiet, unit="s", description=label) as task:
                    result = index_files(db, library, fingerprinting, workers=workers, task=task)
            rate = result.audio_s / result.elapsed_s
            rows.append((label, result.audio_s, result.elapsed_s, rate))
    print()
    print("| extraction | audio (min) | time (s) | s of audio per s | speed-up |")
    print("|---|---|---|---|---|")
    for label, audio_s, elapsed_s, rate in rows:
        print(
            f"| {label} | {audio_s / 60:.1f} | {elapsed_s:.1f} | {rate:.0f} | "
            f"{rate / rows[0][3]:.2f} |"
        )


if __name__ == "__main__":
    main()
