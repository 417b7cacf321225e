"""Song decisions from window vectors: majority vote, offset-consistent search, thresholds."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest

from afp_core.config import IndexConfig
from afp_core.database import FingerprintDB
from afp_core.errors import AfpError, ConfigError, DatabaseError
from afp_core.search import (
    Match,
    Method,
    calibrate_threshold,
    identify_vectors,
    search_majority_vote,
    search_offset_consistent,
    stored_threshold,
)
from tests.conftest import random_walk_vectors

MODEL = {"name": "nafp", "spec": {}, "checkpoint_sha256": "ab" * 32}
DIM = 64
HOP = 0.5


@pytest.fixture(autouse=True)
def _one_faiss_thread() -> Iterator[None]:
    # The test machines have 2 shared cores: OpenMP spinning on both slows everyone down.
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def make_song(rng: np.random.Generator, n: int, dim: int = DIM, step: float = 0.5) -> np.ndarray:
    return random_walk_vectors(rng, n, dim, step)


def noisy(rng: np.random.Generator, vectors: np.ndarray, sigma: float) -> np.ndarray:
    """Add isotropic noise of norm about ``sigma`` per window and renormalise."""
    out = vectors + sigma * rng.standard_normal(vectors.shape) / np.sqrt(vectors.shape[1])
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def build(path: Path, songs: list[np.ndarray], config: IndexConfig) -> FingerprintDB:
    db = FingerprintDB.create(path, MODEL, dim=songs[0].shape[1], index_config=config)
    for i, vectors in enumerate(songs):
        digest = hashlib.sha256(f"{path.name}-{i}".encode()).hexdigest()
        db.stage_song(f"Song {i}", "", f"/music/{i}.wav", HOP * len(vectors) + 0.5, digest,
                      vectors)  # fmt: skip
    db.commit()
    return db


def faiss_index(db: FingerprintDB) -> faiss.Index:
    """The database's faiss index, which a committed database has."""
    assert db.index is not None
    return db.index


@pytest.fixture(scope="module")
def library() -> list[np.ndarray]:
    rng = np.random.default_rng(100)
    return [make_song(rng, int(n)) for n in rng.integers(150, 300, size=20)]


@pytest.fixture(scope="module")
def ivf_db(library: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> FingerprintDB:
    config = IndexConfig(m=16, nbits=8, nlist=16, nprobe=4, min_train_vectors=3000)
    db = build(tmp_path_factory.mktemp("ivf") / "db", library, config)
    assert db.index_type == "ivfpq"
    return db


@pytest.fixture(scope="module")
def flat_db(library: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> FingerprintDB:
    db = build(tmp_path_factory.mktemp("flat") / "db", library, IndexConfig())
    assert db.index_type == "flat"
    return db


def test_noisy_excerpts_are_found_with_song_and_offset(
    ivf_db: FingerprintDB, library: list[np.ndarray]
) -> None:
    rng = np.random.default_rng(1)
    n = 9  # a 5 s query
    for _ in range(12):
        index = int(rng.integers(len(library)))
        start = int(rng.integers(0, len(library[index]) - n))
        query = noisy(rng, library[index][start : start + n], sigma=0.8)
        for search in (search_offset_consistent, search_majority_vote):
            match = search(ivf_db, query, k=4)
            assert match.song is not None and match.song.id == index + 1, search.__name__
            assert match.offset_s == pytest.approx(start * HOP), search.__name__
            assert match.candidates[0].song == match.song
            assert len({c.song.id for c in match.candidates}) == len(match.candidates)


def test_clean_query_scores(flat_db: FingerprintDB, library: list[np.ndarray]) -> None:
    query = library[3][40:50]
    vote = search_majority_vote(flat_db, query, k=1)
    assert (vote.song and vote.song.id, vote.offset_s, vote.score) == (4, 20.0, 1.0)
    assert vote.method == "vote"
    sequence = search_offset_consistent(flat_db, query, k=4)
    assert sequence.song is not None and sequence.song.id == 4
    assert sequence.offset_s == 20.0 and sequence.method == "sequence"
    assert sequence.score == pytest.approx(1.0, abs=1e-5)  # exact vectors in a flat index


def test_offset_consistency_beats_votes_for_scattered_hits(
    tmp_path: Path, library: list[np.ndarray]
) -> None:
    """A decoy song holds, in shuffled order, three near-copies of every query window (think
    of a repetitive texture): it takes 3 of each window's 4 votes, but no single alignment of
    it fits the query, while the true song's alignment fits all windows."""
    rng = np.random.default_rng(2)
    truth = library[5]
    query = noisy(rng, truth[60:70], sigma=1.0)  # cosine to the truth about 0.7
    decoy = make_song(rng, 200)
    slots = rng.choice(200, size=3 * len(query), replace=False)
    decoy[slots] = noisy(rng, np.tile(query, (3, 1)), sigma=0.3)
    db = build(tmp_path / "db", [*library[:8], decoy], IndexConfig())

    vote = search_majority_vote(db, query, k=4)
    sequence = search_offset_consistent(db, query, k=4)
    assert vote.song is not None and vote.song.id == 9  # the decoy
    assert sequence.song is not None and sequence.song.id == 6
    assert sequence.offset_s == 30.0
    decoy_scores = [c.score for c in sequence.candidates if c.song.id == 9]
    assert decoy_scores and decoy_scores[0] < sequence.score - 0.3


def test_offset_consistency_is_at_least_as_accurate_under_heavy_noise(
    ivf_db: FingerprintDB, library: list[np.ndarray]
) -> None:
    rng = np.random.default_rng(3)
    n, trials = 4, 60
    correct: dict[Method, int] = {"sequence": 0, "vote": 0}
    for _ in range(trials):
        index = int(rng.integers(len(library)))
        start = int(rng.integers(0, len(library[index]) - n))
        query = noisy(rng, library[index][start : start + n], sigma=2.5)  # cosine about 0.37
        for method in correct:
            match = identify_vectors(ivf_db, query, method=method, k=4)
            correct[method] += match.song is not None and match.song.id == index + 1
    print(f"heavy noise, {n} windows: sequence {correct['sequence']}/{trials}, "
          f"vote {correct['vote']}/{trials}")  # fmt: skip
    assert correct["sequence"] > correct["vote"]
    assert correct["sequence"] > trials // 2


def test_candidates_crossing_a_song_boundary_are_dropped(
    flat_db: FingerprintDB, library: list[np.ndarray]
) -> None:
    # Songs 1 and 2 have adjacent vector ids: the end of song 1 followed by the start of
    # song 2 is a perfect match in id space that no real song contains.
    first, second = library[0], library[1]
    query = np.concatenate([first[-5:], second[:5]])
    match = search_offset_consistent(flat_db, query, k=4)
    assert match.score < 0.9
    for candidate in match.candidates:
        start = round(candidate.offset_s / HOP)
        assert start >= 0 and start + len(query) <= candidate.song.vector_count

    # A query longer than every song has no possible alignment at all.
    longest = max(len(song) for song in library)
    too_long = np.concatenate([library[2], library[2]])[: longest + 1]
    none = search_offset_consistent(flat_db, too_long, k=4)
    assert (none.song, none.offset_s, none.score, none.candidates) == (None, None, -1.0, [])


def test_threshold_rejects_queries_from_unknown_songs(
    flat_db: FingerprintDB, library: list[np.ndarray]
) -> None:
    rng = np.random.default_rng(4)
    unknown = make_song(rng, 10)  # a song that is not in the database
    known = noisy(rng, library[7][100:110], sigma=0.8)
    rejected = identify_vectors(flat_db, unknown, threshold=0.5)
    assert rejected.song is None and rejected.offset_s is None
    assert rejected.candidates  # still listed for reports
    assert rejected.score < 0.5
    accepted = identify_vectors(flat_db, known, threshold=0.5)
    assert accepted.song is not None and accepted.song.id == 8
    assert identify_vectors(flat_db, unknown, threshold=None).song is not None

    random_windows = noisy(rng, np.zeros((10, DIM), np.float32), sigma=1.0)
    assert identify_vectors(flat_db, random_windows, method="vote", threshold=0.5).song is None


def test_calibrated_threshold_separates_known_from_unknown(
    tmp_path: Path, library: list[np.ndarray]
) -> None:
    db = build(tmp_path / "db", library[:10], IndexConfig())
    n = 10
    threshold = calibrate_threshold(db, n_windows=n, method="sequence", trials=100)
    manifest = json.loads((tmp_path / "db" / "manifest.json").read_text())
    stored = manifest["search"]["thresholds"]["sequence"]
    assert stored["by_windows"][str(n)] == pytest.approx(threshold)
    assert (stored["k"], stored["nprobe"]) == (4, db.nprobe)
    reopened = FingerprintDB.open(tmp_path / "db")
    assert reopened.search_threshold == "auto"
    assert stored_threshold(reopened, "sequence", 12) == pytest.approx(threshold)
    assert stored_threshold(reopened, "sequence", 5) is None  # shorter than calibrated
    assert stored_threshold(reopened, "vote", 10) is None

    # Songs that are not in the database are accepted about 1 - quantile = 1 % of the time
    # (a rough estimate from 10 songs' pairs, hence the margin); noisy excerpts of songs
    # that are in it are accepted.
    rng = np.random.default_rng(5)
    unknown = [make_song(rng, n) for _ in range(100)]
    known = [noisy(rng, library[i % 10][20 + i : 20 + i + n], sigma=0.8) for i in range(30)]
    false_accepts = sum(
        identify_vectors(reopened, q, threshold="auto").song is not None for q in unknown
    )
    misses = sum(identify_vectors(reopened, q, threshold="auto").song is None for q in known)
    print(
        f"calibrated sequence threshold for {n} windows: {threshold:.3f}; "
        f"unknown songs accepted {false_accepts}/100, known songs rejected {misses}/30"
    )
    assert 0.2 < threshold < 0.5
    assert false_accepts <= 8
    assert misses == 0

    vote_threshold = calibrate_threshold(reopened, n_windows=n, method="vote", trials=30)
    assert 0.0 <= vote_threshold <= 1.0
    assert stored_threshold(reopened, "sequence", n) == pytest.approx(threshold)  # kept


def test_bad_queries_raise_clear_errors(flat_db: FingerprintDB) -> None:
    with pytest.raises(AfpError, match="query shorter than one window"):
        identify_vectors(flat_db, np.zeros((0, DIM), np.float32))
    with pytest.raises(DatabaseError, match=r"expected \(n, 64\)"):
        identify_vectors(flat_db, np.zeros((3, 32), np.float32))
    with pytest.raises(ConfigError, match="method"):
        identify_vectors(flat_db, np.ones((3, DIM), np.float32), method="magic")  # type: ignore[arg-type]


def test_exclude_song_removes_it_from_results(
    flat_db: FingerprintDB, ivf_db: FingerprintDB, library: list[np.ndarray]
) -> None:
    query = library[4][10:20]
    for db in (flat_db, ivf_db):
        found = search_offset_consistent(db, query).song
        assert found is not None and found.id == 5
        match = search_offset_consistent(db, query, exclude_song=5)
        assert isinstance(match, Match)
        assert match.candidates and all(c.song.id != 5 for c in match.candidates)
        assert match.score < 0.9
        vote = search_majority_vote(db, query, exclude_song=5)
        assert vote.candidates and all(c.song.id != 5 for c in vote.candidates)
    # Excluding with a selector must not silently fall back to nprobe 1.
    assert faiss.extract_index_ivf(faiss_index(ivf_db)).nprobe == ivf_db.nprobe == 4


def test_calibration_ignores_spans_every_song_shares(tmp_path: Path) -> None:
    # every song ends in the same "silence" vectors: without care, trials landing there
    # score ~1.0 against the other songs and set the high quantile by themselves
    rng = np.random.default_rng(5)
    silence = rng.standard_normal(DIM).astype(np.float32)
    silence /= np.linalg.norm(silence)
    songs = [np.vstack([make_song(rng, 60), np.tile(silence, (15, 1))]) for _ in range(8)]
    db = build(tmp_path / "db", songs, IndexConfig())
    naive = calibrate_threshold(db, n_windows=3, trials=200, save=False)
    careful = calibrate_threshold(
        db, n_windows=3, trials=200, save=False, uninformative=silence[None]
    )
    assert naive > 0.99 and careful < 0.9, (naive, careful)


def test_a_denser_database_lines_up_queries_between_its_windows(
    tmp_path: Path, library: list[np.ndarray]
) -> None:
    # density 2: the database stores a window every HOP / 2, the query one every HOP, so
    # query window j meets stored window start + 2 j and a start may be odd (between the
    # windows a density-1 database would hold).
    db = build(tmp_path / "db", library[:10], IndexConfig(density=2))
    assert db.density == 2
    rng = np.random.default_rng(5)
    n = 5
    for _ in range(8):
        index = int(rng.integers(10))
        start = int(rng.integers(0, len(library[index]) - 2 * n))
        query = noisy(rng, library[index][start : start + 2 * n : 2], sigma=0.5)
        for search in (search_offset_consistent, search_majority_vote):
            match = search(db, query, k=4)
            assert match.song is not None and match.song.id == index + 1, search.__name__
            assert match.offset_s == pytest.approx(start * HOP / 2), search.__name__
    # the aligned windows of every candidate stay inside its song
    tail = library[0][-2 * n + 1 :: 2]
    for candidate in search_offset_consistent(db, tail, k=4).candidates:
        start = round(candidate.offset_s / (HOP / 2))
        assert start >= 0 and start + 2 * (len(tail) - 1) < candidate.song.vector_count
    # impostor spans for calibration are drawn on the query's grid too
    threshold = calibrate_threshold(db, n_windows=n, trials=50, save=False)
    known = identify_vectors(db, noisy(rng, library[4][20 : 20 + 2 * n : 2], 0.5))
    assert known.score > threshold


def test_a_density_below_one_is_refused(tmp_path: Path, library: list[np.ndarray]) -> None:
    with pytest.raises(DatabaseError, match="density=0 must be 1 or more"):
        build(tmp_path / "db", library[:2], IndexConfig(density=0))


def test_offsets_follow_the_hop_of_the_model_that_made_the_vectors(
    tmp_path: Path, library: list[np.ndarray]
) -> None:
    model = {**MODEL, "spec": {"audio": {"hop_s": 0.25}}}
    db = FingerprintDB.create(tmp_path / "db", model, dim=DIM, index_config=IndexConfig())
    for i, vectors in enumerate(library[:3]):
        db.stage_song(f"Song {i}", "", f"/music/{i}.wav", 0.25 * len(vectors) + 0.75, f"{i:064x}",
                      vectors)  # fmt: skip
    db.commit()
    assert (db.query_hop_s, db.stored_hop_s) == (0.25, 0.25)
    for search in (search_offset_consistent, search_majority_vote):
        match = search(db, library[1][40:46], k=4)
        assert match.song is not None and match.song.id == 2
        assert match.offset_s == pytest.approx(40 * 0.25), search.__name__
