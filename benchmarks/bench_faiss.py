"""Search latency and recall of the fingerprint index alone, on synthetic vectors.

Vectors imitate fingerprints: songs are random walks on the unit sphere (consecutive
windows correlated). Queries are database vectors plus noise (cosine 0.8 to their source,
like a distorted window). Recall is measured against exact search: R@k is the share of
queries whose exact nearest neighbour (found by brute force, chunk by chunk while the
vectors are added) is among the index's k results. Vectors are generated and added in
chunks, so 10 M vectors never sit in memory as floats.

    python benchmarks/bench_faiss.py                 # 1 M and 10 M
    python benchmarks/bench_faiss.py --sizes 1000000 --nprobe 1 4 16
    python benchmarks/bench_faiss.py --sizes 200000 1000000 --nlist 256 0 --nprobe 4 0

``--nlist 0`` and ``--nprobe 0`` are what a database chooses when they are not fixed
(``afp_core.database.auto_nlist``: about 4 sqrt(N); ``auto_nprobe``: 4 sqrt(nlist / 256)).
"""

from __future__ import annotations

import argparse
import platform
import time

import faiss
import numpy as np

from afp_core.database import auto_nlist, auto_nprobe

DIM = 128


def make_song_vectors(rng: np.random.Generator, n: int, song_len: int = 360) -> np.ndarray:
    """``n`` unit vectors made of songs of ``song_len`` windows.

    Each song is a song-level direction plus an AR(1) process: adjacent windows have a
    cosine of about 0.7 (50 % overlap), windows far apart about 0.2, like real fingerprints.
    """
    songs = -(-n // song_len)
    a = 0.72
    centre = 0.5 * rng.standard_normal((songs, 1, DIM)).astype(np.float32)
    noise = rng.standard_normal((songs, song_len, DIM)).astype(np.float32)
    walk = np.empty_like(noise)
    walk[:, 0] = noise[:, 0]
    for t in range(1, song_len):
        walk[:, t] = a * walk[:, t - 1] + np.sqrt(1 - a * a) * noise[:, t]
    vectors = (centre + walk).reshape(-1, DIM)[:n]
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def distort(rng: np.random.Generator, x: np.ndarray, cosine: float = 0.8) -> np.ndarray:
    noise = rng.standard_normal(x.shape).astype(np.float32)
    noise -= (noise * x).sum(1, keepdims=True) * x
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    y = cosine * x + np.sqrt(1 - cosine**2) * noise
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def run(size: int, nlist: int, m: int, nprobes: list[int], queries: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    chunk = 500_000
    train = make_song_vectors(rng, min(size, 256 * max(nlist, 256) // 4 * 4, 400_000))
    quantizer = faiss.IndexFlatIP(DIM)
    index = faiss.IndexIVFPQ(quantizer, DIM, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    t0 = time.perf_counter()
    index.train(train)
    train_s = time.perf_counter() - t0
    # queries are distorted copies of vectors of the first chunk; their exact nearest
    # neighbours are tracked over every chunk as it is added
    first_block = make_song_vectors(rng, min(chunk, size))
    q = distort(rng, first_block[rng.choice(len(first_block), queries, replace=False)])
    best_score = np.full(queries, -np.inf, np.float32)
    best_id = np.full(queries, -1, np.int64)
    add_s = 0.0
    for first in range(0, size, chunk):
        block = first_block if first == 0 else make_song_vectors(rng, min(chunk, size - first))
        t0 = time.perf_counter()
        index.add(block)
        add_s += time.perf_counter() - t0
        exact = faiss.IndexFlatIP(DIM)
        exact.add(block)
        score, ids = exact.search(q, 1)
        better = score[:, 0] > best_score
        best_score[better], best_id[better] = score[better, 0], ids[better, 0] + first
    query_ids = best_id
    ivf = faiss.extract_index_ivf(index)
    # serialising a 10 M index only to measure it would double the memory: count codes instead
    index_mb = index.ntotal * (m + 8) / 1e6 if size > 2_000_000 else None
    index_mb = index_mb or faiss.serialize_index(index).nbytes / 1e6
    rows = []
    for nprobe in [n or auto_nprobe(nlist) for n in nprobes]:
        ivf.nprobe = nprobe
        t0 = time.perf_counter()
        _, ids = index.search(q, 10)
        batch_ms = (time.perf_counter() - t0) / queries * 1e3
        t0 = time.perf_counter()
        for i in range(min(200, queries)):
            index.search(q[i : i + 1], 10)
        single_ms = (time.perf_counter() - t0) / min(200, queries) * 1e3
        r1 = float(np.mean(ids[:, 0] == query_ids))
        r10 = float(np.mean((ids == query_ids[:, None]).any(1)))
        rows.append(
            f"| {size:>10,} | {nlist:>6} | {m:>3} | {nprobe:>6} | {single_ms:8.3f} | "
            f"{batch_ms:8.4f} | {100 * r1:6.1f} | {100 * r10:6.1f} | "
            f"{index_mb:8.1f} | "
            f"{train_s:6.1f} | {add_s:7.1f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--nlist", type=int, nargs="+", default=[256, 0], help="0: automatic")
    parser.add_argument(
        "--nprobe", type=int, nargs="+", default=[1, 4, 16, 64], help="0: automatic"
    )
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {faiss.omp_get_max_threads()} threads, "
        f"faiss {faiss.__version__}; vectors: 128-d synthetic songs, queries at cosine 0.8"
    )
    print(
        "| vectors | nlist | m | nprobe | ms/query (1) | ms/query (batch) | R@1 % | R@10 % "
        "| index MB | train s | add s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for nlist in args.nlist:
            for row in run(
                size, nlist or auto_nlist(size), args.m, args.nprobe, args.queries, args.seed
            ):
                print(row, flush=True)


if __name__ == "__main__":
    main()
