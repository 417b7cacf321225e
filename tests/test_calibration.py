"""The "no match" threshold from impostor excerpts that sound like recordings."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from afp_core.calibration import (
    SOURCE,
    CalibrationSettings,
    calibrate_from_audio,
    play_through_room,
    threshold_at_false_match_rate,
)
from afp_core.indexing import calibrate_thresholds, index_library, open_database_for_indexing
from afp_core.search import stored_threshold
from tests.conftest import synthesise_song


@pytest.fixture(scope="module")
def indexed(song_library, untrained_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    folder = root / "music"
    folder.mkdir()
    music = [shutil.copy(p, folder / p.name) for p in song_library]
    db, checkpoint = open_database_for_indexing(root / "db", untrained_checkpoint)
    index_library(db, checkpoint.model, [Path(p) for p in music])
    return db, checkpoint.model, folder


def test_thresholds_from_impostor_excerpts(indexed) -> None:
    db, model, _ = indexed
    settings = CalibrationSettings(excerpts=60, lengths_s=(1, 3, 10))
    table = calibrate_from_audio(db, model, settings=settings)
    assert table is not None
    assert set(table) == {"sequence", "vote"}
    assert sorted(table["sequence"]) == [1, 3, 10]
    entry = db.search_settings["thresholds"]["sequence"]
    assert entry["source"] == SOURCE and entry["false_match_rate"] == 0.01
    assert sorted(int(n) for n in entry["by_windows"]) == [1, 5, 19]
    assert set(entry["impostor_mean_by_windows"]) == set(entry["by_windows"])
    for n, mean in entry["impostor_mean_by_windows"].items():
        assert mean < entry["by_windows"][n]  # the threshold sits in the impostors' top tail
    assert stored_threshold(db, "sequence", 5) == pytest.approx(table["sequence"][3])
    # the same seed, the same thresholds; the store keeps them with their k and nprobe
    again = calibrate_from_audio(db, model, settings=settings, save=False)
    assert again == table
    assert stored_threshold(db, "sequence", 5, k=10) is None


def test_unreadable_songs_fall_back_to_the_vectors(indexed, tmp_path) -> None:
    db, model, folder = indexed
    hidden = tmp_path / "hidden"
    shutil.move(folder, hidden)  # every song's file is gone
    try:
        assert calibrate_from_audio(db, model) is None
        calibrate_thresholds(db, model)
        entry = db.search_settings["thresholds"]["sequence"]
        assert "source" not in entry and entry["by_windows"]  # from the stored vectors
    finally:
        shutil.move(hidden, folder)


def test_a_room_and_noise_change_the_excerpt_deterministically() -> None:
    audio = synthesise_song(5, 3.0, 8000)
    first = play_through_room(audio, 8000, np.random.default_rng(1))
    again = play_through_room(audio, 8000, np.random.default_rng(1))
    other = play_through_room(audio, 8000, np.random.default_rng(2))
    assert first.shape == audio.shape and first.dtype == np.float32
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert np.corrcoef(first, audio)[0, 1] < 0.99


def test_threshold_at_false_match_rate_counts_from_the_top() -> None:
    scores = [float(x) for x in range(100)]  # 0 ... 99

    def threshold(rate: float) -> float:
        value = threshold_at_false_match_rate(scores, rate)
        assert value is not None
        return value

    assert 98 < threshold(0.01) <= 99
    assert sum(x >= threshold(0.01) for x in scores) == 1
    assert sum(x >= threshold(0.05) for x in scores) == 5
    assert sum(x >= threshold(0.001) for x in scores) == 0
    assert threshold_at_false_match_rate([], 0.01) is None


def test_an_interrupted_calibration_is_repaired_by_the_next_run(
    song_library, untrained_checkpoint, tmp_path, monkeypatch, capsys
) -> None:
    import afp_core.indexing as indexing
    from afp_core.cli import main

    library = [Path(p) for p in song_library]
    clean, checkpoint = open_database_for_indexing(tmp_path / "clean", untrained_checkpoint)
    index_library(clean, checkpoint.model, library)
    assert not clean.needs_calibration

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as Ctrl-C in the middle of calibrating

    db, checkpoint = open_database_for_indexing(tmp_path / "db", untrained_checkpoint)
    with monkeypatch.context() as patch:
        patch.setattr(indexing, "calibrate_from_audio", killed)
        with pytest.raises(KeyboardInterrupt):
            index_library(db, checkpoint.model, library)
    assert db.needs_calibration and not db.search_settings.get("thresholds")
    assert main(["info", str(tmp_path / "db")]) == 0
    assert "run afp index again" in capsys.readouterr().out
    # nothing left to add, yet the rerun calibrates: the same thresholds as without the kill
    result = index_library(db, checkpoint.model, library)
    assert not result.added and not db.needs_calibration
    assert db.search_settings["thresholds"] == clean.search_settings["thresholds"]
