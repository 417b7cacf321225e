"""Engine figures on the development music: extraction speed, query latency, index size.

    python benchmarks/bench_engine.py                    # all dev music (101 tracks)
    python benchmarks/bench_engine.py --db /tmp/bench-db --queries 30

Builds (or reuses) a database of the library with the default model (the shipped one, or
the seeded untrained NAFP while none is shipped), then prints:
1. extraction speed (decode + resample + front-end + encoder), seconds of audio per second,
   for the default model and for NAFP at width 0.25 / 0.5 / 1.0 (encoder only);
2. query latency per query length (embedding, offset-consistent search, majority vote);
3. index size: bytes on disk and bytes per hour of audio, for the flat/IVF-PQ index the
   database chose and for IVF-PQ m=32 x 8 bits built on the same vectors.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from afp_core.config import IndexConfig, NAFPConfig
from afp_core.database import FingerprintDB
from afp_core.devdata import find_dev_music
from afp_core.indexing import extract_file_vectors, index_library, open_database_for_indexing
from afp_core.models import ModelSpec, build_model, embed_windows
from afp_core.query import embed_audio, load_query
from afp_core.search import identify_vectors
from afp_core.tasks import TaskState, TqdmProgress

LENGTHS_S = (1, 2, 3, 4, 5, 10, 15)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def bench_encoders(seconds: float = 4.0) -> list[str]:
    rows = []
    windows = (0.1 * np.random.default_rng(0).standard_normal((256, 8000))).astype(np.float32)
    for width in (0.25, 0.5, 1.0):
        model = build_model(ModelSpec("nafp", arch=NAFPConfig(width=width)), seed=0)
        embed_windows(model, windows[:32])
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            embed_windows(model, windows, batch_size=256)
            done += len(windows)
        rate = done / (time.perf_counter() - t0)
        rows.append(f"| NAFP width {width} (encoder only) | {rate:7.0f} | {rate * 0.5:7.0f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", type=Path, nargs="+", help="default: the dev music")
    parser.add_argument("--db", type=Path, help="database folder (default: a temp folder)")
    parser.add_argument("--model", type=Path, help="checkpoint (default: shipped/untrained)")
    parser.add_argument("--queries", type=int, default=40, help="queries per length")
    args = parser.parse_args()
    library = args.library or find_dev_music()
    if not library:
        raise SystemExit("no development music: run ./dev data")
    tmp = tempfile.TemporaryDirectory()
    db_dir = args.db or Path(tmp.name) / "db"
    print(f"machine: {machine()}")

    db, checkpoint = open_database_for_indexing(db_dir, args.model, on_notice=print)
    model = checkpoint.model
    with TqdmProgress(unit="s", description="indexing") as progress:
        result = index_library(db, model, library, task=TaskState(progress))
    print(result.summary())

    print("\n1. Extraction speed")
    print("| what | windows/s | s of audio/s |")
    print("|---|---|---|")
    songs = db.songs("indexed")
    sample = songs[:: max(1, len(songs) // 8)][:8]
    t0 = time.perf_counter()
    audio_s = 0.0
    for song in sample:
        extract_file_vectors(model, Path(song.source))
        audio_s += song.duration_s
    elapsed = time.perf_counter() - t0
    print(
        f"| default model, whole path ({len(sample)} files, {audio_s / 60:.0f} min) | "
        f"{audio_s / 0.5 / elapsed:7.0f} | {audio_s / elapsed:7.0f} |"
    )
    for row in bench_encoders():
        print(row)

    print(f"\n2. Query latency, ms (median / 90th percentile over {args.queries} queries)")
    print(f"database: {len(songs)} songs, {db.ntotal} vectors, {db.index_type} index")
    print("| query | embed | offset-consistent search | majority vote | total (sequence) |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    sr = model.spec.audio.sample_rate
    for length in LENGTHS_S:
        timings: dict[str, list[float]] = {"embed": [], "sequence": [], "vote": []}
        usable = [s for s in songs if s.duration_s > length + 1]
        for _ in range(args.queries):
            song = usable[int(rng.integers(len(usable)))]
            start = float(rng.uniform(0, song.duration_s - length - 0.5))
            audio = load_query(Path(song.source), sr, start, length)
            t0 = time.perf_counter()
            vectors = embed_audio(model, audio)
            timings["embed"].append(time.perf_counter() - t0)
            for method in ("sequence", "vote"):
                t0 = time.perf_counter()
                identify_vectors(db, vectors, method=method)
                timings[method].append(time.perf_counter() - t0)
        cells = [
            f"{1e3 * np.median(t):.1f} / {1e3 * np.percentile(t, 90):.1f}" for t in timings.values()
        ]
        total = np.array(timings["embed"]) + np.array(timings["sequence"])
        print(f"| {length} s | " + " | ".join(cells) + f" | {1e3 * np.median(total):.1f} |")

    print("\n3. Index size")
    print("| index | vectors | bytes on disk (index + catalogue) | bytes per hour of audio |")
    print("|---|---|---|---|")
    info = db.info()
    print(
        f"| {info['index']} | {info['vectors']} | "
        f"{info['bytes_index'] + info['bytes_catalogue']:,} | {info['bytes_per_hour']:,.0f} |"
    )
    if db.index_type != "ivfpq":
        ivf_dir = Path(tmp.name) / "ivfpq"
        ivf = FingerprintDB.create(
            ivf_dir, db.model_info, dim=db.dim, index_config=IndexConfig(min_train_vectors=1000)
        )
        for song in songs:
            assert song.first_vector_id is not None  # an indexed song has its vectors
            ids = np.arange(song.first_vector_id, song.first_vector_id + song.vector_count)
            ivf.stage_song(
                song.title,
                song.artist,
                song.source,
                song.duration_s,
                song.checksum,
                db.reconstruct(ids),
            )
        ivf.commit()
        info = ivf.info()
        print(
            f"| {info['index']} | {info['vectors']} | "
            f"{info['bytes_index'] + info['bytes_catalogue']:,} | {info['bytes_per_hour']:,.0f} |"
        )


if __name__ == "__main__":
    main()
