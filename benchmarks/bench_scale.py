"""The index at the paper's scale (56 M vectors), and accuracy as the library grows.

    nice -n 19 python benchmarks/bench_scale.py scale [--vectors 56000000] [--out runs/bench-scale]
    nice -n 19 python benchmarks/bench_scale.py curve [--songs 100 1000 10000]
        [--scale runs/bench-scale/scale-56000000]

**The library.** The development music as the database ``--db`` holds it (default the
demo's, ``demo-output/db``: 101 songs, the shipped model), its fingerprints extracted
again from the files with the database's model (the database keeps only PQ codes) and
cached under ``--out``; then as many distractor songs as the size asks for. Song ids
follow that order: the real songs first, then distractor 0, 1, 2...

**Distractor songs.** The real windows are grouped by spherical k-means into
``CLUSTERS`` clusters (sounds that recur across songs: a texture, an instrument, a
silence). Distractor i takes a real song at random (its fingerprint sequence: every
window, in order) and a random permutation of the clusters that leaves none in place
(drawn per song), and moves each window from its cluster to the cluster the permutation
names, keeping its offset from the centre (then renormalised). So:

- each window lands where real fingerprints are, with the spread real windows have
  around their centre: distractors crowd the regions of the sphere real music fills,
  as the songs of a large library do, instead of spreading uniformly (which would make
  them far easier to tell apart than real songs);
- the song keeps its structure: runs of windows in one cluster (a held sound, a
  repeated bar) keep their shape and their neighbour-to-neighbour similarity, repeats
  land together, and the song moves between sounds when the real one does;
- a distractor is no copy of its source (its windows sit in other clusters; cosine 0.23
  to the source window on average) and no two are alike (112 K songs, 256! orders).
  The first runs drew any permutation: the clusters it left in place (one a song on
  average) copied those windows exactly, so a real window had about 4 exact twins among
  56 M vectors, which made recall against "the" exact neighbour meaningless (2.7 % at
  256 lists) and the large libraries harder than real ones.

``curve`` prints the check that matters for accuracy: how close a real window's nearest
window among 101 distractor songs comes, against its nearest window among the 101
other real songs (the similarity an impostor brings), and the similarity of adjacent
windows. With 256 clusters the two impostor distributions agree within 0.03 at every
percentile; adjacent windows agree at the median, with more abrupt changes where the
real song moves between clusters. (A random rotation per song, tried first, kept every
song's inner structure exactly but put distractors at cosine 0.63 where real songs are
at 0.80: far too easy.)

**scale** builds an index of ``--vectors`` vectors (real songs, then distractors, the
last one cut) the way a database commit does (``afp_core.ivf``: lists from the rule,
HNSW quantiser, two-level k-means on a sample drawn like a commit's, vectors added in
chunks, lists on disk past ``--ram-budget-mb``), never holding the vectors all at once,
and prints: build time (training, adding), the process's peak resident memory
(``ru_maxrss``: faiss's allocations and the pages of the mapped lists included), bytes
per hour of audio (index and lists files; 0.5 s hop: 7,200 vectors an hour), the search
time of a 5 s query (9 window vectors of the demo's live takes, k = 4, one at a time), and
recall@1 of 300 take windows against exact search over every vector (computed chunk by
chunk as they are added) for several nprobe. ``--indexes auto paper`` also builds the paper's
256 lists / nprobe 4 on the same library and queries (affordable up to a few million).
The trained empty index is kept (``trained.faiss``) so that a rerun skips training.

**curve** evaluates the real-world protocol (``--session``: the demo's live takes; song
accuracy at 1, 3 and 5 s, no rejection, both rules) against databases of ``--songs``
songs (real ``FingerprintDB``s, built by staging and one commit, kept under ``--out``)
and against the index of a ``scale`` run (``--scale``), and plots the curve.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from afp_core import ivf
from afp_core.audio import load_audio
from afp_core.checkpoint import Checkpoint
from afp_core.config import IndexConfig
from afp_core.database import FingerprintDB, Song, auto_nlist, auto_nprobe, model_identity
from afp_core.indexing import extract_file_vectors, load_database_model
from afp_core.protocols.realworld import (
    RealWorldResult,
    RealWorldSettings,
    plan_realworld,
    run_realworld_plan,
)
from afp_core.protocols.sessions import EvalSession, read_session
from afp_core.query import embed_audio
from afp_core.recogniser import NeuralRecogniser
from afp_core.tasks import progress_task

CLUSTERS = 256
HOP_S = 0.5
CHUNK = 65_536
# What a commit trains on (afp_core.database._train_ivfpq): 39 vectors a list, or more.
TRAIN_PER_LIST = 39
SEED = 0


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def peak_rss_gb() -> float:
    """The process's peak resident memory so far (Linux reports ru_maxrss in KB): with
    lists on disk it counts the pages of the memory-mapped files the kernel kept, which
    it can drop under pressure, so ``anon_gb`` is also sampled."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def anon_gb() -> float:
    """Resident memory that is the process's own (heap, arrays), not file pages."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1e6
    return math.nan


@dataclasses.dataclass
class Spent:
    """Wall-clock and CPU seconds (on a shared machine the CPU time is what the work
    costs; the wall clock also counts the waiting)."""

    wall: float = 0.0
    cpu: float = 0.0

    @classmethod
    def since(cls, began: Spent) -> Spent:
        return cls(time.perf_counter() - began.wall, time.process_time() - began.cpu)

    @classmethod
    def now(cls) -> Spent:
        return cls(time.perf_counter(), time.process_time())

    def __sub__(self, other: Spent) -> Spent:
        return Spent(self.wall - other.wall, self.cpu - other.cpu)

    def __str__(self) -> str:
        return f"{self.wall:,.0f} s ({self.cpu:,.0f} s of CPU)"


def machine() -> str:
    cpu = "cpu"
    with Path("/proc/cpuinfo").open() as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"machine: {platform.machine()}, {cpu}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, "
        f"load average {os.getloadavg()[0]:.1f}; faiss {faiss.__version__}, "
        f"{faiss.omp_get_max_threads()} threads"
    )


# ---------------------------------------------------------------------- the library


@dataclasses.dataclass(frozen=True)
class RealSong:
    title: str
    artist: str
    source: str
    duration_s: float
    checksum: str
    first: int
    count: int


def check_one_model(out: Path, db: FingerprintDB) -> None:
    """Everything kept under ``out`` (vectors, trained indexes, databases) comes from one
    model: the first run names it in ``out/model.json``, a later run with a database of
    another model is refused (after a new shipped model, say) instead of mixing them."""
    named = out / "model.json"
    identity = list(model_identity(db.model_info))
    if not named.is_file():
        out.mkdir(parents=True, exist_ok=True)
        named.write_text(json.dumps({"name": identity[0], "checkpoint_sha256": identity[1]}))
        return
    kept = json.loads(named.read_text())
    if [kept.get("name"), kept.get("checkpoint_sha256")] != identity:
        raise SystemExit(
            f"{out}: made with another model than {db.path}'s "
            f"({str(kept.get('checkpoint_sha256'))[:12]}...); give another --out"
        )


def real_songs(db_dir: Path, out: Path, decoded: bool = False) -> tuple[list[RealSong], np.ndarray]:
    """The songs of ``db_dir`` and their exact fingerprints, extracted again from their
    files with the database's model, cached under ``out``; ``decoded``: the database's
    own vectors as its index rebuilds them (PQ codes decoded: no audio needed, quicker,
    approximate)."""
    check_one_model(out, FingerprintDB.open(db_dir))
    cache = out / f"real-{db_dir.resolve().name}{'-decoded' if decoded else ''}.npz"
    if cache.is_file():
        data = np.load(cache, allow_pickle=False)
        songs = [RealSong(**row) for row in json.loads(str(data["songs"]))]
        return songs, data["vectors"]
    db = FingerprintDB.open(db_dir)
    model = load_database_model(db).model
    songs, parts, first = [], [], 0
    for song in db.songs("indexed"):
        if decoded:
            rebuilt = db.reconstruct(np.arange(song.vector_count) + (song.first_vector_id or 0))
            vectors = rebuilt / np.linalg.norm(rebuilt, axis=1, keepdims=True)
        else:
            log(f"extracting {song.source}")
            vectors = extract_file_vectors(model, Path(song.source), density=db.density)
        row = (song.title, song.artist, song.source, song.duration_s, song.checksum)
        songs.append(RealSong(*row, first, len(vectors)))
        parts.append(vectors)
        first += len(vectors)
    vectors = np.concatenate(parts)
    out.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, vectors=vectors, songs=json.dumps([dataclasses.asdict(s) for s in songs]))
    tmp.rename(cache)
    return songs, vectors


class Distractors:
    """Fingerprint sequences of songs that do not exist: a real song's windows moved to
    other clusters of the real library by a random permutation per song (module
    docstring)."""

    def __init__(self, songs: list[RealSong], vectors: np.ndarray, seed: int = SEED) -> None:
        self.seed = seed
        kmeans = faiss.Kmeans(vectors.shape[1], CLUSTERS, niter=20, spherical=True, seed=seed)
        kmeans.train(vectors)
        self.centroids = np.asarray(kmeans.centroids)
        self.cluster = kmeans.index.search(vectors, 1)[1][:, 0]
        self.offset = vectors - self.centroids[self.cluster]
        self.first = np.array([s.first for s in songs])
        self.count = np.array([s.count for s in songs])

    def source(self, i: int) -> int:
        """The real song distractor ``i`` is made from."""
        return int(np.random.default_rng([self.seed, i]).integers(len(self.first)))

    def song(self, i: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Distractor ``i``'s vectors (only ``rows`` of them, if given)."""
        rng = np.random.default_rng([self.seed, i])
        src = int(rng.integers(len(self.first)))
        moves = rng.permutation(CLUSTERS)
        # a derangement: a cluster left in place would copy its windows exactly, and
        # at 56 M vectors every real window would have about four exact twins
        while np.any(moves == np.arange(CLUSTERS)):
            moves = rng.permutation(CLUSTERS)
        rows = np.arange(self.count[src]) if rows is None else rows
        windows = self.first[src] + rows
        vectors = self.offset[windows] + self.centroids[moves[self.cluster[windows]]]
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class Library:
    """The real songs, then distractors 0, 1, 2...: the first ``songs`` of them, or as many
    as make ``vectors`` vectors (the last one cut)."""

    def __init__(
        self,
        real: list[RealSong],
        real_vectors: np.ndarray,
        distractors: Distractors,
        songs: int | None = None,
        vectors: int | None = None,
    ) -> None:
        self.real, self.real_vectors, self.distractors = real, real_vectors, distractors
        counts = [s.count for s in real][: songs or None]
        total = sum(counts)
        i = 0
        while (songs is not None and len(counts) < songs) or (
            vectors is not None and total < vectors
        ):
            counts.append(int(distractors.count[distractors.source(i)]))
            total += counts[-1]
            i += 1
        self.counts = np.array(counts, np.int64)
        if vectors is not None:  # up to the song that reaches ``vectors``, cut there
            reach = np.cumsum(self.counts)
            last = int(np.searchsorted(reach, vectors))
            self.counts = self.counts[: last + 1]
            self.counts[-1] -= reach[last] - vectors
        self.firsts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.ntotal = int(self.counts.sum())

    def __len__(self) -> int:
        return len(self.counts)

    def song_vectors(self, j: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Song ``j``'s vectors (0-based: the real songs first), or only ``rows``."""
        rows = np.arange(self.counts[j]) if rows is None else rows
        if j < len(self.real):
            vectors = self.real_vectors[self.real[j].first + rows]
        else:
            vectors = self.distractors.song(j - len(self.real), rows)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def chunks(self) -> Iterator[np.ndarray]:
        """Every vector in id order, in chunks of about ``CHUNK``."""
        pending: list[np.ndarray] = []
        size = 0
        for j in range(len(self)):
            pending.append(self.song_vectors(j))
            size += len(pending[-1])
            if size >= CHUNK:
                yield np.concatenate(pending)
                pending, size = [], 0
        if pending:
            yield np.concatenate(pending)

    def take(self, ids: np.ndarray) -> np.ndarray:
        """The vectors with the sorted ``ids``."""
        songs = np.searchsorted(self.firsts, ids, side="right") - 1
        present, starts = np.unique(songs, return_index=True)
        ends = [*starts[1:], len(ids)]
        parts = []
        for j, start, end in zip(present, starts, ends, strict=True):
            parts.append(self.song_vectors(int(j), ids[start:end] - self.firsts[j]))
        return np.concatenate(parts)


# ---------------------------------------------------------------------- queries


def take_windows(checkpoint: Checkpoint, session: EvalSession) -> list[np.ndarray]:
    """Per take, the fingerprints of the windows inside the program's songs."""
    model, rate = checkpoint.model, checkpoint.spec.audio.sample_rate
    takes = []
    for take in session.takes:
        audio = load_audio(take.aligned_file or take.raw_file, rate)
        vectors = embed_audio(model, audio)
        scale = rate / session.sample_rate
        inside = [
            vectors[
                math.ceil(s.start * scale / (HOP_S * rate)) : int(s.end * scale / (HOP_S * rate))
                - 1
            ]
            for s in session.songs
        ]
        takes.append(np.concatenate(inside))
    return takes


def five_second_queries(takes: list[np.ndarray], count: int, seed: int) -> list[np.ndarray]:
    """``count`` runs of 9 consecutive take windows (a 5 s query)."""
    rng = np.random.default_rng(seed)
    queries = []
    for _ in range(count):
        take = takes[int(rng.integers(len(takes)))]
        start = int(rng.integers(len(take) - 9))
        queries.append(np.ascontiguousarray(take[start : start + 9]))
    return queries


# ---------------------------------------------------------------------- scale


def build_scale(args: argparse.Namespace) -> None:
    out: Path = args.out
    real, real_vectors = real_songs(args.db, out, args.decoded)
    source = FingerprintDB.open(args.db)
    checkpoint = load_database_model(source)
    library = Library(real, real_vectors, Distractors(real, real_vectors), vectors=args.vectors)
    folder = out / f"scale-{library.ntotal}"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = IndexConfig(ram_budget_mb=args.ram_budget_mb)
    nlist = args.nlist or auto_nlist(library.ntotal)
    print(machine())
    print(
        f"library: {len(library):,} songs ({len(real)} real), {library.ntotal:,} vectors, "
        f"{library.ntotal * HOP_S / 3600:,.0f} h of audio; {nlist:,} lists",
        flush=True,
    )

    takes = take_windows(checkpoint, read_session(args.session))
    pool = np.concatenate(takes)
    queries = pool[np.random.default_rng(SEED).choice(len(pool), args.queries, replace=False)]
    timed = five_second_queries(takes, args.timed, SEED)

    index, train_s = trained_index(library, nlist, cfg, folder / "trained.faiss")
    log(f"trained in {train_s}; peak RSS {peak_rss_gb():.1f} GB")
    builds: list[tuple[str, faiss.Index, Spent]] = []
    if "auto" in args.indexes:
        builds.append(("auto", index, train_s))
    if "paper" in args.indexes:
        paper, paper_s = trained_index(library, 256, cfg, folder / "trained-256.faiss")
        builds.append(("paper", paper, paper_s))

    for name, index, train_s in builds:
        index_file = folder / ("index.faiss" if name == "auto" else "index-256.faiss")
        fill = fill_index(library, index, cfg, index_file, queries)
        lists = faiss.extract_index_ivf(index).nlist
        nprobes = [4] if name == "paper" else sorted({*args.nprobe, auto_nprobe(lists)})
        report(name, library, index, index_file, train_s, fill, queries, timed, nprobes)
        meta = {"vectors": library.ntotal, "songs": len(library), "seed": SEED}
        (folder / "library.json").write_text(json.dumps(meta) + "\n")


def trained_index(
    library: Library, nlist: int, cfg: IndexConfig, kept: Path
) -> tuple[faiss.Index, Spent]:
    """The index trained as a commit trains it, or the one a previous run kept."""
    if kept.is_file():
        index = faiss.read_index(str(kept))
        spent = json.loads(kept.with_suffix(".json").read_text())
        # the first runs kept the wall clock alone, as "train_s"
        return index, Spent(**spent) if "wall" in spent else Spent(spent["train_s"], math.nan)
    began = Spent.now()
    size = min(library.ntotal, max(cfg.max_train_vectors, TRAIN_PER_LIST * nlist))
    picks = np.sort(np.random.default_rng(SEED).choice(library.ntotal, size, replace=False))
    log(f"drawing a training sample of {size:,} vectors")
    sample = library.take(picks)
    drawn = Spent.since(began)
    index = ivf.new_ivfpq(library.real_vectors.shape[1], nlist, cfg)
    log(f"training {nlist:,} lists ({'HNSW' if ivf.hnsw_quantizer(index) else 'flat'} quantiser)")
    ivf.train_ivfpq(index, sample, 8, SEED)
    train_s = Spent.since(began) - drawn
    log(f"sample drawn in {drawn} (making distractors), trained in {train_s}")
    faiss.write_index(index, str(kept))
    kept.with_suffix(".json").write_text(json.dumps(dataclasses.asdict(train_s)) + "\n")
    return index, train_s


@dataclasses.dataclass
class Fill:
    add_s: Spent
    truth: np.ndarray  # each query's exact nearest vector id
    on_disk: bool
    peak_gb: float
    peak_anon_gb: float


def fill_index(
    library: Library, index: faiss.Index, cfg: IndexConfig, index_file: Path, queries: np.ndarray
) -> Fill:
    """Add every vector in chunks (as a commit does) while finding each query's exact
    nearest neighbour; the time spent making vectors and on exact search is not counted."""
    best = np.full(len(queries), -np.inf, np.float32)
    truth = np.full(len(queries), -1, np.int64)
    overhead = Spent()
    done, peak_anon = 0, anon_gb()
    began = Spent.now()

    def chunks() -> Iterator[np.ndarray]:
        nonlocal overhead
        first = 0
        made = Spent.now()
        for chunk in library.chunks():
            scores = queries @ chunk.T
            top = scores.argmax(1)
            better = scores[np.arange(len(queries)), top] > best
            best[better] = scores[better, top[better]]
            truth[better] = first + top[better]
            first += len(chunk)
            spent = Spent.since(made)
            overhead = Spent(overhead.wall + spent.wall, overhead.cpu + spent.cpu)
            yield chunk
            made = Spent.now()

    def after(count: int) -> None:
        nonlocal done, peak_anon
        done += count
        peak_anon = max(peak_anon, anon_gb())
        if done // 1_000_000 != (done - count) // 1_000_000:
            rate = done / Spent.since(began).wall
            left = (library.ntotal - done) / rate
            log(
                f"{done:,} / {library.ntotal:,} vectors, {rate:,.0f}/s with the making, "
                f"{left / 60:.0f} min left; peak RSS {peak_rss_gb():.1f} GB"
            )

    faiss.extract_index_ivf(index).make_direct_map()
    disk = ivf.over_budget(library.ntotal, index, cfg)
    if disk:
        target = ivf.lists_file(index_file)
        ivf.fill_on_disk(index, chunks(), target, cfg, after, library.ntotal)
    else:
        ivf.fill_in_memory(index, chunks(), after)
    add_s = Spent.since(began) - overhead
    faiss.extract_index_ivf(index).make_direct_map(False)
    faiss.write_index(index, str(index_file))
    faiss.extract_index_ivf(index).make_direct_map()
    return Fill(add_s, truth, disk, peak_rss_gb(), max(peak_anon, anon_gb()))


def report(
    name: str,
    library: Library,
    index: faiss.Index,
    index_file: Path,
    train_s: Spent,
    fill: Fill,
    queries: np.ndarray,
    timed: list[np.ndarray],
    nprobes: list[int],
) -> None:
    files = index_file.stat().st_size + (
        ivf.lists_file(index_file).stat().st_size if fill.on_disk else 0
    )
    hours = library.ntotal * HOP_S / 3600
    quantizer = "HNSW" if ivf.hnsw_quantizer(index) is not None else "flat"
    nlist = faiss.extract_index_ivf(index).nlist
    print(
        f"\n{name}: {nlist:,} lists, {quantizer} quantiser, m=32 x 8 bits, lists "
        f"{'on disk (memory-mapped)' if fill.on_disk else 'in memory'}"
    )
    print(
        f"build: training {train_s}, adding {fill.add_s} (total "
        f"{(train_s.wall + fill.add_s.wall) / 60:,.1f} min, "
        f"{(train_s.cpu + fill.add_s.cpu) / 60:,.1f} min of CPU); peak RSS {fill.peak_gb:.2f} GB "
        f"(anonymous {fill.peak_anon_gb:.2f} GB); "
        f"index files {files / 1e9:.2f} GB = {files / hours / 1e6:.3f} MB per hour of audio"
    )
    print(
        "| nprobe | R@1 % (vs exact) | R@10 % | ms per 5 s query: median / 90th pct (wall) "
        "| CPU ms |"
    )
    print("|---|---|---|---|---|")
    for nprobe in nprobes:
        ivf.set_nprobe(index, nprobe)
        _, ids = index.search(queries, 10)
        recall = 100 * float(np.mean(ids[:, 0] == fill.truth))
        recall10 = 100 * float(np.mean(np.any(ids == fill.truth[:, None], axis=1)))
        for query in timed[:10]:  # warm the lists' pages
            index.search(query, 4)
        wall, cpu = [], time.process_time()
        for query in timed:
            began = time.perf_counter()
            index.search(query, 4)
            wall.append(1e3 * (time.perf_counter() - began))
        cpu_ms = 1e3 * (time.process_time() - cpu) / len(timed)
        print(
            f"| {nprobe} | {recall:.1f} | {recall10:.1f} | {np.median(wall):.1f} / "
            f"{np.percentile(wall, 90):.1f} | {cpu_ms:.1f} |",
            flush=True,
        )
    print(f"peak RSS after searching: {peak_rss_gb():.2f} GB (anonymous now {anon_gb():.2f} GB)")


# ---------------------------------------------------------------------- curve


class ScaleDB:
    """The index of a ``scale`` run as the search rules see a database (``SearchableDB``):
    its songs are the library's, ids in library order."""

    def __init__(self, folder: Path, library: Library, source: FingerprintDB) -> None:
        self.path, self.dim, self.density, self.stored_hop_s = folder, source.dim, 1, HOP_S
        self.model_info = source.model_info
        index_file = folder / "index.faiss"
        if ivf.lists_file(index_file).is_file():
            self.index = ivf.read_on_disk(index_file)
        else:
            self.index = faiss.read_index(str(index_file))
        if self.index.ntotal != library.ntotal:
            raise SystemExit(
                f"{folder}: the index holds {self.index.ntotal:,} vectors, not {library.ntotal:,}"
            )
        faiss.extract_index_ivf(self.index).make_direct_map()
        self.nprobe = auto_nprobe(faiss.extract_index_ivf(self.index).nlist)
        self.library = library
        self._songs = [self._song(j) for j in range(len(library))]

    def _song(self, j: int) -> Song:
        first, count = int(self.library.firsts[j]), int(self.library.counts[j])
        if j < len(self.library.real):
            real = self.library.real[j]
            row = (real.title, real.artist, real.source, real.duration_s, real.checksum)
        else:
            row = (f"distractor {j}", "", "synthetic", count * HOP_S, f"distractor{j:09d}")
        return Song(j + 1, *row, first, count, "indexed", "")

    @property
    def nprobe(self) -> int:
        return int(faiss.extract_index_ivf(self.index).nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        ivf.set_nprobe(self.index, value)

    @property
    def search_settings(self) -> dict[str, Any]:
        return {}

    def stored_span(self, n_windows: int) -> int:
        return n_windows

    def songs(self, status: str | None = None) -> list[Song]:
        return list(self._songs)

    def song(self, song_id: int) -> Song:
        return self._songs[song_id - 1]

    def search(
        self, queries: np.ndarray, k: int, exclude_song: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if exclude_song is not None:
            raise SystemExit("the scale index answers without impostors")
        scores, ids = self.index.search(np.ascontiguousarray(queries, np.float32), k)
        scores[ids < 0] = -np.inf
        return scores, ids

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        j = np.searchsorted(self.library.firsts, ids, side="right") - 1
        valid = (ids >= 0) & (ids < self.library.ntotal)
        j = np.where(valid, j, 0)
        return np.where(valid, j + 1, -1), np.where(valid, ids - self.library.firsts[j], -1)

    def song_spans(self, song_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        j = np.asarray(song_ids) - 1
        valid = (j >= 0) & (j < len(self.library))
        j = np.where(valid, j, 0)
        return (
            np.where(valid, self.library.firsts[j], -1),
            np.where(valid, self.library.counts[j], 0),
        )

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        return self.index.reconstruct_batch(np.ascontiguousarray(ids, np.int64))

    def hubness_penalty(self, ids: np.ndarray) -> None:
        return None  # not measured: the scale benchmark times the plain rule

    def check_model(self, model_info: dict[str, Any]) -> None:
        if model_identity(model_info) != model_identity(self.model_info):
            raise SystemExit(f"{self.path}: made with another model")

    def info(self) -> dict[str, Any]:
        return {"path": str(self.path), "songs": len(self.library), "vectors": self.library.ntotal}


def curve_database(out: Path, library: Library, source: FingerprintDB) -> FingerprintDB:
    """A real database of the library's songs (staged, then one commit), kept for reruns."""
    folder = out / f"curve-{len(library)}"
    if folder.exists():
        db = FingerprintDB.open(folder)
        if db.ntotal == library.ntotal and not db.songs("staged"):
            return db
    else:
        db = FingerprintDB.create(
            folder, source.model_info, source.dim, IndexConfig(), source.model_path
        )
    have = {song.checksum for song in db.songs()}
    log(f"staging {len(library):,} songs in {folder}")
    for j in range(len(library)):
        if j < len(library.real):
            real = library.real[j]
            row = (real.title, real.artist, real.source, real.duration_s, real.checksum)
        else:
            count = int(library.counts[j])
            row = (f"distractor {j}", "", "synthetic", count * HOP_S, f"distractor{j:09d}")
        if row[4] not in have:
            db.stage_song(*row, library.song_vectors(j))
    log(f"committing {library.ntotal:,} vectors")
    began = time.perf_counter()
    db.commit()
    log(f"committed in {time.perf_counter() - began:.0f} s")
    return db


def impostor_check(library: Library, count: int = 500) -> str:
    """How close real windows come to other real songs' windows and to distractors'."""
    rng = np.random.default_rng(SEED)
    real = library.real
    others = [library.song_vectors(len(real) + i) for i in range(len(real))]
    distractors = np.concatenate(others)
    owners = np.repeat(np.arange(len(real)), [s.count for s in real])
    pick = rng.choice(len(owners), count, replace=False)
    queries = library.real_vectors[pick]
    scores = queries @ library.real_vectors.T
    scores[owners[pick][:, None] == owners[None, :]] = -np.inf
    nearest_real = scores.max(1)
    # leaving out the distractors made from the query's own song, as its own song is
    sources = np.repeat(
        [library.distractors.source(i) for i in range(len(real))], [len(v) for v in others]
    )
    scores = queries @ distractors.T
    scores[owners[pick][:, None] == sources[None, :]] = -np.inf
    nearest_distractor = scores.max(1)

    def describe(values: np.ndarray) -> str:
        q = np.percentile(values, [10, 50, 90, 99])
        return " / ".join(f"{v:.3f}" for v in q)

    def adjacent(songs: list[np.ndarray]) -> str:
        return describe(np.concatenate([np.sum(v[1:] * v[:-1], axis=1) for v in songs]))

    reals = [library.song_vectors(j) for j in range(len(real))]
    return (
        f"cosine, 10th / 50th / 90th / 99th percentile; nearest window of another song for "
        f"{count} real windows, against {len(real)} songs each:\n"
        f"| songs | nearest window of another song | adjacent windows of a song |\n"
        f"|---|---|---|\n"
        f"| the other real songs | {describe(nearest_real)} | {adjacent(reals)} |\n"
        f"| distractors made from them | {describe(nearest_distractor)} | {adjacent(others)} |"
    )


def curve(args: argparse.Namespace) -> None:
    out: Path = args.out
    real, real_vectors = real_songs(args.db, out, args.decoded)
    source = FingerprintDB.open(args.db)
    checkpoint = load_database_model(source)
    distractors = Distractors(real, real_vectors)
    session = read_session(args.session)
    print(machine())
    first = Library(real, real_vectors, distractors, songs=2 * len(real))
    print(impostor_check(first), flush=True)
    settings = RealWorldSettings(lengths_s=(1, 3, 5), threshold=None, impostors=False)
    print(f"\nsong accuracy %, no rejection, takes {' / '.join(TAKES)} of {session.folder}")
    print("| songs | vectors | lists | nprobe | rule | 1 s | 3 s | 5 s |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    sizes, results = [], []
    for n in args.songs:  # each database evaluated once built: the table grows as it goes
        library = Library(real, real_vectors, distractors, songs=max(n, len(real)))
        db: Any = curve_database(out, library, source)
        results.append(evaluate(db, checkpoint, session, settings))
        sizes.append(len(library))
    if args.scale is not None:
        meta = json.loads((args.scale / "library.json").read_text())
        library = Library(real, real_vectors, distractors, vectors=meta["vectors"])
        results.append(
            evaluate(ScaleDB(args.scale, library, source), checkpoint, session, settings)
        )
        sizes.append(len(library))
    if args.plot:
        plot_curve(sizes, results, args.plot)


TAKES = ("low", "mid", "high")


def evaluate(
    db: Any, checkpoint: Checkpoint, session: EvalSession, settings: RealWorldSettings
) -> RealWorldResult:
    """The protocol on one database; its rows of the table printed."""
    plan = plan_realworld([NeuralRecogniser(db, checkpoint)], session, settings)
    with progress_task(False, "s", f"evaluating {db.path}") as task:
        (result,) = run_realworld_plan(plan, task=task)
    coarse = faiss.extract_index_ivf(db.index)
    for method in ("sequence", "vote"):
        cells = []
        for length in (1.0, 3.0, 5.0):
            found = [result.cell(take, method, length) for take in TAKES]
            cells.append(" / ".join(f"{100 * c.accuracy:.1f}" for c in found if c))
        print(
            f"| {len(db.songs()):,} | {db.info()['vectors']:,} | {coarse.nlist:,} | "
            f"{coarse.nprobe} | {method} | {' | '.join(cells)} |",
            flush=True,
        )
    return result


def mean_accuracy(result: RealWorldResult, method: str, length: float) -> float:
    """Accuracy in % of ``method`` at ``length`` s, averaged over the takes."""
    accuracies = []
    for take in TAKES:
        cell = result.cell(take, method, length)
        assert cell is not None, (take, method, length)
        accuracies.append(cell.accuracy)
    return 100 * float(np.mean(accuracies))


def plot_curve(sizes: list[int], results: list[RealWorldResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for length, marker, colour in ((1.0, "o", "C0"), (3.0, "s", "C1"), (5.0, "^", "C2")):
        for method, line in (("sequence", "-"), ("vote", "--")):
            accuracy = [mean_accuracy(r, method, length) for r in results]
            axes.plot(
                sizes, accuracy, marker=marker, linestyle=line, color=colour,
                label=f"{length:g} s, {method}",
            )  # fmt: skip
    axes.set_xscale("log")
    axes.set_xlabel("songs in the library")
    axes.set_ylabel("song accuracy %, mean of the takes")
    axes.set_title("The demo's live takes against a growing library")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("scale", "curve"))
    parser.add_argument("--db", type=Path, default=Path("demo-output/db"))
    parser.add_argument("--session", type=Path, default=Path("demo-output/session"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench-scale"))
    parser.add_argument("--vectors", type=int, default=56_000_000)
    parser.add_argument("--nlist", type=int, default=0, help="0: the rule (auto_nlist)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--ram-budget-mb", type=float, default=IndexConfig.ram_budget_mb)
    parser.add_argument("--queries", type=int, default=300, help="recall queries")
    parser.add_argument("--timed", type=int, default=200, help="timed 5 s queries")
    parser.add_argument(
        "--indexes",
        nargs="+",
        choices=("auto", "paper"),
        default=["auto"],
        help="auto: the rule's lists; paper: 256 lists, nprobe 4",
    )
    parser.add_argument(
        "--decoded", action="store_true", help="real songs as --db's index decodes them"
    )
    parser.add_argument("--songs", type=int, nargs="+", default=[100, 1000, 10_000])
    parser.add_argument("--scale", type=Path, help="a scale run's folder, for the curve")
    parser.add_argument("--plot", type=Path, help="PNG of the curve")
    parser.add_argument(
        "--threads", type=int, default=1, help="faiss and torch threads (a shared machine: 1)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    if args.mode == "scale":
        build_scale(args)
    else:
        curve(args)


if __name__ == "__main__":
    main()
