"""Large-index construction at a small size: an HNSW coarse quantiser trained by
two-level k-means, lists on disk past the RAM budget, songs added later in a new lists
file. Real faiss indexes and catalogues of random-walk fingerprints."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from afp_core import ivf
from afp_core.config import IndexConfig
from afp_core.database import FingerprintDB
from tests.test_index_sizing import DIM, add, info_rows, songs
from tests.test_search import _one_faiss_thread, build, faiss_index  # noqa: F401 - a fixture

# 64 lists from 3,000 vectors: the HNSW quantiser from 64 lists, the lists on disk past
# 0.05 MB (about 1,000 vectors of 16 B codes, 8 B ids and 8 B of id map)
SMALL = IndexConfig(m=16, nlist=64, min_train_vectors=3000, hnsw_min_lists=64)
ON_DISK = IndexConfig(m=16, nlist=64, min_train_vectors=3000, hnsw_min_lists=64, ram_budget_mb=0.05)


def exact_top1(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    return np.argmax(queries @ vectors.T, axis=1)


def test_two_level_centroids_cover_the_sample() -> None:
    rng = np.random.default_rng(1)
    sample = np.concatenate(songs(rng, 4000))
    centroids = ivf.two_level_centroids(sample, 100, 8, 0)
    assert centroids.shape == (100, DIM)
    assert np.allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5)
    # nearly as close to the vectors as one k-means over all of them
    one_level = faiss.Kmeans(DIM, 100, niter=10, spherical=True, seed=0)
    one_level.train(sample)
    assert one_level.centroids is not None
    fit = [np.mean((sample @ c.T).max(1)) for c in (centroids, one_level.centroids)]
    assert fit[0] > 0.9 * fit[1]


def test_hnsw_quantiser_finds_what_a_flat_one_finds(tmp_path) -> None:
    rng = np.random.default_rng(2)
    library = songs(rng, 4000)
    flat = build(tmp_path / "flat", library, IndexConfig(m=16, nlist=64, min_train_vectors=3000))
    hnsw = build(tmp_path / "hnsw", library, SMALL)
    assert ivf.hnsw_quantizer(faiss_index(flat)) is None
    assert ivf.hnsw_quantizer(faiss_index(hnsw)) is not None
    assert hnsw.info()["lists"]["quantizer"] == "hnsw" and not ivf.on_disk(faiss_index(hnsw))
    vectors = np.concatenate(library)
    queries = vectors[rng.choice(len(vectors), 300, replace=False)]
    truth = exact_top1(vectors, queries)
    found = [np.mean(db.search(queries, 1)[1][:, 0] == truth) for db in (flat, hnsw)]
    assert found[1] >= found[0] - 0.05 and found[1] > 0.8


def test_lists_on_disk_past_the_budget_and_songs_added_later(tmp_path, capsys) -> None:
    rng = np.random.default_rng(3)
    first, later = songs(rng, 4000), songs(rng, 1500)
    in_ram = build(tmp_path / "ram", first, SMALL)
    db = build(tmp_path / "disk", first, ON_DISK)
    assert ivf.on_disk(faiss_index(db)) and not ivf.on_disk(faiss_index(in_ram))
    lists = tmp_path / "disk" / "index-000001.ivfdata"
    assert lists.is_file() and not list(tmp_path.glob("disk/*.tmp"))
    info = db.info()
    assert info["lists"]["on_disk"] and info["bytes_index"] > lists.stat().st_size
    rows = info_rows(tmp_path / "disk", capsys)
    assert rows["lists"].endswith("; HNSW coarse quantiser; lists on disk, memory-mapped")
    # the same codes as the index in memory, so the same answers and rebuilt vectors
    queries = np.concatenate(first)[::37]
    assert np.array_equal(db.search(queries, 4)[1], in_ram.search(queries, 4)[1])
    assert np.array_equal(
        db.reconstruct(np.arange(0, 4000, 7)), in_ram.reconstruct(np.arange(0, 4000, 7))
    )

    add(db, later, "later")  # no retraining: a new lists file, the old one deleted
    add(in_ram, later, "later")
    assert db.ntotal == 5500 and db.info()["training"]["vectors"] == 4000
    assert sorted(p.name for p in (tmp_path / "disk").glob("index-*")) == [
        "index-000002.faiss",
        "index-000002.ivfdata",
    ]
    queries = np.concatenate(later)[::11]
    assert np.array_equal(db.search(queries, 4)[1], in_ram.search(queries, 4)[1])
    reopened = FingerprintDB.open(tmp_path / "disk")
    assert ivf.on_disk(faiss_index(reopened)) and reopened.ntotal == 5500
    assert np.array_equal(reopened.search(queries, 4)[1], db.search(queries, 4)[1])
    # excluding a song works on mapped lists too
    _, ids = reopened.search(queries[:5], 4, exclude_song=db.songs("indexed")[-1].id)
    assert ids.min() >= 0


def test_an_index_in_memory_moves_to_disk_when_it_outgrows_the_budget(tmp_path) -> None:
    rng = np.random.default_rng(4)
    config = IndexConfig(
        m=16, nlist=64, min_train_vectors=3000, hnsw_min_lists=64, ram_budget_mb=0.25
    )
    db = build(tmp_path / "db", songs(rng, 3000), config)  # 0.19 MB: in memory
    assert not ivf.on_disk(faiss_index(db))
    add(db, songs(rng, 3000), "more")  # 0.29 MB: on disk
    assert ivf.on_disk(faiss_index(FingerprintDB.open(tmp_path / "db"))) and db.ntotal == 6000


def test_an_interrupted_commit_leaves_no_lists_file(tmp_path) -> None:
    rng = np.random.default_rng(5)
    db = build(tmp_path / "db", songs(rng, 3000), ON_DISK)
    for i, song in enumerate(songs(rng, 1000)):
        db.stage_song(f"x {i}", "", f"/x{i}.wav", 1.0, f"x{i:015d}", song)
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(Exception, match="cancelled"):
        db.commit(cancel=cancel)
    assert sorted(
        p.name for p in (tmp_path / "db").iterdir() if p.name.startswith(("index", "."))
    ) == [
        ".lock",
        "index-000001.faiss",
        "index-000001.ivfdata",
    ]
    assert db.ntotal == 3000 and len(db.songs("staged")) == 4
    assert db.commit() == 4 and db.ntotal == 4000
