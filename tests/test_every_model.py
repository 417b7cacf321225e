"""Every registered architecture goes through the same database, search and evaluation.

Small (CPU-sized) configurations with seeded random weights: an untrained encoder still
finds a clean excerpt on the 0.5 s window grid, which is what this checks; accuracy of
trained models is measured in benchmarks/bench_models.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from afp_core.checkpoint import load_checkpoint, save_checkpoint
from afp_core.config import BEATsConfig, NAFPConfig, ResNetSTAConfig
from afp_core.indexing import index_library, open_database_for_indexing
from afp_core.models import ModelSpec, build_model, get_model_entry, list_models
from afp_core.models.registry import ArchConfig
from afp_core.query import load_query
from afp_core.recogniser import NeuralRecogniser, open_recogniser

SMALL: dict[str, ArchConfig] = {
    "nafp": NAFPConfig(width=0.25),
    "resnet_sta": ResNetSTAConfig(width=0.125),
    "beats": BEATsConfig(layers=2, embed_dim=128, heads=2, ffn_dim=256, conv_dim=64),
}


def test_every_registered_model_has_a_small_configuration_here():
    assert {entry.name for entry in list_models()} == set(SMALL)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_model_indexes_identifies_and_evaluates(name, tmp_path, song_library):
    path = save_checkpoint(
        tmp_path / f"{name}.pt", build_model(ModelSpec(name, arch=SMALL[name]), seed=0)
    )
    checkpoint = load_checkpoint(path)
    # the checkpoint says which front-end it needs
    assert checkpoint.meta["frontend"]["name"] == get_model_entry(name).frontend_name
    db, checkpoint = open_database_for_indexing(tmp_path / "db", path)
    index_library(db, checkpoint.model, song_library[:3])
    assert db.info()["model_info"]["name"] == name

    recogniser = open_recogniser(tmp_path / "db", path)
    assert isinstance(recogniser, NeuralRecogniser)
    song = next(s for s in recogniser.songs() if s.source == str(song_library[1]))
    audio = load_query(song_library[1], recogniser.sample_rate, 6.0, 5.0)
    analysis = recogniser.analyse(audio)
    for method in recogniser.methods:
        match = recogniser.identify(analysis, 0.0, 5.0, method)
        assert match.song is not None and match.song.id == song.id, (name, method)
        assert match.offset_s == pytest.approx(6.0, abs=0.26)
    assert np.isfinite(analysis).all()
