"""The neural database from audio files: its model, its extraction, its calibration.

Extraction streams each file in blocks (a 2-hour file is never held whole) and embeds its
windows in batches; the loop over the files (skipped files, duplicates, staging, resuming
after an interrupt, worker processes) is ``afp_core.ingest``'s, shared with the landmark
database. On a GPU (``batch_across_files``, the default for CUDA) each file is decoded
whole (by the workers, if any) and the encoder takes full batches of windows from
consecutive files, so short songs do not leave it waiting.
"""

from __future__ import annotations

import collections
import dataclasses
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from afp_core.audio import frame_windows, stream_audio, stream_windows
from afp_core.calibration import CALIBRATED_QUERY_S, calibrate_from_audio
from afp_core.checkpoint import Checkpoint, load_checkpoint
from afp_core.config import AudioConfig, IndexConfig
from afp_core.database import MANIFEST, MODEL_FILE, FingerprintDB, model_identity
from afp_core.errors import AudioError, ConfigError, DatabaseError
from afp_core.hubness import measure_hubness
from afp_core.ingest import (
    AudioDecoder,
    Extracted,
    Fingerprinting,
    IndexResult,
    Skipped,
    index_files,
)
from afp_core.models import Fingerprinter, build_model, embed_windows
from afp_core.search import METHODS, calibrate_threshold
from afp_core.shards import ShardedDB
from afp_core.shipped import default_checkpoint_path, write_untrained_checkpoint
from afp_core.tasks import TaskState


def describe_model(checkpoint: Checkpoint) -> dict:
    """The identity a database records for the model that made its vectors."""
    return {
        "name": checkpoint.spec.name,
        "spec": checkpoint.spec.to_dict(),
        "checkpoint_sha256": checkpoint.sha256,
        "checkpoint_meta": checkpoint.meta,
    }


def open_database_for_indexing(
    db_dir: Path,
    model_path: Path | None = None,
    index_config: IndexConfig | None = None,
    on_notice: Callable[[str], None] = lambda _: None,
    rebuild_for_another_model: bool = False,
) -> tuple[FingerprintDB, Checkpoint]:
    """Open ``db_dir`` or create it with ``model_path`` (default: the shipped model).

    An existing database keeps its own model; naming another one is refused, or with
    ``rebuild_for_another_model`` (a cache such as the demo's, after the shipped model
    changed) the old database is deleted and a new one made.
    """
    db_dir = Path(db_dir)
    wanted_path = model_path or default_checkpoint_path()
    if rebuild_for_another_model and wanted_path and (db_dir / MANIFEST).exists():
        wanted = load_checkpoint(wanted_path)
        old = FingerprintDB.open(db_dir)
        if model_identity(old.model_info) != model_identity(describe_model(wanted)):
            on_notice(f"{db_dir}: made with another model; building it again")
            del old
            shutil.rmtree(db_dir)
    if (db_dir / MANIFEST).exists():
        db = FingerprintDB.open(db_dir)
        checkpoint = load_database_model(db, model_path)
        if index_config is not None and index_config != db.index_config:
            on_notice(f"{db_dir}: keeps the index settings it was created with")
        return db, checkpoint
    if model_path is None:
        model_path = default_checkpoint_path()
    with tempfile.TemporaryDirectory() as tmp:
        if model_path is None:
            model_path = write_untrained_checkpoint(Path(tmp) / "model.pt")
            on_notice(
                "no trained model is shipped yet: using an untrained NAFP (seeded random "
                "weights), which finds only clean excerpts on the 0.5 s window grid; "
                "train one with `afp train`"
            )
        checkpoint = load_checkpoint(model_path)
        index_config = index_config or IndexConfig()
        stored_hop(checkpoint.spec.audio, index_config.density)
        db = FingerprintDB.create(
            db_dir,
            model_info=describe_model(checkpoint),
            dim=checkpoint.spec.arch.dim,
            index_config=index_config,
            checkpoint=model_path,
        )
    return db, checkpoint


def load_database_model(
    db: FingerprintDB | ShardedDB, model_path: Path | None = None
) -> Checkpoint:
    """The model a query must use: the database's own copy, or ``model_path`` if it is the same."""
    if model_path is None:
        own = db.model_path
        if own is None:
            raise DatabaseError(f"{db.path}: the database has no {MODEL_FILE}; pass --model")
        checkpoint = load_checkpoint(own)
    else:
        checkpoint = load_checkpoint(model_path)
    db.check_model(describe_model(checkpoint))
    return checkpoint


def stored_hop(audio: AudioConfig, density: int) -> int:
    """Samples between stored windows: the model's hop / ``density`` (which must divide it)."""
    if density < 1 or audio.hop % density:
        raise ConfigError(
            f"index density {density} must divide the model's hop of {audio.hop} samples"
        )
    return audio.hop // density


def extract_file_vectors(
    model: Fingerprinter,
    path: Path,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    on_audio: Callable[[float], None] = lambda _: None,
    task: TaskState | None = None,
    on_warning: Callable[[str], None] | None = None,
    density: int = 1,
) -> np.ndarray:
    """Fingerprints of every window of a file: (n_windows, dim) float32 unit vectors.

    Windows start every ``hop / density`` (``IndexConfig.density``). ``on_audio`` is
    called with the seconds of audio each batch covered, ``on_warning`` with a line about
    a file shorter than its header says (``stream_audio``).
    """
    audio = model.spec.audio
    hop = stored_hop(audio, density)
    chunks = []
    blocks = stream_audio(path, sample_rate=audio.sample_rate, on_warning=on_warning)
    for windows in stream_windows(blocks, audio.window, hop, max_windows=batch_size):
        if task is not None:
            task.check_cancelled()
        chunks.append(embed_windows(model, windows, batch_size=batch_size, device=device))
        on_audio(len(windows) * hop / audio.sample_rate)
    if not chunks:
        return np.zeros((0, model.spec.arch.dim), np.float32)
    return np.concatenate(chunks)


class VectorExtractor:
    """A file's fingerprint vectors (``extract_file_vectors``): the neural ``Extractor``."""

    def __init__(
        self,
        model: Fingerprinter,
        *,
        batch_size: int = 256,
        device: str | torch.device = "cpu",
        density: int = 1,
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.device = device
        self.density = density

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # to a worker process: the weights as arrays, the model built again there
        weights = {k: v.detach().cpu().numpy() for k, v in self.model.state_dict().items()}
        options = (self.batch_size, str(self.device), self.density)
        return _rebuilt_extractor, (self.model.spec, weights, *options)

    def __call__(
        self, path: Path, task: TaskState, on_warning: Callable[[str], None]
    ) -> np.ndarray:
        return extract_file_vectors(
            self.model,
            path,
            batch_size=self.batch_size,
            device=self.device,
            on_audio=task.advance,
            task=task,
            on_warning=on_warning,
            density=self.density,
        )


def _rebuilt_extractor(
    spec: Any, weights: dict[str, np.ndarray], batch_size: int, device: str, density: int
) -> VectorExtractor:
    model = build_model(spec)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    model.eval()
    return VectorExtractor(model, batch_size=batch_size, device=device, density=density)


@dataclasses.dataclass
class _Embedding:
    """A file's windows on their way through ``embed_across_files``."""

    job: Any
    reported: float
    error: AudioError | None = None
    waiting: int = 0  # windows not yet through the encoder
    parts: list[np.ndarray] = dataclasses.field(default_factory=list)


def embed_across_files(
    model: Fingerprinter,
    decoded: Iterator[Extracted],
    task: TaskState,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    density: int = 1,
) -> Iterator[Extracted]:
    """Files decoded whole (``AudioDecoder``), in order -> their vectors, in order: every
    batch but the last holds ``batch_size`` windows, from as many files as it takes.

    The windows and vectors are those of ``extract_file_vectors`` (``frame_windows`` of
    the whole file is what ``stream_windows`` gives block by block).
    """
    audio = model.spec.audio
    hop = stored_hop(audio, density)
    files: collections.deque[_Embedding] = collections.deque()  # in order, not yet given
    windows: collections.deque[tuple[_Embedding, np.ndarray]] = collections.deque()
    queued = 0

    def encode(batch_full: bool) -> None:
        nonlocal queued
        while queued >= batch_size or (not batch_full and queued):
            parts, owners = [], []
            room = min(batch_size, queued)
            while room:
                entry, rest = windows[0]
                part = rest[:room]
                parts.append(part)
                owners.append((entry, len(part)))
                if len(part) == len(rest):
                    windows.popleft()
                else:
                    windows[0] = (entry, rest[len(part) :])
                room -= len(part)
            task.check_cancelled()
            vectors = embed_windows(model, np.concatenate(parts), batch_size, device)
            queued -= len(vectors)
            start = 0
            for entry, count in owners:
                entry.parts.append(vectors[start : start + count])
                entry.waiting -= count
                start += count

    def finished() -> Iterator[Extracted]:
        while files and files[0].waiting == 0:
            entry = files.popleft()
            if entry.error is not None:
                yield entry.job, entry.error, entry.reported
                continue
            parts = entry.parts or [np.zeros((0, model.spec.arch.dim), np.float32)]
            yield entry.job, np.concatenate(parts), entry.reported

    for job, samples, reported in decoded:
        entry = _Embedding(job, reported)
        if isinstance(samples, AudioError):
            entry.error = samples
        else:
            framed = frame_windows(samples, audio.window, hop)
            entry.waiting = len(framed)
            if len(framed):
                windows.append((entry, framed))
                queued += len(framed)
        files.append(entry)
        encode(batch_full=True)
        yield from finished()
    encode(batch_full=False)
    yield from finished()


def encoder_device(name: str | torch.device) -> torch.device:
    """``name`` as a torch device; a one-line ``ConfigError`` for an unknown name and for
    CUDA where there is none."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {str(name)!r}: not a torch device (cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(name)!r}: no CUDA device (torch {torch.__version__})")
    return device


def vector_fingerprinting(
    db: FingerprintDB,
    model: Fingerprinter,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    batch_across_files: bool | None = None,
) -> Fingerprinting:
    """How ``index_library`` fingerprints, commits and calibrates for ``db``.

    ``batch_across_files`` (default: on a CUDA ``device``) decodes each file whole, in the
    workers if any, and embeds windows of consecutive files in full batches in the
    indexing process (``embed_across_files``); otherwise each file is embedded where it
    is decoded.
    """
    device = encoder_device(device)
    if batch_across_files is None:
        batch_across_files = device.type == "cuda"
    extract: Any = VectorExtractor(model, batch_size=batch_size, device=device, density=db.density)
    gather = None
    if batch_across_files:
        extract = AudioDecoder(model.spec.audio.sample_rate)

        def gather(decoded: Iterator[Extracted], task: TaskState) -> Iterator[Extracted]:
            return embed_across_files(
                model, decoded, task, batch_size=batch_size, device=device, density=db.density
            )

    window_s = model.spec.audio.window_s
    return Fingerprinting(
        extract=extract,
        min_duration_s=window_s,
        shortest=f"one {window_s:g} s window",
        committing="building the index",
        commit=lambda cancel: db.commit(cancel=cancel),
        calibrate=lambda task: calibrate_thresholds(db, model, device, task=task),
        gather=gather,
    )


def index_library(
    db: FingerprintDB,
    model: Fingerprinter,
    paths: Iterable[Path],
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    workers: int = 1,
    batch_across_files: bool | None = None,
    task: TaskState | None = None,
    on_skip: Callable[[Skipped], None] = lambda _: None,
    on_warning: Callable[[Skipped], None] = lambda _: None,
) -> IndexResult:
    """Add every audio file under ``paths`` to ``db``, commit the index and calibrate
    (``afp_core.ingest.index_files``: skipped files, warnings, resuming, ``workers``;
    ``vector_fingerprinting``: ``batch_across_files``)."""
    fingerprinting = vector_fingerprinting(
        db, model, batch_size=batch_size, device=device, batch_across_files=batch_across_files
    )
    return index_files(
        db,
        paths,
        fingerprinting,
        workers=workers,
        task=task,
        on_skip=on_skip,
        on_warning=on_warning,
    )


def calibrate_thresholds(
    db: FingerprintDB,
    model: Fingerprinter,
    device: str | torch.device = "cpu",
    task: TaskState | None = None,
) -> None:
    """Store "no match" thresholds for both decision rules and the protocol's query lengths.

    First the stored vectors' hubness (``afp_core.hubness``): thresholds are set on the
    scores that queries get. Then from distorted excerpts of the songs' files
    (``afp_core.calibration``); where fewer than two of them can be read, from the
    database's vectors alone. Lengths longer than
    the longest song are left out (``'auto'`` then uses the longest calibrated length
    below the query's). Spans of digital silence are not used: every song's silence has
    the same fingerprint, which says nothing about the song.
    """
    measure_hubness(db, task=task)
    if calibrate_from_audio(db, model, device=device, task=task) is not None:
        return
    audio = model.spec.audio
    silence = embed_windows(model, np.zeros((1, audio.window), np.float32), device=device)
    longest = max(s.vector_count for s in db.songs("indexed"))
    for seconds in CALIBRATED_QUERY_S:
        n_windows = audio.windows_in(seconds)
        if db.stored_span(n_windows) > longest:
            break
        for method in METHODS:
            calibrate_threshold(db, n_windows, method=method, uninformative=silence)
    db.save_search_settings(calibrated_generation=db.generation)
