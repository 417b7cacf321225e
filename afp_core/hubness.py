"""Hub-aware scores: how much each stored fingerprint resembles every song.

Some stored vectors ("hubs") lie close to many queries whatever song those come from:
windows of sparse, generic or heavily compressed sound. A query of a song that is not in
the database finds them first, so its best alignment scores high, and the "no match"
threshold has to sit high enough to refuse it, which refuses many true short queries
too. Cross-domain similarity local scaling (CSLS, Conneau et al. 2018) corrects a
similarity by how close each side lies to its own neighbourhood. Only the stored side is
corrected here (the query side is the same for every candidate of a query, and its
calibration already absorbs it):

- **hubness** ``r(v)`` of stored vector v: the mean similarity to its
  ``IndexConfig.hub_neighbours`` nearest vectors of *other* songs, measured once per
  index generation by searching the index with each song's own vectors, that song left
  out (``measure_hubness``);
- **penalty** of v: ``r(v)`` (raised to the database's 1st percentile of ``r``, which
  bounds the bonus of windows far from every song, ``_finished``) minus the database's
  mean ``r``; offset-consistent search subtracts ``HUB_WEIGHT`` x the mean penalty of an
  alignment's windows from its mean similarity (``afp_core.search``). The weight 0.5 is
  CSLS's (twice the similarity, less each side's neighbourhood, halved);
  docs/design.md §3.9 has what it changed on the validation sessions.

The table is ``hubness-<generation>.npy`` (float16, one value per vector id) in the
database folder, named with its generation, neighbours and mean under the manifest's
``search.hubness``. It is measured before the "no match" calibration, so thresholds are
set on the scores queries get. A measurement interrupted on a large database resumes:
``hubness-<generation>.partial.npy`` keeps the songs done so far.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from afp_core.fileutil import atomic_save_npy
from afp_core.tasks import TaskState

if TYPE_CHECKING:
    from afp_core.database import FingerprintDB, Song

HUB_WEIGHT = 0.5
# No window counts as less hub-like than this percentile of the database's (``_finished``).
FLOOR_PERCENTILE = 1.0
SETTING = "hubness"
# A partial table is saved at most this often (seconds): resuming loses less than this.
_SAVE_EVERY_S = 30.0
_FILE_PREFIX = "hubness-"


def table_name(generation: int, partial: bool = False) -> str:
    return f"{_FILE_PREFIX}{generation:06d}{'.partial' if partial else ''}.npy"


def measure_hubness(db: FingerprintDB, task: TaskState | None = None) -> dict[str, Any] | None:
    """Measure and save the hubness of every stored vector; returns the manifest entry.

    None (nothing saved) when ``hub_neighbours`` is 0 or the database holds fewer than
    two indexed songs (no other song to be near). Cancellable between songs; a cancelled
    or crashed run leaves its partial table, which the next run of the same generation
    continues.
    """
    neighbours = db.index_config.hub_neighbours
    songs = db.songs("indexed")
    if neighbours < 1 or len(songs) < 2 or db.ntotal == 0:
        return None
    task = task or TaskState()
    generation = db.generation
    partial = db.path / table_name(generation, partial=True)
    hubness = _resumed(partial, db.ntotal)
    task.set_total(db.ntotal, "measuring hub fingerprints")
    try:
        _measure_songs(db, songs, neighbours, hubness, partial, task)
    except BaseException:
        if not np.isnan(hubness).all():
            atomic_save_npy(partial, hubness)  # what was measured is kept for the next run
        raise
    table, floor = _finished(hubness)
    name = table_name(generation)
    atomic_save_npy(db.path / name, table.astype(np.float16))
    entry = {
        "file": name,
        "generation": generation,
        "neighbours": neighbours,
        "mean": float(table.mean(dtype=np.float64)),
        "floor": floor,
    }
    db.save_search_settings(**{SETTING: entry})
    for stale in db.path.glob(f"{_FILE_PREFIX}*.npy"):
        if stale.name != name:
            stale.unlink(missing_ok=True)
    return entry


def _measure_songs(
    db: FingerprintDB,
    songs: list[Song],
    neighbours: int,
    hubness: np.ndarray,
    partial: Path,
    task: TaskState,
) -> None:
    """Fill ``hubness`` song by song, skipping songs measured before; the partial table is
    saved now and then so that a crash loses little."""
    saved_at = time.monotonic()
    for song in songs:
        task.check_cancelled()
        first, count = song.first_vector_id, song.vector_count
        if first is None or count == 0:
            continue
        if not np.isnan(hubness[first : first + count]).any():
            task.advance(count)
            continue
        vectors = db.reconstruct(np.arange(first, first + count))
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        scores, _ = db.search(vectors, neighbours, exclude_song=song.id)
        found = np.isfinite(scores)
        # No other song's vector in the lists probed says nothing about the window (an
        # IVF list can hold one song alone): unknown, given the average when finished.
        hubness[first : first + count] = np.where(
            found.any(axis=1),
            np.where(found, scores, 0.0).sum(axis=1) / np.maximum(found.sum(axis=1), 1),
            np.inf,
        )
        task.advance(count)
        if time.monotonic() - saved_at > _SAVE_EVERY_S:
            atomic_save_npy(partial, hubness)
            saved_at = time.monotonic()


def _finished(hubness: np.ndarray) -> tuple[np.ndarray, float]:
    """The table to store, and its floor: unknown windows get the average, and none is
    taken as less hub-like than the least 1 % of the measured ones.

    The floor bounds the bonus a window far from every other song gets. How far is
    measured within the lists probed; in a small database (few songs, lists of one or
    two songs) that reads low, and an impostor landing on such a window would score
    above true queries.
    """
    known = np.isfinite(hubness)
    if not known.any():
        return np.zeros_like(hubness), 0.0
    floor = float(np.percentile(hubness[known], FLOOR_PERCENTILE))
    table = np.where(known, hubness, hubness[known].mean(dtype=np.float64))
    return np.maximum(table, floor).astype(np.float32), floor


def _resumed(partial: Path, size: int) -> np.ndarray:
    """The partial table of an interrupted run (NaN where not measured), or a new one."""
    if partial.is_file():
        try:
            done = np.load(partial)
        except (OSError, ValueError):
            done = None  # unreadable: measure again
        if done is not None and done.shape == (size,) and done.dtype == np.float32:
            return done
    return np.full(size, np.nan, np.float32)


def load_penalties(folder: Path, entry: dict[str, Any]) -> np.ndarray | None:
    """Each stored vector's penalty (hubness - mean) from the table ``entry`` names;
    None when the file is missing or unreadable (scores are then not corrected)."""
    try:
        table = np.load(folder / str(entry["file"]))
        mean = float(entry["mean"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if table.ndim != 1:
        return None
    return table.astype(np.float32) - np.float32(mean)


def penalties_of(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``table[ids]``, 0 for ids the table does not reach (vectors added after it was
    measured, until the next calibration measures them)."""
    ids = np.asarray(ids, np.int64)
    inside = (ids >= 0) & (ids < len(table))
    return np.where(inside, table[np.where(inside, ids, 0)], np.float32(0.0))
