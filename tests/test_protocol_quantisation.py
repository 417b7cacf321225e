"""The quantisation sweep (paper §5.3, Figure 7) on a small library and a real session."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from afp_core.errors import ConfigError, DatabaseError
from afp_core.protocols.baseline import BaselineResult, BaselineSettings
from afp_core.protocols.quantisation import (
    QuantisationSettings,
    effective_index_settings,
    run_quantisation_sweep,
)
from afp_core.protocols.realworld import RealWorldResult, RealWorldSettings
from afp_core.protocols.report import read_report, write_quantisation_report
from afp_core.tasks import TaskState
from tests.test_protocol_realworld import known_cell, write_session


@pytest.fixture(scope="module")
def session(tmp_path_factory, song_library):
    folder = tmp_path_factory.mktemp("quant") / "session"
    return write_session(folder, song_library[:3], {"low": None, "high": 5.0})


def test_sweep_on_a_session_measures_pq_and_shrinks_with_m(
    session, song_library, untrained_checkpoint, tmp_path
):
    notices: list[str] = []
    result = run_quantisation_sweep(
        song_library[:4],
        untrained_checkpoint,
        session=session,
        realworld=RealWorldSettings(lengths_s=(5, 15), threshold=None),
        on_notice=notices.append,
    )
    labels = [p.label for p in result.points]
    assert labels == ["flat", "m=4", "m=8", "m=16", "m=32", "m=64", "m=128"]
    assert [p.index_type for p in result.points] == ["flat"] + ["ivfpq"] * 6
    # 4 songs x 47 windows: far below the 2,048 vectors 8-bit PQ needs; lowered, said so
    assert result.effective["vectors"] == 4 * 47
    assert result.effective["nbits"] < 8 and result.effective["nlist"] == 1
    assert any("every index is a real IVF-PQ" in n for n in notices)
    assert notices == result.notices
    pq = result.points[1:]
    assert [p.code_bits for p in pq] == [
        m * result.effective["nbits"] for m in (4, 8, 16, 32, 64, 128)
    ]
    sizes = [p.index_bytes for p in pq]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)  # smaller m, smaller index
    assert result.points[0].index_bytes > sizes[-1]  # the float32 reference is the largest
    # every index was evaluated on the same queries; the exact one finds the clean take
    evaluations = [e for e in result.evaluations if isinstance(e, RealWorldResult)]
    assert len(evaluations) == len(result.evaluations)
    for evaluation in evaluations:
        assert known_cell(evaluation, "low", "sequence", 15).queries == 3
    assert known_cell(evaluations[0], "low", "sequence", 5).accuracy == 1.0  # flat
    assert known_cell(evaluations[-1], "low", "sequence", 5).accuracy >= 0.9

    out = write_quantisation_report(tmp_path / "q", result)
    report = read_report(out)
    assert report.protocol == "quantisation"
    assert [row["label"] for row in report.summary] == labels
    assert report.summary[1]["accuracy"]["sequence low 5 s"] is not None
    assert report.data["effective_index_settings"]["nbits"] == result.effective["nbits"]
    assert {row["index"] for row in report.trials} == set(labels)
    assert "| m=32 | " in report.table and "index size" in report.table
    assert "every index is a real IVF-PQ" in report.table
    assert report.figure is not None and report.figure.read_bytes()[:4] == b"\x89PNG"


def test_sweep_with_noise_runs_the_baseline_protocol(song_library, untrained_checkpoint, tmp_path):
    noise = tmp_path / "noise"
    noise.mkdir()
    sf.write(noise / "white.wav", np.random.default_rng(0).standard_normal(16000) * 0.1, 8000)
    result = run_quantisation_sweep(
        song_library[:3],
        untrained_checkpoint,
        noise=[noise],
        settings=QuantisationSettings(ms=(8, 32), include_flat=False),
        baseline=BaselineSettings(lengths_s=(3,), snrs_db=(None, 0.0), excerpts_per_song=1),
    )
    assert result.protocol == "baseline"
    assert [p.label for p in result.points] == ["m=8", "m=32"]
    for evaluation in result.evaluations:
        assert isinstance(evaluation, BaselineResult)
        cells = evaluation.summary["results"]["sequence"]
        assert cells["clean"]["3"]["queries"] == 3 and cells["0 dB"]["3"]["queries"] == 3
    table = write_quantisation_report(tmp_path / "r", result).joinpath("table.md").read_text()
    assert "| index | code (bits) | bytes/vector | index size | sequence clean |" in table


def test_bad_input_is_refused_before_embedding(session, song_library, untrained_checkpoint):
    def fail(done, total, message):
        raise AssertionError("work started")

    task = TaskState(fail)
    with pytest.raises(ConfigError, match="m=12 does not divide the model's 128-d vectors"):
        run_quantisation_sweep(
            song_library[:3],
            untrained_checkpoint,
            session=session,
            settings=QuantisationSettings(ms=(4, 12)),
            task=task,
        )
    with pytest.raises(DatabaseError) as error:
        run_quantisation_sweep(song_library[1:3], untrained_checkpoint, session=session, task=task)
    assert "'song0'" in str(error.value) and "add their files to the library folder" in str(
        error.value
    )
    with pytest.raises(ConfigError, match="either a session"):
        run_quantisation_sweep(song_library[:3], untrained_checkpoint, task=task)


def test_effective_settings_only_change_what_must_change():
    settings = QuantisationSettings()
    assert effective_index_settings(1_000_000, settings) == (8, 256, 10_000, None)
    nbits, nlist, minimum, notice = effective_index_settings(5_000, settings)
    assert (nbits, nlist, minimum) == (8, 256, 5_000)
    assert notice is not None and "min_train_vectors" in notice
    nbits, nlist, minimum, notice = effective_index_settings(500, settings)
    assert nbits == 5 and nlist == 1 and minimum <= 500
    assert notice is not None and "nlist=1" in notice
    with pytest.raises(ConfigError, match="too few"):
        effective_index_settings(10, settings)
