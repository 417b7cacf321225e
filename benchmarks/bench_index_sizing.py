"""Automatic lists against the paper's 256 on real fingerprints: accuracy and search time.

    nice -n 10 python benchmarks/bench_index_sizing.py --db demo-output/db \\
        --session demo-output/session [--lengths 1 3 5] [--out runs/bench-index-sizing]

``--db`` is an existing database (e.g. the demo's, 256 lists and nprobe 4, the paper's);
a second one of the same songs and model is built under ``--out`` with the lists left to
the rule (``IndexConfig()``: about 4 sqrt(N) lists, nprobe 4 sqrt(nlist / 256)) and kept
for a rerun. Both answer the real-world protocol on ``--session`` (no rejection, both
rules, the paper's song accuracy), and the search alone is timed: the decision rules on
5 s queries (9 window vectors) cut every 0.5 s from the first take, one at a time.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import faiss
import numpy as np

from afp_core.audio import load_audio
from afp_core.config import IndexConfig
from afp_core.database import FingerprintDB
from afp_core.indexing import index_library, load_database_model, open_database_for_indexing
from afp_core.protocols.realworld import RealWorldSettings, plan_realworld, run_realworld_plan
from afp_core.protocols.report import format_realworld_table
from afp_core.protocols.sessions import read_session
from afp_core.recogniser import NeuralRecogniser
from afp_core.search import METHODS, identify_vectors
from afp_core.tasks import progress_task


def build_automatic(source: FingerprintDB, folder: Path) -> FingerprintDB:
    """A database of ``source``'s songs (their files) and model, lists left to the rule."""
    checkpoint = load_database_model(source)
    db, _ = open_database_for_indexing(folder, checkpoint.path, IndexConfig())
    files = [Path(song.source) for song in source.songs("indexed")]
    with progress_task(False, "s", f"indexing {folder}") as task:
        index_library(db, checkpoint.model, files, task=task)
    return db


def search_ms(recogniser: NeuralRecogniser, take: np.ndarray, count: int) -> dict[str, float]:
    """Milliseconds per 5 s query, search and decision only, per rule."""
    vectors = recogniser.analyse(take)
    starts = np.linspace(0, len(vectors) - 9, count).astype(int)
    times: dict[str, float] = {}
    for method in METHODS:
        began = time.perf_counter()
        for start in starts:
            identify_vectors(recogniser.db, vectors[start : start + 9], method)
        times[method] = (time.perf_counter() - began) / count * 1e3
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True, help="database with fixed lists")
    parser.add_argument("--session", type=Path, required=True, help="session to evaluate on")
    parser.add_argument("--lengths", type=float, nargs="+", default=[1, 3, 5])
    parser.add_argument("--queries", type=int, default=200, help="timed 5 s queries")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-index-sizing"))
    args = parser.parse_args()

    paper = FingerprintDB.open(args.db)
    folder = args.out / "automatic"
    automatic = FingerprintDB.open(folder) if folder.exists() else build_automatic(paper, folder)
    checkpoint = load_database_model(paper)
    recognisers = [NeuralRecogniser(db, checkpoint) for db in (paper, automatic)]
    session = read_session(args.session)
    settings = RealWorldSettings(
        lengths_s=tuple(int(x) if float(x).is_integer() else x for x in args.lengths),
        threshold=None,
    )
    plan = plan_realworld(recognisers, session, settings)
    with progress_task(False, "s", "evaluating") as task:
        results = run_realworld_plan(plan, task=task)

    take = session.takes[0]
    audio = load_audio(take.aligned_file or take.raw_file, recognisers[0].sample_rate)
    print(
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{faiss.omp_get_max_threads()} faiss threads, faiss {faiss.__version__}; "
        f"session {session.folder.name}, {len(session.songs)} songs"
    )
    print(
        "\n| database | vectors | lists | nprobe | vectors per list (min / median / max) "
        "| imbalance | index MB (RAM / disk) | ms per 5 s query (sequence / vote) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for recogniser in recognisers:
        info = recogniser.db.info()
        lists, ms = info["lists"], search_ms(recogniser, audio, args.queries)
        print(
            f"| {Path(info['path']).name} | {info['vectors']:,} | {lists['count']} | "
            f"{info['index']['nprobe']} | {lists['min']} / {lists['median']:.0f} / "
            f"{lists['max']} | {lists['imbalance']:.2f} | "
            f"{info['bytes_index_ram'] / 1e6:.1f} / {info['bytes_index'] / 1e6:.1f} | "
            f"{ms['sequence']:.2f} / {ms['vote']:.2f} |"
        )
    print()
    print(format_realworld_table(results))


if __name__ == "__main__":
    main()
