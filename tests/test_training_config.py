"""Training configuration: YAML layout, strict validation, the shipped configs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from afp_core.config import AugmentConfig, NAFPConfig
from afp_core.errors import ConfigError
from afp_core.models import ModelSpec
from afp_core.training.config import (
    REPO_ROOT,
    DataConfig,
    TrainConfig,
    TrainingConfig,
    load_train_config,
)

CONFIGS = REPO_ROOT / "configs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_paper_config_has_the_papers_settings() -> None:
    config = load_train_config(CONFIGS / "nafp-paper.yaml")
    assert config.model == ModelSpec(name="nafp", arch=NAFPConfig(width=1.0, activation="elu"))
    t = config.training
    assert 2 * t.batch_size == 512
    assert (t.epochs, t.lr, t.min_lr, t.temperature) == (120, 0.003, 1e-7, 0.05)
    assert t.effective_lr() == pytest.approx(0.003 * 512 / 640)
    assert config.augmentation == AugmentConfig(pipeline="proposed")


def test_no_config_trains_on_the_development_test_songs() -> None:
    # every config splits the development music alike, so its test songs stay unseen
    for path in sorted(CONFIGS.glob("*.yaml")):
        data = load_train_config(path).data
        assert (data.val_share, data.test_share, data.split_seed) == (0.1, 0.1, 0), path.name


def test_small_cpu_config() -> None:
    config = load_train_config(CONFIGS / "nafp-small-cpu.yaml")
    assert isinstance(config.model.arch, NAFPConfig)
    assert config.model.arch.width == 0.25
    assert config.training.device == "cpu"
    assert config.training.batch_size * config.training.epochs > 0
    assert config.augmentation.pipeline == "proposed"
    assert config.output == "runs/nafp-small"


def test_round_trip_and_defaults(tmp_path: Path) -> None:
    config = TrainConfig.from_dict({})
    assert config == TrainConfig()
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert load_train_config(write(tmp_path, "")) == TrainConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("training:\n  batch_sise: 8\n", "training.batch_sise: unknown key"),
        ("training:\n  batch_size: eight\n", "training.batch_size: expected an integer"),
        ("training:\n  batch_size: 1\n", "training.batch_size: N must be at least 2"),
        ("training:\n  lr: -1.0\n", "training.lr: must be a positive number"),
        ("training:\n  device: tpu\n", "training.device:"),
        ("training:\n  amp: 1\n", "training.amp: expected true or false"),
        ("data:\n  val_share: 1.5\n", "data.val_share: a share in [0, 1)"),
        ("data:\n  songs: music/\n", "data.songs: expected a list"),
        ("data:\n  cache: x\n", "data.cache: unknown key"),
        ("augmentation:\n  pipeline: strong\n", "augmentation.pipeline: 'strong' is not one of"),
        ("augmentation:\n  rolloff_db: [6, 12]\n", "augmentation.rolloff_db:"),
        ("model:\n  name: nafp\n  arch: {width: wide}\n", "model.arch.width: expected a number"),
        ("model:\n  arch: {width: 0.5}\n", "model.name: missing"),
        ("optimizer:\n  lr: 1\n", "optimizer: unknown section"),
        ("output: 3\n", "output: expected a folder name"),
        ("- a list\n", "expected a mapping"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_train_config(path)
    assert str(info.value).startswith(f"{path}: ")


def test_yaml_exponent_without_a_dot_gets_a_hint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"training\.min_lr: .* write 1\.0e-7"):
        load_train_config(write(tmp_path, "training:\n  min_lr: 1e-7\n"))


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_train_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line \d+\)"):
        load_train_config(write(tmp_path, "training:\n  batch_size: [8\n"))


def test_dataclass_checks() -> None:
    with pytest.raises(ConfigError, match=r"data\.test_share: val_share \+ test_share"):
        DataConfig(val_share=0.6, test_share=0.5)
    with pytest.raises(ConfigError, match=r"training\.min_lr"):
        TrainingConfig(lr=1e-3, min_lr=1e-2)
    assert TrainingConfig(batch_size=32, lr=0.003, lr_scale_batch=0).effective_lr() == 0.003
    assert TrainingConfig(batch_size=320, lr=0.003).effective_lr() == pytest.approx(0.003)
