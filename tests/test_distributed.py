"""Extraction across processes (``afp index-shards``): two real torchrun ranks (gloo, on
the CPU), real audio files, faiss indexes and SQLite catalogues. The committed database
must be the one a single process builds; a rank killed mid-shard and rerun alone must
finish the job without extracting a song twice; a staging area made with another model
must be refused in one line, with nothing committed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from afp_core.checkpoint import save_checkpoint
from afp_core.cli import main
from afp_core.database import FingerprintDB
from afp_core.distributed import parse_shard
from afp_core.errors import ConfigError
from afp_core.indexing import index_library, open_database_for_indexing
from afp_core.models import build_model
from afp_core.shipped import UNTRAINED_SPEC

ROOT = Path(__file__).resolve().parents[1]
SONGS = 4


def contents(db: FingerprintDB) -> tuple:
    """What the commit decides: catalogue rows (ids, vector ids), index file, thresholds."""
    rows = [
        (s.id, s.title, s.source, s.checksum, s.first_vector_id, s.vector_count) for s in db.songs()
    ]
    index_file = (db.path / f"index-{db.generation:06d}.faiss").read_bytes()
    return rows, index_file, db.search_settings.get("thresholds")


def assert_same(built: tuple, reference: tuple) -> None:
    assert built[0] == reference[0]
    assert built[1] == reference[1] and built[2] == reference[2]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, song_library, untrained_checkpoint) -> tuple:
    db, checkpoint = open_database_for_indexing(
        tmp_path_factory.mktemp("one") / "db", untrained_checkpoint
    )
    index_library(db, checkpoint.model, song_library[:SONGS])
    return contents(FingerprintDB.open(db.path))


def shards_command(db: Path, files: list[Path], staging: Path, checkpoint: Path) -> list[str]:
    paths = [str(path) for path in files]
    options = ["--staging", str(staging), "--model", str(checkpoint), "--quiet"]
    return ["index-shards", str(db), *paths, *options]


def test_two_torchrun_ranks_build_the_single_process_database(
    tmp_path, song_library, untrained_checkpoint, single_process
):
    db, staging = tmp_path / "db", tmp_path / "staging"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launcher += ["--nproc-per-node", "2", "-m", "afp_core.cli"]
    run = subprocess.run(
        launcher + shards_command(db, song_library[:SONGS], staging, untrained_checkpoint),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "rank 0/2: staged 2 songs" in run.stdout and "rank 1/2: staged 2 songs" in run.stdout
    assert_same(contents(FingerprintDB.open(db)), single_process)
    assert not staging.exists()  # deleted once committed


def test_a_killed_rank_rerun_alone_finishes_without_extracting_twice(
    tmp_path, song_library, untrained_checkpoint, single_process, capsys
):
    db, staging = tmp_path / "db", tmp_path / "staging"
    args = shards_command(db, song_library[:SONGS], staging, untrained_checkpoint)
    killed = subprocess.run(
        [sys.executable, "-m", "afp_core.cli", *args, "--shard", "1/2"],
        cwd=ROOT,
        env={**os.environ, "AFP_FAULT_AT": "index.staged"},  # killed after its first song
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL
    assert main([*args, "--shard", "0/2"]) == 0
    assert "rank 1/2 not finished yet" in capsys.readouterr().out
    assert FingerprintDB.open(db).songs() == []  # nothing committed half-way

    assert main([*args, "--shard", "1/2"]) == 0  # the failed rank alone: the rest, then the commit
    out = capsys.readouterr().out
    assert "rank 1/2: staged 1 songs" in out and "1 already staged or in the database" in out
    assert f"committed {SONGS} songs from 2 ranks" in out
    assert_same(contents(FingerprintDB.open(db)), single_process)


def test_a_staging_area_of_another_model_is_refused(
    tmp_path, song_library, untrained_checkpoint, capsys
):
    staging = tmp_path / "staging"
    files = song_library[:2]
    assert (
        main(
            [
                *shards_command(tmp_path / "a", files, staging, untrained_checkpoint),
                "--shard",
                "0/2",
            ]
        )
        == 0
    )
    other = save_checkpoint(tmp_path / "other.pt", build_model(UNTRAINED_SPEC, seed=7), meta={})
    capsys.readouterr()
    args = shards_command(tmp_path / "b", files, staging, other)
    assert main([*args, "--shard", "1/2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "staging area made with another model" in err
    assert str(staging) in err
    assert FingerprintDB.open(tmp_path / "b").songs() == []


@pytest.mark.parametrize("text", ["2/2", "1", "a/2", "-1/2", "0/0"])
def test_a_bad_shard_is_one_line(text):
    with pytest.raises(ConfigError, match="RANK/WORLD"):
        parse_shard(text)
