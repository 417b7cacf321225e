"""The baseline protocol: trial bookkeeping, hit rule, summary and tables."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from afp_core.audio import probe_audio
from afp_core.errors import Cancelled
from afp_core.indexing import index_library, open_database_for_indexing
from afp_core.protocols.baseline import (
    BaselineSettings,
    QuerySong,
    Trial,
    format_accuracy_tables,
    run_baseline_protocol,
    summarise_trials,
)
from afp_core.tasks import TaskState

SETTINGS = BaselineSettings(
    lengths_s=(1, 3), snrs_db=(None, 0.0), excerpts_per_song=2, threshold="auto"
)


@pytest.fixture(scope="module")
def db_and_model(tmp_path_factory, song_library, untrained_checkpoint):
    db, ckpt = open_database_for_indexing(
        tmp_path_factory.mktemp("bl") / "db", untrained_checkpoint
    )
    index_library(db, ckpt.model, song_library[:4])
    return db, ckpt.model


def test_trials_cover_every_cell_and_outsiders_never_hit(db_and_model, song_library):
    db, model = db_and_model
    by_source = {s.source: s for s in db.songs()}
    queries = [QuerySong(probe_audio(p), by_source[str(p.resolve())]) for p in song_library[:4]]
    queries += [QuerySong(probe_audio(p), None) for p in song_library[4:]]
    noise = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    trials = run_baseline_protocol(db, model, queries, noise, SETTINGS)
    # in the database: 4 songs x 2 excerpts x 2 conditions x 2 lengths x 2 rules;
    # not in it: 2 songs x 2 excerpts x 2 conditions (clean, 5 dB) x 2 lengths x 2 rules
    assert len(trials) == 64 + 32
    outsiders = [t for t in trials if not t.in_database]
    assert outsiders and not any(t.song_hit or t.offset_hit for t in outsiders)
    assert all(t.offset_hit <= t.song_hit for t in trials)
    again = run_baseline_protocol(db, model, queries, noise, SETTINGS)
    assert [t.start_s for t in again] == [t.start_s for t in trials]  # seeded


def test_cancel_stops_between_excerpts(db_and_model, song_library):
    db, model = db_and_model
    task = TaskState(lambda done, total, msg: task.cancel() if done >= 1 else None)
    queries = [QuerySong(probe_audio(p), None) for p in song_library]
    with pytest.raises(Cancelled):
        run_baseline_protocol(db, model, queries, np.ones(8000, np.float32), SETTINGS, task=task)


def make_trial(**kw) -> Trial:
    base = {
        "song": "a",
        "in_database": True,
        "excerpt": 0,
        "start_s": 1.0,
        "condition": "clean",
        "length_s": 1,
        "method": "sequence",
        "found": "a",
        "offset_s": 1.0,
        "score": 0.9,
        "song_hit": True,
        "offset_hit": True,
    }
    return Trial(**{**base, **kw})


def test_summary_counts_hits_with_standard_error():
    settings = dataclasses.replace(SETTINGS, methods=("sequence",), lengths_s=(1,))
    trials = [
        make_trial(),
        make_trial(),
        make_trial(offset_hit=False),
        make_trial(song_hit=False, offset_hit=False, found=None),
    ]
    trials += [
        make_trial(in_database=False, song_hit=False, offset_hit=False, found="b"),
        make_trial(in_database=False, song_hit=False, offset_hit=False, found=None),
    ]
    summary = summarise_trials(trials, settings)
    cell = summary["results"]["sequence"]["clean"]["1"]
    assert cell["accuracy"] == 0.5 and cell["song_accuracy"] == 0.75
    assert cell["rejected"] == 0.25 and cell["queries"] == 4
    assert cell["stderr"] == pytest.approx(0.25)
    assert summary["not_in_database"]["sequence"]["1"]["false_match_rate"] == 0.5
    table = format_accuracy_tables(summary)
    assert "| clean | 50.0 ±25.0 |" in table and "50.0 / 25.0" in table


def test_tables_render_when_only_outsiders_were_queried():
    settings = dataclasses.replace(SETTINGS, methods=("vote",), lengths_s=(1,))
    outsider = make_trial(in_database=False, method="vote", song_hit=False, offset_hit=False)
    summary = summarise_trials([outsider, dataclasses.replace(outsider, found=None)], settings)
    assert summary["results"] == {}
    table = format_accuracy_tables(summary)
    assert "| majority vote | 50.0 / - |" in table
