"""IVF-PQ indexes of any size: the coarse quantiser, its training, and lists in RAM or on disk.

docs/design.md §3.4. What changes with the size of a database:

- **Coarse quantiser.** Up to ``IndexConfig.hnsw_min_lists`` lists it is an exact
  ``IndexFlatIP`` (every database made before, and the development library). From there
  on, comparing each vector with every centroid is what costs (at the 29,933 lists of
  56 M vectors, 7.7 MFLOP per vector added or searched), so the centroids are searched
  through an HNSW graph (``IndexHNSWFlat``, ``HNSW_M`` links per node), which visits a
  few hundred of them. Its ``efSearch`` is ``ADD_EF_SEARCH`` while vectors are added (one
  list each; a vector filed in a near-best list is still found, since a query probes
  many) and at least ``SEARCH_EF_SEARCH`` and twice nprobe for queries.
- **Training.** With the HNSW quantiser the centroids come from two-level spherical
  k-means (``two_level_centroids``: sqrt(nlist) groups, then each group's share of the
  lists within it), which compares each sample vector with about 2 sqrt(nlist) centroids
  per iteration instead of nlist; the PQ codebooks are then trained on residuals of a
  ``_PQ_TRAIN_VECTORS`` subsample.
- **Lists in RAM or on disk.** An index whose lists would take more than
  ``IndexConfig.ram_budget_mb`` keeps them in a file beside the index file,
  ``index-<generation>.ivfdata`` (faiss ``OnDiskInvertedLists``, memory-mapped: the
  kernel keeps the lists that queries touch in its page cache). ``fill_on_disk`` adds the
  vectors in chunks to a small in-memory index, writes it out as a part file every
  ``part_vectors`` vectors, and merges the old lists and the parts into a new lists file
  in one pass: memory stays bounded whatever the size, and the old generation's file is
  never modified (a commit stays all or nothing).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import faiss
import numpy as np

from afp_core.config import IndexConfig
from afp_core.errors import DiskFull, as_disk_full, describe_disk_full
from afp_core.fileutil import atomic_path, removed_on_failure

HNSW_M = 32
ADD_EF_SEARCH = 16
SEARCH_EF_SEARCH = 64
# faiss's own k-means iterations for IVF centroids (Level1Quantizer.cp.niter)
KMEANS_ITERATIONS = 10
# PQ codebooks: 256 centroids x faiss's 256 points each is all its k-means uses
_PQ_TRAIN_VECTORS = 65_536
LISTS_SUFFIX = ".ivfdata"
_MB = 1_000_000
# Room asked beyond the merged lists' own bytes: 1 MiB and 1% more. The lists file is one
# new file filled whole; what a file system adds to it is its last block (measured: the
# file's 4 KiB pages on tmpfs, 1 to 3 KiB on an ext4 of 1 KiB blocks) and its extent tree
# (at worst 12 bytes an extent, under 1% however fragmented).
_LISTS_SLACK_BYTES = 1 << 20
_LISTS_SLACK_FRACTION = 0.01


def new_ivfpq(dim: int, nlist: int, cfg: IndexConfig) -> faiss.IndexIVFPQ:
    """An untrained inner-product IVF-PQ index with the quantiser ``cfg`` asks for at
    ``nlist`` lists (it owns the quantiser)."""
    if nlist >= cfg.hnsw_min_lists:
        quantizer: faiss.Index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    else:
        quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, cfg.m, cfg.nbits, faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    # the index now owns and frees its quantiser (``this``: SWIG's handle, not in the stubs)
    quantizer.this.disown()  # type: ignore[attr-defined]
    return index


def hnsw_quantizer(index: faiss.Index) -> faiss.IndexHNSW | None:
    """The HNSW coarse quantiser of an IVF index, or None for a flat one."""
    if not isinstance(index, faiss.IndexIVF):
        return None
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
    return quantizer if isinstance(quantizer, faiss.IndexHNSW) else None


def train_ivfpq(index: faiss.IndexIVFPQ, sample: np.ndarray, min_points: int, seed: int) -> None:
    """Train ``index`` on ``sample`` (unit vectors): faiss's k-means for a flat quantiser,
    two-level k-means for an HNSW one; every k-means accepts ``min_points`` per centroid."""
    # faiss prints "WARNING clustering ..." below 39 points per centroid; ``min_points``
    # is enough, so that is no news.
    for clustering in (index.cp, index.pq.cp):
        clustering.min_points_per_centroid = min_points
    if hnsw_quantizer(index) is None:
        index.train(sample)
        return
    centroids = two_level_centroids(sample, index.nlist, min_points, seed)
    index.quantizer.add(centroids)
    # the quantiser is trained (nlist centroids): faiss now trains the PQ codebooks only
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(sample), min(len(sample), _PQ_TRAIN_VECTORS), replace=False))
    with added_with(index):
        index.train(np.ascontiguousarray(sample[picks]))


def two_level_centroids(sample: np.ndarray, nlist: int, min_points: int, seed: int) -> np.ndarray:
    """``nlist`` unit centroids of ``sample`` by two-level spherical k-means: sqrt(nlist)
    groups, then each group split into lists in proportion to the vectors it holds."""
    dim = sample.shape[1]
    groups = max(1, round(math.sqrt(nlist)))
    options = {
        "niter": KMEANS_ITERATIONS,
        "spherical": True,
        "seed": seed,
        "min_points_per_centroid": min_points,
    }
    top = faiss.Kmeans(dim, groups, **options)
    top.train(sample)
    _, assign = top.index.search(sample, 1)
    assign = assign[:, 0]
    sizes = np.bincount(assign, minlength=groups)
    # lists per group in proportion to its vectors (largest remainders), none empty
    share = sizes * nlist / len(sample)
    lists = np.floor(share).astype(np.int64)
    lists[np.argsort(lists - share)[: nlist - int(lists.sum())]] += 1
    order = np.argsort(assign, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    parts = []
    for group in range(groups):
        members = sample[order[bounds[group] : bounds[group + 1]]]
        count = int(min(lists[group], len(members)))
        if count == 0:
            continue
        if count == len(members):
            parts.append(members)
            continue
        sub = faiss.Kmeans(dim, count, **options)
        sub.train(np.ascontiguousarray(members))
        parts.append(np.asarray(sub.centroids))
    centroids = np.concatenate(parts).astype(np.float32)
    return centroids / np.linalg.norm(centroids, axis=1, keepdims=True)


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    """Lists probed per query, and an HNSW quantiser wide enough to find them."""
    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = nprobe
    hnsw = hnsw_quantizer(index)
    if hnsw is not None:
        hnsw.hnsw.efSearch = max(SEARCH_EF_SEARCH, 2 * nprobe)


@contextlib.contextmanager
def added_with(index: faiss.Index) -> Iterator[None]:
    """Assign vectors with the narrower ``ADD_EF_SEARCH`` while adding (or training)."""
    hnsw = hnsw_quantizer(index)
    if hnsw is None:
        yield
        return
    search_ef = hnsw.hnsw.efSearch
    hnsw.hnsw.efSearch = ADD_EF_SEARCH
    try:
        yield
    finally:
        hnsw.hnsw.efSearch = search_ef


def ram_bytes(ntotal: int, index: faiss.Index, on_disk: bool) -> int:
    """What ``index`` holding ``ntotal`` vectors takes in memory: the codes and ids in the
    lists (unless they are on disk), the id -> list map rebuilt on load (8 bytes a
    vector), the centroids (and their HNSW links) and the PQ codebooks."""
    ivfpq = _as_ivfpq(index)
    lists = 0 if on_disk else ntotal * (ivfpq.pq.code_size + 8)
    centroids = ivfpq.nlist * ivfpq.d * 4
    if hnsw_quantizer(index) is not None:
        centroids += ivfpq.nlist * 2 * HNSW_M * 4  # level-0 links; upper levels are few
    return lists + ntotal * 8 + centroids + 2**ivfpq.pq.nbits * ivfpq.d * 4


def over_budget(ntotal: int, index: faiss.Index, cfg: IndexConfig) -> bool:
    """Whether ``index`` with ``ntotal`` vectors would exceed the RAM budget in memory."""
    return ram_bytes(ntotal, index, on_disk=False) > cfg.ram_budget_mb * _MB


def part_vectors(index: faiss.Index, cfg: IndexConfig) -> int:
    """Vectors per in-memory part while filling on disk: a quarter of the budget (faiss's
    lists grow by doubling, and the merge reads the parts back)."""
    return max(1, int(cfg.ram_budget_mb * _MB / 4 / (_as_ivfpq(index).pq.code_size + 8)))


def lists_bytes(ntotal: int, code_size: int) -> int:
    """Bytes of the lists file that ``OnDiskInvertedLists.merge_from_multiple`` writes for
    ``ntotal`` vectors: each list's codes and 8-byte ids, back to back (faiss sizes the
    file once, to exactly this, before filling it; measured for 1,000 to 50,000 vectors)."""
    return ntotal * (code_size + 8)


def lists_file(index_file: Path) -> Path:
    """Where the on-disk lists of ``index-<generation>.faiss`` are kept."""
    return index_file.with_suffix(LISTS_SUFFIX)


def on_disk(index: faiss.Index) -> bool:
    """Whether the index's lists are memory-mapped from a file."""
    if not isinstance(index, faiss.IndexIVF):
        return False
    return isinstance(_lists(index), faiss.OnDiskInvertedLists)


def read_on_disk(index_file: Path) -> faiss.Index:
    """An index whose lists are in ``lists_file(index_file)``, mapped read-only (a new
    generation writes a new file, so nothing writes to a mapped one)."""
    index = faiss.read_index(str(index_file), faiss.IO_FLAG_SKIP_IVF_DATA | faiss.IO_FLAG_READ_ONLY)
    lists = _lists(index)
    if not isinstance(lists, faiss.OnDiskInvertedLists):
        raise RuntimeError(f"{lists_file(index_file).name} is there but the index keeps its lists")
    # the name written is the one the lists had when they were built: the folder may move
    lists.filename = str(lists_file(index_file).resolve())
    lists.do_mmap()
    return index


def fill_in_memory(
    index: faiss.Index, chunks: Iterable[np.ndarray], after: Callable[[int], None]
) -> None:
    """Add ``chunks`` to ``index`` (ids follow on); ``after(n)`` after each chunk of n."""
    with added_with(index):
        for chunk in chunks:
            index.add(chunk)
            after(len(chunk))


def fill_on_disk(
    index: faiss.Index,
    chunks: Iterable[np.ndarray],
    target: Path,
    cfg: IndexConfig,
    after: Callable[[int], None],
    expected: int,
) -> None:
    """Add ``chunks`` (``expected`` vectors in all) to ``index`` (ids follow on), leaving
    every list, old and new, in the new file ``target`` (the index then maps it); memory
    holds one part at a time.

    ``after(n)`` is called after each chunk of n vectors. Part files are written beside
    ``target`` and deleted; an exception leaves ``target`` absent and ``index`` as it was.
    A disk without room for the parts and the merged lists beside them is ``DiskFull``
    before the first chunk is read, and again before ``target`` is written (other writers
    may have taken the room meanwhile; ``check_room_for_lists``).
    """
    faiss.extract_index_ivf(index).make_direct_map(False)  # rebuilt for the merged lists
    work = _empty_copy(index)
    first_id, limit = index.ntotal, part_vectors(index, cfg)
    code_size = faiss.extract_index_ivf(index).code_size
    parts_bytes = math.ceil(expected / limit) * _serialized_bytes(work)
    parts_bytes += lists_bytes(expected, code_size)
    check_room_for_lists(target, parts_bytes + lists_bytes(first_id + expected, code_size))
    parts: list[Path] = []
    try:
        with added_with(work):
            for chunk in chunks:
                work.add_with_ids(chunk, np.arange(first_id, first_id + len(chunk)))
                first_id += len(chunk)
                after(len(chunk))
                if work.ntotal >= limit:
                    parts.append(_write_part(work, target, len(parts)))
        if work.ntotal:
            parts.append(_write_part(work, target, len(parts)))
        del work
        _merge(index, parts, target)
    finally:
        for part in parts:
            part.unlink(missing_ok=True)
    faiss.extract_index_ivf(index).make_direct_map()


def _empty_copy(index: faiss.Index) -> faiss.Index:
    """A copy of the trained ``index`` without its vectors (lists left out of the copy)."""
    ivf = faiss.extract_index_ivf(index)
    lists, owned, ntotal = _lists(index), ivf.own_invlists, index.ntotal
    ivf.own_invlists = False
    empty = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(empty, True)
    empty.this.disown()  # type: ignore[attr-defined]
    index.ntotal = 0
    try:
        return faiss.clone_index(index)
    finally:
        ivf.replace_invlists(lists, owned)
        index.ntotal = ntotal


def _serialized_bytes(index: faiss.Index) -> int:
    """Bytes of ``index`` as a file: for an empty part, what each part file adds beside
    its lists (the quantiser's centroids and the PQ codebooks)."""
    return int(faiss.serialize_index(index).size)


def write_index(index: faiss.Index, path: Path) -> None:
    """``faiss.write_index`` through Python's writes, which raise for every failed one:
    faiss's own (C stdio) only print a failed last flush, and a full disk would leave a
    short file unsaid."""
    with path.open("wb") as handle:
        # faiss's stubs leave out its Python-callback writer
        writer = faiss.PyCallbackIOWriter(handle.write)  # type: ignore[attr-defined]
        faiss.write_index(index, writer)


def _write_part(work: faiss.Index, target: Path, number: int) -> Path:
    part = target.with_name(f".{target.name}.part{number}.tmp")
    with removed_on_failure(part, target):
        write_index(work, part)
    work.reset()
    return part


def _merge(index: faiss.Index, parts: list[Path], target: Path) -> None:
    """Merge ``index``'s own lists and the parts' into the lists file ``target``."""
    ivf = faiss.extract_index_ivf(index)
    sources = faiss.InvertedListsPtrVector()  # type: ignore[attr-defined]
    keep = []  # the parts' indexes own their mapped lists: alive until merged
    if index.ntotal:
        sources.push_back(_lists(index))
    for part in parts:
        mapped = faiss.read_index(str(part), faiss.IO_FLAG_MMAP)
        keep.append(mapped)
        sources.push_back(faiss.extract_index_ivf(mapped).invlists)
    merging = index.ntotal + sum(mapped.ntotal for mapped in keep)
    check_room_for_lists(target, lists_bytes(merging, ivf.code_size))
    with atomic_path(target) as tmp:
        merged = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(tmp))
        try:
            with _quiet_stdout():  # faiss prints "resizing <file>" as the file grows
                ntotal = merged.merge_from_multiple(sources.data(), sources.size(), False)
        except RuntimeError as exc:  # its truncate() past a file-size limit or quota
            raise as_disk_full(exc, target) or exc from None
        merged.filename = target.name
    del keep
    ivf.replace_invlists(merged, True)
    merged.this.disown()  # type: ignore[attr-defined]
    index.ntotal = ivf.ntotal = ntotal


def check_room_for_lists(target: Path, needed: int) -> None:
    """Raise ``DiskFull`` naming ``target`` unless its file system has ``needed`` bytes
    free and the slack beside them (``_LISTS_SLACK_BYTES``, ``_LISTS_SLACK_FRACTION``).

    The check exists because faiss writes the merged lists through a shared memory
    mapping of a file it only truncate()s to size (sparse: no blocks yet): a page the
    full disk cannot hold has no write() to fail with ENOSPC, the kernel sends SIGBUS
    and the process dies without a word. The part files the merge reads are beside
    ``target``, on the same file system, and already written: the free space leaves them
    out, as it must, since they stay until the merge is done. (A user's disk quota and
    other writers meanwhile are not seen; a file system's own reserve is, as not free.)
    """
    free = shutil.disk_usage(target.parent).free
    if free < needed + _LISTS_SLACK_BYTES + math.ceil(needed * _LISTS_SLACK_FRACTION):
        raise DiskFull(describe_disk_full(target))


def _as_ivfpq(index: faiss.Index) -> faiss.IndexIVFPQ:
    ivfpq = faiss.downcast_index(index)
    if not isinstance(ivfpq, faiss.IndexIVFPQ):
        raise TypeError(f"an IVF-PQ index was expected, not {type(ivfpq).__name__}")
    return ivfpq


def _lists(index: faiss.Index) -> faiss.InvertedLists:
    """The inverted lists of an IVF index, as their own class."""
    lists = faiss.extract_index_ivf(index).invlists
    if lists is None:
        raise TypeError("the IVF index has no inverted lists")
    return faiss.downcast_InvertedLists(lists)


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Send what C code prints on file descriptor 1 to /dev/null meanwhile."""
    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)
