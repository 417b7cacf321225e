"""Index sizing: lists chosen from the vectors, what `afp info` says about them, and when a
retrain would help. Real faiss indexes and catalogues of random-walk fingerprints."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from afp_core.cli import main
from afp_core.config import IndexConfig
from afp_core.database import (
    AUTO_NLIST_MAX,
    FingerprintDB,
    auto_nlist,
    auto_nprobe,
    imbalance,
    list_sizes,
)
from tests.conftest import random_walk_vectors
from tests.test_search import _one_faiss_thread, build, faiss_index  # noqa: F401 - a fixture

DIM = 64
# IVF-PQ from 3,000 vectors (m=16 fits the 64-d test vectors)
AUTO = IndexConfig(m=16, min_train_vectors=3000)


def songs(rng: np.random.Generator, total: int, length: int = 250) -> list[np.ndarray]:
    return [random_walk_vectors(rng, length, DIM) for _ in range(total // length)]


def add(db: FingerprintDB, vectors: list[np.ndarray], tag: str) -> None:
    for i, song in enumerate(vectors):
        checksum = f"{tag}{i:04d}".ljust(16, "0")
        db.stage_song(f"{tag} {i}", "", f"/music/{tag}{i}.wav", 0.5 * len(song), checksum, song)
    db.commit()


def info_rows(db_dir: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """`afp info`'s text rows by name (names and values are two spaces or more apart)."""
    assert main(["info", str(db_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    return {name.strip(): value.strip() for name, value in (line.split("  ", 1) for line in lines)}


def test_the_rule() -> None:
    assert auto_nlist(10_000) == 400 and auto_nlist(1_000_000) == 4000
    assert auto_nlist(56_000_000) == 29_933  # the paper's scale
    assert auto_nlist(3000) == 256 and auto_nlist(10**12) == AUTO_NLIST_MAX
    assert auto_nlist(1500) == 187  # never fewer than 8 vectors per list
    assert [auto_nprobe(n) for n in (256, 400, 1024, 4096, 29_933)] == [4, 5, 8, 16, 44]
    assert imbalance(np.array([5, 5, 5, 5])) == 1.0
    assert imbalance(np.array([20, 0, 0, 0])) == 4.0


def test_lists_are_chosen_from_the_vectors_when_not_fixed(tmp_path) -> None:
    rng = np.random.default_rng(0)
    db = build(tmp_path / "db", songs(rng, 4500), AUTO)
    assert db.index_type == "ivfpq" and db.ntotal == 4500
    info = db.info()
    assert info["index"]["nlist"] == auto_nlist(4500) == 268
    assert info["index"]["nprobe"] == db.nprobe == auto_nprobe(268) == 5
    assert "268 lists (about 4 sqrt(N))" in info["index_reason"]
    lists = info["lists"]
    assert lists["count"] == 268 and lists["min"] <= lists["median"] <= lists["max"]
    assert lists["imbalance"] == pytest.approx(imbalance(list_sizes(faiss_index(db))))
    assert info["training"] == {
        "vectors": 4500,
        "added_since": 0,
        "imbalance": lists["imbalance"],
        "retrain": [],
    }
    # codes (16 B) + ids + id map (16 B) per vector, centroids and codebooks (4 B floats)
    assert info["bytes_index_ram"] == 4500 * 32 + (268 + 256) * DIM * 4
    # the choice is the index's: the manifest keeps "automatic", and a reopen the same lists
    manifest = json.loads((tmp_path / "db" / "manifest.json").read_text())
    assert manifest["index"]["nlist"] is None and manifest["index"]["nprobe"] is None
    again = FingerprintDB.open(tmp_path / "db")
    assert (again.info()["index"]["nlist"], again.nprobe) == (268, 5)
    again.nprobe = 9  # set by hand: kept as set
    assert again.info()["index"]["nprobe"] == 9


def test_a_database_with_fixed_lists_keeps_them(tmp_path, song_library, untrained_checkpoint):
    # databases made before the rule store nlist 256 and nprobe 4: those win, and `afp
    # index` without options has nothing to say about them
    from afp_core.indexing import open_database_for_indexing

    old = IndexConfig(nlist=256, nprobe=4)
    db_dir = tmp_path / "db"
    open_database_for_indexing(db_dir, untrained_checkpoint, old)
    assert FingerprintDB.open(db_dir).index_config == old
    assert main(["index", str(db_dir), str(song_library[0]), "--quiet"]) == 0
    db = FingerprintDB.open(db_dir)
    assert db.index_config == old and db.nprobe == 4 and db.info()["lists"] is None


def test_a_flat_index_reports_its_size_and_no_lists(tmp_path) -> None:
    db = build(tmp_path / "db", songs(np.random.default_rng(1), 1000), AUTO)
    info = db.info()
    assert info["index"]["type"] == "flat" and db.nprobe == 4
    assert info["lists"] is None and info["training"] is None
    assert info["bytes_index_ram"] == 1000 * DIM * 4


def test_growth_far_past_the_training_set_asks_for_a_retrain(tmp_path, capsys) -> None:
    rng = np.random.default_rng(2)
    db = build(tmp_path / "db", songs(rng, 3000), AUTO)
    assert db.info()["index"]["nlist"] == 256 and db.retrain_reasons() == []
    add(db, songs(rng, 6000), "more")
    assert db.retrain_reasons() == []  # 3x: not yet
    add(db, songs(rng, 3000), "later")
    assert db.retrain_reasons() == [
        "it holds 4.0x the 3,000 vectors it was trained on (the rule now asks for 438 "
        "lists, not 256)"
    ]
    assert db.info()["training"]["added_since"] == 9000
    rows = info_rows(db.path, capsys)
    assert rows["trained on"].startswith("3,000 vectors; 9,000 added since (300 %), imbalance")
    assert rows["retrain"].startswith("would help: it holds 4.0x the 3,000 vectors")
    assert rows["lists"].startswith("256; vectors per list min ")
    assert rows["index size"].endswith(" on disk")


def test_music_unlike_the_training_set_crowds_lists_and_asks_for_a_retrain(tmp_path) -> None:
    rng = np.random.default_rng(3)
    db = build(tmp_path / "db", songs(rng, 3000), AUTO)
    before = db.info()["lists"]["imbalance"]
    # 1,000 windows all close to one fingerprint: they land in one or two lists
    centre = random_walk_vectors(rng, 1, DIM)
    close = centre + 0.05 * rng.standard_normal((1000, DIM)) / np.sqrt(DIM)
    add(db, [(close / np.linalg.norm(close, axis=1, keepdims=True)).astype(np.float32)], "x")
    (reason,) = db.retrain_reasons()
    now = db.info()["lists"]["imbalance"]
    assert now > 1.5 * before
    assert reason == f"its lists are uneven: imbalance {now:.2f}, {before:.2f} after training"


def test_an_index_trained_before_training_was_recorded(tmp_path, capsys) -> None:
    db = build(tmp_path / "db", songs(np.random.default_rng(4), 3000), AUTO)
    with sqlite3.connect(Path(db.path) / "catalogue.sqlite") as conn:
        conn.execute("DELETE FROM meta WHERE key LIKE 'trained_%'")
    again = FingerprintDB.open(db.path)
    assert again.info()["training"]["vectors"] is None and again.retrain_reasons() == []
    rows = info_rows(db.path, capsys)
    assert rows["trained on"] == "not recorded (trained before this was kept)"
    assert rows["retrain"] == "not needed"
