"""Helpers shared by the training tests (no tests here): tiny data sets written as files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from afp_core.augment import synthesise_noise
from afp_core.config import NAFPConfig
from afp_core.models import Fingerprinter, ModelSpec
from afp_core.models.nafp import NAFPBlock, NAFPEncoder
from afp_core.training.config import DataConfig, TrainConfig, TrainingConfig
from afp_core.training.irs import write_synthetic_irs
from tests.conftest import synthesise_song

SR = 8000


def write_songs(
    folder: Path, count: int, duration_s: float = 6.0, ext: str = "wav", first_seed: int = 500
) -> list[Path]:
    """``count`` synthetic songs as real audio files (8 kHz) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"song{i:02d}.{ext}"
        sf.write(path, synthesise_song(first_seed + i, duration_s, SR), SR)
        paths.append(path)
    return paths


def write_noises(folder: Path, count: int, duration_s: float = 3.0) -> list[Path]:
    """``count`` synthetic noise clips as WAV files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        rng = np.random.default_rng(i)
        noise = synthesise_noise(("colored", "crowd", "hum")[i % 3], duration_s, SR, rng)
        path = folder / f"noise{i}.wav"
        sf.write(path, 0.2 * noise / np.max(np.abs(noise)), SR)
        paths.append(path)
    return paths


def make_tiny_dataset(root: Path, songs: int = 12) -> dict[str, Path]:
    """Songs, noise clips and a small synthetic IR collection under ``root``."""
    write_songs(root / "songs", songs)
    write_noises(root / "noise", 6)
    write_synthetic_irs(root / "irs", rooms=5, mics=5, seed=3)
    return {
        "songs": root / "songs",
        "noise": root / "noise",
        "rooms": root / "irs" / "room",
        "mics": root / "irs" / "mic",
        "cache": root / "cache",
    }


def tiny_config(paths: dict[str, Path], out: Path, **training: Any) -> TrainConfig:
    """Width 0.25, N=8, 3 steps per epoch, 2 epochs, tiny validation; overrides in ``training``."""
    settings: dict[str, Any] = {
        "batch_size": 8,
        "epochs": 2,
        "steps_per_epoch": 3,
        "workers": 0,
        "device": "cpu",
        "val_batches": 1,
        "val_windows": 12,
        "seed": 5,
    }
    settings.update(training)
    return TrainConfig(
        model=ModelSpec(name="nafp", arch=NAFPConfig(width=0.25)),
        data=DataConfig(
            songs=(str(paths["songs"]),),
            noise=(str(paths["noise"]),),
            synthetic_noise=2,
            room_irs=(str(paths["rooms"]),),
            mic_irs=(str(paths["mics"]),),
            val_share=0.2,
            test_share=0.0,
            cache_dir=str(paths["cache"]),
        ),
        training=TrainingConfig(**settings),
        output=str(out),
    )


def write_yaml(path: Path, paths: dict[str, Path], out: Path, extra: str = "") -> Path:
    """The YAML of a one-step run on ``make_tiny_dataset``'s files, as ``afp train`` reads
    it; ``extra`` (whole lines) goes before ``output``."""
    path.write_text(
        f"""\
model:
  name: nafp
  arch: {{width: 0.25}}
data:
  songs: ["{paths["songs"]}"]
  noise: ["{paths["noise"]}"]
  synthetic_noise: 0
  room_irs: ["{paths["rooms"]}"]
  mic_irs: ["{paths["mics"]}"]
  val_share: 0.2
  test_share: 0.0
  cache_dir: "{paths["cache"]}"
training:
  batch_size: 8
  epochs: 1
  steps_per_epoch: 1
  workers: 0
  device: cpu
  val_batches: 1
  val_windows: 4
{extra}output: "{out}"
"""
    )
    return path


def nafp_blocks(model: Fingerprinter) -> list[NAFPBlock]:
    """The blocks of an NAFP model's encoder, typed (``nn.Sequential`` items are modules)."""
    assert isinstance(model.backbone, NAFPEncoder)
    blocks = [block for block in model.backbone.blocks if isinstance(block, NAFPBlock)]
    assert len(blocks) == len(model.backbone.blocks)
    return blocks
