"""A disk that fills up in the middle of ``afp index`` (neural and ``--landmark``) and of
``afp index-shards``: the command ends with one line ``afp: error: FILE: no space left on
the disk (...)`` and status 1; the database then opens in the state before the write that
failed (whole songs staged, nothing committed half-way, no temp file left to eat the
space); and a rerun, once there is room, ends with the database an uninterrupted build
makes.

Two ways to fill the disk. Where this process may mount one (root, and a kernel that lets
it), a real tmpfs of a few hundred KB holds the database or the staging folder. Mounting
needs privileges that CI runners usually lack, so the same scenarios also run everywhere
with the failing command in a subprocess under ``RLIMIT_FSIZE`` and SIGXFSZ ignored: the
kernel then fails the write that crosses the limit with EFBIG, which afp treats as a full
disk (``afp_core.errors.DISK_FULL``).

The neural reruns and references skip the calibration (a minute on 2 cores; the failing
runs never reach it) and are compared byte for byte: songs, ids and the index file.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest
import soundfile as sf

from afp_core import indexing, ivf
from afp_core.cli import main
from afp_core.config import IndexConfig
from afp_core.database import STAGING, FingerprintDB
from afp_core.errors import DiskFull
from afp_core.fileutil import file_sha256
from afp_core.indexing import open_database_for_indexing, vector_fingerprinting
from afp_core.ingest import index_files
from afp_core.landmark import LandmarkDB
from tests.conftest import synthesise_song

# Bytes a file may grow to under RLIMIT_FSIZE: room for a 24 s song's staged vectors or
# landmarks (about 24 KB), the catalogue, its WAL and shared memory (32 KB); not for a
# 60 s song's vectors (61 KB), nor for three songs' index or postings (72 KB).
FILE_LIMIT = 48_000
TIMEOUT_S = 120


def limit_file_size(file_limit: int | None) -> Callable[[], None]:
    """A subprocess's start: no file it writes may grow past ``file_limit`` bytes (a write
    crossing it fails with EFBIG); None: no limit."""

    def start() -> None:
        # a suite started in the background inherits SIGINT ignored (and so would afp)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if file_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills it
            hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, hard))

    return start


def run_afp(*args: str, file_limit: int | None = None) -> subprocess.CompletedProcess:
    """``python -m afp_core.cli ARGS`` in a subprocess (``limit_file_size``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFP_FAULT")}
    return subprocess.run(
        [sys.executable, "-m", "afp_core.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        preexec_fn=limit_file_size(file_limit),
    )


def assert_disk_full_line(done: subprocess.CompletedProcess, file: Path | None) -> str:
    """The run ended with status 1 and one line saying the disk is full (naming ``file``,
    or any file when None); returns the line."""
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith(f"afp: error: {file or ''}"), line
    assert "no space left on the disk" in line and "run again to finish" in line, line
    return line


def assert_no_temp_files(folder: Path) -> None:
    """Nothing half-written stays behind to eat the space a rerun needs."""
    left = [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    assert not left, left


def rows(db: FingerprintDB | LandmarkDB, status: str | None = None) -> list:
    return [dataclasses.replace(song, added_at="") for song in db.songs(status)]


def assert_staged_whole(db: FingerprintDB) -> None:
    for song in db.songs("staged"):
        vectors = np.load(db.path / STAGING / f"{song.checksum}.npy")
        assert vectors.shape == (song.vector_count, db.dim)


def neural_contents(db: FingerprintDB) -> tuple:
    """Everything a build decides: songs (ids, vector ids) and the index file."""
    index_file = (db.path / f"index-{db.generation:06d}.faiss").read_bytes()
    return rows(db), index_file


def landmark_contents(db: LandmarkDB) -> tuple:
    postings = (db.path / f"postings-{db.generation:06d}.npy").read_bytes()
    return rows(db), postings, db.search_settings.get("thresholds")


def build_neural(folder: Path, checkpoint: Path, files: list[Path]) -> FingerprintDB:
    """``afp index``'s build without the calibration."""
    db, ckpt = open_database_for_indexing(folder, checkpoint)
    fingerprinting = vector_fingerprinting(db, ckpt.model)
    index_files(db, files, dataclasses.replace(fingerprinting, calibrate=lambda _task: None))
    return FingerprintDB.open(folder)


@pytest.fixture
def no_calibration(monkeypatch) -> None:
    """Neural reruns in this process skip the calibration (as the references do)."""
    monkeypatch.setattr(indexing, "calibrate_thresholds", lambda *_a, **_k: None)


@pytest.fixture(scope="module")
def libraries(tmp_path_factory, song_library) -> dict[str, Path]:
    """'short': three 24 s songs; 'long': two of them, then a 60 s song, whose staged
    vectors are the largest file of a build but for the index."""
    made = {}
    for name in ("short", "long"):
        folder = tmp_path_factory.mktemp(f"library-{name}")
        for i, path in enumerate(song_library[: 3 if name == "short" else 2]):
            shutil.copy(path, folder / f"{i}-{path.name}")
        if name == "long":
            sf.write(folder / "2-long.wav", synthesise_song(200, 60.0), 22050)
        made[name] = folder
    return made


def library_files(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def reference(tmp_path_factory, libraries, untrained_checkpoint) -> Callable[[str, str], tuple]:
    """reference(kind, library): the contents of an uninterrupted build."""
    built: dict[tuple[str, str], tuple] = {}

    def get(kind: str, library: str) -> tuple:
        if (kind, library) not in built:
            folder = tmp_path_factory.mktemp(f"reference-{kind}-{library}") / "db"
            files = library_files(libraries[library])
            if kind == "neural":
                built[kind, library] = neural_contents(
                    build_neural(folder, untrained_checkpoint, files)
                )
            else:
                assert main(["index", str(folder), *map(str, files), "--landmark", "--quiet"]) == 0
                built[kind, library] = landmark_contents(LandmarkDB.open(folder))
        return built[kind, library]

    return get


# ---------------------------------------------------------------------- everywhere: RLIMIT


@pytest.mark.parametrize("failing", ["staging", "commit"])
def test_neural_index_stopped_by_a_full_disk_resumes(
    tmp_path, libraries, untrained_checkpoint, reference, no_calibration, failing
):
    """staging: the 60 s song's vectors do not fit, the two songs before them are staged;
    commit: over a database of one song, the new index of three does not fit."""
    library = "long" if failing == "staging" else "short"
    files = library_files(libraries[library])
    db_dir = tmp_path / "db"
    if failing == "staging":
        open_database_for_indexing(db_dir, untrained_checkpoint)  # its model.pt is 6 MB
        expected = db_dir / STAGING / f"{file_sha256(files[2])}.npy"
    else:
        build_neural(db_dir, untrained_checkpoint, files[:1])
        expected = db_dir / "index-000002.faiss"
    before = FingerprintDB.open(db_dir)
    args = ["index", str(db_dir), str(libraries[library]), "--quiet"]

    done = run_afp(*args, file_limit=FILE_LIMIT)

    assert_disk_full_line(done, expected)
    assert_no_temp_files(db_dir)
    after = FingerprintDB.open(db_dir)
    assert rows(after, "indexed") == rows(before, "indexed")  # as before the failed commit
    assert after.generation == before.generation and after.ntotal == before.ntotal
    assert len(after.songs("staged")) == 2
    assert_staged_whole(after)

    assert main(args) == 0  # room again: the rerun finishes the job
    assert neural_contents(FingerprintDB.open(db_dir)) == reference("neural", library)


def test_landmark_index_stopped_by_a_full_disk_resumes(tmp_path, libraries, reference):
    """The three songs are staged; their postings do not fit."""
    db_dir = tmp_path / "db"
    args = ["index", str(db_dir), str(libraries["short"]), "--landmark", "--quiet"]

    done = run_afp(*args, file_limit=FILE_LIMIT)

    assert_disk_full_line(done, db_dir / "postings-000001.npy")
    assert_no_temp_files(db_dir)
    after = LandmarkDB.open(db_dir)
    assert after.generation == 0 and not after.songs("indexed")
    assert len(after.songs("staged")) == 3

    assert main(args) == 0
    assert landmark_contents(LandmarkDB.open(db_dir)) == reference("landmark", "short")


@pytest.mark.parametrize("failing", ["staging", "commit"])
def test_index_shards_stopped_by_a_full_disk_resumes(
    tmp_path, libraries, untrained_checkpoint, reference, no_calibration, failing
):
    """staging: the rank's area cannot take the 60 s song (the rank is not marked
    finished); commit: every song is staged, the database's index does not fit (the
    staging area is kept for the rerun)."""
    library = "long" if failing == "staging" else "short"
    files = library_files(libraries[library])
    db_dir, staging = tmp_path / "db", tmp_path / "staging"
    open_database_for_indexing(db_dir, untrained_checkpoint)
    args = ["index-shards", str(db_dir), str(libraries[library]), "--staging", str(staging)]
    args += ["--shard", "0/1", "--quiet"]

    done = run_afp(*args, file_limit=FILE_LIMIT)

    if failing == "staging":
        assert_disk_full_line(done, staging / "rank-0" / f"{file_sha256(files[2])}.npy")
        assert len(list((staging / "rank-0").glob("*.npy"))) == 2
        assert not (staging / "rank-0-of-1.json").exists()
    else:
        assert_disk_full_line(done, db_dir / "index-000001.faiss")
        assert len(list((staging / "rank-0").glob("*.npy"))) == 3
    assert_no_temp_files(staging)
    assert_no_temp_files(db_dir)
    after = FingerprintDB.open(db_dir)
    assert after.generation == 0 and not after.songs("indexed")
    assert_staged_whole(after)

    assert main(args) == 0
    assert neural_contents(FingerprintDB.open(db_dir)) == reference("neural", library)
    assert not staging.exists()


WRITERS = {
    "npy": "from afp_core.fileutil import atomic_save_npy as save; "
    "save(target, np.ones((1000, 64), np.float32))",
    "faiss": "from afp_core.ivf import write_index; from afp_core.fileutil import atomic_path; "
    "import faiss; index = faiss.IndexFlatIP(64); index.add(np.ones((1000, 64), np.float32))\n"
    "with atomic_path(target) as tmp: write_index(index, tmp)",
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_write_cut_short_at_its_last_flush_raises(tmp_path, writer):
    """numpy's and faiss's own writers (C stdio) lost a failed last flush: a disk full in
    the file's last few KB left it short without an error, and a short staging or index
    file was then committed. The file needs 256,128 (npy) or 256,045 bytes (faiss)."""
    target = tmp_path / "out"
    code = f"import numpy as np; from pathlib import Path; target = Path({str(target)!r})\n"
    done = subprocess.run(
        [sys.executable, "-c", code + WRITERS[writer]],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        preexec_fn=limit_file_size(256_000),
    )
    efbig = f"[Errno {errno.EFBIG}] {os.strerror(errno.EFBIG)}"
    assert done.stderr.strip().splitlines()[-1] == f"OSError: {efbig}: {str(target)!r}"
    assert not list(tmp_path.iterdir())  # neither the file nor its temp


def test_lists_past_a_file_size_limit_are_a_full_disk(tmp_path):
    """faiss sizes the merged lists file with truncate(), whose failure (here EFBIG, a
    FAT32 or ulimit file-size limit) is a C++ RuntimeError, not an OSError. Parts of 20
    vectors (70 KB each) fit under the limit; the 360 KB lists file does not."""
    target = tmp_path / "lists.ivfdata"
    code = (
        "import numpy as np; from pathlib import Path; from afp_core import ivf\n"
        "from tests.test_disk_full import LISTS_ON_DISK as cfg, trained_lists_index\n"
        "index, v = trained_lists_index()\n"
        f"target = Path({str(target)!r})\n"
        "ivf.fill_on_disk(index, np.array_split(v, 150), target, cfg, lambda n: None, 3000)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        preexec_fn=limit_file_size(200_000),
    )
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"afp_core.errors.DiskFull: {target}: no space left on the disk")
    assert not list(tmp_path.iterdir())  # neither the parts nor the lists' temp


# ---------------------------------------------------------------------- a real small disk


class Tmpfs:
    """A tmpfs mounted at ``path`` for one test."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def resize(self, kib: int) -> None:
        done = mount("-o", f"remount,size={kib}k", str(self.path))
        assert done.returncode == 0, done.stderr

    def used_kib(self) -> int:
        stat = os.statvfs(self.path)
        return (stat.f_blocks - stat.f_bfree) * stat.f_frsize // 1024


def mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[Tmpfs]:
    """A real 64 MB tmpfs; skipped where this process may not mount one."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root (the RLIMIT_FSIZE tests cover the same)")
    path = tmp_path / "disk"
    path.mkdir()
    done = mount("-t", "tmpfs", "-o", "size=64m", "tmpfs", str(path))
    if done.returncode:
        why = " ".join(done.stderr.split()) or f"status {done.returncode}"
        pytest.skip(f"cannot mount a tmpfs here ({why}); the RLIMIT_FSIZE tests cover the same")
    try:
        yield Tmpfs(path)
    finally:
        # lazily where this process still maps a file there (a landmark database's postings)
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


# Free KiB left on the tmpfs: room for a song's staged vectors (24 KB) but not its
# catalogue row (SQLite's shared memory, 32 KB, comes first), or for three songs staged
# but not their index (72 KB) beside them.
@pytest.mark.parametrize("room_kib", [40, 130], ids=["staging", "commit"])
def test_neural_index_on_a_full_tmpfs_resumes(
    tmpfs, libraries, untrained_checkpoint, reference, no_calibration, room_kib
):
    db_dir = tmpfs.path / "db"
    open_database_for_indexing(db_dir, untrained_checkpoint)  # a 6 MB model.pt
    tmpfs.resize(tmpfs.used_kib() + room_kib)
    args = ["index", str(db_dir), str(libraries["short"]), "--quiet"]

    done = run_afp(*args)

    assert_disk_full_line(done, db_dir)
    assert_no_temp_files(db_dir)  # before anything opens the database again
    tmpfs.resize(64 * 1024)  # space freed
    after = FingerprintDB.open(db_dir)
    assert after.generation == 0 and not after.songs("indexed")
    assert_staged_whole(after)
    del after

    assert main(args) == 0
    assert neural_contents(FingerprintDB.open(db_dir)) == reference("neural", "short")


# Lists on disk (past ram_budget_mb): the short library at 8 windows a hop, 1,107 vectors
# of 120 bytes (7-bit codes of m=128, and ids) in 4 lists. Part files first (one here,
# 196 KiB), then faiss merges them into a 133 KB lists file.
LISTS_ON_DISK = IndexConfig(
    m=128, nbits=7, nlist=4, min_train_vectors=1000, density=8, ram_budget_mb=0.01
)


def trained_lists_index() -> tuple[faiss.IndexIVFPQ, np.ndarray]:
    """An IVF-PQ index of ``LISTS_ON_DISK``'s lists and codes, trained on the 3,000 unit
    vectors it returns."""
    vectors = np.random.default_rng(0).standard_normal((3000, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert LISTS_ON_DISK.nlist is not None
    index = ivf.new_ivfpq(128, LISTS_ON_DISK.nlist, LISTS_ON_DISK)
    index.train(vectors)
    return index, vectors


def test_lists_on_disk_that_do_not_fit_the_tmpfs_resume(
    tmp_path, tmpfs, libraries, untrained_checkpoint, no_calibration
):
    """faiss fills the merged lists file through a memory mapping: a page the full disk
    cannot hold has no write() to fail, the kernel kills the process with SIGBUS (status
    135; this test's without the check). The room is checked before the merge. Songs
    staged by an earlier run; room for the part file (196 KiB) but not for the lists
    (133 KB) beside it: refused before the part is written."""
    db_dir = tmpfs.path / "db"
    db, ckpt = open_database_for_indexing(db_dir, untrained_checkpoint, LISTS_ON_DISK)
    fingerprinting = vector_fingerprinting(db, ckpt.model)
    later = dataclasses.replace(
        fingerprinting, commit=lambda _cancel: None, calibrate=lambda _task: None
    )
    index_files(db, library_files(libraries["short"]), later)
    before = rows(FingerprintDB.open(db_dir))
    assert len(before) == 3 and sum(song.vector_count for song in before) == 1107
    shutil.copytree(db_dir, tmp_path / "reference")
    reference = FingerprintDB.open(tmp_path / "reference")
    reference.commit()  # an uninterrupted build of the same staged songs
    tmpfs.resize(tmpfs.used_kib() + 260)
    args = ["index", str(db_dir), str(libraries["short"]), "--quiet"]

    done = run_afp(*args)

    assert_disk_full_line(done, db_dir / "index-000001.ivfdata")
    assert_no_temp_files(db_dir)  # the part file too
    assert not list(db_dir.glob("index-*"))
    tmpfs.resize(64 * 1024)
    after = FingerprintDB.open(db_dir)
    assert after.generation == 0 and rows(after) == before
    assert_staged_whole(after)
    del after

    assert main(args) == 0
    rebuilt = FingerprintDB.open(db_dir)
    assert rebuilt.index is not None and reference.index is not None
    assert ivf.on_disk(rebuilt.index) and ivf.on_disk(reference.index)
    assert neural_contents(rebuilt) == neural_contents(reference)
    lists = [folder / "index-000001.ivfdata" for folder in (db_dir, tmp_path / "reference")]
    assert lists[0].read_bytes() == lists[1].read_bytes()


def test_lists_that_cannot_fit_are_refused_before_a_vector_is_read(tmpfs):
    """The parts and the merged lists are sized before the first chunk: a build that
    cannot fit fails before the adding (11 min of it at 56 M vectors), not after it."""
    index, vectors = trained_lists_index()
    read: list[int] = []

    def chunks() -> Iterator[np.ndarray]:
        read.append(len(vectors))
        yield vectors

    target = tmpfs.path / "index.ivfdata"
    tmpfs.resize(tmpfs.used_kib() + 1024)
    with pytest.raises(DiskFull, match=f"^{target}: no space left"):
        ivf.fill_on_disk(index, chunks(), target, LISTS_ON_DISK, lambda _n: None, len(vectors))
    assert not read and not list(tmpfs.path.iterdir()) and index.ntotal == 0

    tmpfs.resize(64 * 1024)
    ivf.fill_on_disk(index, chunks(), target, LISTS_ON_DISK, lambda _n: None, len(vectors))
    assert read == [3000] and index.ntotal == 3000 and ivf.on_disk(index)
    assert target.stat().st_size == ivf.lists_bytes(3000, index.code_size)


def test_landmark_index_on_a_full_tmpfs_resumes(tmpfs, libraries, reference):
    db_dir = tmpfs.path / "db"
    LandmarkDB.create(db_dir)
    tmpfs.resize(tmpfs.used_kib() + 130)
    args = ["index", str(db_dir), str(libraries["short"]), "--landmark", "--quiet"]

    done = run_afp(*args)

    assert_disk_full_line(done, db_dir)
    assert_no_temp_files(db_dir)
    tmpfs.resize(64 * 1024)
    after = LandmarkDB.open(db_dir)
    assert after.generation == 0 and not after.songs("indexed")
    del after

    assert main(args) == 0
    assert landmark_contents(LandmarkDB.open(db_dir)) == reference("landmark", "short")


def test_index_shards_with_a_full_staging_disk_resumes(
    tmp_path, tmpfs, libraries, untrained_checkpoint, reference, no_calibration
):
    """The staging folder alone is on the small disk: room for one song's vectors."""
    db_dir, staging = tmp_path / "db", tmpfs.path / "staging"
    open_database_for_indexing(db_dir, untrained_checkpoint)
    tmpfs.resize(40)
    args = ["index-shards", str(db_dir), str(libraries["short"]), "--staging", str(staging)]
    args += ["--shard", "0/1", "--quiet"]

    done = run_afp(*args)

    assert_disk_full_line(done, staging / "rank-0")
    assert_no_temp_files(staging)
    assert len(list((staging / "rank-0").glob("*.npy"))) == 1
    assert not (staging / "rank-0-of-1.json").exists()
    assert not FingerprintDB.open(db_dir).songs()

    tmpfs.resize(64 * 1024)
    assert main(args) == 0
    assert neural_contents(FingerprintDB.open(db_dir)) == reference("neural", "short")
    assert not staging.exists()
