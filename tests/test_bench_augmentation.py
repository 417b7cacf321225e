"""benchmarks/bench_augmentation.py: arms as config variations, one run folder per arm and
seed that resumes, cached results reused only for the same evaluation, and the statistics
over seeds (mean, standard error, paired differences) and their tables."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch

from afp_core.checkpoint import load_checkpoint
from afp_core.training.config import load_train_config
from afp_core.training.trainer import STATE_FILE, load_train_state
from tests.training_fixtures import make_tiny_dataset, nafp_blocks, tiny_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # scripts import each other
    return importlib.import_module("bench_augmentation")


def result(cells: dict[tuple[str, str, float], float]) -> dict:
    """A run's result as the benchmark stores it."""
    return {
        "evaluation": {"protocol": "realworld"},
        "cells": [
            {"method": m, "condition": c, "length_s": length, "accuracy": a, "queries": 400}
            for (m, c, length), a in cells.items()
        ],
    }


def test_arms_change_only_their_keys_the_seed_and_the_budget(bench, tmp_path: Path) -> None:
    base = load_train_config(REPO / "configs" / "nafp-small-cpu.yaml")
    configs = {arm: bench.arm_config(base, arm, 2, 3, 7, tmp_path) for arm in bench.ARMS}
    assert {arm: c.augmentation.pipeline for arm, c in configs.items()} == {
        "baseline": "baseline",
        "proposed": "proposed",
        "elu": "proposed",
    }
    assert {arm: c.model.arch.activation for arm, c in configs.items()} == {
        "baseline": "relu",
        "proposed": "relu",
        "elu": "elu",
    }
    for arm, config in configs.items():
        assert Path(config.output) == tmp_path / arm / "seed2"
        assert (config.training.seed, config.training.epochs) == (2, 3)
        assert (config.training.steps_per_epoch, config.training.max_minutes) == (7, 0.0)
        assert config.data == base.data  # the same songs held out: split_seed untouched
        changed = config.to_dict()
        unchanged = base.to_dict()
        for d in (changed, unchanged):
            d["augmentation"].pop("pipeline")
            d["model"]["arch"].pop("activation")
            d.pop("output")
            for key in ("seed", "epochs", "steps_per_epoch", "max_minutes"):
                d["training"].pop(key)
        assert changed == unchanged


def test_a_run_trains_once_then_resumes_to_its_end(bench, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        paths = make_tiny_dataset(tmp_path / "data")
        base = tiny_config(paths, tmp_path / "unused", val_windows=4)
        config = bench.arm_config(base, "elu", 1, 1, 1, tmp_path / "out")
        model = bench.train_run(config)
        assert model == tmp_path / "out" / "elu" / "seed1" / "model.pt"
        assert isinstance(nafp_blocks(load_checkpoint(model).model)[0].act, torch.nn.ELU)
        state = load_train_state(model.parent / STATE_FILE)
        assert state["config"]["training"]["seed"] == 1
        digest = load_checkpoint(model).sha256
        assert bench.train_run(config) == model  # finished: resumed, nothing trained
        assert load_checkpoint(model).sha256 == digest
    finally:
        torch.set_num_threads(threads)


def test_a_cached_result_is_used_only_for_the_same_evaluation(bench, tmp_path: Path) -> None:
    path = tmp_path / "result-realworld.json"
    evaluation = {"protocol": "realworld", "lengths_s": [1.0], "checkpoint": "ab12"}
    assert bench.read_cached(path, evaluation) is None
    path.write_text(json.dumps({"evaluation": evaluation, "cells": []}))
    assert bench.read_cached(path, evaluation) == {"evaluation": evaluation, "cells": []}
    assert bench.read_cached(path, evaluation | {"checkpoint": "cd34"}) is None
    assert bench.read_cached(path, evaluation | {"library": "dev"}) is None


def test_mean_and_standard_error(bench) -> None:
    mean, stderr = bench.mean_stderr([0.6, 0.7, 0.8])
    assert mean == pytest.approx(0.7)
    assert stderr == pytest.approx(0.1 / math.sqrt(3))  # sample std 0.1
    assert bench.mean_stderr([0.55]) == (0.55, None)


def test_run_cells_add_means_over_takes_and_lengths(bench) -> None:
    cells = bench.run_cells(
        result(
            {
                ("sequence", "demo low", 1.0): 0.8,
                ("sequence", "harsh low", 1.0): 0.4,
                ("sequence", "demo low", 2.0): 1.0,
                ("sequence", "harsh low", 2.0): 0.6,
            }
        )
    )
    assert cells[("sequence", "mean", 1.0)] == pytest.approx(0.6)
    assert cells[("sequence", "demo low", None)] == pytest.approx(0.9)
    assert cells[("sequence", "mean", None)] == pytest.approx(0.7)


def test_paired_differences_over_the_seeds_both_arms_ran(bench) -> None:
    key = ("sequence", "demo low", 1.0)
    baseline = {0: {key: 0.50}, 1: {key: 0.60}, 2: {key: 0.55}}
    proposed = {0: {key: 0.58}, 1: {key: 0.64}}  # seed 2 not finished
    stats = bench.arm_stats(baseline)[key]
    assert stats[0] == pytest.approx(0.55)
    assert stats[1] == pytest.approx(0.05 / math.sqrt(3))
    assert stats[2] == 3
    mean, stderr, seeds = bench.paired_stats(proposed, baseline)[key]
    assert (mean, seeds) == (pytest.approx(0.06), 2)  # differences 0.08 and 0.04
    assert stderr == pytest.approx(math.sqrt(0.02**2 * 2) / math.sqrt(2))


def test_tables_print_every_arm_and_the_paired_differences(bench, capsys) -> None:
    def run(demo: float, harsh: float) -> dict:
        return result({("sequence", "demo low", 1.0): demo, ("sequence", "harsh low", 1.0): harsh})

    results = {
        "baseline": {0: run(0.50, 0.20), 1: run(0.60, 0.30)},
        "proposed": {0: run(0.56, 0.30), 1: run(0.70, 0.36)},
    }
    bench.print_tables(results, [1.0])
    out = capsys.readouterr().out
    assert "| | query | seeds | demo low | harsh low | mean |" in out
    assert "| baseline | 1 s | 2 | 55.0 ±5.0 | 25.0 ±5.0 | 40.0 ±5.0 |" in out
    assert "| proposed | all | 2 | 63.0 ±7.0 | 33.0 ±3.0 | 48.0 ±5.0 |" in out
    # differences seed by seed: demo +6 / +10, harsh +10 / +6, mean +8 / +8
    assert "| proposed − baseline | 1 s | 2 | +8.0 ±2.0 | +8.0 ±2.0 | +8.0 ±0.0 |" in out
    assert "elu − proposed" not in out  # no elu arm
