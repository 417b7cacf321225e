"""The baseline protocol: trial bookkeeping, hit rule, repeats and spread, summary, report."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import soundfile as sf

from afp_core.audio import probe_audio
from afp_core.errors import AfpError, AudioError, Cancelled
from afp_core.indexing import index_library, open_database_for_indexing
from afp_core.protocols.baseline import (
    BaselineSettings,
    QuerySong,
    Trial,
    format_accuracy_tables,
    load_noise,
    query_songs,
    run_baseline_protocol,
    summarise_trials,
)
from afp_core.protocols.report import read_report, write_baseline_report
from afp_core.recogniser import NeuralRecogniser
from afp_core.tasks import TaskState

SETTINGS = BaselineSettings(
    lengths_s=(1, 3), snrs_db=(None, 0.0), excerpts_per_song=2, threshold="auto"
)


@pytest.fixture(scope="module")
def recogniser(tmp_path_factory, song_library, untrained_checkpoint):
    db, ckpt = open_database_for_indexing(
        tmp_path_factory.mktemp("bl") / "db", untrained_checkpoint
    )
    index_library(db, ckpt.model, song_library[:4])
    return NeuralRecogniser(db, ckpt)


def test_defaults_are_the_papers_snrs():
    assert BaselineSettings().snrs_db == (0.0, 5.0, 10.0, 15.0)
    assert BaselineSettings().offset_tolerance_s == 0.5


def test_trials_cover_every_cell_and_outsiders_never_hit(recogniser, song_library):
    by_source = {s.source: s for s in recogniser.songs()}
    queries = [QuerySong(probe_audio(p), by_source[str(p.resolve())]) for p in song_library[:4]]
    queries += [QuerySong(probe_audio(p), None) for p in song_library[4:]]
    noise = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    result = run_baseline_protocol(recogniser, queries, noise, SETTINGS)
    trials = result.trials
    # in the database: 4 songs x 2 excerpts x 2 conditions x 2 lengths x 2 rules;
    # not in it: 2 songs x 2 excerpts x 2 conditions (clean, 5 dB) x 2 lengths x 2 rules
    assert len(trials) == 64 + 32
    outsiders = [t for t in trials if not t.in_database]
    assert outsiders and not any(t.song_hit or t.offset_hit for t in outsiders)
    assert all(t.offset_hit <= t.song_hit for t in trials)
    assert result.recogniser["kind"] == "neural" and result.summary["k"] == 4
    # the calibrated thresholds came from the recogniser, per rule and length
    assert {t.threshold for t in trials if t.method == "vote" and t.length_s == 3} == {
        recogniser.threshold("vote", 3)
    }
    again = run_baseline_protocol(recogniser, queries, noise, SETTINGS)
    assert [t.start_s for t in again.trials] == [t.start_s for t in trials]  # seeded


def test_repeats_use_successive_seeds_and_report_their_spread(recogniser, song_library):
    queries = query_songs(recogniser, song_library[:2])
    assert all(q.song is not None for q in queries)
    noise = np.random.default_rng(1).standard_normal(16000).astype(np.float32)
    settings = dataclasses.replace(
        SETTINGS, snrs_db=(None,), lengths_s=(3,), methods=("sequence",), repeats=3, seed=5
    )
    result = run_baseline_protocol(recogniser, queries, noise, settings)
    assert sorted({t.repeat for t in result.trials}) == [0, 1, 2]
    for repeat in range(3):
        alone = run_baseline_protocol(
            recogniser, queries, noise, dataclasses.replace(settings, repeats=1, seed=5 + repeat)
        )
        mine = [t for t in result.trials if t.repeat == repeat]
        assert [t.start_s for t in mine] == [t.start_s for t in alone.trials]
        assert [t.offset_hit for t in mine] == [t.offset_hit for t in alone.trials]
    cell = result.summary["results"]["sequence"]["clean"]["3"]
    per_repeat = [np.mean([t.offset_hit for t in result.trials if t.repeat == r]) for r in range(3)]
    assert cell["repeats"] == 3 and cell["queries"] == 12
    assert cell["per_repeat"] == pytest.approx(per_repeat)
    assert cell["accuracy"] == pytest.approx(np.mean(per_repeat))
    assert cell["std"] == pytest.approx(np.std(per_repeat, ddof=1))
    table = format_accuracy_tables(result.summary)
    assert "± std across 3 repeats" in table
    assert f"| 3 s | {100 * cell['accuracy']:.1f} ±{100 * cell['std']:.1f} |" in table


def test_report_round_trip(recogniser, song_library, tmp_path):
    queries = query_songs(recogniser, song_library[:5])
    assert [q.song is None for q in queries] == [False] * 4 + [True]
    noise = np.random.default_rng(2).standard_normal(16000).astype(np.float32)
    settings = dataclasses.replace(SETTINGS, excerpts_per_song=1, repeats=2)
    result = run_baseline_protocol(recogniser, queries, noise, settings)
    out = write_baseline_report(tmp_path / "r", result)
    report = read_report(out)
    assert report.protocol == "baseline"
    assert len(report.trials) == len(result.trials)
    assert {row["repeat"] for row in report.trials} == {0, 1}
    assert report.trials[0]["rejected"] in (True, False)
    assert report.data["summary"]["results"].keys() == result.summary["results"].keys()
    assert report.data["settings"]["repeats"] == 2
    assert "| query | clean | 0 dB |" in report.table  # paper Table 3: SNRs as columns
    assert "| 1 s |" in report.table and "| 3 s |" in report.table
    assert report.figure is not None and report.figure.read_bytes()[:4] == b"\x89PNG"


def test_bad_settings_are_refused_before_work(recogniser):
    for settings, text in [
        (dataclasses.replace(SETTINGS, lengths_s=(0.5,)), "shorter than the 1 s"),
        (dataclasses.replace(SETTINGS, methods=("landmark",)), "unknown"),
        (dataclasses.replace(SETTINGS, repeats=0), "at least 1"),
    ]:
        with pytest.raises(AfpError, match=text):
            run_baseline_protocol(recogniser, [], np.ones(10, np.float32), settings)


def test_noise_folder_is_levelled_and_seeded(tmp_path):
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "a.wav", 0.01 * rng.standard_normal(8000), 8000)
    sf.write(tmp_path / "b.wav", 0.5 * rng.standard_normal(4000), 8000)
    sf.write(tmp_path / "silent.wav", np.zeros(8000), 8000)
    noise = load_noise([tmp_path], 8000, seed=3)
    assert len(noise) == 12000
    assert np.sqrt(np.mean(noise[:4000] ** 2)) == pytest.approx(1.0, rel=0.05)
    assert np.sqrt(np.mean(noise[-4000:] ** 2)) == pytest.approx(1.0, rel=0.05)
    assert np.array_equal(noise, load_noise([tmp_path], 8000, seed=3))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AudioError, match="no noise audio files"):
        load_noise([empty], 8000)


def test_cancel_stops_between_excerpts(recogniser, song_library):
    task = TaskState(lambda done, total, msg: task.cancel() if done >= 1 else None)
    queries = [QuerySong(probe_audio(p), None) for p in song_library]
    with pytest.raises(Cancelled):
        run_baseline_protocol(recogniser, queries, np.ones(8000, np.float32), SETTINGS, task=task)


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
    assert cell["stderr"] == pytest.approx(0.25) and cell["std"] is None
    assert summary["not_in_database"]["sequence"]["1"]["false_match_rate"] == 0.5
    table = format_accuracy_tables(summary)
    assert "| 1 s | 50.0 ±25.0 | - |" in table and "50.0 / 25.0" in table
    assert "± binomial standard error" in table


def test_tables_render_when_only_outsiders_were_queried():
    settings = dataclasses.replace(SETTINGS, methods=("vote",), lengths_s=(1,))
    outsider = make_trial(in_database=False, method="vote", song_hit=False, offset_hit=False)
    summary = summarise_trials([outsider, dataclasses.replace(outsider, found=None)], settings)
    assert summary["results"] == {}
    table = format_accuracy_tables(summary)
    assert "| majority vote | 50.0 / - |" in table
