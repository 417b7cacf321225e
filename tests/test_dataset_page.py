"""The Dataset page and its Qt-free rows: two sessions in one table with their quality
figures, flags, include/exclude stored in the sessions, filters, and listening to an
excerpt (clean and as recorded) through a real output device."""

from __future__ import annotations

import csv
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from afp_core.tasks import TaskState
from rig_app.dataset import (
    collect_rows,
    measure_missing_quality,
    play_excerpt,
    read_excerpt,
    summarise_rows,
)
from rig_app.quality import update_take_quality
from rig_app.selection import Selection
from rig_app.session import Session
from tests.rig_fixtures import make_room_session


@pytest.fixture(scope="module")
def two_sessions(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    first = make_room_session(root / "monday", ("low", "high"))
    second = make_room_session(root / "tuesday", ("mid",), songs=2)
    # a clipped stretch in song 2 of monday's high take: flagged there, nowhere else
    take = first.take("high")
    raw = first.resolve(take.raw_file)
    audio, rate = sf.read(raw, dtype="float32")
    at = round((take.ground_truth[1]["take_start_s"] + 1.0) * rate)
    audio[at : at + 40] = 1.0
    sf.write(raw, audio, rate, subtype="FLOAT")
    update_take_quality(first, "high")
    return first.folder, second.folder


def _load(two_sessions):
    return [Session.load(folder) for folder in two_sessions]


def test_rows_hold_every_song_of_every_take_with_its_quality(two_sessions):
    rows = collect_rows(_load(two_sessions))
    assert [(r.session_name, r.take, r.song) for r in rows] == [
        ("monday", "low", 0), ("monday", "low", 1), ("monday", "low", 2),
        ("monday", "high", 0), ("monday", "high", 1), ("monday", "high", 2),
        ("tuesday", "mid", 0), ("tuesday", "mid", 1),
    ]  # fmt: skip
    assert all(r.measured and r.music_to_noise_db is not None for r in rows)
    low, high = rows[0], rows[3]
    assert low.music_to_noise_db is not None and high.music_to_noise_db is not None
    assert low.music_to_noise_db > high.music_to_noise_db + 5  # the noise speaker closer
    assert low.condition == "simulated room, noise at 3 m"
    flagged = [r for r in rows if r.flags]
    assert [(r.take, r.song) for r in flagged] == [("high", 1)]
    assert flagged[0].clipped_samples == 40 and flagged[0].flags[0].startswith("clipped: 40")
    assert summarise_rows(rows) == (
        "8 songs in 3 takes of 2 sessions: 8 included, 0 left out; 1 flagged"
    )


def test_excerpts_of_the_clean_song_and_the_take_are_the_same_seconds(two_sessions):
    row = collect_rows(_load(two_sessions))[4]
    clean, rate = read_excerpt(row, "clean")
    take, take_rate = read_excerpt(row, "take")
    assert rate == take_rate == 16000 and len(clean) == len(take) == round(6.0 * rate)
    # the take is the clean song through the room: their loudness follows the same notes
    frames = len(clean) // 320

    def envelope(x):
        return np.sqrt(np.mean(x[: frames * 320].reshape(frames, 320) ** 2, axis=1))

    assert np.corrcoef(envelope(clean), envelope(take))[0, 1] > 0.5


def test_playing_an_excerpt_on_a_real_output_stops_when_cancelled(two_sessions, virtual_devices):
    row = collect_rows(_load(two_sessions))[0]
    task = TaskState()
    started = time.monotonic()
    player = threading.Thread(
        target=play_excerpt, args=(task, row, "take", virtual_devices.music_out)
    )
    player.start()
    time.sleep(1.0)
    task.cancel()
    player.join(10.0)
    assert not player.is_alive()
    assert time.monotonic() - started < 4.0  # the excerpt is 6 s long


def test_dataset_page_shows_both_sessions_and_stores_the_choice(two_sessions, qtbot):
    pytest.importorskip("PySide6")
    from rig_app.ui.pages.dataset import DatasetPage
    from rig_app.ui.state import RigState

    state = RigState()
    state.open_session(two_sessions[0])
    page = DatasetPage(state)
    qtbot.addWidget(page)
    page.add_session(two_sessions[1])
    assert page.sessions_list.count() == 2
    assert page.proxy.rowCount() == 8
    assert page.summary.text().startswith("8 songs in 3 takes of 2 sessions")

    page.show_combo.setCurrentText("Flagged")
    assert page.proxy.rowCount() == 1
    page.show_combo.setCurrentText("All songs")
    page.filter_edit.setText("tuesday")
    assert page.proxy.rowCount() == 2
    page.filter_edit.setText("")

    rows = page.model.rows
    page.exclude([rows[3]], "take", "the window was open")  # monday's whole high take
    page.exclude([rows[7]], "song", "a door slammed")  # tuesday's mid, song 2
    page.set_note([rows[0]], "fine")
    monday, tuesday = (Selection.from_session(s) for s in _load(two_sessions))
    assert monday.reason_excluded("high") == "the window was open"
    assert monday.reason_excluded("high", 2) == "the window was open"
    assert monday.note("low", 0) == "fine"
    assert tuesday.reason_excluded("mid", 1) == "a door slammed"
    assert tuesday.reason_excluded("mid", 0) is None
    page.show_combo.setCurrentText("Left out")
    assert page.proxy.rowCount() == 4
    assert page.summary.text().endswith("4 included, 4 left out; 1 flagged")

    # the Export button's job writes what is included, nothing else
    out = two_sessions[0].parent / "query-set"
    page.lengths_edit.setText("2 5")
    worker = page.export(out)
    assert worker is not None
    with qtbot.waitSignal(worker.done, timeout=120_000):
        pass
    queries = list(csv.DictReader((out / "queries.csv").open(encoding="utf-8")))
    kept = {(q["take"], q["length_s"]) for q in queries}
    assert kept == {("low", "2"), ("low", "5"), ("mid", "2"), ("mid", "5")}
    assert len(queries) == 3 * 3 + 3 * 1 + 3 + 1  # monday low: 3 songs; tuesday mid: 1
    assert page.panel.message.text() == ""

    page.include([r for r in page.model.rows if not r.included])
    assert all(r.included for r in page.model.rows)
    assert Selection.from_session(Session.load(two_sessions[0])).exclusions == []


def test_takes_aligned_without_a_quality_record_are_measured(tmp_path):
    session = make_room_session(tmp_path / "old", ("low", "high"), songs=2)
    kept = session.take("high").quality
    session.take("low").quality = None  # as a take aligned by an older version
    session.save()
    seen: list[str] = []
    measure_missing_quality(TaskState(lambda d, t, m: seen.append(m)), [session])
    again = Session.load(session.folder)
    assert again.take("low").quality is not None
    assert again.take("high").quality == kept  # one with a record is left as it is
    assert seen[-1] == "old: low measured"
