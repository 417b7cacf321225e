"""End to end through the real path: files -> front-end -> encoder -> faiss -> SQLite -> CLI.

The encoder is untrained (seeded random weights). What such a model can really do: find
clean excerpts that start on the 0.5 s window grid, among a handful of songs, with the
right offset. Shift an excerpt by 50 ms, or add white noise at 30 dB SNR, and its windows
no longer match reliably (measured: single-window top-1 drops from 100 % to 20 % and 40 %);
robustness to both is what training adds. Trained accuracy belongs to benchmarks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from afp_core.cli import main
from afp_core.database import FingerprintDB
from tests.conftest import synthesise_song


@pytest.fixture(scope="module")
def built_db(tmp_path_factory, song_library, untrained_checkpoint) -> Path:
    db = tmp_path_factory.mktemp("db") / "db"
    library = song_library[0].parent
    assert (
        main(["index", str(db), str(library), "--model", str(untrained_checkpoint), "--quiet"]) == 0
    )
    return db


def write_excerpt(path: Path, song: int, start_s: float, length_s: float, snr_db: float | None):
    sr = 22050
    audio = synthesise_song(100 + song, 24.0)[int(start_s * sr) : int((start_s + length_s) * sr)]
    if snr_db is not None:
        noise = np.random.default_rng(7).standard_normal(len(audio))
        noise *= np.sqrt(np.mean(audio**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
        audio = audio + noise
    sf.write(path, audio.astype(np.float32), sr)
    return path


def test_index_reports_every_song_and_flat_index(built_db, capsys):
    assert main(["info", str(built_db), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["songs"] == 6
    # 24 s at 0.5 s hop: 47 windows per song, far too few to train IVF-PQ
    assert info["vectors"] == 6 * 47
    assert info["index"]["type"] == "flat"
    assert info["bytes_on_disk"] > 0
    assert info["search"]["hubness"]["neighbours"] == 10 and not info["needs_calibration"]
    assert main(["info", str(built_db)]) == 0
    assert "hub-aware scores     on (10 neighbours of other songs per vector)" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize(
    ("song", "start", "length", "snr"), [(0, 3.0, 3, None), (3, 10.0, 5, None), (5, 0.5, 2, None)]
)
def test_identify_json_finds_song_and_offset(built_db, tmp_path, capsys, song, start, length, snr):
    query = write_excerpt(tmp_path / "q.wav", song, start, length, snr)
    assert main(["identify", str(built_db), str(query), "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip())
    assert record["query"] == str(query)
    assert record["song"] == f"song{song}"
    assert Path(record["path"]).name.startswith(f"song{song}.")
    assert abs(record["offset_s"] - start) <= 0.5
    assert 0 < record["score"] <= 1.0001


def test_identify_vote_method_and_excerpt_options(built_db, song_library, capsys):
    args = ["identify", str(built_db), str(song_library[4]), "--json", "--method", "vote"]
    args += ["--threshold", "0"]
    assert main([*args, "--start", "12", "--duration", "4"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["song"] == "song4"
    assert abs(record["offset_s"] - 12) <= 0.5


def test_a_denser_database_finds_excerpts_between_the_hop_grid(
    tmp_path, song_library, untrained_checkpoint, capsys
):
    # The untrained model finds only excerpts on the stored windows' grid (module
    # docstring): at density 2 that grid is 0.25 s, so an excerpt starting at 10.25 s is
    # found where it starts.
    db = tmp_path / "db"
    library = song_library[0].parent
    args = ["index", str(db), str(library), "--model", str(untrained_checkpoint), "--quiet"]
    assert main([*args, "--density", "2"]) == 0
    capsys.readouterr()
    assert main(["info", str(db), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["index_config"]["density"] == 2
    assert info["vectors"] == 6 * 93  # 24 s with a window every 0.25 s
    query = write_excerpt(tmp_path / "q.wav", 2, 10.25, 3, None)
    assert main(["identify", str(db), str(query), "--json", "--threshold", "none"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["song"] == "song2" and record["offset_s"] == pytest.approx(10.25)


def test_song_not_in_database_is_no_match(built_db, tmp_path, capsys):
    unknown = tmp_path / "unknown.wav"
    sf.write(unknown, synthesise_song(999, 10.0), 22050)
    assert main(["identify", str(built_db), str(unknown), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["song"] is None and record["path"] is None
    # the closest song is still given, with the threshold it missed and what it promises
    assert record["best"]["song"].startswith("song") and record["best"]["path"]
    assert record["best"]["score"] == record["score"] < record["threshold"]
    assert record["operating_point"]["false_match_rate"] == 0.01
    # --threshold none: the paper's measure, the best candidate whatever its score
    assert main(["identify", str(built_db), str(unknown), "--json", "--threshold", "none"]) == 0
    anyway = json.loads(capsys.readouterr().out)
    assert anyway["song"] == record["best"]["song"] and anyway["threshold"] is None
    assert anyway["operating_point"] is None
    assert main(["info", str(built_db), "--json"]) == 0
    thresholds = json.loads(capsys.readouterr().out)["search"]["thresholds"]
    assert set(thresholds) == {"sequence", "vote"}
    # 24 s songs: calibrated for 1, 2, 3, 4, 5, 10 and 15 s queries (1..29 windows)
    sequence = thresholds["sequence"]
    assert (sequence["k"], sequence["nprobe"]) == (4, FingerprintDB.open(built_db).nprobe)
    assert sorted(int(n) for n in sequence["by_windows"]) == [1, 3, 5, 7, 9, 19, 29]


def test_threshold_applies_only_to_the_k_it_was_calibrated_with(built_db, tmp_path, capsys):
    unknown = tmp_path / "unknown.wav"
    sf.write(unknown, synthesise_song(999, 10.0), 22050)
    assert main(["identify", str(built_db), str(unknown), "--json", "-k", "10"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["song"] is not None  # no threshold known for k=10: nothing rejected


def test_reindexing_skips_known_files(built_db, song_library, capsys):
    assert main(["index", str(built_db), str(song_library[0]), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "added 0 songs" in out and "1 already in the database" in out


def test_bad_files_are_skipped_with_reasons(tmp_path, song_library, untrained_checkpoint, capsys):
    library = tmp_path / "lib"
    library.mkdir()
    shutil.copy(song_library[0], library / "good.wav")
    (library / "text.wav").write_text("this is not audio")
    (library / "empty.flac").write_bytes(b"")
    sf.write(library / "short.wav", np.zeros(4000, np.float32), 8000)
    data = (library / "good.wav").read_bytes()
    (library / "truncated.ogg").write_bytes(data[:300])
    nan = np.zeros(16000, np.float32)
    nan[9000] = np.nan
    sf.write(library / "nan.wav", nan, 8000, subtype="FLOAT")
    db = tmp_path / "db"
    code = main(["index", str(db), str(library), "--model", str(untrained_checkpoint), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0
    skipped = [line for line in captured.err.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 5, captured.err
    assert any("short.wav" in line and "shorter than one" in line for line in skipped)
    assert any("nan.wav" in line and "NaN or infinite" in line for line in skipped)
    assert "added 1 songs" in captured.out and "5 skipped" in captured.out
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("kind", ["neural", "landmark"])
def test_truncated_file_is_indexed_with_a_warning(tmp_path, untrained_checkpoint, capsys, kind):
    whole = tmp_path / "whole.wav"
    sf.write(whole, synthesise_song(100, 24.0, 8000), 8000, subtype="PCM_16")
    data = whole.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) - 18 * 8000 * 2])  # the header still says 24 s
    option = ["--model", str(untrained_checkpoint)] if kind == "neural" else ["--landmark"]
    # one song: the no-match calibration from excerpts (two songs or more) takes a minute
    code = main(["index", str(tmp_path / "db"), str(cut), *option, "--quiet"])
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err
    assert f"warning: {cut}: truncated: the header says 24.0 s, the file holds 6.0 s" in (
        captured.err.splitlines()
    )
    assert "added 1 songs (1 with a warning)" in captured.out


def test_decoder_chatter_stays_off_the_terminal(tmp_path, untrained_checkpoint, capfd):
    library = tmp_path / "lib"
    library.mkdir()
    (library / "notes.mp3").write_text("a text file with the wrong name")
    whole = tmp_path / "whole.mp3"
    sf.write(whole, synthesise_song(101, 24.0, 8000), 8000)
    data = whole.read_bytes()
    (library / "cut.mp3").write_bytes(data[: len(data) // 4])  # libmpg123 complains
    model = ["--model", str(untrained_checkpoint)]
    code = main(["index", str(tmp_path / "db"), str(library), *model, "--quiet"])
    skipped, warning = capfd.readouterr().err.splitlines()  # and nothing else
    assert code == 0
    assert skipped == f"skipped: {library / 'notes.mp3'}: not an audio file the decoder recognises"
    cut = library / "cut.mp3"
    assert warning.startswith(f"warning: {cut}: truncated: the header says 24.0 s, the file holds")


def test_links_pipes_and_vanishing_files_are_skipped_not_fatal(
    tmp_path, song_library, untrained_checkpoint, capsys, monkeypatch
):
    import afp_core.ingest as ingest

    library = tmp_path / "lib"
    library.mkdir()
    for name in ("a.wav", "b.flac", "gone.wav"):
        shutil.copy(song_library[0 if name != "b.flac" else 1], library / name)
    (library / "broken.wav").symlink_to(library / "nowhere.wav")
    (library / "loop.wav").symlink_to(library / "loop.wav")
    os.mkfifo(library / "pipe.wav")  # would block the decoder for ever
    real_plan = ingest.plan_library_files

    def plan_then_remove(*args, **kwargs):
        plan = real_plan(*args, **kwargs)
        (library / "gone.wav").unlink()  # removed between reading its header and hashing it
        return plan

    # Patched: only the moment of the removal, which a test cannot otherwise time.
    monkeypatch.setattr(ingest, "plan_library_files", plan_then_remove)
    db = tmp_path / "db"
    code = main(["index", str(db), str(library), "--model", str(untrained_checkpoint), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err
    skipped = [line for line in captured.err.splitlines() if line.startswith("skipped: ")]
    reasons = {Path(line.split(": ")[1]).name: line for line in skipped}
    assert set(reasons) == {"broken.wav", "loop.wav", "pipe.wav", "gone.wav"}, skipped
    assert "not a regular file" in reasons["pipe.wav"]
    assert "cannot read" in reasons["gone.wav"]
    assert "added 2 songs" in captured.out


@pytest.mark.parametrize("kind", ["neural", "landmark"])
def test_a_nan_query_is_an_error_naming_the_query(tmp_path, untrained_checkpoint, capsys, kind):
    song = tmp_path / "song.wav"
    sf.write(song, synthesise_song(100, 8.0, 8000), 8000)
    option = ["--model", str(untrained_checkpoint)] if kind == "neural" else ["--landmark"]
    db = tmp_path / "db"
    assert main(["index", str(db), str(song), *option, "--quiet"]) == 0
    query = tmp_path / "nan.wav"
    audio = synthesise_song(100, 3.0, 8000)
    audio[8000:] = np.nan  # the decoder hands NaN on
    sf.write(query, audio, 8000, subtype="FLOAT")
    capsys.readouterr()
    assert main(["identify", str(db), str(query)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == f"afp: error: {query}: NaN or infinite samples at 1.00 s\n"


def test_another_model_is_refused(built_db, tmp_path, song_library, capsys):
    from afp_core.checkpoint import save_checkpoint
    from afp_core.config import NAFPConfig
    from afp_core.models import ModelSpec, build_model

    other = save_checkpoint(
        tmp_path / "other.pt", build_model(ModelSpec("nafp", arch=NAFPConfig(width=0.25)), seed=1)
    )
    code = main(["identify", str(built_db), str(song_library[0]), "--model", str(other)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("afp: error: ")


def test_a_cache_made_with_another_model_is_rebuilt_on_request(
    tmp_path, song_library, untrained_checkpoint
):
    # the demo's database after the shipped model changed: built again, not refused
    from afp_core.checkpoint import save_checkpoint
    from afp_core.config import NAFPConfig
    from afp_core.errors import DatabaseError
    from afp_core.indexing import index_library, open_database_for_indexing
    from afp_core.models import ModelSpec, build_model

    other = save_checkpoint(
        tmp_path / "other.pt", build_model(ModelSpec("nafp", arch=NAFPConfig(width=0.25)), seed=1)
    )
    db_dir = tmp_path / "db"
    db, checkpoint = open_database_for_indexing(db_dir, untrained_checkpoint)
    index_library(db, checkpoint.model, song_library[:2])
    with pytest.raises(DatabaseError, match="DB was built with model"):
        open_database_for_indexing(db_dir, other)
    notes: list[str] = []
    same, _ = open_database_for_indexing(
        db_dir, untrained_checkpoint, on_notice=notes.append, rebuild_for_another_model=True
    )
    assert len(same.songs("indexed")) == 2 and notes == []  # the same model: kept
    rebuilt, checkpoint = open_database_for_indexing(
        db_dir, other, on_notice=notes.append, rebuild_for_another_model=True
    )
    assert notes == [f"{db_dir}: made with another model; building it again"]
    assert rebuilt.songs() == [] and rebuilt.model_info["checkpoint_sha256"] == checkpoint.sha256


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "afp_core.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_errors_are_one_line_without_traceback(tmp_path, built_db):
    missing = run_cli("identify", str(tmp_path / "nope"), str(tmp_path / "q.wav"))
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and "nope" in missing.stderr

    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(6000, np.float32), 8000)
    too_short = run_cli("identify", str(built_db), str(short))
    assert too_short.returncode == 1
    assert "shorter than one" in too_short.stderr and "Traceback" not in too_short.stderr

    bad_ckpt = tmp_path / "bad.pt"
    bad_ckpt.write_bytes(b"garbage")
    wrong = run_cli("index", str(tmp_path / "newdb"), str(short), "--model", str(bad_ckpt))
    assert wrong.returncode == 1
    assert wrong.stderr.count("\n") == 1 and "bad.pt" in wrong.stderr

    no_audio = tmp_path / "no_audio"
    no_audio.mkdir()
    (no_audio / "notes.txt").write_text("nothing to index")
    empty = run_cli("index", str(tmp_path / "db2"), str(no_audio))
    assert empty.returncode == 1 and "no audio files found" in empty.stderr
    assert not (tmp_path / "db2").exists()

    usage = run_cli("identify")
    assert usage.returncode == 2


def test_interrupted_indexing_resumes(tmp_path, song_library, untrained_checkpoint):
    from afp_core.errors import Cancelled
    from afp_core.indexing import index_library, open_database_for_indexing
    from afp_core.tasks import TaskState

    db_dir = tmp_path / "db"
    db, ckpt = open_database_for_indexing(db_dir, untrained_checkpoint)
    task = TaskState()

    def stop_after_two(done: float, total: float, message: str) -> None:
        if done >= 2 * 24.0:
            task.cancel()

    task = TaskState(stop_after_two)
    with pytest.raises(Cancelled):
        index_library(db, ckpt.model, [p.parent for p in song_library[:1]], task=task)
    reopened, ckpt = open_database_for_indexing(db_dir)
    staged = [s for s in reopened.songs() if s.status == "staged"]
    assert len(staged) == 2
    result = index_library(reopened, ckpt.model, [song_library[0].parent])
    assert len(result.added) == 4 and len(result.duplicates) == 2
    assert reopened.info()["songs"] == 6 and reopened.info()["staged_songs"] == 0
