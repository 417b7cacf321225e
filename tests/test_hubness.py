"""Hub-aware scores: each stored vector's resemblance to other songs, measured once per
index generation and taken off offset-consistent search's score (afp_core.hubness)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from afp_core import hubness
from afp_core.checkpoint import load_checkpoint
from afp_core.config import IndexConfig
from afp_core.database import FingerprintDB
from afp_core.errors import Cancelled
from afp_core.hubness import HUB_WEIGHT, measure_hubness
from afp_core.indexing import index_library, open_database_for_indexing
from afp_core.search import search_offset_consistent
from afp_core.shards import ShardedDB
from afp_core.tasks import TaskState
from tests.conftest import random_walk_vectors

MODEL = {"name": "nafp", "spec": {}, "checkpoint_sha256": "cd" * 32}
DIM = 64
SONGS = 6
WINDOWS = 120
# windows 40-55 of songs 1..5 all sound like one generic sound (a "hub" stretch)
HUB = slice(40, 56)


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)


def generic_sound(rng: np.random.Generator, n: int, sigma: float = 0.3) -> np.ndarray:
    """n windows near one fixed direction: the sound many songs share."""
    direction = np.random.default_rng(99).standard_normal(DIM)
    return unit(direction / np.linalg.norm(direction) + sigma * rng.standard_normal((n, DIM)) / 8)


def library() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    songs = [random_walk_vectors(rng, WINDOWS, DIM) for _ in range(SONGS)]
    for song in songs[1:]:
        song[HUB] = generic_sound(rng, HUB.stop - HUB.start)
    return songs


def build(
    path: Path, songs: list[np.ndarray], neighbours: int = 4, config: IndexConfig | None = None
) -> FingerprintDB:
    config = config or IndexConfig(hub_neighbours=neighbours)
    db = FingerprintDB.create(path, MODEL, dim=DIM, index_config=config)
    for i, vectors in enumerate(songs):
        digest = hashlib.sha256(f"{path.name}-{i}".encode()).hexdigest()
        db.stage_song(f"Song {i}", "", f"/music/{i}.wav", 0.5 * len(vectors) + 0.5, digest, vectors)
    db.commit()
    return db


def test_windows_that_sound_like_every_song_are_the_hubs(tmp_path) -> None:
    db = build(tmp_path / "db", library())
    assert db.needs_calibration and db.hubness_penalty(np.arange(3)) is None
    entry = measure_hubness(db)
    assert entry is not None and (tmp_path / "db" / entry["file"]).is_file()
    assert entry["generation"] == db.generation and entry["neighbours"] == 4
    first = db.song_spans(np.array([s.id for s in db.songs("indexed")]))[0]
    hub_ids = np.concatenate([f + np.arange(HUB.start, HUB.stop) for f in first[1:]])
    other_ids = np.setdiff1d(np.arange(db.ntotal), hub_ids)
    penalty = db.hubness_penalty(np.arange(db.ntotal))
    assert penalty is not None
    assert penalty[hub_ids].min() > penalty[other_ids].max()
    assert abs(float(penalty.mean())) < 1e-3  # the database's mean is taken off
    # a reopened database reads the same table
    again = FingerprintDB.open(tmp_path / "db").hubness_penalty(np.arange(db.ntotal))
    np.testing.assert_array_equal(again, penalty)


def test_windows_alone_in_their_lists_count_as_average_and_bonuses_are_bounded(
    tmp_path,
) -> None:
    rng = np.random.default_rng(11)
    half = DIM // 2
    songs = [np.zeros((200, DIM), np.float32) for _ in range(20)]
    for song in songs[:-1]:
        song[:, :half] = random_walk_vectors(rng, 200, half)
    # one song orthogonal to every other: its IVF lists hold it alone, and with one list
    # probed no other song's vector is found for its windows
    songs[-1][:, half:] = unit(1.0 + rng.standard_normal((200, half)) / 8)
    config = IndexConfig(m=16, nlist=16, nprobe=1, min_train_vectors=3000, hub_neighbours=4)
    db = build(tmp_path / "db", songs, config=config)
    assert db.index_type == "ivfpq"
    entry = measure_hubness(db)
    assert entry is not None
    penalty = db.hubness_penalty(np.arange(db.ntotal))
    assert penalty is not None
    assert np.abs(penalty[-200:]).max() < 0.01  # unknown: neither hub nor bonus
    assert penalty.min() >= entry["floor"] - entry["mean"] - 1e-3
    assert np.mean(penalty <= entry["floor"] - entry["mean"] + 1e-3) < 0.03


def test_an_unknown_song_of_the_generic_sound_scores_lower_and_true_queries_do_not(
    tmp_path,
) -> None:
    songs = library()
    db = build(tmp_path / "db", songs)
    measure_hubness(db)
    rng = np.random.default_rng(8)
    impostor = generic_sound(rng, 9)  # a song not in the database, of the same sound
    plain = search_offset_consistent(db, impostor, hub_weight=0.0)
    aware = search_offset_consistent(db, impostor)
    assert aware.score < plain.score - 0.2
    true = unit(songs[3][70:79] + 0.3 * rng.standard_normal((9, DIM)) / 8)
    plain_true = search_offset_consistent(db, true, hub_weight=0.0)
    aware_true = search_offset_consistent(db, true)
    assert aware_true.song is not None and aware_true.song.title == "Song 3"
    assert aware_true.offset_s == plain_true.offset_s == 35.0
    assert aware_true.score >= plain_true.score  # ordinary windows are below the mean
    # the score is the mean similarity less half the aligned windows' mean penalty
    ids = db.vector_id(aware_true.song.id, 70) + np.arange(9)
    penalty = db.hubness_penalty(ids)
    assert penalty is not None  # measure_hubness measured it
    expected = plain_true.score - HUB_WEIGHT * float(penalty.mean())
    assert aware_true.score == pytest.approx(expected, abs=1e-5)


def test_a_commit_asks_for_a_new_measurement_and_stale_tables_go(tmp_path) -> None:
    songs = library()
    db = build(tmp_path / "db", songs[:4])
    old = measure_hubness(db)
    db.save_search_settings(calibrated_generation=db.generation)  # as a calibration does
    assert old is not None and not db.needs_calibration
    digest = hashlib.sha256(b"late").hexdigest()
    db.stage_song("Late", "", "/music/late.wav", 60.5, digest, songs[4])
    db.commit()
    db.save_search_settings(calibrated_generation=db.generation)
    assert db.needs_calibration  # the thresholds are current, the hubness is not
    # until measured again, the new song's vectors get no penalty and the old ones theirs
    new_ids = np.arange(db.ntotal - WINDOWS, db.ntotal)
    penalty = db.hubness_penalty(new_ids)
    assert penalty is not None and not penalty.any()
    new = measure_hubness(db)
    assert new is not None and not db.needs_calibration
    assert sorted(p.name for p in (tmp_path / "db").glob("hubness-*")) == [new["file"]]


def test_an_interrupted_measurement_resumes_with_the_songs_left(tmp_path) -> None:
    songs = library()
    db = build(tmp_path / "db", songs)
    whole = build(tmp_path / "whole", songs)
    measure_hubness(whole)

    class CancelAfterTwoSongs(TaskState):
        def advance(self, amount: float = 1.0, message: str = "") -> None:
            super().advance(amount, message)
            if self.done >= 2 * WINDOWS:
                self.cancel()

    with pytest.raises(Cancelled):
        measure_hubness(db, task=CancelAfterTwoSongs())
    partial = tmp_path / "db" / hubness.table_name(db.generation, partial=True)
    kept = np.load(partial)
    assert np.isfinite(kept[: 2 * WINDOWS]).all() and np.isnan(kept[2 * WINDOWS :]).all()
    searched: list[int] = []
    search = db.search

    def counted(queries: np.ndarray, k: int, exclude_song: int | None = None):
        searched.append(len(queries))
        return search(queries, k, exclude_song)

    db.search = counted  # type: ignore[method-assign]
    measure_hubness(db)
    assert sum(searched) == (SONGS - 2) * WINDOWS  # only the songs left
    assert not partial.exists()
    ids = np.arange(db.ntotal)
    np.testing.assert_array_equal(db.hubness_penalty(ids), whole.hubness_penalty(ids))


def test_hub_neighbours_0_keeps_plain_similarity(tmp_path) -> None:
    db = build(tmp_path / "db", library(), neighbours=0)
    assert measure_hubness(db) is None
    db.save_search_settings(calibrated_generation=db.generation)
    assert not db.needs_calibration and db.hubness_penalty(np.arange(5)) is None
    assert not list((tmp_path / "db").glob("hubness-*"))


def test_shards_take_each_vectors_penalty_from_its_own_shard(tmp_path) -> None:
    songs = library()
    parts = [build(tmp_path / "a", songs[:3]), build(tmp_path / "b", songs[3:])]
    measure_hubness(parts[1])  # the first shard is not measured: its vectors count 0
    sharded = ShardedDB.open([tmp_path / "a", tmp_path / "b"])
    ids = np.arange(sharded.ntotal)
    penalty = sharded.hubness_penalty(ids)
    assert penalty is not None
    assert not penalty[: 3 * WINDOWS].any()
    np.testing.assert_array_equal(
        penalty[3 * WINDOWS :], parts[1].hubness_penalty(np.arange(3 * WINDOWS))
    )


def test_a_lost_table_means_plain_scores_until_measured_again(tmp_path) -> None:
    db = build(tmp_path / "db", library())
    entry = measure_hubness(db)
    db.save_search_settings(calibrated_generation=db.generation)
    assert entry is not None and not db.needs_calibration
    (tmp_path / "db" / entry["file"]).unlink()
    reopened = FingerprintDB.open(tmp_path / "db")
    assert reopened.hubness_penalty(np.arange(5)) is None
    assert reopened.needs_calibration  # `afp index` run again measures it


def test_afp_index_measures_before_calibrating_and_a_cancel_resumes(
    tmp_path, song_library, untrained_checkpoint
) -> None:
    """Through the real pipeline: audio files, the untrained model, ``index_library``."""
    checkpoint = load_checkpoint(untrained_checkpoint)
    db, _ = open_database_for_indexing(tmp_path / "db", untrained_checkpoint)
    messages: list[str] = []

    def cancel_when_measuring(done: float, total: float, message: str) -> None:
        messages.append(message)
        # the parent's count is the audio; the step's share is in the message
        if message.startswith("measuring hub fingerprints") and not message.endswith(" 0%"):
            task.cancel()

    task = TaskState(cancel_when_measuring)
    with pytest.raises(Cancelled):
        index_library(db, checkpoint.model, song_library[:3], task=task)
    assert any(m.startswith("measuring hub fingerprints ") and m.endswith("%") for m in messages)
    assert db.needs_calibration and not db.search_settings.get("thresholds")
    assert (tmp_path / "db" / hubness.table_name(db.generation, partial=True)).is_file()

    index_library(db, checkpoint.model, song_library[:3])  # nothing new: measure, calibrate
    assert not db.needs_calibration
    assert db.search_settings["hubness"]["generation"] == db.generation
    assert set(db.search_settings["thresholds"]) == {"sequence", "vote"}
    assert not list((tmp_path / "db").glob("*.partial.npy"))
