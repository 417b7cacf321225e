"""The landmark fingerprinter end to end: real audio files -> peaks and hashes -> a real
postings file and SQLite catalogue -> matches, through the library, the Recogniser
interface and the ``afp`` command."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from afp_core.audio import resample
from afp_core.cli import main
from afp_core.errors import Cancelled, ConfigError, DatabaseError
from afp_core.landmark import (
    MIN_ALIGNED,
    LandmarkDB,
    LandmarkRecogniser,
    LandmarkSettings,
    fingerprint_audio,
    fingerprint_blocks,
    identify_landmark_audio,
    index_landmark_library,
    pack_hashes,
)
from afp_core.recogniser import Recogniser, database_kind, open_recogniser
from afp_core.tasks import TaskState
from tests.conftest import synthesise_song

SR = 22050  # the library's files; the landmark front-end works at 8 kHz


@pytest.fixture(scope="module")
def landmark_db(tmp_path_factory, song_library) -> LandmarkDB:
    db = LandmarkDB.create(tmp_path_factory.mktemp("lm") / "db")
    result = index_landmark_library(db, [song_library[0].parent])
    assert len(result.added) == 6 and not result.skipped
    return db


@pytest.fixture(scope="module")
def recogniser(landmark_db) -> LandmarkRecogniser:
    return LandmarkRecogniser(landmark_db)


def excerpt(song: int, start_s: float, length_s: float, snr_db: float | None = None, seed=0):
    """Song ``song`` of the library, [start, start + length) at 8 kHz, optional white noise."""
    audio = synthesise_song(100 + song, 24.0)[round(start_s * SR) :][: round(length_s * SR)]
    if snr_db is not None:
        noise = np.random.default_rng(seed).standard_normal(len(audio))
        noise *= np.sqrt(np.mean(audio**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
        audio = (audio + noise).astype(np.float32)
    return resample(audio, SR, 8000)


def test_hash_fields_do_not_overlap():
    s = LandmarkSettings()
    assert 2 * s.freq_bits + s.dt_bits <= 32

    def pack(f_anchor: int, f_target: int, dt: int) -> int:
        return int(pack_hashes(np.array([f_anchor]), np.array([f_target]), np.array([dt]), s)[0])

    top = pack(512, 0, 0)
    middle = pack(0, 512, 0)
    low = pack(0, 0, 127)
    assert top & middle == 0 and middle & low == 0 and top & low == 0
    assert pack(512, 512, 127) == top | middle | low
    with pytest.raises(ConfigError, match="bits"):
        LandmarkSettings(n_fft=4096, max_dt=1023)


def test_streamed_blocks_give_the_same_landmarks():
    # 70 s spans three 32 s spectrogram blocks; 1 s and 7 s input blocks cut them anywhere
    audio = np.concatenate([excerpt(1, 0, 24), excerpt(2, 0, 24), excerpt(3, 0, 22)])
    whole = fingerprint_audio(audio, LandmarkSettings())
    for size in (8000, 56_000):
        parts = (audio[i : i + size] for i in range(0, len(audio), size))
        streamed = fingerprint_blocks(parts, LandmarkSettings())
        assert streamed.n_frames == whole.n_frames
        np.testing.assert_array_equal(streamed.hashes, whole.hashes)
        np.testing.assert_array_equal(streamed.anchors, whole.anchors)
    assert 60 < len(whole.hashes) / whole.duration_s < 250  # pairs per second of music
    assert np.all(np.diff(whole.anchors) >= 0)
    silent = fingerprint_audio(np.zeros(8000 * 5, np.float32), LandmarkSettings())
    assert len(silent.hashes) == 0


def test_database_layout_and_info(landmark_db):
    manifest = json.loads((landmark_db.path / "manifest.json").read_text())
    assert manifest["format"] == "afp-landmark-database" and manifest["version"] == 1
    assert manifest["settings"]["hop"] == LandmarkSettings().hop
    assert database_kind(landmark_db.path) == "landmark"
    info = landmark_db.info()
    assert info["songs"] == 6 and info["staged_songs"] == 0
    assert info["hashes"] == landmark_db.n_postings > 6 * 24 * 60
    postings = np.load(landmark_db.path / landmark_db._postings_name)
    assert postings.dtype == np.uint32 and postings.shape == (2, info["hashes"])
    assert np.all(np.diff(postings[0].astype(np.int64)) >= 0)  # sorted for binary search
    songs = landmark_db.songs("indexed")
    assert [s.title for s in songs] == [f"song{i}" for i in (0, 2, 4, 1, 3, 5)]
    # frame spans tile the id space, as the neural database's vector ids do
    assert songs[0].first_vector_id == 0
    for a, b in itertools.pairwise(songs):
        assert b.first_vector_id == a.first_vector_id + a.vector_count
    assert postings[1].max() < songs[-1].first_vector_id + songs[-1].vector_count
    thresholds = info["search"]["thresholds"]["landmark"]["by_seconds"]
    assert set(thresholds) == {"1", "2", "3", "4", "5", "10", "15"}
    assert all(v >= MIN_ALIGNED for v in thresholds.values())


@pytest.mark.parametrize(
    ("song", "start", "length"), [(0, 3.0, 3.0), (3, 10.37, 5.0), (5, 0.0, 2.0), (2, 15.81, 1.5)]
)
def test_clean_excerpt_gives_song_and_offset(landmark_db, song, start, length):
    # cut on its own, so its frame grid is not the song's (up to 16 ms apart)
    match = identify_landmark_audio(landmark_db, excerpt(song, start, length))
    assert match.song is not None and match.song.title == f"song{song}"
    assert match.offset_s == pytest.approx(start, abs=0.1)
    assert match.method == "landmark"
    # above the "no match" threshold, and no other song near it
    threshold = LandmarkRecogniser(landmark_db).threshold("landmark", length)
    assert threshold is not None
    assert match.score >= threshold > max(c.score for c in match.candidates[1:])
    assert len({c.song.id for c in match.candidates}) == len(match.candidates)
    assert match.candidates[0].score == match.score
    assert all(a.score >= b.score for a, b in itertools.pairwise(match.candidates))


def test_noisy_excerpts_at_10_db_are_mostly_found(recogniser):
    rng = np.random.default_rng(3)
    right = 0
    for trial in range(12):
        song, start = int(rng.integers(6)), float(rng.uniform(0, 20))
        audio = excerpt(song, start, 3.0, snr_db=10, seed=trial)
        match = recogniser.identify(recogniser.analyse(audio), 0.0, 3.0, "landmark")
        threshold = recogniser.threshold("landmark", 3.0)
        right += (
            match.song is not None
            and match.song.title == f"song{song}"
            and abs(match.offset_s - start) <= 0.1
            and match.score >= threshold
        )
    assert right >= 10


def test_song_not_in_database_is_no_match(recogniser, landmark_db):
    assert isinstance(recogniser, Recogniser)
    for seed, length in ((900, 2.0), (901, 5.0), (902, 10.0)):
        audio = resample(synthesise_song(seed, 12.0), SR, 8000)
        match = recogniser.identify(recogniser.analyse(audio), 1.0, length, "landmark")
        threshold = recogniser.threshold("landmark", length)
        assert threshold is not None and match.score < threshold
    # the same lengths of a song that is in the database clear it many times over
    known = recogniser.identify(recogniser.analyse(excerpt(4, 0, 24)), 1.0, 2.0, "landmark")
    threshold = recogniser.threshold("landmark", 2.0)
    assert threshold is not None and known.score >= 2 * threshold


def test_recogniser_analyses_once_and_cuts_queries(recogniser):
    assert recogniser.kind == "landmark" and recogniser.methods == ("landmark",)
    assert recogniser.sample_rate == 8000
    whole = recogniser.analyse(excerpt(1, 0, 24))
    for start in (0.0, 4.25, 17.5):
        match = recogniser.identify(whole, start, 3.0, "landmark")
        assert match.song.title == "song1"
        assert match.offset_s == pytest.approx(start, abs=0.02)
    # the pairs of a query lie inside it: a query at the song's end cannot see past it
    tail = recogniser.identify(whole, 21.0, 3.0, "landmark")
    assert tail.offset_s == pytest.approx(21.0, abs=0.02)
    with pytest.raises(ConfigError, match="outside the analysed audio"):
        recogniser.identify(whole, 22.0, 3.0, "landmark")
    with pytest.raises(ConfigError, match="landmark"):
        recogniser.identify(whole, 0.0, 3.0, "sequence")
    described = recogniser.describe()
    assert described["kind"] == "landmark" and described["database_info"]["songs"] == 6
    assert {s.title for s in recogniser.songs()} == {f"song{i}" for i in range(6)}


def test_open_recogniser_dispatches_on_the_manifest(landmark_db):
    opened = open_recogniser(landmark_db.path)
    assert isinstance(opened, LandmarkRecogniser)
    with pytest.raises(ConfigError, match="no checkpoint"):
        open_recogniser(landmark_db.path, Path("model.pt"))


def test_interrupted_indexing_resumes(tmp_path, song_library, landmark_db):
    db = LandmarkDB.create(tmp_path / "db")
    task = TaskState(lambda done, total, message: task.cancel() if done >= 2 * 24.0 else None)
    with pytest.raises(Cancelled):
        index_landmark_library(db, [song_library[0].parent], task=task)
    reopened = LandmarkDB.open(tmp_path / "db")
    assert len(reopened.songs("staged")) == 2 and reopened.songs("indexed") == []
    assert reopened.n_postings == 0
    result = index_landmark_library(reopened, [song_library[0].parent])
    assert len(result.added) == 4 and len(result.duplicates) == 2
    assert reopened.info()["songs"] == 6 and reopened.info()["staged_songs"] == 0
    # the same pairs as a build that was never interrupted
    assert reopened.n_postings == landmark_db.n_postings
    assert list((tmp_path / "db" / "staging").iterdir()) == []
    assert len(list((tmp_path / "db").glob("postings-*.npy"))) == 1
    match = identify_landmark_audio(reopened, excerpt(3, 6.0, 3.0))
    assert match.song is not None and match.song.title == "song3"
    assert match.offset_s == pytest.approx(6.0, abs=0.1)


def test_crash_during_commit_keeps_the_old_state(tmp_path, song_library, monkeypatch):
    db = LandmarkDB.create(tmp_path / "db")
    index_landmark_library(db, song_library[:2])
    before = db.n_postings

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(LandmarkDB, "_mark_indexed", crash)
    with pytest.raises(OSError):
        index_landmark_library(db, song_library[2:4])
    monkeypatch.undo()
    reopened = LandmarkDB.open(tmp_path / "db")
    assert reopened.n_postings == before and len(reopened.songs("staged")) == 2
    assert len(list((tmp_path / "db").glob("postings-*.npy"))) == 1  # no orphan generation
    assert reopened.commit() == 2 and len(reopened.songs("indexed")) == 4


def test_an_interrupted_calibration_is_repaired_by_the_next_run(
    tmp_path, song_library, landmark_db, monkeypatch, capsys
):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as Ctrl-C between the commit and the thresholds

    db = LandmarkDB.create(tmp_path / "db")
    with monkeypatch.context() as patch:
        patch.setattr(LandmarkDB, "calibrate_thresholds", killed)
        with pytest.raises(KeyboardInterrupt):
            index_landmark_library(db, [song_library[0].parent])
    reopened = LandmarkDB.open(tmp_path / "db")
    assert reopened.info()["songs"] == 6 and reopened.needs_calibration
    assert main(["info", str(tmp_path / "db")]) == 0
    assert "none (run afp index again to calibrate)" in capsys.readouterr().out
    query = tmp_path / "q.wav"
    sf.write(query, excerpt(3, 6.0, 3.0), 8000)
    assert main(["identify", str(tmp_path / "db"), str(query)]) == 0
    assert "run afp index" in capsys.readouterr().err
    # nothing left to add, yet the rerun calibrates: the thresholds of an unbroken build
    result = index_landmark_library(reopened, [song_library[0].parent])
    assert not result.added and not reopened.needs_calibration
    expected = landmark_db.search_settings["thresholds"]
    assert reopened.search_settings["thresholds"] == expected


def test_duplicates_and_bad_files_are_skipped_with_reasons(tmp_path, song_library):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    short = tmp_path / "short.wav"
    sf.write(short, synthesise_song(7, 0.5), SR)
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(SR * 3, np.float32), SR)
    db = LandmarkDB.create(tmp_path / "db")
    first = index_landmark_library(db, [song_library[0], bad, short, silent])
    assert [s.title for s in first.added] == ["song0"]
    reasons = {s.path.name: s.reason for s in first.skipped}
    assert set(reasons) == {"bad.wav", "short.wav", "silent.wav"}
    assert all("\n" not in r and str(tmp_path) in r for r in reasons.values())
    assert "shorter than" in reasons["short.wav"] and "no spectral peaks" in reasons["silent.wav"]
    again = index_landmark_library(db, [song_library[0]])
    assert again.added == [] and again.duplicates == [song_library[0]]
    assert len(db.songs()) == 1


def test_corrupt_manifest_is_a_one_line_error(tmp_path, capsys):
    db = LandmarkDB.create(tmp_path / "db")
    manifest = tmp_path / "db" / "manifest.json"
    good = json.loads(manifest.read_text())
    for text in (
        "{ not json",
        json.dumps({**good, "version": 99}),
        json.dumps({**good, "settings": {**good["settings"], "fan_out": -1}}),
        json.dumps({**good, "settings": {**good["settings"], "colour": "red"}}),
    ):
        manifest.write_text(text)
        with pytest.raises(DatabaseError) as exc:
            LandmarkDB.open(db.path)
        assert "\n" not in str(exc.value) and "manifest.json" in str(exc.value)
    assert main(["info", str(db.path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("afp: error: ")


def test_cli_round_trip(tmp_path, song_library, capsys):
    db = tmp_path / "db"
    library = song_library[0].parent
    assert main(["index", str(db), str(library), "--landmark", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "added 6 songs" in out and "landmark index" in out

    query = tmp_path / "q.wav"
    sf.write(query, synthesise_song(104, 24.0)[round(7.5 * SR) : round(11.5 * SR)], SR)
    unknown = tmp_path / "u.wav"
    sf.write(unknown, synthesise_song(999, 6.0), SR)
    assert main(["identify", str(db), str(query), str(unknown), "--json"]) == 0
    found, missing = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert found["song"] == "song4" and found["method"] == "landmark"
    assert found["offset_s"] == pytest.approx(7.5, abs=0.1)
    assert Path(found["path"]).name == "song4.flac" and found["score"] > 20
    assert set(found) == {
        "query", "song", "artist", "song_id", "path", "offset_s", "score", "method",
        "threshold", "operating_point", "best",
    }  # fmt: skip
    assert found["threshold"] >= 1 and found["operating_point"]["false_match_rate"] == 0.01
    assert missing["best"] is None or missing["best"]["score"] < missing["threshold"]
    assert missing["song"] is None and missing["offset_s"] is None

    # an excerpt of a file, text output
    args = ["identify", str(db), str(song_library[1]), "--start", "12", "--duration", "3"]
    assert main(args) == 0
    assert "song1 at 12.0 s" in capsys.readouterr().out

    assert main(["info", str(db), "--json", "--songs"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "landmark" and info["songs"] == 6 and info["hashes"] > 0
    assert info["bytes_on_disk"] > 0 and len(info["song_list"]) == 6
    assert main(["info", str(db)]) == 0
    assert "landmark" in capsys.readouterr().out

    # extending keeps the kind without --landmark; known files are skipped
    assert main(["index", str(db), str(song_library[2]), "--quiet"]) == 0
    assert "1 already in the database" in capsys.readouterr().out

    # neural options are one-line errors
    for args in (
        ["identify", str(db), str(query), "--model", "model.pt"],
        ["identify", str(db), str(query), "--method", "vote"],
        ["identify", str(db), str(query), "-k", "10"],
        ["index", str(db), str(library), "--nlist", "64"],
    ):
        assert main(args) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "landmark database" in err, args


def test_neural_only_options_are_refused_even_at_their_default_values(
    tmp_path, song_library, capsys
):
    # an explicit `--m 32` is given, although 32 is IndexConfig's default
    db = tmp_path / "db"
    assert main(["index", str(db), str(song_library[0]), "--landmark", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["index", str(db), str(song_library[1]), "--m", "32", "--quiet"]) == 1
    assert "--m applies to neural databases only" in capsys.readouterr().err
    assert main(["identify", str(db), str(song_library[1]), "-k", "4"]) == 1
    assert "-k applies to neural databases only" in capsys.readouterr().err
