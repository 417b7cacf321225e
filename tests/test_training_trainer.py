"""The trainer: checkpoints, bit-for-bit resume, interrupts, budget, metadata, CLI."""

from __future__ import annotations

import csv
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from afp_core.checkpoint import load_checkpoint
from afp_core.cli import main
from afp_core.config import NAFPConfig
from afp_core.errors import AfpError, ConfigError
from afp_core.training.data import prepare_training_data
from afp_core.training.trainer import (
    LOG_COLUMNS,
    MODEL_FILE,
    STATE_FILE,
    Trainer,
    load_train_state,
)
from tests.training_fixtures import make_tiny_dataset, tiny_config, write_yaml

STEPS = 2  # per epoch; 2 epochs


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One thread for every run here: float sums differ with the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    paths = make_tiny_dataset(tmp_path_factory.mktemp("tiny"))
    config = tiny_config(paths, tmp_path_factory.mktemp("unused"), steps_per_epoch=STEPS)
    return paths, config, prepare_training_data(config)


class NotingTrainer(Trainer):
    """A trainer that keeps the notes it gives, in ``notes``."""

    notes: list[str]


def make_trainer(setup, out: Path, **kwargs) -> NotingTrainer:
    _, config, data = setup
    notes: list[str] = []
    trainer = NotingTrainer(config, out=out, quiet=True, on_note=notes.append, data=data, **kwargs)
    trainer.notes = notes
    return trainer


@pytest.fixture(scope="module")
def straight(setup, tmp_path_factory) -> Path:
    """A run of 2 epochs without a break."""
    out = tmp_path_factory.mktemp("straight")
    result = make_trainer(setup, out).run()
    assert result.stopped == "finished" and result.epochs == 2 and result.steps == 2 * STEPS
    return out


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / MODEL_FILE).model.state_dict()


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_one_epoch_then_resume_equals_two_epochs(setup, straight, tmp_path: Path) -> None:
    first = make_trainer(setup, tmp_path).run(until_epoch=1)
    assert first.stopped == "paused" and first.epochs == 1
    state = load_train_state(tmp_path / STATE_FILE)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 0, STEPS)
    second = make_trainer(setup, tmp_path).run(resume=True)
    assert second.stopped == "finished" and second.steps == 2 * STEPS
    assert_same_weights(straight, tmp_path)
    straight_log = (straight / "log.csv").read_text().splitlines()
    resumed_log = (tmp_path / "log.csv").read_text().splitlines()
    # Same losses and validation figures; only the seconds column may differ.
    strip = [line.rsplit(",", 1)[0] for line in straight_log]
    assert strip == [line.rsplit(",", 1)[0] for line in resumed_log]


def test_interrupted_run_resumes(setup, straight, tmp_path: Path) -> None:
    def interrupt(trainer: Trainer, step: int, loss: float) -> None:
        if step == 1:
            raise KeyboardInterrupt

    trainer = make_trainer(setup, tmp_path, on_step=interrupt)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    state = load_train_state(tmp_path / STATE_FILE)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (0, 1, 1)
    checkpoint = load_checkpoint(tmp_path / MODEL_FILE)  # usable at once
    assert checkpoint.meta["stopped"] == "interrupted" and checkpoint.meta["steps"] == 1
    assert any("continue with --resume" in n for n in trainer.notes)
    make_trainer(setup, tmp_path).run(resume=True)
    assert_same_weights(straight, tmp_path)


def test_sigint_finishes_the_step_then_saves(setup, tmp_path: Path) -> None:
    def press_ctrl_c(trainer: Trainer, step: int, loss: float) -> None:
        if step == STEPS + 1:
            os.kill(os.getpid(), signal.SIGINT)

    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        make_trainer(setup, tmp_path, on_step=press_ctrl_c).run()
    assert signal.getsignal(signal.SIGINT) is previous  # handler restored
    state = load_train_state(tmp_path / STATE_FILE)
    assert (state["epoch"], state["step_in_epoch"]) == (1, 1)
    assert len(state["history"]) == 1  # epoch 1 was logged
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert tuple(rows[0]) == LOG_COLUMNS and rows[0]["epoch"] == "1"


def test_budget_stop_leaves_a_usable_checkpoint(setup, tmp_path: Path) -> None:
    _, config, data = setup
    budget = dataclasses.replace(config.training, max_minutes=1e-6)
    trainer = Trainer(
        dataclasses.replace(config, training=budget),
        out=tmp_path,
        quiet=True,
        on_note=lambda _: None,
        data=data,
    )
    result = trainer.run()
    assert result.stopped == "budget" and result.steps == 1
    checkpoint = load_checkpoint(result.checkpoint)
    assert checkpoint.meta["stopped"] == "budget"
    vectors = checkpoint.model(torch.randn(3, 8000))
    assert vectors.shape == (3, 128)


def test_checkpoint_metadata(setup, straight) -> None:
    _, config, data = setup
    meta = load_checkpoint(straight / MODEL_FILE).meta
    assert meta["trained"] is True and meta["stopped"] == "epoch"
    assert meta["config"] == config.to_dict()
    assert meta["data"]["songs"] == {"train": 10, "validation": 2, "test": 0}
    assert meta["data"]["split_seed"] == 0
    assert meta["data"]["train_checksums_sha256"] == data.describe()["train_checksums_sha256"]
    assert (meta["epochs"], meta["steps"], meta["steps_per_epoch"]) == (2, 2 * STEPS, STEPS)
    assert meta["hardware"]["device"] == "cpu" and meta["hardware"]["cpu_count"] >= 1
    assert meta["train_seconds"] > 0
    assert 0.0 <= meta["validation"]["val_top1"] <= 1.0
    assert meta["validation"]["val_loss"] > 0
    assert set(meta["versions"]) >= {"afp", "torch", "numpy", "audiomentations"}
    assert len(meta["history"]) == 2 and meta["effective_lr"] == pytest.approx(0.003 * 16 / 640)
    state = load_train_state(straight / STATE_FILE)  # weights_only=True inside
    assert set(state["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert state["optimizer"]["state"]  # LAMB moments are there


def test_run_folder_rules(setup, straight, tmp_path: Path) -> None:
    with pytest.raises(AfpError, match="already holds a training run"):
        make_trainer(setup, straight).run()
    with pytest.raises(AfpError, match=r"no train-state\.pt to resume from"):
        make_trainer(setup, tmp_path).run(resume=True)
    _, config, data = setup
    changed = dataclasses.replace(config, training=dataclasses.replace(config.training, lr=0.1))
    trainer = Trainer(changed, out=straight, quiet=True, on_note=lambda _: None, data=data)
    with pytest.raises(ConfigError, match=r"^training\.lr: the run was started with 0\.003"):
        trainer.run(resume=True)


def test_cli_train(setup, tmp_path: Path, capsys) -> None:
    paths, _, _ = setup
    config = write_yaml(tmp_path / "run.yaml", paths, tmp_path / "run")
    assert main(["train", str(config), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "finished after 1 epochs, 1 steps" in out
    assert (tmp_path / "run" / MODEL_FILE).is_file()
    assert (tmp_path / "run" / "config.yaml").is_file()
    # --out and --max-minutes override the file; a budget stop exits 0.
    config.write_text(config.read_text().replace("epochs: 1", "epochs: 3"))
    code = main(
        ["train", str(config), "--quiet", "--out", str(tmp_path / "b"), "--max-minutes", "1e-6"]
    )
    assert code == 0 and "budget after 1 epochs, 1 steps" in capsys.readouterr().out


def test_cli_train_rejects_bad_config_before_any_work(setup, tmp_path: Path, capsys) -> None:
    paths, _, _ = setup
    bad = tmp_path / "bad.yaml"
    write_yaml(bad, paths, tmp_path / "never")
    bad.write_text(bad.read_text().replace("  batch_size: 8", "  batch_sise: 8"))
    assert main(["train", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "training.batch_sise: unknown key" in err
    assert not (tmp_path / "never").exists()
    few = write_yaml(tmp_path / "few.yaml", paths, tmp_path / "never")
    few.write_text(few.read_text().replace("batch_size: 8", "batch_size: 32"))
    assert main(["train", str(few)]) == 1
    assert "N=32 different songs, but there are only 10" in capsys.readouterr().err
    # With repeat_songs the same N trains: songs repeat within a batch.
    few.write_text(
        few.read_text().replace("batch_size: 32", "batch_size: 32\n  repeat_songs: true")
    )
    assert main(["train", str(few), "--quiet", "--out", str(tmp_path / "repeat")]) == 0
    assert "finished after 1 epochs, 1 steps" in capsys.readouterr().out
    assert "repeat_songs: true" in (tmp_path / "repeat" / "config.yaml").read_text()


def test_truncated_state_or_model_is_one_line_without_torch_advice(
    setup, straight, tmp_path: Path, capsys
) -> None:
    paths, _, _ = setup
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    config = write_yaml(tmp_path / "run.yaml", paths, out)
    data = (out / STATE_FILE).read_bytes()
    for cut in (1, 5000, len(data) // 2):  # torch's unpickler, its zip reader, the archive
        (out / STATE_FILE).write_bytes(data[:cut])
        assert main(["train", str(config), "--resume", "--quiet"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"afp: error: {out / STATE_FILE}: ") and err.count("\n") == 1
        assert "weights_only" not in err, err
    model = (out / MODEL_FILE).read_bytes()
    for cut in (1, 5000, len(model) // 2):
        (out / MODEL_FILE).write_bytes(model[:cut])
        with pytest.raises(AfpError) as exc:
            load_checkpoint(out / MODEL_FILE)
        text = str(exc.value)
        assert text.startswith(f"{out / MODEL_FILE}: ") and "\n" not in text
        assert "weights_only" not in text


def test_cli_train_interrupt_exits_130(monkeypatch, tmp_path: Path, setup, capsys) -> None:
    import afp_core.training.trainer as trainer_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module, "train", interrupted)
    paths, _, _ = setup
    config = write_yaml(tmp_path / "run.yaml", paths, tmp_path / "run")
    assert main(["train", str(config)]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_sigterm_to_the_process_group_saves_and_exits_130_with_one_line(
    setup, tmp_path: Path
) -> None:
    paths, _, _ = setup
    out = tmp_path / "run"
    config = write_yaml(tmp_path / "run.yaml", paths, out)
    config.write_text(
        config.read_text()
        .replace("steps_per_epoch: 1", "steps_per_epoch: 100")
        .replace("workers: 0", "workers: 2")  # the workers get the signal too
    )
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "afp_core.cli", "train", str(config), "--quiet"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # its own process group, as a service or `timeout` runs it
            cwd=Path(__file__).resolve().parents[1],
        )
        try:
            deadline = time.monotonic() + 120
            while "parameters on cpu" not in log.read_text():  # the epoch is starting
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline
                time.sleep(0.1)
            time.sleep(1.0)  # the loader's workers are up
            os.killpg(process.pid, signal.SIGTERM)
            code = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    lines = log.read_text().splitlines()
    assert code == 130, lines
    assert lines[-1].startswith(f"afp: interrupted: saved {out / MODEL_FILE} at epoch 1, step ")
    assert lines[-1].endswith("; continue with --resume")
    assert not any("Traceback" in line or "killed by signal" in line for line in lines)
    state = load_train_state(out / STATE_FILE)
    assert state["epoch"] == 0 and state["step_in_epoch"] >= 1  # the step it was on finished


def test_a_fresh_run_can_start_from_a_trained_checkpoint(setup, straight, tmp_path: Path) -> None:
    _, config, data = setup
    start = straight / MODEL_FILE
    tuned = dataclasses.replace(
        config, training=dataclasses.replace(config.training, init_from=str(start), epochs=1)
    )
    notes: list[str] = []
    trainer = Trainer(tuned, out=tmp_path / "tuned", quiet=True, on_note=notes.append, data=data)
    trainer._setup()
    for key, value in weights(straight).items():
        assert torch.equal(trainer.model.state_dict()[key], value), key
    assert any("weights from" in note for note in notes)
    other = dataclasses.replace(
        tuned,
        model=dataclasses.replace(
            tuned.model, arch=dataclasses.replace(tuned.model.arch, activation="elu")
        ),
    )
    with pytest.raises(ConfigError, match=r"training\.init_from: .* another model spec"):
        Trainer(other, out=tmp_path / "other", quiet=True, data=data).run()


def test_a_wider_run_starts_from_the_narrow_checkpoints_fingerprints(
    setup, straight, tmp_path: Path
) -> None:
    _, config, data = setup
    wider = dataclasses.replace(
        config,
        model=dataclasses.replace(
            config.model, arch=dataclasses.replace(config.model.arch, width=0.5)
        ),
        training=dataclasses.replace(
            config.training, init_from=str(straight / MODEL_FILE), epochs=1
        ),
    )
    notes: list[str] = []
    trainer = Trainer(wider, out=tmp_path / "wider", quiet=True, on_note=notes.append, data=data)
    trainer._setup()
    narrow = load_checkpoint(straight / MODEL_FILE).model.eval()
    waves = torch.randn(4, narrow.window, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.no_grad():
        expected = narrow(waves)
        got = trainer.model.eval()(waves)
    assert isinstance(trainer.model.spec.arch, NAFPConfig)
    assert trainer.model.spec.arch.width == 0.5
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert any("widened 2x" in note for note in notes)
