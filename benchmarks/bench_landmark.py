"""Landmark figures on the development music: indexing speed, index size, query time, accuracy.

    python benchmarks/bench_landmark.py --songs 20     # the first 20 dev tracks (seed 0)
    python benchmarks/bench_landmark.py --library /music --queries 50

Builds a landmark database of ``--songs`` tracks in a temporary folder (or ``--db``), then
prints indexing speed (decode + resample + peaks + pairs, seconds of audio per second),
commit and calibration time, postings per second of audio and bytes per hour, and for
each query length the time per query (analysis + lookup + alignment) and the top-1 hit
rate (right song, offset within +-0.5 s) of clean excerpts and of excerpts with white
noise at 10 dB SNR, without and with the calibrated "no match" threshold.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from afp_core.audio import iter_audio_files, load_audio
from afp_core.devdata import INSTALL_HINT, find_dev_music
from afp_core.landmark import LandmarkDB, LandmarkRecogniser, index_landmark_library
from afp_core.tasks import TaskState

LENGTHS_S = (1, 2, 3, 5, 10, 15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", type=Path, nargs="+", help="default: the dev music")
    parser.add_argument("--songs", type=int, default=20, help="tracks to index (0: all)")
    parser.add_argument("--queries", type=int, default=30, help="queries per length and noise")
    parser.add_argument("--db", type=Path, help="database folder (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    files = list(iter_audio_files(args.library)) if args.library else find_dev_music()
    if not files:
        raise SystemExit(f"bench_landmark: {INSTALL_HINT}")
    rng = np.random.default_rng(args.seed)
    if args.songs and args.songs < len(files):
        # same draw as rng.choice(files, ...), by index: numpy's stubs take no Path list
        picked = rng.choice(len(files), size=args.songs, replace=False)
        files = sorted(files[i] for i in picked)
    with tempfile.TemporaryDirectory() as tmp:
        run(files, args.db or Path(tmp) / "db", args.queries, rng)


def run(files: list[Path], db_dir: Path, n_queries: int, rng: np.random.Generator) -> None:
    db = LandmarkDB.open_or_create(db_dir)
    started = time.perf_counter()
    task = TaskState()
    result = index_landmark_library(db, files, task=task)
    total = time.perf_counter() - started
    calibrate_s = time.perf_counter()
    db.calibrate_thresholds()
    calibrate_s = time.perf_counter() - calibrate_s
    info = db.info()
    print(f"landmark database: {info['songs']} songs, {info['hours']:.2f} h, {db_dir}")
    if result.audio_s:
        print(
            f"indexing: {result.audio_s / result.elapsed_s:.0f} s of audio per s "
            f"(extraction), {total - result.elapsed_s:.2f} s commit + calibration, "
            f"calibration alone {calibrate_s:.2f} s"
        )
    print(
        f"index: {info['hashes']} postings, {info['hashes_per_second']:.0f} per s of audio, "
        f"{info['bytes_on_disk'] / 1e6:.1f} MB on disk, "
        f"{info['bytes_per_hour'] / 1e6:.2f} MB per hour of audio"
    )

    recogniser = LandmarkRecogniser(db)
    songs = [s for s in db.songs("indexed") if s.duration_s > max(LENGTHS_S) + 1]
    audio = {s.id: load_audio(s.source, recogniser.sample_rate) for s in songs}
    print("\n| length | ms per query | clean top-1 % | 10 dB top-1 % | 10 dB kept % | threshold |")
    print("|---|---|---|---|---|---|")
    for length in LENGTHS_S:
        threshold = recogniser.threshold("landmark", length)
        assert threshold is not None  # a landmark database always has one
        elapsed, clean, noisy, kept = 0.0, 0, 0, 0
        for _ in range(n_queries):
            song = songs[rng.integers(len(songs))]
            start = float(rng.uniform(0, song.duration_s - length - 0.5))
            x = audio[song.id][round(start * 8000) :][: round(length * 8000)]
            noise = rng.standard_normal(len(x)).astype(np.float32)
            noise *= np.sqrt(np.mean(x**2) / (np.mean(noise**2) + 1e-20) / 10)
            for which, query in (("clean", x), ("noisy", x + noise)):
                t0 = time.perf_counter()
                match = recogniser.identify(recogniser.analyse(query), 0.0, length, "landmark")
                elapsed += time.perf_counter() - t0
                hit = (
                    match.song is not None
                    and match.song.id == song.id
                    and match.offset_s is not None
                    and abs(match.offset_s - start) <= 0.5
                )
                if which == "clean":
                    clean += hit
                else:
                    noisy += hit
                    kept += hit and match.score >= threshold
        print(
            f"| {length} s | {1000 * elapsed / (2 * n_queries):.1f} | "
            f"{100 * clean / n_queries:.0f} | {100 * noisy / n_queries:.0f} | "
            f"{100 * kept / n_queries:.0f} | {threshold:.0f} |"
        )


if __name__ == "__main__":
    main()
