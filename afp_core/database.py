"""A fingerprint database: a folder holding a faiss index, a song catalogue and a manifest.

Layout of ``DB_DIR``:

- ``manifest.json``: format, versions, vector dimension, the model that made the vectors
  (an opaque ``model_info`` dict), the index configuration and search settings;
- ``catalogue.sqlite``: table ``songs`` (one row per song, ``status`` 'staged' or
  'indexed') and table ``meta`` (current index file, generation, index type and why);
- ``index-<generation>.faiss``: the faiss index; song ``s`` owns the contiguous vector ids
  ``[s.first_vector_id, s.first_vector_id + s.vector_count)``;
- ``staging/<checksum>.npy``: float32 vectors extracted but not yet in the index;
- ``model.pt``: a copy of the checkpoint that made the vectors (when one was given);
- ``hubness-<generation>.npy``: how much each stored vector resembles other songs
  (``afp_core.hubness``), measured with the "no match" calibration.

Index type. Below ``IndexConfig.min_train_vectors`` vectors (or fewer than 8 training
points per PQ or coarse centroid) the index is an exact ``IndexFlatIP``; above, an
``IndexIVFPQ`` with inner-product metric. A flat index is upgraded to IVF-PQ by the
commit that crosses the threshold (a flat index holds the exact vectors, so nothing is
lost). Unless the configuration fixes them, the number of coarse lists is chosen then
from the vectors (``auto_nlist``) and the lists probed from the lists (``auto_nprobe``).
Later commits add to the trained index without training it again; the meta table keeps
how many vectors it was trained on and how evenly they filled the lists, and ``info``
says when a retrain would help (``FingerprintDB.retrain_reasons``). The coarse quantiser
is ``IndexFlatIP``: faiss trains inner-product IVF centroids with spherical k-means
(unit-norm centroids), and for unit queries and unit centroids the largest inner product
is the smallest L2 distance, so IP and L2 assign the same lists; IP keeps one metric
throughout.

Crash safety. ``stage_song`` writes ``staging/<checksum>.npy`` (temp file + rename)
before inserting its row, so a row always has its file. ``commit`` writes the new index
to a NEW generation file, then switches the catalogue (rows -> 'indexed', meta -> new
file name) in one SQLite transaction, and only then deletes the old generation and the
staging files. A crash before the transaction leaves the old state (plus an orphan file
that ``open`` deletes); after it, the new one. Writers (stage, commit, cleaning) hold an
advisory lock on ``DB_DIR/.lock`` so that a reader opening the database never deletes
the file a concurrent commit is writing. A disk that fills up fails a write the same way
(its temp file removed): one line naming the file (``afp_core.errors.describe_disk_full``;
SQLite's "full" errors too), and a rerun with room finishes the job.

Duplicates. ``stage_song`` with a checksum already in the catalogue raises
``DuplicateSong`` (carrying the existing ``Song``): callers check ``has_song`` first, so a
duplicate reaching ``stage_song`` is a mistake worth reporting rather than hiding.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, Self, TypeVar

import faiss
import numpy as np

from afp_core import __version__, hubness, ivf
from afp_core.config import AudioConfig, IndexConfig, from_dict, to_dict
from afp_core.errors import (
    AfpError,
    Cancelled,
    DatabaseError,
    DiskFull,
    as_disk_full,
    describe_disk_full,
)
from afp_core.faults import fault_point
from afp_core.fileutil import (
    atomic_folder,
    atomic_path,
    atomic_save_npy,
    atomic_write_text,
    check_document,
    file_sha256,
    file_size,
    one_line,
    read_json_object,
    utc_now,
)

FORMAT = "afp-database"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CATALOGUE = "catalogue.sqlite"
STAGING = "staging"
MODEL_FILE = "model.pt"
LOCK_FILE = ".lock"
INDEX_FLAT = "flat"
INDEX_IVFPQ = "ivfpq"
T = TypeVar("T", int, float)

# Fewer training points per centroid than this gives useless k-means (faiss warns below 39).
_MIN_POINTS_PER_CENTROID = 8
# The training sample holds at least this many vectors per coarse list (faiss's own
# minimum for a k-means without warnings), where the library has them.
_TRAIN_POINTS_PER_LIST = 39
# Automatic lists: about 4 sqrt(N), no fewer than the paper's 256 and no more than 65,536
# (past that a flat coarse quantiser costs more per query than the lists save).
AUTO_NLIST_MIN = 256
AUTO_NLIST_MAX = 65_536
# The paper's operating point, which automatic nprobe keeps the recall of.
_PAPER_NLIST, _PAPER_NPROBE = 256, 4
# A retrain would help once the index holds this many times the vectors it was trained
# on (automatic lists: the rule would then choose twice as many, each list is 4x as long
# as planned) or its lists are this much more uneven than right after training.
RETRAIN_GROWTH = 4.0
RETRAIN_IMBALANCE = 1.5
# Vectors added to faiss per call (songs read from staging are gathered to this many):
# bounds commit memory, and gives faiss's threads whole batches.
_ADD_CHUNK = 65_536
_TRAIN_SEED = 0
_CHECKSUM_RE = re.compile(r"[0-9A-Za-z_-]{1,128}")
_INDEX_RE = re.compile(r"index-(\d+)\.(faiss|ivfdata)")
_NORM_TOLERANCE = 1e-2
_SQLITE_DISK_FULL = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR_SHMSIZE}

_SCHEMA = """
CREATE TABLE songs (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    artist TEXT NOT NULL,
    source TEXT NOT NULL,
    duration_s REAL NOT NULL,
    checksum TEXT NOT NULL UNIQUE,
    first_vector_id INTEGER,
    vector_count INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('staged', 'indexed')),
    added_at TEXT NOT NULL
);
CREATE INDEX songs_status ON songs (status);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_SONG_COLUMNS = (
    "id, title, artist, source, duration_s, checksum, first_vector_id, vector_count, "
    "status, added_at"
)


@dataclasses.dataclass(frozen=True)
class Song:
    """One catalogue row."""

    id: int
    title: str
    artist: str
    source: str
    duration_s: float
    checksum: str
    first_vector_id: int | None
    vector_count: int
    status: str
    added_at: str


class DuplicateSong(DatabaseError):  # noqa: N818 - names the situation, like Cancelled
    """``stage_song`` was given a checksum that is already in the catalogue."""

    def __init__(self, message: str, song: Song) -> None:
        super().__init__(message)
        self.song = song


def model_identity(model_info: dict[str, Any]) -> tuple[Any, Any]:
    """What makes two models the same: architecture name and checkpoint checksum."""
    return model_info.get("name"), model_info.get("checkpoint_sha256")


def auto_nlist(vectors: int) -> int:
    """Coarse lists for an index of ``vectors`` vectors: about 4 sqrt(N), the rule of
    thumb for faiss IVF on CPU, within [``AUTO_NLIST_MIN``, ``AUTO_NLIST_MAX``] and at most
    one list per 8 vectors (k-means needs points to place its centroids)."""
    lists = int(np.clip(round(4 * math.sqrt(max(vectors, 0))), AUTO_NLIST_MIN, AUTO_NLIST_MAX))
    return max(1, min(lists, vectors // _MIN_POINTS_PER_CENTROID))


def auto_nprobe(nlist: int) -> int:
    """Lists to probe among ``nlist`` for at least the recall of the paper's 4 of 256:
    4 sqrt(nlist / 256), rounded up. More, shorter lists put a query's neighbours in
    relatively fewer of them; measured on synthetic fingerprints (README, "Index alone"),
    16 probes of 4,096 lists found the exact neighbour more often than 4 of 256 (62 % vs
    54 %) in under half the time."""
    return max(1, math.ceil(_PAPER_NPROBE * math.sqrt(nlist / _PAPER_NLIST)))


def list_sizes(index: faiss.Index) -> np.ndarray:
    """Vectors in each inverted list of an IVF index."""
    invlists = faiss.extract_index_ivf(index).invlists
    if invlists is None:
        raise DatabaseError("the IVF index has no inverted lists")
    return np.array([invlists.list_size(i) for i in range(invlists.nlist)], np.int64)


def imbalance(sizes: np.ndarray) -> float:
    """faiss's imbalance factor: nlist sum(size^2) / N^2; 1 when every list is as long,
    and the search cost relative to that (a query lands in long lists more often)."""
    total = float(sizes.sum())
    return float(len(sizes) * np.square(sizes, dtype=np.float64).sum() / total**2) if total else 1.0


class SongCatalogue:
    """The song catalogue and writers' lock shared by both kinds of database.

    ``path`` (set by the subclass) holds ``catalogue.sqlite`` (tables ``songs`` and
    ``meta``) and ``staging/<checksum>.npy``, one file per song extracted but not yet
    committed. A song owns the contiguous ids ``[first_vector_id, first_vector_id +
    vector_count)`` of what the database stores per time step: fingerprint vectors here,
    spectrogram frames in ``afp_core.landmark``.
    """

    path: Path

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        """Use ``create``, ``open`` or ``open_or_create``."""
        self.path = path
        self._manifest = manifest
        self._generation = 0
        self._song_ids = np.zeros(0, np.int64)  # the indexed songs

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Self:
        """Open an existing database; one-line ``DatabaseError`` if it is missing or broken.

        Deletes leftovers of interrupted writes (orphan generations, staging files
        without a row, temp files) when no other process is writing.
        """
        path = Path(path)
        if not path.exists():
            raise DatabaseError(f"{path}: no such database folder")
        if not path.is_dir():
            raise DatabaseError(f"{path}: not a folder")
        manifest = cls._read_manifest(path)
        if not (path / CATALOGUE).is_file():
            raise DatabaseError(f"{path}: {CATALOGUE} is missing")
        db = cls(path, manifest)
        db._clean_orphans()
        return db

    @classmethod
    def _build(
        cls,
        path: Path,
        manifest: str,
        catalogue_meta: dict[str, str],
        checkpoint: Path | None = None,
    ) -> Self:
        """Create the database at ``path`` (checked by ``check_new_database_folder``) and
        open it: the ``manifest`` text, an empty catalogue with ``catalogue_meta``, the
        ``staging`` folder and a copy of ``checkpoint``. The folder is built under a
        temporary name and renamed into place (``atomic_folder``), so an interrupted
        create leaves nothing behind."""
        try:
            with atomic_folder(path) as building:
                (building / STAGING).mkdir()
                with closing(sqlite3.connect(building / CATALOGUE)) as conn:
                    conn.execute("PRAGMA journal_mode=WAL")
                    with conn:
                        conn.executescript(_SCHEMA)
                        conn.executemany(
                            "INSERT INTO meta (key, value) VALUES (?, ?)",
                            [("schema_version", "1"), *catalogue_meta.items()],
                        )
                if checkpoint is not None:
                    shutil.copyfile(checkpoint, building / MODEL_FILE)
                (building / MANIFEST).write_text(manifest, encoding="utf-8")  # last
        except sqlite3.Error as exc:
            raise catalogue_error(path, "cannot create database", exc) from None
        except OSError as exc:
            raise as_disk_full(exc, path) or DatabaseError(
                f"{path}: cannot create database ({one_line(exc)})"
            ) from None
        return cls.open(path)

    @staticmethod
    def _read_manifest(path: Path) -> dict[str, Any]:
        """The kind's ``manifest.json``, checked; one-line ``DatabaseError`` if broken."""
        raise NotImplementedError

    # ------------------------------------------------------------------ settings

    @property
    def search_settings(self) -> dict[str, Any]:
        """A copy of the manifest's search settings (calibrated thresholds, nprobe...)."""
        return json.loads(json.dumps(self._manifest["search"]))

    def save_search_settings(self, **settings: Any) -> None:
        """Merge ``settings`` into the manifest's search settings, written atomically; a
        value of None removes a key."""
        with self._locked():
            manifest = self._read_manifest(self.path)
            search = manifest["search"]
            for key, value in settings.items():
                if value is None:
                    search.pop(key, None)
                else:
                    search[key] = value
            atomic_write_text(self.path / MANIFEST, manifest_text(manifest))
        self._manifest = manifest

    @property
    def generation(self) -> int:
        """The generation of the index (or postings) the catalogue points to (0 before
        the first commit)."""
        return self._generation

    @property
    def needs_calibration(self) -> bool:
        """Whether the "no match" thresholds are missing or from an earlier generation.

        Both kinds of database save their thresholds after the commit that makes a
        generation, stamped ``calibrated_generation``: a calibration interrupted in
        between leaves the stamp behind, and ``afp index`` run again repairs it even with
        nothing to add. A database of fewer than two songs has none to calibrate.
        """
        stamp = self._manifest["search"].get("calibrated_generation")
        return stamp != self._generation and len(self._song_ids) >= 2

    # ------------------------------------------------------------------ catalogue

    def has_song(self, checksum: str) -> bool:
        """Whether a song with this content checksum is staged or indexed."""
        with self._connect() as conn:
            row = conn.execute("SELECT 1 FROM songs WHERE checksum = ?", (checksum,)).fetchone()
        return row is not None

    def songs(self, status: str | None = None) -> list[Song]:
        """All songs in catalogue id order, optionally only 'staged' or 'indexed' ones."""
        query = f"SELECT {_SONG_COLUMNS} FROM songs"
        args: tuple[Any, ...] = ()
        if status is not None:
            query += " WHERE status = ?"
            args = (status,)
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY id", args).fetchall()
        return [Song(*row) for row in rows]

    def song(self, song_id: int) -> Song:
        """The song with catalogue id ``song_id``."""
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT {_SONG_COLUMNS} FROM songs WHERE id = ?", (int(song_id),)
            ).fetchone()
        if row is None:
            raise DatabaseError(f"{self.path}: no song with id {song_id}")
        return Song(*row)

    def song_by_checksum(self, checksum: str) -> Song | None:
        """The song with this content checksum, or None."""
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT {_SONG_COLUMNS} FROM songs WHERE checksum = ?", (checksum,)
            ).fetchone()
        return Song(*row) if row else None

    # ------------------------------------------------------------------ writing

    def _check_song_fields(self, source: str, checksum: str, duration_s: float) -> None:
        if not isinstance(checksum, str) or not _CHECKSUM_RE.fullmatch(checksum):
            raise DatabaseError(f"{self.path}: invalid checksum {checksum!r} for {source}")
        if not np.isfinite(duration_s) or duration_s < 0:
            raise DatabaseError(f"{self.path}: invalid duration {duration_s!r} for {source}")

    def _stage(
        self,
        title: str,
        artist: str,
        source: str,
        duration_s: float,
        checksum: str,
        data: np.ndarray,
        count: int,
    ) -> Song:
        """Write ``data`` to the song's staging file, then insert its 'staged' row of
        ``count`` ids, so a row always has its file; ``DuplicateSong`` if ``checksum`` is
        catalogued (checked under the lock)."""
        with self._locked():
            existing = self.song_by_checksum(checksum)
            if existing is not None:
                raise DuplicateSong(
                    f"{self.path}: {source} is already in the database as song {existing.id} "
                    f"({existing.title!r}, {existing.status})",
                    existing,
                )
            staging = self._staging_file(checksum)
            staging.parent.mkdir(exist_ok=True)
            atomic_save_npy(staging, data)
            row = (str(title), str(artist), str(source), float(duration_s), checksum, count)
            with self._connect() as conn, conn:
                cursor = conn.execute(
                    "INSERT INTO songs (title, artist, source, duration_s, checksum, "
                    "first_vector_id, vector_count, status, added_at) "
                    "VALUES (?, ?, ?, ?, ?, NULL, ?, 'staged', ?)",
                    (*row, utc_now()),
                )
                song_id = int(cursor.lastrowid)  # type: ignore[arg-type]
        return self.song(song_id)

    def _staging_file(self, checksum: str) -> Path:
        return self.path / STAGING / f"{checksum}.npy"

    def _mark_indexed(self, first_ids: list[tuple[int, int]], meta: dict[str, str]) -> None:
        """The commit point: rows (first id, song id) -> 'indexed' and ``meta``, one transaction."""
        with self._connect() as conn, conn:
            conn.executemany(
                "UPDATE songs SET first_vector_id = ?, status = 'indexed' "
                "WHERE id = ? AND status = 'staged'",
                first_ids,
            )
            conn.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(meta.items())
            )

    def _clean_orphans(self) -> None:
        """Delete leftovers of interrupted writes, unless another writer is busy."""
        with self._locked(blocking=False) as locked:
            if not locked:
                return
            self._load_state()
            self._delete_unused_generations()
            self._delete_stray_files()

    def _load_state(self) -> None:
        raise NotImplementedError

    def _delete_unused_generations(self) -> None:
        """Delete the search structure's old generations (each kind of database its own)."""
        raise NotImplementedError

    def _delete_stray_files(self) -> None:
        """Temp files of interrupted writes and staging files without a 'staged' row.

        The caller holds the lock.
        """
        for file in self.path.iterdir():
            if file.name.endswith(".tmp") and file.is_file():
                file.unlink(missing_ok=True)
        staging = self.path / STAGING
        if staging.is_dir():
            wanted = {f"{song.checksum}.npy" for song in self.songs("staged")}
            for file in staging.iterdir():
                if file.is_file() and file.name not in wanted:
                    file.unlink(missing_ok=True)

    # ------------------------------------------------------------------ internals

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            with closing(sqlite3.connect(self.path / CATALOGUE, timeout=30)) as conn:
                yield conn
        except sqlite3.DatabaseError as exc:
            raise catalogue_error(self.path / CATALOGUE, "catalogue error", exc) from None

    @contextlib.contextmanager
    def _locked(self, blocking: bool = True) -> Iterator[bool]:
        """Hold the writers' lock; yields False if not blocking and another writer has it."""
        try:
            import fcntl
        except ImportError:  # no advisory locks (Windows): single-writer use assumed
            yield True
            return
        try:
            handle = (self.path / LOCK_FILE).open("a+b")
        except OSError as exc:
            if not blocking:
                yield False
                return
            raise DatabaseError(
                f"{self.path}: cannot write to the database ({one_line(exc)})"
            ) from None
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _read_catalogue(self) -> tuple[dict[str, str], list[tuple[int, int, int]]]:
        """Meta and indexed spans from one read transaction (a consistent snapshot)."""
        with self._connect() as conn:
            try:
                conn.execute("BEGIN")
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                rows = conn.execute(
                    "SELECT first_vector_id, vector_count, id FROM songs "
                    "WHERE status = 'indexed' ORDER BY first_vector_id"
                ).fetchall()
                conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                raise catalogue_error(self.path / CATALOGUE, "not a valid catalogue", exc) from None
        return meta, rows


def catalogue_error(file: Path, what: str, exc: sqlite3.Error) -> AfpError:
    """The one-line error for SQLite's ``exc`` on the catalogue ``file``: ``DiskFull`` where
    it found no room (SQLite keeps no errno: SQLITE_FULL, or the shared-memory file of
    WAL mode, which even a reader must grow, left short), else ``what`` went wrong."""
    if getattr(exc, "sqlite_errorcode", None) in _SQLITE_DISK_FULL:
        return DiskFull(describe_disk_full(file))
    return DatabaseError(f"{file}: {what} ({one_line(exc)})")


def check_new_database_folder(path: Path) -> None:
    """Refuse to create a database where one exists, on a file, or in a non-empty folder."""
    if (path / MANIFEST).exists():
        raise DatabaseError(f"{path}: a database already exists here; open it instead")
    if path.exists() and not path.is_dir():
        raise DatabaseError(f"{path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        raise DatabaseError(f"{path}: folder is not empty and is not an afp database")


def manifest_text(manifest: dict[str, Any]) -> str:
    """A manifest as written to ``manifest.json``."""
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


class FingerprintDB(SongCatalogue):
    """A database folder opened for reading and writing (see the module docstring)."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        """Use ``create``, ``open`` or ``open_or_create``."""
        super().__init__(path, manifest)
        self.dim: int = manifest["dim"]
        self.index_config: IndexConfig = from_dict(IndexConfig, manifest["index"], "index")
        # None: automatic, from the trained index's lists (auto_nprobe)
        self._nprobe: int | None = manifest["search"].get("nprobe", self.index_config.nprobe)
        self._index: faiss.Index | None = None
        self._index_name = ""
        self._index_type = ""
        self._index_reason = ""
        self._trained_vectors: int | None = None
        self._trained_imbalance: float | None = None
        # Indexed songs sorted by first_vector_id (for locate) ...
        self._first = np.zeros(0, np.int64)
        self._count = np.zeros(0, np.int64)
        # ... and the same spans sorted by song id (for song_spans).
        self._by_id = np.zeros(0, np.int64)
        # the hubness table (afp_core.hubness) and the file it was read from
        self._penalties: np.ndarray | None = None
        self._penalties_file = ""
        self._load_state()

    # ------------------------------------------------------------------ opening

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        model_info: dict[str, Any],
        dim: int = 128,
        index_config: IndexConfig = IndexConfig(),  # noqa: B008 - frozen dataclass
        checkpoint: str | os.PathLike[str] | None = None,
    ) -> FingerprintDB:
        """Create an empty database at ``path`` (a new or empty folder).

        Refuses a folder that already holds a database (use ``open_or_create``) or any
        other files; an interrupted create leaves nothing behind.
        """
        path = Path(path)
        check_new_database_folder(path)
        _validate_config(path, dim, index_config)
        if not isinstance(model_info, dict):
            raise DatabaseError(f"{path}: model_info must be a dict")
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": utc_now(),
            "afp_version": __version__,
            "faiss_version": faiss.__version__,
            "dim": dim,
            "model_info": model_info,
            "index": to_dict(index_config),
            "search": {},
        }
        try:
            text = manifest_text(manifest)
        except (TypeError, ValueError) as exc:
            raise DatabaseError(f"{path}: model_info is not JSON-serialisable ({exc})") from None
        source = Path(checkpoint) if checkpoint is not None else None
        if source is not None:
            if not source.is_file():
                raise DatabaseError(f"{source}: checkpoint file not found")
            expected = model_info.get("checkpoint_sha256")
            if expected and file_sha256(source) != expected:
                raise DatabaseError(
                    f"{source}: checkpoint sha256 differs from model_info['checkpoint_sha256']"
                )

        return cls._build(path, text, {"index_file": "", "generation": "0"}, source)

    @staticmethod
    def _read_manifest(path: Path) -> dict[str, Any]:
        return _read_manifest(path)

    @classmethod
    def open_or_create(
        cls,
        path: str | os.PathLike[str],
        model_info: dict[str, Any],
        dim: int = 128,
        index_config: IndexConfig = IndexConfig(),  # noqa: B008 - frozen dataclass
        checkpoint: str | os.PathLike[str] | None = None,
    ) -> FingerprintDB:
        """Open the database at ``path`` if it exists (same model and dim), else create it.

        An existing database keeps its own index configuration and model file.
        """
        path = Path(path)
        if not (path / MANIFEST).exists():
            return cls.create(path, model_info, dim, index_config, checkpoint)
        db = cls.open(path)
        db.check_model(model_info)
        if db.dim != dim:
            raise DatabaseError(f"{path}: database vectors have dim {db.dim}, not {dim}")
        return db

    # ------------------------------------------------------------------ model

    @property
    def model_info(self) -> dict[str, Any]:
        """The opaque description of the model that made the vectors."""
        return self._manifest["model_info"]

    @property
    def model_path(self) -> Path | None:
        """The database's own copy of the checkpoint, if it has one."""
        path = self.path / MODEL_FILE
        return path if path.is_file() else None

    def check_model(self, model_info: dict[str, Any]) -> None:
        """Refuse ``model_info`` unless it names the model the database was built with."""
        own, other = model_identity(self.model_info), model_identity(model_info)
        if own != other:
            raise DatabaseError(
                f"{self.path}: DB was built with model {own[0]} (sha {short_sha(own[1])}), "
                f"not {other[0]} (sha {short_sha(other[1])}); "
                "use the database's own model or rebuild"
            )

    # ------------------------------------------------------------------ settings

    def save_search_settings(self, **settings: Any) -> None:
        """Merge ``settings`` into the manifest's search settings, written atomically.

        ``nprobe`` saved here becomes the database's default (and applies now); a value
        of None removes a key.
        """
        if "nprobe" in settings and settings["nprobe"] is not None:
            self.nprobe = settings["nprobe"]
        super().save_search_settings(**settings)

    @property
    def needs_calibration(self) -> bool:
        """Also when the hubness the thresholds were set with is missing, lost or from
        an earlier generation (and ``hub_neighbours`` asks for it)."""
        if super().needs_calibration:
            return True
        if self.index_config.hub_neighbours < 1 or len(self._song_ids) < 2:
            return False
        measured = self._manifest["search"].get(hubness.SETTING) or {}
        return (
            measured.get("generation") != self._generation
            or not (self.path / str(measured.get("file"))).is_file()
        )

    def hubness_penalty(self, ids: np.ndarray) -> np.ndarray | None:
        """Per vector id, how much more than the average stored vector it resembles other
        songs (``afp_core.hubness``); None when it was not measured."""
        entry = self._manifest["search"].get(hubness.SETTING)
        if not entry:
            return None
        if entry.get("file") != self._penalties_file:
            self._penalties = hubness.load_penalties(self.path, entry)
            self._penalties_file = str(entry.get("file"))
        return None if self._penalties is None else hubness.penalties_of(self._penalties, ids)

    @property
    def search_threshold(self) -> str | None:
        """Default ``threshold`` for ``search.identify_vectors``.

        'auto' (use the calibrated threshold for the method and query length) when the
        database has calibrated thresholds, else None (no rejection).
        """
        return "auto" if self._manifest["search"].get("thresholds") else None

    @property
    def density(self) -> int:
        """Stored windows per query hop (``IndexConfig.density``): query window j lines up
        with the stored window at start + density * j."""
        return self.index_config.density

    def stored_span(self, n_windows: int) -> int:
        """Stored windows from the first to the last that a query of ``n_windows`` meets."""
        return self.density * (n_windows - 1) + 1

    @property
    def query_hop_s(self) -> float:
        """Seconds between a query's windows: the hop of the model that made the vectors."""
        audio = self.model_info.get("spec", {}).get("audio", {})
        return float(audio.get("hop_s", AudioConfig.hop_s))

    @property
    def stored_hop_s(self) -> float:
        """Seconds between stored windows: window p of a song starts p * stored_hop_s in."""
        return self.query_hop_s / self.density

    @property
    def nprobe(self) -> int:
        """IVF lists visited per query (in memory; ``save_search_settings`` persists it)."""
        if self._index is not None and self._index_type == INDEX_IVFPQ:
            return int(faiss.extract_index_ivf(self._index).nprobe)
        return self._nprobe if self._nprobe is not None else _PAPER_NPROBE

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise DatabaseError(f"{self.path}: nprobe must be a positive integer, not {value!r}")
        self._nprobe = int(value)
        self._apply_nprobe()

    def _apply_nprobe(self) -> None:
        if self._index is not None and self._index_type == INDEX_IVFPQ:
            self._set_nprobe(self._index)

    def _set_nprobe(self, index: faiss.Index) -> None:
        """The set nprobe, or the automatic one for this index's lists."""
        nlist = faiss.extract_index_ivf(index).nlist
        # The attribute is `nprobe`: the authors' `nprobes` was silently ignored
        # (docs/design.md §2.1).
        ivf.set_nprobe(index, self._nprobe if self._nprobe is not None else auto_nprobe(nlist))

    # ------------------------------------------------------------------ catalogue

    def stage_song(
        self,
        title: str,
        artist: str,
        source: str,
        duration_s: float,
        checksum: str,
        vectors: np.ndarray,
    ) -> Song:
        """Store a song's vectors in staging and its row as 'staged'; ``commit`` indexes it.

        Staged songs survive an interrupt: a later run skips them (``has_song``) and the
        next ``commit`` indexes them. Raises ``DuplicateSong`` for a known checksum.
        """
        self._check_song_fields(source, checksum, duration_s)
        vectors = self._check_vectors(vectors, f"vectors of {source}")
        if len(vectors) == 0:
            raise DatabaseError(f"{self.path}: {source} has no vectors (shorter than a window)")
        norms = np.linalg.norm(vectors, axis=1)
        if np.any(np.abs(norms - 1.0) > _NORM_TOLERANCE):
            raise DatabaseError(f"{self.path}: vectors of {source} are not unit length")
        return self._stage(title, artist, source, duration_s, checksum, vectors, len(vectors))

    # ------------------------------------------------------------------ commit

    def commit(
        self,
        progress: Callable[[int, int], None] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> int:
        """Move every staged song into the index; returns how many songs were committed.

        ``progress(done, total)`` counts vectors added; ``cancel()`` returning True stops
        the commit with ``Cancelled`` and leaves the database as it was (songs staged).
        """
        with self._locked():
            # Another process may have committed since we loaded.
            self._load_state()
            staged = self.songs("staged")
            if not staged:
                return 0
            try:
                self._commit_locked(staged, progress or (lambda _d, _t: None), cancel)
            except BaseException:
                # The in-memory index may hold half-added vectors: return to the disk state,
                # and drop a new generation file the catalogue never pointed to.
                self._load_state(reload_index=True)
                self._delete_unused_generations()
                raise
        return len(staged)

    def _commit_locked(
        self,
        staged: list[Song],
        progress: Callable[[int, int], None],
        cancel: Callable[[], bool] | None,
    ) -> None:
        def check_cancel() -> None:
            if cancel is not None and cancel():
                raise Cancelled(f"{self.path}: commit cancelled; {len(staged)} songs stay staged")

        files = [self._staging_file(song.checksum) for song in staged]
        for song, file in zip(staged, files, strict=True):
            if not file.is_file():
                raise DatabaseError(
                    f"{self.path}: staging file of song {song.id} ({song.source}) is missing"
                )
        old = self._index
        existing = old.ntotal if old is not None else 0
        new = sum(song.vector_count for song in staged)
        total = existing + new
        required = self._ivf_required_vectors()
        upgrade = self._index_type != INDEX_IVFPQ and total >= required
        done = 0
        progress(0, total if upgrade else new)
        check_cancel()

        if upgrade:
            index = self._train_ivfpq(old, staged, files)
            check_cancel()
            index_type = INDEX_IVFPQ
            nlist = faiss.extract_index_ivf(index).nlist
            chosen = " (about 4 sqrt(N))" if self.index_config.nlist is None else ""
            reason = (
                f"IVF-PQ: {total} vectors >= {required} needed to train {nlist} "
                f"lists{chosen} and {2**self.index_config.nbits} PQ centroids"
            )
        elif old is None:
            index = faiss.IndexFlatIP(self.dim)
            index_type = INDEX_FLAT
            reason = f"exact flat: {total} vectors < {required} needed to train IVF-PQ"
        else:
            index = old
            index_type, reason = self._index_type, self._index_reason
            if index_type == INDEX_FLAT:
                reason = f"exact flat: {total} vectors < {required} needed to train IVF-PQ"
        grand_total = total if upgrade else new

        first_ids: list[tuple[int, int]] = []
        next_id = existing  # an upgrade moves the flat index's vectors first
        for song in staged:
            first_ids.append((next_id, song.id))
            next_id += song.vector_count

        def vectors() -> Iterator[np.ndarray]:
            if upgrade and old is not None:  # the flat index's vectors move into the new one
                for start in range(0, existing, _ADD_CHUNK):
                    yield old.reconstruct_n(start, min(_ADD_CHUNK, existing - start))
            for song, file in zip(staged, files, strict=True):
                yield self._load_staged(song, file)

        def after(count: int) -> None:
            nonlocal done
            done += count
            progress(done, grand_total)
            check_cancel()

        generation = self._generation + 1
        name = f"index-{generation:06d}.faiss"
        chunks = _gathered(vectors(), _ADD_CHUNK)
        if index_type == INDEX_IVFPQ and (
            ivf.on_disk(index) or ivf.over_budget(total, index, self.index_config)
        ):
            lists = ivf.lists_file(self.path / name)
            ivf.fill_on_disk(index, chunks, lists, self.index_config, after, grand_total)
        else:
            ivf.fill_in_memory(index, chunks, after)
        if index.ntotal != total:
            raise DatabaseError(f"{self.path}: index holds {index.ntotal} vectors, not {total}")

        # what the training was made for, to tell later how far the index drifted from it
        trained = (
            {"trained_vectors": str(total), "trained_imbalance": repr(imbalance(list_sizes(index)))}
            if upgrade
            else {}
        )
        with atomic_path(self.path / name) as tmp:
            _write_index(index, tmp)
        fault_point("index.commit")
        check_cancel()
        self._record_commit(first_ids, name, generation, index_type, reason, trained)

        old_name = self._index_name
        self._index, self._index_name = index, name
        self._load_state()
        if old_name and old_name != name:
            self._delete_generation(old_name)
        for file in files:
            file.unlink(missing_ok=True)

    def _record_commit(
        self,
        first_ids: list[tuple[int, int]],
        index_name: str,
        generation: int,
        index_type: str,
        reason: str,
        trained: dict[str, str],
    ) -> None:
        """The commit point: one transaction switches rows and the current index file
        (and, after training, what it was trained on)."""
        self._mark_indexed(
            first_ids,
            {
                "index_file": index_name,
                "generation": str(generation),
                "index_type": index_type,
                "index_reason": reason,
                **trained,
            },
        )

    def _ivf_required_vectors(self) -> int:
        cfg = self.index_config
        centroids = max(cfg.nlist or AUTO_NLIST_MIN, 2**cfg.nbits)
        return max(cfg.min_train_vectors, _MIN_POINTS_PER_CENTROID * centroids)

    def _train_ivfpq(
        self, old: faiss.Index | None, staged: list[Song], files: list[Path]
    ) -> faiss.Index:
        """A trained, empty IVF-PQ index; the sample is drawn from old and staged vectors."""
        cfg = self.index_config
        existing = old.ntotal if old is not None else 0
        total = existing + sum(song.vector_count for song in staged)
        rng = np.random.default_rng(_TRAIN_SEED)
        nlist = cfg.nlist or auto_nlist(total)
        size = min(total, max(cfg.max_train_vectors, _TRAIN_POINTS_PER_LIST * nlist))
        picks = np.sort(rng.choice(total, size=size, replace=False))
        parts = []
        old_picks = picks[picks < existing]
        if old is not None and len(old_picks):
            parts.append(old.reconstruct_batch(old_picks.astype(np.int64)))
        # each song's picks: a binary search per song (a library may hold 100,000 songs)
        starts = existing + np.cumsum([0] + [song.vector_count for song in staged])
        cuts = np.searchsorted(picks, starts)
        for i, (song, file) in enumerate(zip(staged, files, strict=True)):
            local = picks[cuts[i] : cuts[i + 1]] - starts[i]
            if len(local):
                vectors = self._load_staged(song, file)
                parts.append(np.ascontiguousarray(vectors[local], dtype=np.float32))
        sample = np.concatenate(parts)
        index = ivf.new_ivfpq(self.dim, nlist, cfg)
        ivf.train_ivfpq(index, sample, _MIN_POINTS_PER_CENTROID, _TRAIN_SEED)
        # Array direct map: vectors are added with sequential ids, and reconstruct(id)
        # (offset-consistent re-scoring) needs id -> list position.
        index.make_direct_map()
        self._set_nprobe(index)
        return index

    def _load_staged(self, song: Song, file: Path) -> np.ndarray:
        """A staged song's vectors, memory-mapped (commit copies them chunk by chunk)."""
        try:
            vectors = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DatabaseError(f"{file}: unreadable staging file ({one_line(exc)})") from None
        if vectors.shape != (song.vector_count, self.dim) or vectors.dtype != np.float32:
            raise DatabaseError(
                f"{file}: staging file holds {vectors.dtype} {vectors.shape}, expected "
                f"float32 ({song.vector_count}, {self.dim})"
            )
        return vectors

    # ------------------------------------------------------------------ search

    @property
    def index(self) -> faiss.Index | None:
        """The faiss index in memory (None before the first commit); read, don't modify."""
        return self._index

    @property
    def index_type(self) -> str:
        """'flat', 'ivfpq', or '' before the first commit."""
        return self._index_type

    @property
    def ntotal(self) -> int:
        """Vectors in the index."""
        return int(self._index.ntotal) if self._index is not None else 0

    def search(
        self, queries: np.ndarray, k: int, exclude_song: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Inner-product k-NN: (scores (n, k) float32, ids (n, k) int64), -inf / -1 if missing.

        ``exclude_song`` leaves that song's vectors out of the search (for calibration).
        """
        index = self._require_index()
        queries = self._check_vectors(queries, "query vectors")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise DatabaseError(f"{self.path}: k must be a positive integer, not {k!r}")
        params: faiss.SearchParameters | None = None
        if exclude_song is not None:
            first, count = self.song_spans(np.array([exclude_song]))
            if count[0] > 0:
                selector = faiss.IDSelectorNot(
                    faiss.IDSelectorRange(int(first[0]), int(first[0] + count[0]))
                )
                # faiss's Python wrapper sets the fields from keyword arguments (and keeps
                # the selector alive); its stubs declare constructors without arguments.
                if self._index_type == INDEX_IVFPQ:
                    # Explicit nprobe: SearchParametersIVF would otherwise default to 1.
                    params = faiss.SearchParametersIVF(sel=selector, nprobe=self.nprobe)  # type: ignore[call-arg]
                else:
                    params = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
        scores, ids = index.search(queries, int(k), params=params)
        scores[ids < 0] = -np.inf
        return scores, ids.astype(np.int64, copy=False)

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map vector ids to (song ids, window positions within the song); -1 where invalid."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self._first) == 0:
            return np.full(ids.shape, -1, np.int64), np.full(ids.shape, -1, np.int64)
        slot = np.searchsorted(self._first, ids, side="right") - 1
        safe = np.clip(slot, 0, len(self._first) - 1)
        first = self._first[safe]
        valid = (ids >= 0) & (slot >= 0) & (ids < first + self._count[safe])
        song_ids = np.where(valid, self._song_ids[safe], -1)
        positions = np.where(valid, ids - first, -1)
        return song_ids.astype(np.int64), positions.astype(np.int64)

    def song_spans(self, song_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first_vector_id, vector_count) of indexed songs; (-1, 0) for others."""
        song_ids = np.asarray(song_ids, dtype=np.int64)
        order = self._by_id
        if len(order) == 0:
            return np.full(song_ids.shape, -1, np.int64), np.zeros(song_ids.shape, np.int64)
        sorted_ids = self._song_ids[order]
        slot = np.clip(np.searchsorted(sorted_ids, song_ids), 0, len(order) - 1)
        found = sorted_ids[slot] == song_ids
        first = np.where(found, self._first[order][slot], -1)
        count = np.where(found, self._count[order][slot], 0)
        return first.astype(np.int64), count.astype(np.int64)

    def vector_id(self, song_id: int, position: int) -> int:
        """The vector id of window ``position`` of an indexed song."""
        first, count = self.song_spans(np.array([song_id]))
        if not 0 <= position < count[0]:
            raise DatabaseError(
                f"{self.path}: song {song_id} has no indexed window {position} ({count[0]} windows)"
            )
        return int(first[0] + position)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """Vectors by id, (len(ids), dim) float32: decoded PQ codes for IVF-PQ, exact for flat."""
        index = self._require_index()
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        if len(ids) == 0:
            return np.zeros((0, self.dim), np.float32)
        if ids.min() < 0 or ids.max() >= index.ntotal:
            raise DatabaseError(
                f"{self.path}: vector ids must be in [0, {index.ntotal}), got "
                f"{ids.min()}..{ids.max()}"
            )
        return index.reconstruct_batch(ids)

    # ------------------------------------------------------------------ info

    def info(self) -> dict[str, Any]:
        """Songs, vectors, hours, index type and parameters, bytes on disk, model."""
        indexed = self.songs("indexed")
        staged = self.songs("staged")
        hours = sum(song.duration_s for song in indexed) / 3600.0
        index_bytes = 0
        if self._index_name:
            index_file = self.path / self._index_name
            index_bytes = file_size(index_file) + file_size(ivf.lists_file(index_file))
        catalogue_bytes = sum(file_size(p) for p in self.path.glob(f"{CATALOGUE}*"))
        staging_bytes = sum(file_size(p) for p in (self.path / STAGING).glob("*.npy"))
        index: dict[str, Any] = {"type": self._index_type or "none"}
        lists: dict[str, Any] | None = None
        training: dict[str, Any] | None = None
        ram = self.ntotal * self.dim * 4  # a flat index: the vectors
        if self._index_type == INDEX_IVFPQ:
            ivfpq = self._ivfpq()
            coarse, pq = faiss.extract_index_ivf(ivfpq), ivfpq.pq
            index |= {"m": pq.M, "nbits": pq.nbits, "nlist": coarse.nlist, "nprobe": coarse.nprobe}
            sizes = list_sizes(ivfpq)
            lists = {
                "count": coarse.nlist,
                "min": int(sizes.min()),
                "median": float(np.median(sizes)),
                "max": int(sizes.max()),
                "imbalance": imbalance(sizes),
                "quantizer": "flat" if ivf.hnsw_quantizer(ivfpq) is None else "hnsw",
                "on_disk": ivf.on_disk(ivfpq),
            }
            trained = self._trained_vectors
            training = {
                "vectors": trained,
                "added_since": None if trained is None else self.ntotal - trained,
                "imbalance": self._trained_imbalance,
                "retrain": self.retrain_reasons(sizes),
            }
            ram = ivf.ram_bytes(self.ntotal, ivfpq, ivf.on_disk(ivfpq))
        elif self._index_type == INDEX_FLAT:
            index |= {"metric": "inner_product"}
        return {
            "path": str(self.path),
            "songs": len(indexed),
            "vectors": self.ntotal,
            "hours": hours,
            "staged_songs": len(staged),
            "staged_vectors": sum(song.vector_count for song in staged),
            "dim": self.dim,
            "index": index,
            "index_reason": self._index_reason,
            "index_config": to_dict(self.index_config),
            "lists": lists,
            "training": training,
            "bytes_index": index_bytes,
            "bytes_index_ram": ram if self._index is not None else 0,
            "bytes_catalogue": catalogue_bytes,
            "bytes_staging": staging_bytes,
            "bytes_on_disk": index_bytes + catalogue_bytes + staging_bytes,
            # The steady-state cost: what stays on disk per hour once everything is committed.
            "bytes_per_hour": (index_bytes + catalogue_bytes) / hours if hours > 0 else 0.0,
            "bytes_model": file_size(self.path / MODEL_FILE),
            "model_info": self.model_info,
            "search": self.search_settings,
            "created": self._manifest.get("created"),
            "afp_version": self._manifest.get("afp_version"),
            "faiss_version": self._manifest.get("faiss_version"),
        }

    def retrain_reasons(self, sizes: np.ndarray | None = None) -> list[str]:
        """Why training the IVF-PQ index again (rebuilding the database) would help; none
        for a flat index, or one trained before its training was recorded.

        Songs added after training go into the lists the training sample shaped. An index
        grown far past its training set (``RETRAIN_GROWTH``) has lists longer than planned
        (with automatic lists, fewer than the rule now asks for); lists grown uneven since
        training (``RETRAIN_IMBALANCE``: new music unlike the old crowds a few lists)
        make every query that lands there scan more. Both cost search time.
        """
        if self._index_type != INDEX_IVFPQ:
            return []
        sizes = list_sizes(self._ivfpq()) if sizes is None else sizes
        reasons = []
        trained, nlist = self._trained_vectors, len(sizes)
        if trained and self.ntotal >= RETRAIN_GROWTH * trained:
            text = (
                f"it holds {self.ntotal / trained:.1f}x the {trained:,} vectors it was trained on"
            )
            if self.index_config.nlist is None and auto_nlist(self.ntotal) > nlist:
                text += f" (the rule now asks for {auto_nlist(self.ntotal):,} lists, not {nlist:,})"
            reasons.append(text)
        before, now = self._trained_imbalance, imbalance(sizes)
        if before and now >= RETRAIN_IMBALANCE * before:
            reasons.append(
                f"its lists are uneven: imbalance {now:.2f}, {before:.2f} after training"
            )
        return reasons

    # ------------------------------------------------------------------ internals

    def _ivfpq(self) -> faiss.IndexIVFPQ:
        ivfpq = faiss.downcast_index(self._require_index())
        if not isinstance(ivfpq, faiss.IndexIVFPQ):
            raise DatabaseError(f"{self.path}: the IVF-PQ index is a {type(ivfpq).__name__}")
        return ivfpq

    def _require_index(self) -> faiss.Index:
        if self._index is None:
            staged = len(self.songs("staged"))
            command = f"`afp index {self.path} PATH...`"
            todo = (
                f" ({staged} songs extracted, not yet in the index); run {command} again"
                if staged
                else f"; add songs with {command}"
            )
            raise DatabaseError(f"{self.path}: nothing is indexed yet{todo}")
        return self._index

    def _check_vectors(self, vectors: np.ndarray, what: str) -> np.ndarray:
        array = np.asarray(vectors)
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise DatabaseError(
                f"{self.path}: {what} have shape {array.shape}, expected (n, {self.dim})"
            )
        array = np.ascontiguousarray(array, dtype=np.float32)
        if not np.all(np.isfinite(array)):
            raise DatabaseError(f"{self.path}: {what} contain NaN or infinite values")
        return array

    def _load_state(self, reload_index: bool = False) -> None:
        """(Re)load the current index (if it changed) and the indexed songs' spans."""
        for attempt in range(2):
            meta, rows = self._read_catalogue()
            name = meta.get("index_file", "")
            if not (reload_index or name != self._index_name or (name and self._index is None)):
                break
            if name and not (self.path / name).is_file() and attempt == 0:
                continue  # a concurrent commit switched generations between the two reads
            self._index = self._read_index(name) if name else None
            self._index_name = name
            break
        self._generation = int(meta.get("generation", "0"))
        self._index_type = meta.get("index_type", "") if name else ""
        self._index_reason = meta.get("index_reason", "")
        # recorded since automatic lists; None for an index trained before
        self._trained_vectors = _meta_number(meta, "trained_vectors", int)
        self._trained_imbalance = _meta_number(meta, "trained_imbalance", float)
        spans = np.array(rows, dtype=np.int64).reshape(-1, 3)
        self._first, self._count, self._song_ids = spans[:, 0], spans[:, 1], spans[:, 2]
        self._by_id = np.argsort(self._song_ids, kind="stable")
        expected = int(self._count.sum())
        if self.ntotal != expected:
            raise DatabaseError(
                f"{self.path}: {name or 'index'} holds {self.ntotal} vectors but the "
                f"catalogue lists {expected}"
            )
        if len(self._first) and np.any(self._first[1:] != self._first[:-1] + self._count[:-1]):
            raise DatabaseError(f"{self.path}: catalogue vector id ranges are not contiguous")
        self._apply_nprobe()

    def _read_index(self, name: str) -> faiss.Index:
        file = self.path / name
        if not file.is_file():
            raise DatabaseError(f"{self.path}: index file {name} is missing")
        try:
            if ivf.lists_file(file).is_file():
                index = ivf.read_on_disk(file)
            else:
                index = faiss.read_index(str(file))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise DatabaseError(f"{file}: corrupt index file ({first})") from None
        if index.d != self.dim:
            raise DatabaseError(f"{file}: index has dim {index.d}, manifest says {self.dim}")
        if isinstance(index, faiss.IndexIVF):
            coarse = faiss.extract_index_ivf(index)
            # faiss.DirectMap (the map's type constants) is missing from faiss's stubs
            if coarse.direct_map.type == faiss.DirectMap.NoMap:  # type: ignore[attr-defined]
                coarse.make_direct_map()
        return index

    def _delete_unused_generations(self) -> None:
        """Delete index generations other than the current one (caller holds the lock)."""
        current = Path(self._index_name).stem
        for file in self.path.glob("index-*"):
            if _INDEX_RE.fullmatch(file.name) and file.stem != current:
                file.unlink(missing_ok=True)

    def _delete_generation(self, name: str) -> None:
        """Delete index file ``name`` and its lists file (if its lists are on disk)."""
        (self.path / name).unlink(missing_ok=True)
        ivf.lists_file(self.path / name).unlink(missing_ok=True)


def _gathered(arrays: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """``arrays`` joined into contiguous float32 chunks of at least ``size`` rows (the
    last may be shorter)."""
    pending: list[np.ndarray] = []
    count = 0
    for array in arrays:
        pending.append(array)
        count += len(array)
        if count >= size:
            yield np.ascontiguousarray(np.concatenate(pending), dtype=np.float32)
            pending, count = [], 0
    if pending:
        yield np.ascontiguousarray(np.concatenate(pending), dtype=np.float32)


def _write_index(index: faiss.Index, path: Path) -> None:
    """Write ``index`` without its id -> position map (8 bytes per vector, 20 % of an
    m=32 IVF-PQ file); ``_read_index`` rebuilds the map in one pass over the lists."""
    if not isinstance(index, faiss.IndexIVF):
        ivf.write_index(index, path)
        return
    index.make_direct_map(False)
    try:
        ivf.write_index(index, path)
    finally:
        index.make_direct_map(True)


def _meta_number(meta: dict[str, str], key: str, kind: type[T]) -> T | None:
    """A number the meta table keeps; None where it is missing or unreadable (it only
    informs ``info``)."""
    try:
        return kind(meta[key]) if key in meta else None
    except ValueError:
        return None


def _validate_config(path: Path, dim: int, cfg: IndexConfig) -> None:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise DatabaseError(f"{path}: dim must be a positive integer, not {dim!r}")
    if cfg.m < 1 or dim % cfg.m:
        raise DatabaseError(f"{path}: index m={cfg.m} must divide the vector dim {dim}")
    if not 1 <= cfg.nbits <= 16:
        raise DatabaseError(f"{path}: index nbits={cfg.nbits} must be in 1..16")
    if (cfg.nlist is not None and cfg.nlist < 1) or (cfg.nprobe is not None and cfg.nprobe < 1):
        raise DatabaseError(f"{path}: index nlist and nprobe must be positive")
    if cfg.density < 1:
        raise DatabaseError(f"{path}: index density={cfg.density} must be 1 or more")
    if cfg.hnsw_min_lists < 1 or not cfg.ram_budget_mb > 0:
        raise DatabaseError(f"{path}: index hnsw_min_lists and ram_budget_mb must be positive")
    lists = cfg.nlist or AUTO_NLIST_MIN
    needed = max(cfg.min_train_vectors, _MIN_POINTS_PER_CENTROID * max(lists, 2**cfg.nbits))
    if cfg.max_train_vectors < needed:
        raise DatabaseError(
            f"{path}: index max_train_vectors={cfg.max_train_vectors} is below the "
            f"{needed} vectors needed to train IVF-PQ"
        )


def _read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not file.is_file():
        raise DatabaseError(f"{path}: not an afp database (no {MANIFEST})")
    manifest = read_json_object(file, DatabaseError)
    check_document(manifest, FORMAT, FORMAT_VERSION, file, DatabaseError, "format_version")
    dim = manifest.get("dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise DatabaseError(f"{file}: corrupt manifest (dim {dim!r})")
    for key in ("model_info", "index", "search"):
        if not isinstance(manifest.get(key), dict):
            raise DatabaseError(f"{file}: corrupt manifest ({key!r} missing or not an object)")
    nprobe = manifest["search"].get("nprobe", 1)
    if isinstance(nprobe, bool) or not isinstance(nprobe, int) or nprobe < 1:
        raise DatabaseError(f"{file}: corrupt manifest (search.nprobe {nprobe!r})")
    try:
        from_dict(IndexConfig, manifest["index"], "index")
    except AfpError as exc:
        raise DatabaseError(f"{file}: corrupt manifest ({exc})") from None
    return manifest


def short_sha(sha: Any) -> str:
    """The first 12 hex digits of a checksum, for messages."""
    return str(sha)[:12] if sha else "unknown"
