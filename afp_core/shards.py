"""Several fingerprint databases of one model searched as one (docs/design.md §3.6).

A library built in parts (shards made on different machines, or a library grown over
time into new folders) is searched as if it were one database. ``ShardedDB`` presents
the shards through the interface the decision rules of ``afp_core.search`` use, so the
rules run unchanged over the union:

- vector ids and song ids are laid end to end in the order the shards are given (the
  first shard keeps its own ids), so they are unique across the shards;
- every shard is searched with the same query vectors; per query window the k best of
  all the shards' hits (ties: the lower id) are exactly what one exact index holding
  every song would return, so the majority vote counts, and offset-consistent search
  draws its candidates from, the union; each candidate is scored with the vectors its
  own shard rebuilds;
- "no match": per rule and query length the strictest (highest) of the shards'
  calibrated thresholds (``search_settings``).

The shards must share the model (checkpoint sha256), the vector dimension and the
stored-window density, and no song may be in two of them; anything else is refused with
one line naming the folder.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from afp_core.database import FingerprintDB, Song, model_identity, short_sha
from afp_core.errors import DatabaseError
from afp_core.search import METHODS, stored_impostor_mean, stored_threshold

THRESHOLD_SOURCE = "the strictest of the databases' own calibrated thresholds"


@dataclasses.dataclass(frozen=True)
class ShardSong(Song):
    """A song of one shard. ``id`` and ``first_vector_id`` are in the shards' common id
    space; ``shard_id`` is the song's catalogue id in its own ``database`` folder."""

    database: str
    shard_id: int


class ShardedDB:
    """Fingerprint databases of one model searched as one (see the module docstring).

    A snapshot: songs committed to a shard after it was opened are not seen.
    """

    def __init__(self, shards: Sequence[FingerprintDB]) -> None:
        if not shards:
            raise DatabaseError("no database to search")
        self.shards = list(shards)
        _check_shards(self.shards)
        counts = np.array([db.ntotal for db in self.shards], np.int64)
        max_ids = np.array([_max_song_id(db) for db in self.shards], np.int64)
        # shard i holds vector ids [vector_base[i], vector_base[i] + ntotal) and song ids
        # (song_base[i], song_base[i] + its largest catalogue id]
        self._vector_base = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self._song_base = np.concatenate([[0], np.cumsum(max_ids)[:-1]])
        self._song_limit = np.cumsum(max_ids)
        self._ntotal = int(counts.sum())

    @classmethod
    def open(cls, paths: Sequence[str | os.PathLike[str]]) -> ShardedDB:
        """Open every folder (``FingerprintDB.open``) and check that they go together."""
        seen: dict[Path, Path] = {}
        for path in map(Path, paths):
            other = seen.setdefault(path.resolve(), path)
            if other is not path:
                raise DatabaseError(f"{path}: given twice (as {other})")
        return cls([FingerprintDB.open(path) for path in seen.values()])

    # ------------------------------------------------------------------ description

    @property
    def path(self) -> str:
        """The folders, for messages."""
        return " + ".join(str(db.path) for db in self.shards)

    @property
    def paths(self) -> list[Path]:
        return [db.path for db in self.shards]

    @property
    def dim(self) -> int:
        return self.shards[0].dim

    @property
    def density(self) -> int:
        return self.shards[0].density

    @property
    def query_hop_s(self) -> float:
        return self.shards[0].query_hop_s

    @property
    def stored_hop_s(self) -> float:
        return self.shards[0].stored_hop_s

    def stored_span(self, n_windows: int) -> int:
        return self.shards[0].stored_span(n_windows)

    @property
    def ntotal(self) -> int:
        return self._ntotal

    @property
    def model_info(self) -> dict[str, Any]:
        return self.shards[0].model_info

    @property
    def model_path(self) -> Path | None:
        """The first shard's copy of the model (they are the same checkpoint)."""
        return next((db.model_path for db in self.shards if db.model_path), None)

    def check_model(self, model_info: dict[str, Any]) -> None:
        for db in self.shards:
            db.check_model(model_info)

    def info(self) -> dict[str, Any]:
        """Totals over the shards, and each shard's own ``info`` under ``shards``."""
        infos = [db.info() for db in self.shards]
        totals = ("songs", "vectors", "hours", "staged_songs", "bytes_on_disk")
        return {
            "path": self.path,
            "databases": [str(path) for path in self.paths],
            **{key: sum(info[key] for info in infos) for key in totals},
            "dim": self.dim,
            "model_info": self.model_info,
            "search": self.search_settings,
            "shards": infos,
        }

    # ------------------------------------------------------------------ settings

    @property
    def nprobe(self) -> int:
        """The largest of the shards' nprobe (setting it sets every shard's)."""
        return max(db.nprobe for db in self.shards)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        for db in self.shards:
            db.nprobe = value

    @property
    def needs_calibration(self) -> bool:
        return any(db.needs_calibration for db in self.shards)

    @property
    def search_settings(self) -> dict[str, Any]:
        """``nprobe`` and, per rule, the strictest of the shards' thresholds.

        A threshold entry holds the query lengths every shard can answer (each shard's
        value as ``stored_threshold`` reads it: its longest calibrated length at or below),
        the highest of them; shards calibrated with another k, or whose calibration no
        longer matches their nprobe, leave the rule without one (as a single database
        does). Over S shards an impostor may pass in any of them: its false-match rate is
        at least the shards' and at most their sum (``false_match_rate_bound``).
        """
        settings: dict[str, Any] = {"nprobe": self.nprobe}
        thresholds = {}
        for method in METHODS:
            entry = self._strictest(method)
            if entry is not None:
                thresholds[method] = entry
        if thresholds:
            settings["thresholds"] = thresholds
        return settings

    def _strictest(self, method: str) -> dict[str, Any] | None:
        entries = [db.search_settings.get("thresholds", {}).get(method) for db in self.shards]
        if not all(entries) or len({entry.get("k") for entry in entries if entry}) != 1:
            return None
        k = int(entries[0]["k"])
        merged: dict[str, Any] = {"k": k, "nprobe": self.nprobe}
        for table, lookup in (
            ("by_windows", stored_threshold),
            ("impostor_mean_by_windows", stored_impostor_mean),
        ):
            lengths = sorted({int(n) for entry in entries if entry for n in entry.get(table, {})})
            values = {}
            for n in lengths:
                found = [lookup(db, method, n, k=k) for db in self.shards]
                if all(value is not None for value in found):
                    values[str(n)] = max(value for value in found if value is not None)
            if values:
                merged[table] = values
        if "by_windows" not in merged:
            return None
        rates = [entry.get("false_match_rate") for entry in entries if entry]
        if all(rate is not None for rate in rates):
            merged["false_match_rate"] = max(rates)
            merged["false_match_rate_bound"] = min(1.0, sum(rates))
        merged["source"] = THRESHOLD_SOURCE
        return merged

    # ------------------------------------------------------------------ catalogue

    def songs(self, status: str | None = None) -> list[Song]:
        """Every shard's songs, in the common id order."""
        return [
            self._common_song(i, song)
            for i, db in enumerate(self.shards)
            for song in db.songs(status)
        ]

    def song(self, song_id: int) -> Song:
        shard = self._shard_of_song(np.array([song_id]))[0]
        if shard < 0:
            raise DatabaseError(f"{self.path}: no song with id {song_id}")
        local = int(song_id - self._song_base[shard])
        return self._common_song(int(shard), self.shards[shard].song(local))

    def _common_song(self, shard: int, song: Song) -> ShardSong:
        first = song.first_vector_id
        return ShardSong(
            **{
                **dataclasses.asdict(song),
                "id": song.id + int(self._song_base[shard]),
                "first_vector_id": None if first is None else first + int(self._vector_base[shard]),
            },
            database=str(self.shards[shard].path),
            shard_id=song.id,
        )

    def _shard_of_song(self, song_ids: np.ndarray) -> np.ndarray:
        """The shard holding each common song id; -1 where none does."""
        song_ids = np.asarray(song_ids, np.int64)
        shard = np.searchsorted(self._song_limit, song_ids, side="left")
        return np.where((song_ids > 0) & (shard < len(self.shards)), shard, -1)

    def _shard_of_vector(self, ids: np.ndarray) -> np.ndarray:
        """The shard holding each common vector id; -1 where none does."""
        shard = np.searchsorted(self._vector_base, ids, side="right") - 1
        return np.where((ids >= 0) & (ids < self._ntotal), shard, -1)

    # ------------------------------------------------------------------ search

    def search(
        self, queries: np.ndarray, k: int, exclude_song: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per query vector the k best hits of all the shards (common ids; -inf / -1 where
        there are fewer); equal scores go to the lower id, as in one flat index."""
        owner, local_exclude = -1, None
        if exclude_song is not None:
            owner = int(self._shard_of_song(np.array([exclude_song]))[0])
            local_exclude = int(exclude_song - self._song_base[owner]) if owner >= 0 else None
        all_scores, all_ids = [], []
        for i, db in enumerate(self.shards):
            scores, ids = db.search(queries, k, exclude_song=local_exclude if i == owner else None)
            all_scores.append(scores)
            all_ids.append(np.where(ids >= 0, ids + self._vector_base[i], -1))
        scores, ids = np.concatenate(all_scores, axis=1), np.concatenate(all_ids, axis=1)
        best = np.lexsort((ids, -scores))[:, :k]
        return np.take_along_axis(scores, best, 1), np.take_along_axis(ids, best, 1)

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Common vector ids -> (common song ids, window positions); -1 where invalid."""
        ids = np.asarray(ids, np.int64)
        shard = self._shard_of_vector(ids)
        song_ids = np.full(ids.shape, -1, np.int64)
        positions = np.full(ids.shape, -1, np.int64)
        for i, db in enumerate(self.shards):
            mine = shard == i
            if mine.any():
                local_songs, local_positions = db.locate(ids[mine] - self._vector_base[i])
                song_ids[mine] = np.where(local_songs >= 0, local_songs + self._song_base[i], -1)
                positions[mine] = local_positions
        return song_ids, positions

    def song_spans(self, song_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first common vector id, vector count) of indexed songs; (-1, 0) for others."""
        song_ids = np.asarray(song_ids, np.int64)
        shard = self._shard_of_song(song_ids)
        first = np.full(song_ids.shape, -1, np.int64)
        count = np.zeros(song_ids.shape, np.int64)
        for i, db in enumerate(self.shards):
            mine = shard == i
            if mine.any():
                local_first, local_count = db.song_spans(song_ids[mine] - self._song_base[i])
                first[mine] = np.where(local_count > 0, local_first + self._vector_base[i], -1)
                count[mine] = local_count
        return first, count

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """Vectors by common id, each rebuilt by its own shard."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        shard = self._shard_of_vector(ids)
        if len(ids) and shard.min() < 0:
            raise DatabaseError(
                f"{self.path}: vector ids must be in [0, {self._ntotal}), got "
                f"{ids.min()}..{ids.max()}"
            )
        out = np.empty((len(ids), self.dim), np.float32)
        for i, db in enumerate(self.shards):
            mine = shard == i
            if mine.any():
                out[mine] = db.reconstruct(ids[mine] - self._vector_base[i])
        return out

    def hubness_penalty(self, ids: np.ndarray) -> np.ndarray | None:
        """Each vector's penalty as its own shard measured it (against that shard's songs
        only: docs/design.md §3.9); 0 in shards that did not; None if none did."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        shard = self._shard_of_vector(ids)
        out = np.zeros(len(ids), np.float32)
        measured = False
        for i, db in enumerate(self.shards):
            mine = shard == i
            if mine.any():
                penalty = db.hubness_penalty(ids[mine] - self._vector_base[i])
                if penalty is not None:
                    out[mine], measured = penalty, True
        return out if measured else None


def _check_shards(shards: list[FingerprintDB]) -> None:
    """Refuse shards that cannot be searched as one (one line naming the folder)."""
    first = shards[0]
    owner: dict[str, FingerprintDB] = {}
    for db in shards:
        mine, theirs = model_identity(db.model_info), model_identity(first.model_info)
        if mine != theirs:
            raise DatabaseError(
                f"{db.path}: made with model {mine[0]} (sha {short_sha(mine[1])}), "
                f"{first.path} with {theirs[0]} (sha {short_sha(theirs[1])}); only databases "
                "of one model can be searched as one"
            )
        if db.dim != first.dim or db.density != first.density:
            raise DatabaseError(
                f"{db.path}: stores {db.dim}-d vectors at density {db.density}, {first.path} "
                f"{first.dim}-d at density {first.density}; shards must be built alike"
            )
        if db.index is None:
            raise DatabaseError(
                f"{db.path}: nothing is indexed yet; run `afp index {db.path} PATH...` first"
            )
        for song in db.songs():
            other = owner.setdefault(song.checksum, db)
            if other is not db:
                raise DatabaseError(
                    f"{db.path}: song {song.id} ({song.source}) is also in {other.path}; the "
                    "databases searched as one must not share songs"
                )


def _max_song_id(db: FingerprintDB) -> int:
    return max((song.id for song in db.songs()), default=0)
