"""What the evaluation protocols run: anything that turns audio into (song, offset) answers.

Two kinds sit behind this one interface: the neural engine (a checkpoint and its faiss
database, ``NeuralRecogniser``) and the landmark baseline (``afp_core.landmark``). A
protocol analyses a stretch of audio once (``analyse``) and then asks for answers on
many queries cut from it (``identify``), so that back-to-back queries of several lengths
do not pay for the fingerprints again.

``open_recogniser(db_dir)`` opens either kind from its database folder, and
``open_recogniser([db_dir, ...])`` several neural databases of one model searched as one
(``afp_core.shards``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

from afp_core import database, landmark
from afp_core.audio import frame_windows
from afp_core.config import SearchConfig
from afp_core.database import MANIFEST, FingerprintDB, Song
from afp_core.errors import ConfigError, DatabaseError
from afp_core.fileutil import read_json_object
from afp_core.models import embed_windows
from afp_core.query import embed_audio
from afp_core.search import (
    METHODS,
    Match,
    SearchableDB,
    as_method,
    identify_vectors,
    stored_threshold,
)
from afp_core.shards import ShardedDB

if TYPE_CHECKING:
    from afp_core.checkpoint import Checkpoint


@runtime_checkable
class Recogniser(Protocol):
    """The evaluation-facing side of a fingerprinting system.

    - ``kind``: "neural" or "landmark" (reports and tables say which)
    - ``methods``: the decision rules ``identify`` accepts, the default first
    - ``sample_rate``: the rate ``analyse`` expects
    - ``min_query_s``: the shortest query it can answer
    """

    kind: str
    methods: tuple[str, ...]
    sample_rate: int
    min_query_s: float

    def describe(self) -> dict[str, Any]:
        """Everything a report must record to be reproduced (model, database, settings)."""
        ...

    def songs(self) -> list[Song]:
        """The songs of the catalogue that can be answered."""
        ...

    def analyse(self, audio: np.ndarray) -> Any:
        """Fingerprint mono ``audio`` at ``sample_rate`` once; opaque to the caller."""
        ...

    def identify(
        self,
        analysis: Any,
        start_s: float,
        length_s: float,
        method: str,
        exclude_song: int | None = None,
    ) -> Match:
        """The answer for the query [start_s, start_s + length_s) of the analysed audio.

        ``exclude_song``: answer as if that catalogue song were not in the database (what
        the protocols measure "no match" with: the query is then an impostor).
        """
        ...

    def threshold(self, method: str, length_s: float) -> float | None:
        """The calibrated "no match" score for this rule and query length (None: none)."""
        ...


class NeuralRecogniser:
    """A checkpoint with the faiss database built from it.

    ``analyse`` embeds every window (hop ``audio.hop_s``) once; a query starting at a
    multiple of the hop then reuses those vectors exactly as if it had been cut and
    embedded on its own (the window grid starts at the query's first sample).
    """

    kind = "neural"
    methods: tuple[str, ...] = METHODS

    def __init__(
        self,
        db: SearchableDB,
        checkpoint: Checkpoint,
        *,
        k: int = SearchConfig.k,
        device: str | torch.device = "cpu",
        batch_size: int = 256,
    ) -> None:
        db.check_model(_describe_model(checkpoint))
        self.db = db
        self.checkpoint = checkpoint
        self.model = checkpoint.model
        self.k = k
        self.device = device
        self.batch_size = batch_size
        audio = self.model.spec.audio
        self.sample_rate = audio.sample_rate
        self.hop_s = audio.hop_s
        self.window_s = audio.window_s
        self.min_query_s = audio.window_s
        self.audio = audio

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "database": str(self.db.path),
            "database_info": self.db.info(),
            "checkpoint": str(self.checkpoint.path),
            "checkpoint_sha256": self.checkpoint.sha256,
            "model": self.checkpoint.spec.to_dict(),
            "trained": self.checkpoint.meta.get("trained"),
            "k": self.k,
            "nprobe": self.db.nprobe,
        } | self._shards()

    def _shards(self) -> dict[str, Any]:
        """Databases searched as one: "database" names the system in tables (the
        folders' names joined), "databases" holds the folders."""
        if not isinstance(self.db, ShardedDB):
            return {}
        paths = self.db.paths
        return {
            "database": " + ".join(path.name for path in paths),
            "databases": [str(path) for path in paths],
        }

    def songs(self) -> list[Song]:
        return self.db.songs(status="indexed")

    def analyse(self, audio: np.ndarray) -> np.ndarray:
        """(n_windows, dim) vectors of ``audio``, window i starting at i * hop."""
        return embed_audio(self.model, audio, batch_size=self.batch_size, device=self.device)

    def analyse_many(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``analyse`` of each of ``audios``, their windows embedded in shared batches (many
        short queries cost what their windows cost, not a model call each)."""
        spec = self.audio
        windows = [frame_windows(np.asarray(a, np.float32), spec.window, spec.hop) for a in audios]
        if not windows:
            return []
        vectors = embed_windows(
            self.model, np.concatenate(windows), batch_size=self.batch_size, device=self.device
        )
        return np.split(vectors, np.cumsum([len(w) for w in windows])[:-1])

    def identify(
        self,
        analysis: np.ndarray,
        start_s: float,
        length_s: float,
        method: str,
        exclude_song: int | None = None,
    ) -> Match:
        first = round(start_s / self.hop_s)
        if abs(first * self.hop_s - start_s) > 1e-6:
            raise ConfigError(
                f"query start {start_s:g} s is not on the {self.hop_s:g} s window grid"
            )
        n = self.audio.windows_in(length_s)
        if n < 1 or first + n > len(analysis):
            raise ConfigError(
                f"query [{start_s:g}, {start_s + length_s:g}) s is outside the analysed audio"
            )
        return identify_vectors(
            self.db,
            analysis[first : first + n],
            method=as_method(method),
            k=self.k,
            exclude_song=exclude_song,
        )

    def threshold(self, method: str, length_s: float) -> float | None:
        n = self.audio.windows_in(length_s)
        return stored_threshold(self.db, method, n, k=self.k)


def _describe_model(checkpoint: Checkpoint) -> dict[str, Any]:
    from afp_core.indexing import describe_model

    return describe_model(checkpoint)


def database_kind(db_dir: Path) -> str:
    """ "neural" or "landmark", from the folder's manifest; ``DatabaseError`` if neither."""
    file = Path(db_dir) / MANIFEST
    if not file.is_file():
        raise DatabaseError(f"{db_dir}: not a fingerprint database (no {MANIFEST})")
    fmt = read_json_object(file, DatabaseError).get("format")
    if fmt == database.FORMAT:
        return "neural"
    if fmt == landmark.FORMAT:
        return "landmark"
    raise DatabaseError(f"{db_dir}: not a fingerprint database (format {fmt!r})")


def open_recogniser(
    db_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    checkpoint_path: Path | None = None,
    *,
    k: int = SearchConfig.k,
    device: str | torch.device = "cpu",
) -> Recogniser:
    """The recogniser stored in ``db_dir``, or in several folders searched as one.

    A neural database answers with its own model.pt, or with ``checkpoint_path`` when
    that is the same model (any other is refused before work starts). A landmark database
    needs no checkpoint and refuses one. A list of folders (neural databases of one
    model) gives one recogniser searching them as one (``afp_core.shards``).
    """
    if not isinstance(db_dir, str | os.PathLike):
        folders = [Path(folder) for folder in db_dir]
        if len(folders) != 1:
            return _open_shards(folders, checkpoint_path, k=k, device=device)
        db_dir = folders[0]
    db_dir = Path(db_dir)
    kind = database_kind(db_dir)
    if kind == "landmark":
        if checkpoint_path is not None:
            raise ConfigError(f"{db_dir}: a landmark database takes no checkpoint")
        return landmark.LandmarkRecogniser(landmark.LandmarkDB.open(db_dir))
    from afp_core.indexing import load_database_model

    db = FingerprintDB.open(db_dir)
    checkpoint = load_database_model(db, checkpoint_path)
    return NeuralRecogniser(db, checkpoint, k=k, device=device)


def _open_shards(
    folders: list[Path], checkpoint_path: Path | None, *, k: int, device: str | torch.device
) -> NeuralRecogniser:
    from afp_core.indexing import load_database_model

    for folder in folders:
        if database_kind(folder) != "neural":
            raise ConfigError(
                f"{folder}: a landmark database cannot be searched with others as one"
            )
    db = ShardedDB.open(folders)
    return NeuralRecogniser(db, load_database_model(db, checkpoint_path), k=k, device=device)
