"""Several databases searched as one: the same answers as one database of every song.

A library of six real audio files is indexed once whole and once in three databases of two
songs each (the untrained model, flat indexes: exact search, so the union's answers are
defined exactly). Queries are audio files: clean and noisy excerpts of the songs, long
enough for faiss's BLAS path, and a song that is in none of the databases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from afp_core.calibration import CalibrationSettings, calibrate_from_audio
from afp_core.cli import main
from afp_core.database import FingerprintDB
from afp_core.errors import AfpError, DatabaseError
from afp_core.indexing import load_database_model, open_database_for_indexing
from afp_core.protocols.report import read_report
from afp_core.query import load_query
from afp_core.recogniser import NeuralRecogniser, open_recogniser
from afp_core.search import Match, stored_threshold
from afp_core.shards import THRESHOLD_SOURCE, ShardedDB, ShardSong
from tests.conftest import synthesise_song
from tests.test_protocol_realworld import build_db, write_session

SPLIT = ((0, 1), (2, 3), (4, 5))
# (song seed offset, start s, length s, SNR dB or None); seed 6 is in no database
QUERIES = [
    (0, 3.0, 5.0, None),
    (1, 7.3, 3.0, 10.0),
    (2, 0.0, 1.0, None),
    (3, 10.2, 12.0, 20.0),  # 23 windows: faiss scores them with BLAS
    (4, 4.0, 2.0, 5.0),
    (5, 15.5, 6.0, None),
    (6, 2.0, 5.0, None),
]


@pytest.fixture(scope="module")
def databases(tmp_path_factory, song_library, untrained_checkpoint) -> tuple[Path, list[Path]]:
    """(one database of the six songs, three databases of two songs each); only the parts
    are calibrated, on few excerpts (the tests need thresholds, not good ones)."""
    root = tmp_path_factory.mktemp("shards")
    whole = build_db(root / "whole", song_library, untrained_checkpoint, calibrate=False)
    parts = []
    for i, split in enumerate(SPLIT):
        songs = [song_library[j] for j in split]
        parts.append(build_db(root / f"part{i}", songs, untrained_checkpoint, calibrate=False))
        db = FingerprintDB.open(parts[-1])
        model = load_database_model(db).model
        calibrate_from_audio(db, model, settings=CalibrationSettings(excerpts=10))
    return whole, parts


@pytest.fixture(scope="module")
def queries(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("queries")
    rng = np.random.default_rng(3)
    paths = []
    for i, (song, start, length, snr) in enumerate(QUERIES):
        sr = 22050
        audio = synthesise_song(100 + song, 24.0)[int(start * sr) : int((start + length) * sr)]
        if snr is not None:
            noise = rng.standard_normal(len(audio))
            audio = audio + noise * np.sqrt(
                np.mean(audio**2) / np.mean(noise**2) / 10 ** (snr / 10)
            )
        paths.append(folder / f"q{i}.wav")
        sf.write(paths[-1], audio.astype(np.float32), sr)
    return paths


def answer(match: Match) -> list[tuple[str, float, float]]:
    """(song file, offset, score) of the answer and every candidate."""
    assert match.song is not None and match.candidates[0].song == match.song
    return [(c.song.source, c.offset_s, c.score) for c in match.candidates]


@pytest.mark.parametrize("method", ["sequence", "vote"])
def test_shards_answer_exactly_as_one_database(databases, queries, method) -> None:
    whole_dir, parts = databases
    whole = open_recogniser(whole_dir)
    sharded = open_recogniser(parts)
    assert isinstance(whole, NeuralRecogniser) and isinstance(sharded, NeuralRecogniser)
    assert isinstance(sharded.db, ShardedDB)
    for query in queries:
        audio = load_query(query, whole.sample_rate)
        length = len(audio) / whole.sample_rate
        expected = whole.identify(whole.analyse(audio), 0.0, length, method)
        got = sharded.identify(sharded.analyse(audio), 0.0, length, method)
        assert answer(got) == answer(expected), query.name


@pytest.mark.parametrize("method", ["sequence", "vote"])
def test_a_song_left_out_is_left_out_of_every_shard(databases, queries, method) -> None:
    # the protocols' impostors: the query's own song excluded, wherever it is
    whole_dir, parts = databases
    whole, sharded = open_recogniser(whole_dir), open_recogniser(parts)
    ids = {song.checksum: song.id for song in sharded.songs()}
    assert sorted(ids.values()) == list(range(1, 7))  # unique across the shards
    for song in whole.songs():
        query = queries[int(Path(song.source).stem.removeprefix("song"))]
        audio = load_query(query, whole.sample_rate)
        length = len(audio) / whole.sample_rate
        expected = whole.identify(whole.analyse(audio), 0.0, length, method, song.id)
        got = sharded.identify(sharded.analyse(audio), 0.0, length, method, ids[song.checksum])
        assert song.source not in [c.song.source for c in got.candidates]
        assert answer(got) == answer(expected)


def test_songs_name_their_database(databases) -> None:
    _, parts = databases
    db = ShardedDB.open(parts)
    songs = db.songs("indexed")
    assert all(isinstance(song, ShardSong) for song in songs)
    for song in songs:
        assert isinstance(song, ShardSong)
        own = next(s for s in db.shards if str(s.path) == song.database).song(song.shard_id)
        assert (own.checksum, own.source) == (song.checksum, song.source)
        assert db.song(song.id) == song
        first, count = db.song_spans(np.array([song.id]))
        assert (first[0], count[0]) == (song.first_vector_id, song.vector_count)
        assert db.locate(first)[0][0] == song.id
    assert db.ntotal == sum(s.vector_count for s in songs)
    with pytest.raises(DatabaseError, match="no song with id 99"):
        db.song(99)


def test_the_strictest_threshold_applies(databases) -> None:
    _, parts = databases
    db = ShardedDB.open(parts)
    entry = db.search_settings["thresholds"]["sequence"]
    assert entry["source"] == THRESHOLD_SOURCE
    assert entry["false_match_rate"] == 0.01
    assert entry["false_match_rate_bound"] == pytest.approx(0.03)
    for n in (1, 3, 9, 29):
        each = [stored_threshold(shard, "sequence", n) for shard in db.shards]
        assert stored_threshold(db, "sequence", n) == max(t for t in each if t is not None)
    db.nprobe = 7  # calibrated at another nprobe: no threshold, as for one database
    assert stored_threshold(db, "sequence", 9) is None


def test_identify_with_several_databases(databases, queries, capsys) -> None:
    whole, parts = databases
    common = ["--json", "--threshold", "none", "--method", "vote"]
    assert main(["identify", str(whole), *map(str, queries[:2]), *common]) == 0
    one = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    more = [arg for part in parts[1:] for arg in ("--db", str(part))]
    assert main(["identify", str(parts[0]), *map(str, queries[:2]), *more, *common]) == 0
    several = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for a, b in zip(one, several, strict=True):
        assert (a["path"], a["offset_s"], a["score"]) == (b["path"], b["offset_s"], b["score"])
        assert b["database"] == str(parts[[0, 0, 1, 1, 2, 2][int(b["song"][-1])]])
        assert b["song_id"] == [1, 2, 1, 2, 1, 2][int(b["song"][-1])]  # its id there
    assert main(["identify", str(parts[0]), str(queries[0]), *more]) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"{queries[0]}: song0 at 3.0 s") and line.endswith(f" in {parts[0]}\n")
    assert main(["identify", str(parts[0]), str(queries[0]), *more, "--json"]) == 0
    point = json.loads(capsys.readouterr().out)["operating_point"]
    assert point == {
        "false_match_rate": 0.01,
        "source": THRESHOLD_SOURCE,
        "false_match_rate_bound": pytest.approx(0.03),
    }


def test_databases_that_cannot_go_together_are_refused(
    databases, queries, tmp_path, song_library, capsys
) -> None:
    from afp_core.checkpoint import save_checkpoint
    from afp_core.config import NAFPConfig
    from afp_core.models import ModelSpec, build_model

    whole, parts = databases
    other_model = save_checkpoint(
        tmp_path / "other.pt", build_model(ModelSpec("nafp", arch=NAFPConfig(width=0.25)), seed=1)
    )
    other = tmp_path / "other"
    db, _ = open_database_for_indexing(other, other_model)
    db.stage_song("x", "", "/x.wav", 1.0, "x" * 64, np.eye(1, db.dim, dtype=np.float32))
    db.commit()
    landmark = tmp_path / "landmark"
    assert main(["index", str(landmark), str(song_library[0]), "--landmark", "--quiet"]) == 0
    capsys.readouterr()
    cases = [
        (other, f"afp: error: {other}: made with model nafp (sha "),
        (whole, f"afp: error: {whole}: song 1 ("),
        (parts[0], f"afp: error: {parts[0]}: given twice (as {parts[0]})"),
        (landmark, f"afp: error: {landmark}: --db takes neural databases"),
    ]
    for extra, message in cases:
        assert main(["identify", str(parts[0]), str(queries[0]), "--db", str(extra)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err
    assert main(["identify", str(landmark), str(queries[0]), "--db", str(parts[0])]) == 1
    assert "--db applies to neural databases only" in capsys.readouterr().err
    empty = tmp_path / "empty"
    open_database_for_indexing(empty, other_model)
    with pytest.raises(AfpError, match="nothing is indexed yet"):
        ShardedDB.open([other, empty])
    with pytest.raises(AfpError, match="no database to search"):
        ShardedDB.open([])


def test_evaluate_realworld_searches_databases_as_one(databases, song_library, tmp_path, capsys):
    whole, parts = databases
    session = write_session(tmp_path / "session", song_library[1:4], {"low": 5.0})
    common = [str(session), "--lengths", "3", "--threshold", "none", "--quiet"]
    trials: list[list[dict[str, Any]]] = []
    for dbs, extra in (([whole], []), (parts, ["--as-one"])):
        out = tmp_path / f"report{len(trials)}"
        args = ["evaluate", "realworld", *map(str, dbs), *common, *extra, "--out", str(out)]
        assert main(args) == 0
        capsys.readouterr()
        report = read_report(out)
        trials.append([{**row, "system": ""} for row in report.trials])
    assert [s["label"] for s in report.data["systems"]] == ["neural (part0 + part1 + part2)"]
    assert trials[0] == trials[1] and len(trials[0]) == 2 * 3 * 8  # rules x songs x queries
    assert main(["evaluate", "realworld", str(whole), *common, "--as-one"]) == 1
    assert "--as-one needs two or more neural databases" in capsys.readouterr().err


def test_ivfpq_shards_keep_each_shards_answers(tmp_path) -> None:
    # Approximate shards: each searches and rebuilds vectors with its own index, so one
    # shard seen through ShardedDB answers exactly as itself, and two find noisy excerpts.
    from afp_core.config import IndexConfig
    from afp_core.search import identify_vectors
    from tests.test_search import build, make_song, noisy

    rng = np.random.default_rng(5)
    library = [make_song(rng, int(n)) for n in rng.integers(150, 300, size=24)]
    config = IndexConfig(m=16, nbits=8, nlist=16, nprobe=4, min_train_vectors=2048)
    shards = [build(tmp_path / f"db{i}", library[i::2], config) for i in range(2)]
    assert [db.index_type for db in shards] == ["ivfpq", "ivfpq"]
    alone, both = ShardedDB([shards[1]]), ShardedDB(shards)
    for _ in range(8):
        song = int(rng.integers(len(library)))
        start = int(rng.integers(0, len(library[song]) - 9))
        query = noisy(rng, library[song][start : start + 9], sigma=0.8)
        for method in ("sequence", "vote"):
            if song % 2:
                expected = identify_vectors(shards[1], query, method)
                assert answer(identify_vectors(alone, query, method)) == answer(expected)
            match = identify_vectors(both, query, method)
            assert isinstance(match.song, ShardSong) and match.song.title == f"Song {song // 2}"
            assert match.song.database == str(shards[song % 2].path)
            assert match.offset_s == pytest.approx(start * 0.5)
