"""Extraction across processes or machines under ``torchrun``: ``afp index-shards``.

Each rank takes every world-th file of the sorted file list (rank r: files r, r + world,
...) and fingerprints them with the one indexing loop (``afp_core.ingest.index_files``)
into its own staging area, ``STAGING/rank-R/<content checksum>.npy`` (written whole or not
at all); a file whose content is already in any rank's area or in the database is not
extracted again, so a rank rerun after a crash extracts only what it had left. A rank
that got through its shard writes ``STAGING/rank-R-of-W.json`` (its files, and the ones
it skipped and why). Once every rank of the world has, one commit step runs the same loop
over the whole list, in order, with the staged vectors in place of extraction: the
database is the one a single process builds (the same song ids, vectors, index file and
thresholds), trained and added in one commit; the staging area is then deleted.

Under torchrun (WORLD_SIZE > 1) the ranks join a gloo group: rank 0 opens or creates the
database before the others open it, and commits once every rank is through. A rank rerun
alone (``--shard R/W``) commits when it finds every rank of its world finished.
``STAGING/staging.json`` names the database's model and density: a staging area made
with another is refused before any work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from afp_core.database import FingerprintDB, Song, model_identity
from afp_core.errors import AudioError, ConfigError, DatabaseError
from afp_core.fileutil import (
    atomic_save_npy,
    atomic_write_text,
    file_sha256,
    read_json_object,
    utc_now,
)
from afp_core.indexing import vector_fingerprinting
from afp_core.ingest import IndexResult, Skipped, index_files
from afp_core.models import Fingerprinter
from afp_core.tasks import TaskState

STAGING_MANIFEST = "staging.json"


@dataclasses.dataclass(frozen=True)
class Shard:
    """This process's part of the library: files ``rank::world`` of the sorted list."""

    rank: int = 0
    world: int = 1
    grouped: bool = False  # in a torch.distributed process group (torchrun)

    def files(self, files: Sequence[Path]) -> list[Path]:
        return list(files[self.rank :: self.world])

    def __str__(self) -> str:
        return f"rank {self.rank}/{self.world}"


def parse_shard(text: str) -> Shard:
    """``--shard R/W``: rank R of a world of W, run alone."""
    rank, slash, world = text.partition("/")
    try:
        r, w = int(rank), int(world)
    except ValueError:
        r = w = -1
    if not slash or w < 1 or not 0 <= r < w:
        raise ConfigError(f"--shard {text!r}: expected RANK/WORLD with 0 <= RANK < WORLD, e.g. 1/2")
    return Shard(r, w)


def join_torchrun() -> Shard:
    """This process's shard under torchrun (its gloo group joined); 0/1 without torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Shard()
    dist = torch.distributed
    if not dist.is_initialized():
        # the barrier after extraction waits for the slowest shard, which can take hours
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
    return Shard(dist.get_rank(), dist.get_world_size(), grouped=True)


def barrier(shard: Shard) -> None:
    if shard.grouped:
        torch.distributed.barrier()


@contextlib.contextmanager
def rank_zero_first(shard: Shard) -> Iterator[None]:
    """Rank 0 runs the block (creating the database) before the other ranks do."""
    if shard.rank:
        barrier(shard)
    yield
    if not shard.rank:
        barrier(shard)


class StagingArea:
    """A folder of ranks' extracted songs for one database (module docstring)."""

    def __init__(self, root: Path, db: FingerprintDB) -> None:
        self.root = Path(root)
        self.db = db
        wanted = {
            "model": list(model_identity(db.model_info)),
            "density": db.density,
            "dim": db.dim,
        }
        manifest = self.root / STAGING_MANIFEST
        if manifest.is_file():
            found = read_json_object(manifest, DatabaseError)
            if found != wanted:
                raise DatabaseError(
                    f"{self.root}: staging area made with another model or density "
                    f"({_describe(found)}); {db.path} has {_describe(wanted)}: "
                    "use another --staging folder"
                )
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            # ranks starting together write the same text, renamed into place
            atomic_write_text(manifest, json.dumps(wanted))

    def rank_folder(self, rank: int) -> Path:
        return self.root / f"rank-{rank}"

    def staged_file(self, checksum: str) -> Path | None:
        """The song's staged vectors in any rank's area, None where there are none."""
        for folder in self.root.glob("rank-*/"):
            file = folder / f"{checksum}.npy"
            if file.is_file():
                return file
        return None

    def _marker(self, rank: int, world: int) -> Path:
        return self.root / f"rank-{rank}-of-{world}.json"

    def finish(self, shard: Shard, files: list[Path], skipped: list[Skipped]) -> None:
        """Record that ``shard`` got through its ``files``."""
        document = {
            "files": [str(path.resolve()) for path in files],
            "skipped": {str(entry.path.resolve()): entry.reason for entry in skipped},
        }
        atomic_write_text(self._marker(shard.rank, shard.world), json.dumps(document))

    def unfinished(self, world: int) -> list[int]:
        return [rank for rank in range(world) if not self._marker(rank, world).is_file()]

    def check_complete(self, world: int, files: list[Path]) -> dict[str, str]:
        """The reasons the ranks skipped files for (by resolved path); a one-line
        ``DatabaseError`` unless every rank of ``world`` got through these ``files``."""
        missing = self.unfinished(world)
        if missing:
            ranks = ", ".join(f"{rank}/{world}" for rank in missing)
            raise DatabaseError(
                f"{self.root}: rank {ranks} not finished; nothing committed: run it again "
                f"(afp index-shards ... --shard {missing[0]}/{world})"
            )
        listed: set[str] = set()
        skipped: dict[str, str] = {}
        for rank in range(world):
            document = read_json_object(self._marker(rank, world), DatabaseError)
            listed.update(document["files"])
            skipped.update(document["skipped"])
        wanted = {str(path.resolve()) for path in files}
        if listed != wanted:
            raise DatabaseError(
                f"{self.root}: the ranks extracted another list of files ({len(wanted - listed)}"
                f" of these {len(wanted)} not among them); nothing committed: run the ranks "
                "again with these paths"
            )
        return skipped

    def remove(self) -> None:
        """Delete what the ranks wrote (the folder too, when nothing else is in it)."""
        for item in self.root.glob("rank-*"):
            if item.is_dir():
                shutil.rmtree(item)
            else:
                item.unlink()
        (self.root / STAGING_MANIFEST).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.root.rmdir()


def _describe(manifest: dict) -> str:
    model = manifest.get("model")
    name, checksum = model if isinstance(model, list) and len(model) == 2 else ("?", "?")
    return f"model {name} {str(checksum)[:12]}, density {manifest.get('density')}"


class _RankStaging:
    """A rank's staging area as the indexing loop's ``StagingDB``: songs go to
    ``rank-R/<checksum>.npy``, their warning lines beside them."""

    needs_calibration = False

    def __init__(self, area: StagingArea, rank: int) -> None:
        self.area = area
        self.folder = area.rank_folder(rank)
        self.warnings: dict[str, list[str]] = {}  # by resolved path, until the song is staged

    def has_song(self, checksum: str) -> bool:
        return self.area.db.has_song(checksum) or self.area.staged_file(checksum) is not None

    def stage_song(
        self, title: str, artist: str, source: str, duration_s: float, checksum: str, data: Any, /
    ) -> Song:
        self.folder.mkdir(exist_ok=True)
        lines = self.warnings.pop(source, [])
        if lines:  # before the vectors: a song's .npy is the sign it is staged whole
            atomic_write_text(self.folder / f"{checksum}.warnings.json", json.dumps(lines))
        atomic_save_npy(self.folder / f"{checksum}.npy", data)
        return Song(
            0, title, artist, source, duration_s, checksum, None, len(data), "staged", utc_now()
        )


@dataclasses.dataclass(frozen=True)
class StagedVectors:
    """The commit step's ``Extractor``: a file's vectors as a rank staged them."""

    area: StagingArea
    skipped: dict[str, str]  # resolved path -> why a rank skipped the file

    def __call__(
        self, path: Path, task: TaskState, on_warning: Callable[[str], None]
    ) -> np.ndarray:
        reason = self.skipped.get(str(path.resolve()))
        if reason is not None:
            raise AudioError(reason)
        checksum = file_sha256(path)
        file = self.area.staged_file(checksum)
        if file is None:
            raise DatabaseError(
                f"{path}: not in the staging area {self.area.root} (changed since the ranks "
                "read it?); run the ranks again"
            )
        lines = file.with_suffix(".warnings.json")
        if lines.is_file():
            for line in json.loads(lines.read_text(encoding="utf-8")):
                on_warning(line)
        return np.load(file)


def extract_shard(
    db: FingerprintDB,
    model: Fingerprinter,
    files: Sequence[Path],
    area: StagingArea,
    shard: Shard,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    task: TaskState | None = None,
    on_skip: Callable[[Skipped], None] = lambda _: None,
    on_warning: Callable[[Skipped], None] = lambda _: None,
) -> IndexResult:
    """Fingerprint ``shard``'s part of ``files`` into its staging area; songs in the
    database or already staged are not extracted again (``duplicates`` in the result)."""
    task = task or TaskState()
    staging = _RankStaging(area, shard.rank)
    skipped: list[Skipped] = []

    def skip(entry: Skipped) -> None:
        skipped.append(entry)
        on_skip(entry)

    def warn(entry: Skipped) -> None:
        staging.warnings.setdefault(str(entry.path.resolve()), []).append(entry.reason)
        on_warning(entry)

    fingerprinting = dataclasses.replace(
        vector_fingerprinting(db, model, batch_size=batch_size, device=device),
        committing="",
        commit=lambda cancelled: None,  # the commit step's, once every rank is through
        calibrate=lambda task: None,
    )
    mine = shard.files(files)
    result = index_files(staging, mine, fingerprinting, task=task, on_skip=skip, on_warning=warn)
    if not task.cancelled:
        area.finish(shard, mine, skipped)
    return result


def commit_shards(
    db: FingerprintDB,
    model: Fingerprinter,
    files: list[Path],
    area: StagingArea,
    world: int,
    *,
    device: str | torch.device = "cpu",
    task: TaskState | None = None,
    on_skip: Callable[[Skipped], None] = lambda _: None,
    on_warning: Callable[[Skipped], None] = lambda _: None,
) -> IndexResult:
    """Stage every file's staged vectors in the database in the files' order, commit and
    calibrate, as ``index_library`` does; then delete the staging area. A one-line
    ``DatabaseError`` before any change unless every rank of ``world`` finished."""
    task = task or TaskState()
    skipped = area.check_complete(world, files)
    fingerprinting = dataclasses.replace(  # index_library's, the staged vectors extracted
        vector_fingerprinting(db, model, device=device),
        extract=StagedVectors(area, skipped),
        gather=None,
    )
    result = index_files(
        db, files, fingerprinting, task=task, on_skip=on_skip, on_warning=on_warning
    )
    if not task.cancelled:
        area.remove()
    return result


def shard_summary(shard: Shard, result: IndexResult) -> str:
    """One line for the end of a rank's extraction."""
    rate = result.audio_s / result.elapsed_s if result.elapsed_s > 0 else 0.0
    return (
        f"{shard}: staged {len(result.added)} songs ({result.audio_s / 60:.1f} min of audio "
        f"in {result.elapsed_s:.1f} s, {rate:.0f} s of audio per s), "
        f"{len(result.duplicates)} already staged or in the "
        f"database, {len(result.skipped)} skipped"
    )
