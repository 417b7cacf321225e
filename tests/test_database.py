"""FingerprintDB on real faiss indexes, real SQLite and real files (synthetic fingerprints)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest

from afp_core.config import IndexConfig
from afp_core.database import DuplicateSong, FingerprintDB, Song
from afp_core.errors import AfpError, Cancelled, DatabaseError
from tests.conftest import random_walk_vectors

MODEL = {"name": "nafp", "spec": {"width": 0.25}, "checkpoint_sha256": "ab" * 32}
# Small IVF-PQ that trains in about a second: IVF-PQ from 3000 vectors on.
SMALL = IndexConfig(m=8, nbits=8, nlist=16, nprobe=2, min_train_vectors=3000)


@pytest.fixture(autouse=True)
def _one_faiss_thread() -> Iterator[None]:
    # The test machines have 2 shared cores: OpenMP spinning on both slows everyone down.
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


make_song = random_walk_vectors


def checksum(i: int) -> str:
    return hashlib.sha256(f"song-{i}".encode()).hexdigest()


def stage_songs(
    db: FingerprintDB, rng: np.random.Generator, count: int, n: int, offset: int = 0
) -> list[np.ndarray]:
    """Stage ``count`` songs of ``n`` windows (0.5 s hop); returns their vectors."""
    songs = []
    for i in range(offset, offset + count):
        vectors = make_song(rng, n, db.dim)
        db.stage_song(f"Song {i}", f"Artist {i % 3}", f"/music/{i}.wav", 0.5 * n + 0.5,
                      checksum(i), vectors)  # fmt: skip
        songs.append(vectors)
    return songs


def index_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("index-*.faiss"))


def assert_one_line(exc: pytest.ExceptionInfo[BaseException], *parts: str) -> None:
    text = str(exc.value)
    assert "\n" not in text
    for part in parts:
        assert part in text, text


# ---------------------------------------------------------------- layout and opening


def test_create_writes_manifest_catalogue_and_model_copy(tmp_path: Path) -> None:
    checkpoint = tmp_path / "weights.pt"
    checkpoint.write_bytes(b"not really torch")
    path = tmp_path / "db"
    with pytest.raises(DatabaseError) as exc:  # model_info names another checkpoint
        FingerprintDB.create(path, MODEL, dim=32, checkpoint=checkpoint)
    assert_one_line(exc, "weights.pt", "sha256 differs")
    model = {**MODEL, "checkpoint_sha256": hashlib.sha256(b"not really torch").hexdigest()}
    db = FingerprintDB.create(path, model, dim=32, index_config=SMALL, checkpoint=checkpoint)

    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "afp-database"
    assert manifest["format_version"] == 1
    assert manifest["dim"] == 32
    assert manifest["model_info"] == model
    assert manifest["index"]["nlist"] == 16
    assert manifest["faiss_version"] == faiss.__version__
    assert (path / "model.pt").read_bytes() == b"not really torch"
    assert db.model_path == path / "model.pt"
    with sqlite3.connect(path / "catalogue.sqlite") as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        meta = dict(conn.execute("SELECT key, value FROM meta"))
    assert {"songs", "meta"} <= tables
    assert meta["index_file"] == ""
    # No leftovers of the build-then-rename creation next to the database.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "weights.pt"]

    info = db.info()
    assert (info["songs"], info["vectors"], info["index"]["type"]) == (0, 0, "none")
    with pytest.raises(DatabaseError) as exc:
        db.search(np.zeros((1, 32), np.float32), 4)
    assert_one_line(exc, str(path), "nothing is indexed")


def test_searching_before_the_first_commit_says_which_command_finishes(tmp_path: Path) -> None:
    path = tmp_path / "db"
    db = FingerprintDB.create(path, MODEL, dim=32, index_config=SMALL)
    stage_songs(db, np.random.default_rng(3), 2, 20)  # an `afp index` cut short
    with pytest.raises(DatabaseError) as exc:
        db.search(np.zeros((1, 32), np.float32), 4)
    assert_one_line(exc, "nothing is indexed yet (2 songs extracted, not yet in the index)")
    assert f"run `afp index {path} PATH...` again" in str(exc.value)  # no command commits


def test_create_refuses_existing_database_and_foreign_folder(tmp_path: Path) -> None:
    FingerprintDB.create(tmp_path / "db", MODEL, dim=32, index_config=SMALL)
    with pytest.raises(DatabaseError) as exc:
        FingerprintDB.create(tmp_path / "db", MODEL, dim=32)
    assert_one_line(exc, "already exists")

    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"jpeg")
    with pytest.raises(DatabaseError) as exc:
        FingerprintDB.create(other, MODEL, dim=32)
    assert_one_line(exc, str(other), "not empty")
    assert (other / "cat.jpg").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    assert FingerprintDB.create(empty, MODEL, dim=32).dim == 32

    with pytest.raises(DatabaseError) as exc:
        FingerprintDB.create(tmp_path / "bad", MODEL, dim=30, index_config=SMALL)
    assert_one_line(exc, "m=8 must divide")


def test_open_or_create_opens_same_model_and_refuses_another(tmp_path: Path) -> None:
    path = tmp_path / "db"
    first = FingerprintDB.open_or_create(path, MODEL, dim=32, index_config=SMALL)
    stage_songs(first, np.random.default_rng(0), 1, 10)
    again = FingerprintDB.open_or_create(path, dict(MODEL), dim=32, index_config=SMALL)
    assert again.has_song(checksum(0))
    other = {**MODEL, "checkpoint_sha256": "cd" * 32}
    with pytest.raises(DatabaseError) as exc:
        FingerprintDB.open_or_create(path, other, dim=32)
    assert_one_line(exc, "DB was built with model nafp (sha ababab", "not nafp (sha cdcdcd")


def test_check_model_refuses_another_model(tmp_path: Path) -> None:
    db = FingerprintDB.create(tmp_path / "db", MODEL, dim=32)
    db.check_model(dict(MODEL, spec={"whatever": 1}))  # only name + checkpoint sha count
    with pytest.raises(DatabaseError) as exc:
        db.check_model({"name": "beats", "checkpoint_sha256": "ab" * 32})
    assert_one_line(exc, "model nafp", "not beats", "use the database's own model or rebuild")
    with pytest.raises(DatabaseError):
        db.check_model({"name": "nafp"})


def test_open_errors_are_one_line_database_errors(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError) as exc:
        FingerprintDB.open(tmp_path / "missing")
    assert_one_line(exc, "missing", "no such database folder")

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    with pytest.raises(DatabaseError) as exc:
        FingerprintDB.open(plain)
    assert_one_line(exc, "plain", "not an afp database")

    path = tmp_path / "db"
    db = FingerprintDB.create(path, MODEL, dim=32, index_config=SMALL)
    stage_songs(db, np.random.default_rng(0), 2, 20)
    db.commit()
    manifest = path / "manifest.json"
    good = manifest.read_text()

    manifest.write_text('{"format": "afp-database", "dim": ')
    with pytest.raises(DatabaseError) as exc:
        FingerprintDB.open(path)
    assert_one_line(exc, "manifest.json", "not valid JSON")

    manifest.write_text(json.dumps({**json.loads(good), "format": "something-else"}))
    with pytest.raises(DatabaseError) as exc:
        FingerprintDB.open(path)
    assert_one_line(exc, "manifest.json", "something-else")

    manifest.write_text(json.dumps({**json.loads(good), "format_version": 7}))
    with pytest.raises(DatabaseError) as exc:
        FingerprintDB.open(path)
    assert_one_line(exc, "version 7 is newer")

    manifest.write_text(good)
    catalogue = path / "catalogue.sqlite"
    saved = catalogue.read_bytes()
    catalogue.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DatabaseError) as exc:
        FingerprintDB.open(path)
    assert_one_line(exc, "catalogue.sqlite")
    catalogue.write_bytes(saved)

    (path / index_files(path)[0]).unlink()
    with pytest.raises(DatabaseError) as exc:
        FingerprintDB.open(path)
    assert_one_line(exc, str(path), "index-000001.faiss is missing")

    (path / "index-000001.faiss").write_bytes(b"garbage")
    with pytest.raises(DatabaseError) as exc:
        FingerprintDB.open(path)
    assert_one_line(exc, "index-000001.faiss", "corrupt index file")
    assert isinstance(exc.value, AfpError)


# ---------------------------------------------------------------- staging and commit


def test_stage_validates_vectors_and_detects_duplicates(tmp_path: Path) -> None:
    db = FingerprintDB.create(tmp_path / "db", MODEL, dim=32, index_config=SMALL)
    rng = np.random.default_rng(1)
    vectors = make_song(rng, 12, 32)
    first = db.stage_song("A", "", "/a.wav", 6.5, checksum(1), vectors)
    assert isinstance(first, Song)
    assert (first.status, first.vector_count, first.first_vector_id) == ("staged", 12, None)
    assert np.array_equal(np.load(tmp_path / "db" / "staging" / f"{checksum(1)}.npy"), vectors)

    with pytest.raises(DuplicateSong) as exc:
        db.stage_song("A again", "", "/copy-of-a.wav", 6.5, checksum(1), vectors)
    assert exc.value.song == first
    assert_one_line(exc, "/copy-of-a.wav", "already in the database as song 1")

    db.commit()
    with pytest.raises(DuplicateSong) as exc:
        db.stage_song("A again", "", "/copy-of-a.wav", 6.5, checksum(1), vectors)
    assert exc.value.song.status == "indexed"

    with pytest.raises(DatabaseError, match="expected"):
        db.stage_song("B", "", "/b.wav", 1.0, checksum(2), make_song(rng, 3, 16))
    with pytest.raises(DatabaseError, match="not unit length"):
        db.stage_song("B", "", "/b.wav", 1.0, checksum(2), 2 * make_song(rng, 3, 32))
    with pytest.raises(DatabaseError, match="no vectors"):
        db.stage_song("B", "", "/b.wav", 0.2, checksum(2), np.zeros((0, 32), np.float32))
    with pytest.raises(DatabaseError, match="invalid checksum"):
        db.stage_song("B", "", "/b.wav", 1.0, "../../etc", make_song(rng, 3, 32))
    assert not db.has_song(checksum(2))
    assert [s.title for s in db.songs()] == ["A"]


def test_staged_songs_survive_an_interrupt_and_commit_later(tmp_path: Path) -> None:
    path = tmp_path / "db"
    db = FingerprintDB.create(path, MODEL, dim=32, index_config=SMALL)
    songs = stage_songs(db, np.random.default_rng(2), 3, 30)
    del db  # "interrupted": the process ends before commit

    db = FingerprintDB.open(path)
    assert all(db.has_song(checksum(i)) for i in range(3))
    assert [s.status for s in db.songs()] == ["staged"] * 3
    assert db.info()["staged_songs"] == 3
    assert len(list((path / "staging").glob("*.npy"))) == 3

    assert db.commit() == 3
    assert [s.status for s in db.songs()] == ["indexed"] * 3
    assert list((path / "staging").iterdir()) == []
    assert db.commit() == 0  # nothing staged: nothing to do
    scores, ids = db.search(songs[1][:5], 1)
    assert np.array_equal(ids[:, 0], np.arange(30, 35))
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)


def test_commit_can_be_cancelled_and_keeps_songs_staged(tmp_path: Path) -> None:
    db = FingerprintDB.create(tmp_path / "db", MODEL, dim=32, index_config=SMALL)
    stage_songs(db, np.random.default_rng(3), 2, 20)
    with pytest.raises(Cancelled) as exc:
        db.commit(cancel=lambda: True)
    assert_one_line(exc, "commit cancelled", "2 songs stay staged")
    assert [s.status for s in db.songs()] == ["staged", "staged"]
    assert index_files(tmp_path / "db") == []

    seen: list[tuple[int, int]] = []
    assert db.commit(progress=lambda done, total: seen.append((done, total))) == 2
    assert seen[0] == (0, 40) and seen[-1] == (40, 40)


def test_flat_below_threshold_then_upgraded_to_ivfpq(tmp_path: Path) -> None:
    path = tmp_path / "db"
    db = FingerprintDB.create(path, MODEL, dim=32, index_config=SMALL)
    rng = np.random.default_rng(4)
    songs = stage_songs(db, rng, 5, 200)  # 1000 vectors < 3000
    db.commit()
    assert db.index_type == "flat"
    assert isinstance(db.index, faiss.IndexFlatIP)
    assert "exact flat: 1000 vectors < 3000" in db.info()["index_reason"]
    assert index_files(path) == ["index-000001.faiss"]

    songs += stage_songs(db, rng, 12, 200, offset=5)  # 3400 vectors in all
    db.commit()
    assert db.index_type == "ivfpq"
    assert isinstance(faiss.downcast_index(db.index), faiss.IndexIVFPQ)
    assert db.ntotal == 3400
    assert "IVF-PQ: 3400 vectors" in db.info()["index_reason"]
    # The old generation is gone once the catalogue points to the new one.
    assert index_files(path) == ["index-000002.faiss"]

    reopened = FingerprintDB.open(path)
    assert reopened.index_type == "ivfpq"
    # Vectors of the songs that were in the flat index survived the upgrade.
    everything = np.concatenate(songs)
    rebuilt = reopened.reconstruct(np.arange(3400))
    cosine = np.sum(rebuilt * everything, axis=1) / np.linalg.norm(rebuilt, axis=1)
    assert cosine[:1000].mean() > 0.85
    reopened.nprobe = 16
    _, ids = reopened.search(everything[::50], 1)
    # PQ confuses neighbouring windows (they are correlated), not songs.
    found, position = reopened.locate(ids[:, 0])
    assert np.array_equal(found, np.arange(0, 3400, 50) // 200 + 1)
    assert np.mean(np.abs(position - np.arange(0, 3400, 50) % 200) <= 1) > 0.9

    # Songs added to an existing IVF-PQ index are appended, not retrained.
    stage_songs(reopened, rng, 1, 100, offset=17)
    reopened.commit()
    assert reopened.ntotal == 3500 and reopened.index_type == "ivfpq"


def test_contiguous_ids_and_locate(tmp_path: Path) -> None:
    db = FingerprintDB.create(tmp_path / "db", MODEL, dim=16, index_config=SMALL)
    rng = np.random.default_rng(5)
    lengths = [7, 1, 30, 12]
    for i, n in enumerate(lengths):
        db.stage_song(f"S{i}", "", f"/{i}.wav", n / 2, checksum(i), make_song(rng, n, 16))
    db.commit()
    db.stage_song("late", "", "/late.wav", 2.5, checksum(9), make_song(rng, 4, 16))
    db.commit()

    songs = db.songs()
    assert [s.first_vector_id for s in songs] == [0, 7, 8, 38, 50]
    assert [s.vector_count for s in songs] == [*lengths, 4]
    ids = np.array([[0, 6, 7, 8], [37, 38, 53, 49]])
    song_ids, positions = db.locate(ids)
    assert song_ids.tolist() == [[1, 1, 2, 3], [3, 4, 5, 4]]
    assert positions.tolist() == [[0, 6, 0, 0], [29, 0, 3, 11]]
    bad_songs, bad_positions = db.locate(np.array([-1, 54, 1000]))
    assert bad_songs.tolist() == [-1, -1, -1] and bad_positions.tolist() == [-1, -1, -1]
    assert db.vector_id(3, 29) == 37
    with pytest.raises(DatabaseError):
        db.vector_id(3, 30)
    first, count = db.song_spans(np.array([5, 1, 42]))
    assert first.tolist() == [50, 0, -1] and count.tolist() == [4, 7, 0]

    # Every vector maps back to its own song and window.
    for song in songs:
        assert song.first_vector_id is not None
        own = np.arange(song.vector_count) + song.first_vector_id
        ids_back, pos_back = db.locate(own)
        assert set(ids_back.tolist()) == {song.id}
        assert pos_back.tolist() == list(range(song.vector_count))


def test_training_ivfpq_prints_no_faiss_warning(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    db = FingerprintDB.create(tmp_path / "db", MODEL, dim=32, index_config=SMALL)
    stage_songs(db, np.random.default_rng(4), 17, 200)  # 3400 vectors: 13 per centroid
    db.commit()
    assert db.index_type == "ivfpq"
    assert capfd.readouterr().err == ""  # faiss: "WARNING clustering 3400 points to 256 ..."


def test_reconstruct_exact_for_flat_and_close_for_ivfpq(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    flat = FingerprintDB.create(tmp_path / "flat", MODEL, dim=32, index_config=SMALL)
    songs = np.concatenate(stage_songs(flat, rng, 3, 40))
    flat.commit()
    assert np.array_equal(flat.reconstruct(np.arange(120)), songs)

    # 64-d with 16 sub-quantisers of 8 bits: 4 dims per code, as the paper's 128-d / m=32.
    config = IndexConfig(m=16, nbits=8, nlist=16, min_train_vectors=3000)
    ivf = FingerprintDB.create(tmp_path / "ivf", MODEL, dim=64, index_config=config)
    songs = np.concatenate(stage_songs(ivf, rng, 16, 200))
    ivf.commit()
    assert ivf.index_type == "ivfpq"
    ids = rng.choice(len(songs), 500, replace=False)
    rebuilt = ivf.reconstruct(ids)
    cosine = np.sum(rebuilt * songs[ids], axis=1) / np.linalg.norm(rebuilt, axis=1)
    print(f"PQ reconstruction cosine (64-d, m=16 x 8 bits): mean {cosine.mean():.3f}")
    assert cosine.mean() > 0.9, cosine.mean()
    assert not np.array_equal(rebuilt, songs[ids])  # decoded from codes, not stored floats
    with pytest.raises(DatabaseError):
        ivf.reconstruct(np.array([len(songs)]))


def index_nprobe(db: FingerprintDB) -> int:
    """The nprobe set on the database's faiss index (which must be an IVF one)."""
    assert db.index is not None
    return int(faiss.extract_index_ivf(db.index).nprobe)


def test_nprobe_takes_effect_and_persists(tmp_path: Path) -> None:
    path = tmp_path / "db"
    config = IndexConfig(m=8, nbits=8, nlist=16, nprobe=1, min_train_vectors=3000)
    db = FingerprintDB.create(path, MODEL, dim=32, index_config=config)
    rng = np.random.default_rng(7)
    songs = np.concatenate(stage_songs(db, rng, 20, 200))
    db.commit()
    assert db.index_type == "ivfpq"
    assert db.nprobe == index_nprobe(db) == 1

    # Noisy queries; ground truth = exact inner-product nearest neighbour.
    picks = rng.choice(len(songs), 400, replace=False)
    queries = songs[picks] + 0.5 * rng.standard_normal((400, 32)).astype(np.float32) / np.sqrt(32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = np.argmax(queries @ songs.T, axis=1)

    def recall_at_1() -> float:
        _, ids = db.search(queries, 1)
        return float(np.mean(ids[:, 0] == truth))

    recall_one = recall_at_1()
    db.nprobe = 16
    assert index_nprobe(db) == 16
    recall_all = recall_at_1()
    print(f"recall@1 nprobe=1: {recall_one:.3f}, nprobe=nlist=16: {recall_all:.3f}")
    assert recall_all > recall_one + 0.1

    # Setting nprobe is per session; the database default comes from the index config ...
    reopened = FingerprintDB.open(path)
    assert reopened.nprobe == index_nprobe(reopened) == 1
    # ... or from the saved search settings.
    reopened.save_search_settings(nprobe=8)
    again = FingerprintDB.open(path)
    assert again.nprobe == index_nprobe(again) == 8
    assert json.loads((path / "manifest.json").read_text())["search"]["nprobe"] == 8
    # The same value survives a commit (new index generation).
    stage_songs(again, rng, 1, 10, offset=50)
    again.commit()
    assert index_nprobe(again) == 8
    with pytest.raises(DatabaseError, match="nprobe"):
        again.nprobe = 0


def test_search_can_exclude_a_song(tmp_path: Path) -> None:
    db = FingerprintDB.create(tmp_path / "db", MODEL, dim=32, index_config=SMALL)
    songs = stage_songs(db, np.random.default_rng(8), 3, 20)
    db.commit()
    _, ids = db.search(songs[1][:4], 5, exclude_song=2)
    assert not np.any((ids >= 20) & (ids < 40))
    scores, ids = db.search(songs[1][:1], 100)
    assert ids[0, -1] == -1 and scores[0, -1] == -np.inf  # fewer vectors than k


# ---------------------------------------------------------------- crash consistency


def snapshot_then_fail(
    monkeypatch: pytest.MonkeyPatch, db: FingerprintDB, where: Path, after: bool
) -> None:
    """Make the commit point copy the database folder (the disk as a crash would leave it)
    and then raise: before the catalogue switch (after=False) or just after it."""
    original = FingerprintDB._record_commit

    def crash(self: FingerprintDB, *args: object, **kwargs: object) -> None:
        if after:
            original(self, *args, **kwargs)  # type: ignore[arg-type]
        shutil.copytree(self.path, where)
        raise OSError("simulated crash")

    monkeypatch.setattr(FingerprintDB, "_record_commit", crash)


def test_crash_before_catalogue_switch_keeps_old_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "db"
    db = FingerprintDB.create(path, MODEL, dim=32, index_config=SMALL)
    rng = np.random.default_rng(9)
    old = stage_songs(db, rng, 2, 20)
    db.commit()
    new = stage_songs(db, rng, 2, 20, offset=2)

    crashed = tmp_path / "crashed"
    snapshot_then_fail(monkeypatch, db, crashed, after=False)
    with pytest.raises(OSError, match="simulated crash"):
        db.commit()
    # The crash left the new generation file on disk, unreferenced.
    assert index_files(crashed) == ["index-000001.faiss", "index-000002.faiss"]
    monkeypatch.undo()

    # The process that failed is back to the old state and cleaned up after itself.
    assert db.ntotal == 40 and index_files(path) == ["index-000001.faiss"]
    for folder in (path, crashed):
        reopened = FingerprintDB.open(folder)
        assert index_files(folder) == ["index-000001.faiss"]  # orphan deleted on open
        assert reopened.ntotal == 40
        assert [s.status for s in reopened.songs()] == ["indexed"] * 2 + ["staged"] * 2
        assert reopened.commit() == 2
        _, ids = reopened.search(np.concatenate([old[0][:1], new[1][:1]]), 1)
        assert ids[:, 0].tolist() == [0, 60]
        assert index_files(folder) == ["index-000002.faiss"]


def test_crash_after_catalogue_switch_keeps_new_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "db"
    db = FingerprintDB.create(path, MODEL, dim=32, index_config=SMALL)
    rng = np.random.default_rng(10)
    stage_songs(db, rng, 2, 20)
    db.commit()
    new = stage_songs(db, rng, 1, 20, offset=2)
    crashed = tmp_path / "crashed"
    snapshot_then_fail(monkeypatch, db, crashed, after=True)
    with pytest.raises(OSError):
        db.commit()
    monkeypatch.undo()

    # The snapshot still holds the old generation and the staging file ...
    assert index_files(crashed) == ["index-000001.faiss", "index-000002.faiss"]
    assert len(list((crashed / "staging").iterdir())) == 1
    reopened = FingerprintDB.open(crashed)
    # ... which open removes: the catalogue already points to the new generation.
    assert index_files(crashed) == ["index-000002.faiss"]
    assert list((crashed / "staging").iterdir()) == []
    assert reopened.ntotal == 60
    assert [s.status for s in reopened.songs()] == ["indexed"] * 3
    _, ids = reopened.search(new[0][:1], 1)
    assert ids[0, 0] == 40


def test_open_removes_leftovers_of_interrupted_writes(tmp_path: Path) -> None:
    path = tmp_path / "db"
    db = FingerprintDB.create(path, MODEL, dim=32, index_config=SMALL)
    stage_songs(db, np.random.default_rng(11), 2, 20)
    db.commit()
    stage_songs(db, np.random.default_rng(12), 1, 20, offset=2)
    (path / "index-000007.faiss").write_bytes(b"unfinished generation")
    (path / ".manifest.json.123.abcd.tmp").write_text("{")
    (path / "staging" / "deadbeef.npy").write_bytes(b"staged file without a row")
    kept = path / "staging" / f"{checksum(2)}.npy"

    FingerprintDB.open(path)
    assert index_files(path) == ["index-000001.faiss"]
    assert not (path / ".manifest.json.123.abcd.tmp").exists()
    assert sorted(p.name for p in (path / "staging").iterdir()) == [kept.name]


def test_open_leaves_files_alone_while_another_writer_holds_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "db"
    writer = FingerprintDB.create(path, MODEL, dim=32, index_config=SMALL)
    stage_songs(writer, np.random.default_rng(14), 1, 10)
    writer.commit()
    in_progress = path / "index-000002.faiss"  # what a concurrent commit is writing
    with writer._locked():
        in_progress.write_bytes(b"half written")
        reader = FingerprintDB.open(path)
        assert in_progress.exists()
        assert reader.ntotal == 10
    FingerprintDB.open(path)
    assert not in_progress.exists()


# ---------------------------------------------------------------- info


def test_info_reports_sizes_and_index_parameters(tmp_path: Path) -> None:
    path = tmp_path / "db"
    db = FingerprintDB.create(path, MODEL, dim=32, index_config=SMALL)
    rng = np.random.default_rng(13)
    stage_songs(db, rng, 16, 200)  # 3200 vectors: IVF-PQ
    db.commit()
    stage_songs(db, rng, 1, 50, offset=16)  # staged, not committed

    info = db.info()
    assert info["songs"] == 16 and info["vectors"] == 3200
    assert info["staged_songs"] == 1 and info["staged_vectors"] == 50
    assert info["hours"] == pytest.approx(16 * 100.5 / 3600)
    assert info["index"] == {"type": "ivfpq", "m": 8, "nbits": 8, "nlist": 16, "nprobe": 2}
    assert info["bytes_index"] == (path / "index-000001.faiss").stat().st_size
    # 8 bytes of PQ code + 8 bytes of id per vector, plus centroids and codebooks.
    assert 3200 * 16 < info["bytes_index"] < 3200 * 16 + 200_000
    assert info["bytes_staging"] == (path / "staging" / f"{checksum(16)}.npy").stat().st_size
    assert info["bytes_catalogue"] > 0
    assert info["bytes_on_disk"] == (
        info["bytes_index"] + info["bytes_catalogue"] + info["bytes_staging"]
    )
    assert info["bytes_per_hour"] == pytest.approx(
        (info["bytes_index"] + info["bytes_catalogue"]) / info["hours"]
    )
    assert info["model_info"] == MODEL
    json.dumps(info)  # the CLI prints it as JSON
