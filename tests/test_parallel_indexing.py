"""Indexing in several processes (``afp index --workers N``) and with windows batched
across files (the ``--device cuda`` path, run here on the CPU): real audio files, real
faiss indexes and SQLite catalogues, real worker processes; the database must be the one
a single process builds, and a killed worker or a Ctrl-C must leave only whole songs.

The neural builds here skip the calibration (a minute each on 2 cores): the thresholds
are computed from what the database holds, which is compared byte for byte."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from afp_core.cli import main
from afp_core.database import FingerprintDB
from afp_core.errors import ConfigError
from afp_core.indexing import encoder_device, open_database_for_indexing, vector_fingerprinting
from afp_core.ingest import index_files
from afp_core.landmark import LandmarkDB, index_landmark_library

SONGS = 3


def build(
    folder: Path, checkpoint: Path, files: list[Path], workers: int = 1, **options
) -> FingerprintDB:
    """``index_library``'s loop without the calibration."""
    db, ckpt = open_database_for_indexing(folder, checkpoint)
    fingerprinting = vector_fingerprinting(db, ckpt.model, **options)
    index_files(
        db,
        files,
        dataclasses.replace(fingerprinting, calibrate=lambda _task: None),
        workers=workers,
    )
    return FingerprintDB.open(folder)


def contents(db: FingerprintDB) -> tuple:
    """Everything a build decides: songs and their ids, vectors, the index file."""
    rows = [dataclasses.replace(song, added_at="") for song in db.songs()]
    vectors = db.reconstruct(np.arange(db.ntotal))
    index_file = (db.path / f"index-{db.generation:06d}.faiss").read_bytes()
    return rows, vectors, index_file


def assert_same(built: tuple, reference: tuple) -> None:
    rows, vectors, index_file = built
    assert rows == reference[0]  # the same songs under the same ids and vector ids
    assert np.array_equal(vectors, reference[1]) and index_file == reference[2]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, song_library, untrained_checkpoint) -> tuple:
    folder = tmp_path_factory.mktemp("one") / "db"
    return contents(build(folder, untrained_checkpoint, song_library[:SONGS]))


@pytest.mark.parametrize(
    ("workers", "across"), [(2, False), (1, True), (2, True)], ids=["workers", "batched", "both"]
)
def test_the_database_is_the_one_a_single_process_builds(
    tmp_path, song_library, untrained_checkpoint, reference, workers, across
):
    db = build(
        tmp_path / "db",
        untrained_checkpoint,
        song_library[:SONGS],
        workers=workers,
        batch_across_files=across,
        batch_size=100,  # batches that span files
    )
    assert_same(contents(db), reference)


def test_landmark_workers_give_the_same_postings(tmp_path, song_library):
    one = LandmarkDB.create(tmp_path / "one")
    index_landmark_library(one, song_library[:SONGS])
    two = LandmarkDB.create(tmp_path / "two")
    result = index_landmark_library(two, song_library[:SONGS], workers=2)
    assert len(result.added) == SONGS
    assert [(s.id, s.checksum, s.first_vector_id) for s in two.songs()] == [
        (s.id, s.checksum, s.first_vector_id) for s in one.songs()
    ]
    assert (two.path / "postings-000001.npy").read_bytes() == (
        one.path / "postings-000001.npy"
    ).read_bytes()
    assert two.search_settings["thresholds"] == one.search_settings["thresholds"]


def test_bad_files_are_skipped_with_one_line_each_from_workers(
    tmp_path, song_library, untrained_checkpoint, capsys
):
    library = tmp_path / "lib"
    library.mkdir()
    (library / "notes.mp3").write_text("not audio")
    (library / "empty.wav").write_bytes(b"")
    shutil.copy(song_library[0], library)
    args = ["index", str(tmp_path / "db"), str(library), "--model", str(untrained_checkpoint)]
    assert main([*args, "--workers", "2", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert sorted(line.split(": ")[1] for line in err.splitlines()) == [
        str(library / "empty.wav"),
        str(library / "notes.mp3"),
    ]


@pytest.mark.parametrize("command", ["index", "identify", "index-shards"])
def test_cuda_without_a_gpu_is_one_line(tmp_path, song_library, capsys, command):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    extra = ["--staging", str(tmp_path / "staging"), "--shard", "0/1"]
    argv = [command, str(tmp_path / "db"), str(song_library[0]), "--device", "cuda"]
    code = main(argv + (extra if command == "index-shards" else []))
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA device" in err
    assert not (tmp_path / "db").exists() and not (tmp_path / "staging").exists()
    with pytest.raises(ConfigError, match="no CUDA device"):
        encoder_device("cuda")


def test_a_landmark_database_refuses_a_device(tmp_path, song_library, capsys):
    argv = ["index", str(tmp_path / "lm"), str(song_library[0]), "--landmark"]
    assert main([*argv, "--device", "meta"]) == 1  # a torch device, not a CPU
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "built on the CPU" in err
    assert not (tmp_path / "lm").exists()


def afp(*args: str, fault: str | None = None, sig: str = "KILL") -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFP_FAULT")}
    if fault is not None:
        env |= {"AFP_FAULT_AT": fault, "AFP_FAULT_SIGNAL": sig}
    return subprocess.Popen(
        [sys.executable, "-m", "afp_core.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal gives a command
        # Ctrl-C as a terminal delivers it: a run started in the background of a
        # non-interactive shell inherits SIGINT ignored, and Python would keep ignoring it
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def group_ends(group: int, within_s: float = 30.0) -> bool:
    """Whether every process of ``group`` exits within ``within_s``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def staged_whole(db: FingerprintDB) -> bool:
    """Every staged song has a staging file holding all its vectors."""
    for song in db.songs("staged"):
        vectors = np.load(db.path / "staging" / f"{song.checksum}.npy")
        if vectors.shape != (song.vector_count, db.dim):
            return False
    return True


def test_a_killed_worker_leaves_whole_songs_and_the_rerun_finishes(
    tmp_path, song_library, untrained_checkpoint, reference
):
    db_dir = tmp_path / "db"
    args = ["index", str(db_dir), *map(str, song_library[:SONGS]), "--quiet", "--workers", "2"]
    args += ["--model", str(untrained_checkpoint)]
    run = afp(*args, fault="index.extracted:2")  # a worker kills itself at its second song
    _, err = run.communicate(timeout=300)
    assert run.returncode == 1, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "not indexed: a worker process stopped" in err and "run again to finish" in err
    assert group_ends(run.pid)  # the other worker stopped too
    db = FingerprintDB.open(db_dir)
    assert db.songs("indexed") == [] and staged_whole(db)
    assert_same(contents(build(db_dir, untrained_checkpoint, song_library[:SONGS])), reference)


def test_ctrl_c_stops_the_workers_and_keeps_whole_songs(
    tmp_path, song_library, untrained_checkpoint, reference
):
    db_dir = tmp_path / "db"
    args = ["index", str(db_dir), *map(str, song_library[:SONGS]), "--quiet", "--workers", "2"]
    args += ["--model", str(untrained_checkpoint)]
    run = afp(*args, fault="index.staged", sig="STOP")  # held after its first song is staged
    deadline = time.monotonic() + 300
    while Path(f"/proc/{run.pid}/stat").read_text().split(") ")[1][0] != "T":
        assert run.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGINT)  # Ctrl-C: the whole process group
    os.killpg(run.pid, signal.SIGCONT)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 130, err
    assert err == "afp: interrupted; finished work is kept, run again to resume\n"
    assert group_ends(run.pid)  # no worker left behind
    db = FingerprintDB.open(db_dir)
    assert len(db.songs("staged")) >= 1 and staged_whole(db)
    assert_same(contents(build(db_dir, untrained_checkpoint, song_library[:SONGS])), reference)
