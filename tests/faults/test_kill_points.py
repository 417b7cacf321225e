"""Real ``afp index`` processes killed at named points (``afp_core.faults``), then run
again: the rerun must end exactly where an uninterrupted run ends (same songs, vectors
and no-match thresholds; the same ``afp identify --json`` answer)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from tests.conftest import synthesise_song
from tests.faults.processes import killed_code, run_afp


def database_state(db: Path, query: Path) -> dict:
    """What must not differ from an uninterrupted build (timestamps aside)."""
    info = run_afp("info", str(db), "--json", "--songs")
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    answer = run_afp("identify", str(db), str(query), "--json")
    assert answer.returncode == 0, answer.stderr
    songs = [{k: s[k] for k in ("title", "duration_s", "vectors")} for s in data["song_list"]]
    return {
        "songs": songs,
        "size": data.get("vectors", data.get("hashes")),
        "staged": data["staged_songs"],
        "thresholds": data["search"].get("thresholds"),
        "stale": data["needs_calibration"],
        "answer": json.loads(answer.stdout),
    }


@pytest.fixture(scope="module")
def library(tmp_path_factory, song_library) -> Path:
    """Three of the test songs: calibration (20 impostors a song) stays short."""
    folder = tmp_path_factory.mktemp("fault-library")
    for path in song_library[:3]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def query(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("query") / "q.wav"
    sf.write(path, synthesise_song(101, 24.0)[22050 * 5 : 22050 * 9], 22050)
    return path


def index_args(db: Path, library: Path, kind: str, checkpoint: Path) -> list[str]:
    extra = ["--landmark"] if kind == "landmark" else ["--model", str(checkpoint)]
    return ["index", str(db), str(library), "--quiet", *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, library, untrained_checkpoint, query):
    """Each kind's state after one uninterrupted run."""
    states = {}
    for kind in ("neural", "landmark"):
        db = tmp_path_factory.mktemp(f"ref-{kind}") / "db"
        done = run_afp(*index_args(db, library, kind, untrained_checkpoint))
        assert done.returncode == 0, done.stderr
        states[kind] = database_state(db, query)
    return states


def check_kill_then_rerun(
    tmp_path, library, untrained_checkpoint, query, reference, ledger, kind, point, sig
):
    db = tmp_path / "db"
    args = index_args(db, library, kind, untrained_checkpoint)
    killed = run_afp(*args, fault=point, sig=sig)
    expected_code = killed_code(sig)
    name = f"afp index ({kind}) SIG{sig} at {point}"
    survived = killed.returncode == expected_code and "Traceback" not in killed.stderr
    rerun = run_afp(*args)
    survived = survived and rerun.returncode == 0 and "Traceback" not in rerun.stderr
    state = database_state(db, query) if survived else None
    lost = state != reference[kind]
    ledger.fault(name, survived, lost)
    assert killed.returncode == expected_code, (name, killed.returncode, killed.stderr[-2000:])
    assert "Traceback" not in killed.stderr, killed.stderr[-2000:]
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert state == reference[kind], name


# The calibration kills stay in the default suite (they once lost the thresholds for good)
SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    ("kind", "point", "sig"),
    [
        ("neural", "index.calibrate:3", "KILL"),
        ("neural", "index.calibrate:3", "INT"),
        ("landmark", "index.calibrate:3", "KILL"),
        pytest.param("neural", "index.staged:2", "KILL", marks=SLOW),
        pytest.param("neural", "index.staged:2", "INT", marks=SLOW),
        pytest.param("neural", "index.commit", "KILL", marks=SLOW),
        pytest.param("neural", "index.commit", "INT", marks=SLOW),
        pytest.param("landmark", "index.staged:2", "KILL", marks=SLOW),
        pytest.param("landmark", "index.commit", "KILL", marks=SLOW),
        pytest.param("landmark", "index.calibrate:3", "INT", marks=SLOW),
    ],
)
def test_killed_index_resumes_to_the_same_database(
    tmp_path, library, untrained_checkpoint, query, reference, ledger, kind, point, sig
):
    check_kill_then_rerun(
        tmp_path, library, untrained_checkpoint, query, reference, ledger, kind, point, sig
    )
