"""The shipped model: a valid checkpoint within the size limit, and what training added.

The untrained encoder only finds clean excerpts on the 0.5 s window grid (test_cli.py);
the shipped one must also find excerpts that start between grid points and carry noise.
"""

from __future__ import annotations

import numpy as np
import pytest

from afp_core.audio import resample
from afp_core.checkpoint import load_checkpoint
from afp_core.indexing import index_library, open_database_for_indexing
from afp_core.query import identify_audio
from afp_core.shipped import SHIPPED_MODEL, default_checkpoint_path
from tests.conftest import synthesise_song

pytestmark = pytest.mark.skipif(not SHIPPED_MODEL.exists(), reason="no shipped model")


def test_shipped_model_is_a_valid_small_checkpoint():
    assert default_checkpoint_path() == SHIPPED_MODEL
    assert SHIPPED_MODEL.stat().st_size <= 20_000_000
    checkpoint = load_checkpoint(SHIPPED_MODEL)
    assert checkpoint.meta["trained"] is True
    assert checkpoint.meta["data"]["test_titles"]  # says which songs it never saw


def test_trained_model_finds_shifted_noisy_excerpts(tmp_path, song_library):
    db, checkpoint = open_database_for_indexing(tmp_path / "db")  # the shipped model
    index_library(db, checkpoint.model, song_library)
    rng = np.random.default_rng(3)
    found = 0
    trials = [(song, start) for song in range(6) for start in (2.2, 9.35, 15.1)]
    for song, start in trials:
        audio = resample(synthesise_song(100 + song, 24.0), 22050, 8000)
        excerpt = audio[int(start * 8000) : int((start + 5) * 8000)]
        noise = rng.standard_normal(len(excerpt)).astype(np.float32)
        noise *= np.sqrt(np.mean(excerpt**2) / np.mean(noise**2) / 10 ** (10 / 10))
        match = identify_audio(db, checkpoint.model, excerpt + noise, threshold=None)
        found += (
            match.song is not None
            and match.song.title == f"song{song}"
            and match.offset_s is not None
            and (abs(match.offset_s - start) <= 0.5)
        )
    # untrained: ~0 of these (off-grid starts, white noise at 10 dB SNR)
    assert found >= 0.8 * len(trials), f"{found}/{len(trials)}"
