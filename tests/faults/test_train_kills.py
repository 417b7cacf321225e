"""Real ``afp train`` processes killed at named points (``afp_core.faults``), then run
again (``--resume`` when a training state was saved, as the user would): the run must end
bit for bit where an uninterrupted run ends (same weights, same log)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from afp_core.checkpoint import load_checkpoint
from afp_core.training.trainer import LOG_FILE, MODEL_FILE, STATE_FILE
from tests.faults.processes import killed_code, run_command
from tests.training_fixtures import make_tiny_dataset, write_yaml

# one thread: float sums differ with the thread count, and the runs must agree to the bit
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
STEPS = 2  # per epoch, 2 epochs: train.step:3 is inside the second epoch


def run_train(config: Path, *extra: str, fault: str | None = None, sig: str = "KILL"):
    args = ("train", str(config), "--quiet", *extra)
    return run_command("afp_core.cli", *args, fault=fault, sig=sig, env=ONE_THREAD)


def config_for(folder: Path, paths: dict[str, Path]) -> Path:
    config = write_yaml(folder / "run.yaml", paths, folder / "run")
    text = config.read_text().replace("epochs: 1", "epochs: 2")
    config.write_text(text.replace("steps_per_epoch: 1", f"steps_per_epoch: {STEPS}"))
    return config


def run_state(out: Path) -> dict:
    """What must not differ from an uninterrupted run: the weights and the log (its
    wall-clock column aside)."""
    weights = load_checkpoint(out / MODEL_FILE).model.state_dict()
    with (out / LOG_FILE).open() as handle:
        log = [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]
    return {"weights": {k: v.clone() for k, v in weights.items()}, "log": log}


def same_state(a: dict, b: dict) -> bool:
    return (
        a["log"] == b["log"]
        and a["weights"].keys() == b["weights"].keys()
        and all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
    )


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, paths) -> dict:
    config = config_for(tmp_path_factory.mktemp("straight"), paths)
    done = run_train(config)
    assert done.returncode == 0, done.stderr
    return run_state(config.parent / "run")


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    ("point", "sig"),
    [
        ("train.save:1", "KILL"),  # the state of epoch 1 saved, its model not yet
        pytest.param("train.step:3", "KILL", marks=SLOW),  # mid-epoch 2: epoch 1 is kept
        pytest.param("train.step:3", "INT", marks=SLOW),  # Ctrl-C: saved at that step
        pytest.param("train.step:1", "KILL", marks=SLOW),  # nothing saved yet: starts over
    ],
)
def test_killed_training_resumes_bit_for_bit(tmp_path, paths, reference, ledger, point, sig):
    config = config_for(tmp_path, paths)
    out = config.parent / "run"
    killed = run_train(config, fault=point, sig=sig)
    name = f"afp train SIG{sig} at {point}"
    survived = killed.returncode == killed_code(sig) and "Traceback" not in killed.stderr
    again = run_train(config, *(["--resume"] if (out / STATE_FILE).exists() else []))
    survived = survived and again.returncode == 0 and "Traceback" not in again.stderr
    state = run_state(out) if survived else None
    lost = state is None or not same_state(state, reference)
    ledger.fault(name, survived, lost)
    assert killed.returncode == killed_code(sig), (name, killed.returncode, killed.stderr[-2000:])
    assert "Traceback" not in killed.stderr, killed.stderr[-2000:]
    assert again.returncode == 0, again.stderr[-2000:]
    assert not lost, name
