"""Build and extend a fingerprint database from audio files (library -> vectors -> database).

Extraction streams each file in blocks (a 2-hour file is never held whole), embeds its
windows in batches and stages the vectors per song, so an interrupted run resumes where
it stopped. Bad files are skipped with a one-line reason each and the rest still gets
indexed; a file already in the database (same content checksum) is skipped.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from afp_core.audio import (
    AudioInfo,
    iter_audio_files,
    probe_audio,
    quiet_stderr,
    stream_audio,
    stream_windows,
)
from afp_core.calibration import CALIBRATED_QUERY_S, calibrate_from_audio
from afp_core.checkpoint import Checkpoint, load_checkpoint
from afp_core.config import AudioConfig, IndexConfig
from afp_core.database import MANIFEST, MODEL_FILE, FingerprintDB, Song, model_identity
from afp_core.errors import AudioError, ConfigError, DatabaseError
from afp_core.faults import fault_point
from afp_core.fileutil import file_sha256
from afp_core.models import Fingerprinter, embed_windows
from afp_core.search import METHODS, calibrate_threshold
from afp_core.shards import ShardedDB
from afp_core.shipped import default_checkpoint_path, write_untrained_checkpoint
from afp_core.tasks import TaskState


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A file left out of the database (or, in ``IndexResult.warnings``, indexed despite a
    problem), and why (one line)."""

    path: Path
    reason: str


def recorder(
    entries: list[Skipped], report: Callable[[Skipped], None]
) -> Callable[[Path, str], None]:
    """A callback that keeps (path, reason) in ``entries`` and passes it on to ``report``."""

    def record(path: Path, reason: str) -> None:
        entry = Skipped(path, reason)
        entries.append(entry)
        report(entry)

    return record


@dataclasses.dataclass
class IndexResult:
    """What one indexing run did."""

    added: list[Song] = dataclasses.field(default_factory=list)
    duplicates: list[Path] = dataclasses.field(default_factory=list)
    skipped: list[Skipped] = dataclasses.field(default_factory=list)
    warnings: list[Skipped] = dataclasses.field(default_factory=list)  # added all the same
    audio_s: float = 0.0
    elapsed_s: float = 0.0  # reading and extraction; index building not included

    def summary(self) -> str:
        """One line for the end of a run."""
        rate = self.audio_s / self.elapsed_s if self.elapsed_s > 0 else 0.0
        warned = f" ({len(self.warnings)} with a warning)" if self.warnings else ""
        return (
            f"added {len(self.added)} songs{warned} ({self.audio_s / 60:.1f} min of audio, "
            f"{rate:.0f} s of audio per s), {len(self.duplicates)} already in the database, "
            f"{len(self.skipped)} skipped"
        )


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


def read_tags(path: Path) -> tuple[str, str]:
    """(title, artist) from the file's tags; the file name when it has none."""
    title, artist = "", ""
    try:
        with quiet_stderr(), sf.SoundFile(path) as f:
            tags = f.copy_metadata()
        title, artist = tags.get("title", "").strip(), tags.get("artist", "").strip()
    except (RuntimeError, sf.LibsndfileError):
        pass
    return title or path.stem, artist


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


def plan_library_files(
    paths: Iterable[Path],
    min_duration_s: float,
    shortest: str,
    skip: Callable[[Path, str], None],
    task: TaskState,
) -> list[AudioInfo]:
    """The audio files under ``paths`` worth indexing; ``skip`` gets the others with a
    reason (unreadable, or shorter than ``min_duration_s``, described as ``shortest``)."""
    plan: list[AudioInfo] = []
    task.set_message("reading file headers")
    for path in _files_under(paths, skip):
        if not path.is_file():  # a FIFO would block the decoder for ever
            what = "a broken or looping link" if path.is_symlink() else "not a regular file"
            skip(path, f"{path}: {what}")
            continue
        try:
            info = probe_audio(path)
        except AudioError as exc:
            skip(path, str(exc))
            continue
        if info.duration_s < min_duration_s:
            skip(path, f"{path}: {info.duration_s:.2f} s is shorter than {shortest}")
            continue
        plan.append(info)
    return plan


def checksum_or_skip(
    info: AudioInfo, skip: Callable[[Path, str], None], task: TaskState
) -> str | None:
    """The file's content checksum; None (skipped, its time counted done) when the file was
    removed or made unreadable since its header was read."""
    try:
        return file_sha256(info.path)
    except OSError as exc:
        skip(info.path, f"{info.path}: cannot read ({exc.strerror or exc})")
        task.advance(info.duration_s)
        return None


def _files_under(paths: Iterable[Path], skip: Callable[[Path, str], None]) -> Iterator[Path]:
    """The files named and the audio files in the folders named; a name that leads
    nowhere (a broken link, a file removed meanwhile) is skipped, not fatal."""
    for item in paths:
        try:
            yield from iter_audio_files([item])
        except AudioError as exc:
            skip(Path(item), str(exc))


def index_library(
    db: FingerprintDB,
    model: Fingerprinter,
    paths: Iterable[Path],
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    task: TaskState | None = None,
    on_skip: Callable[[Skipped], None] = lambda _: None,
    on_warning: Callable[[Skipped], None] = lambda _: None,
) -> IndexResult:
    """Add every audio file under ``paths`` to ``db`` and commit the index.

    ``on_skip`` gets each file left out, ``on_warning`` each file added despite a problem
    (a truncated file: what it holds is added). Cancelling (``task.cancel()``) or an
    interrupt keeps the songs staged so far; the next run extracts only what is left.
    """
    task = task or TaskState()
    result = IndexResult()
    started = time.monotonic()
    skip = recorder(result.skipped, on_skip)
    warn = recorder(result.warnings, on_warning)

    window_s = model.spec.audio.window_s
    plan = plan_library_files(paths, window_s, f"one {window_s:g} s window", skip, task)

    task.set_total(sum(info.duration_s for info in plan))
    for info in plan:
        task.check_cancelled()
        before = task.done
        checksum = checksum_or_skip(info, skip, task)
        if checksum is None:
            continue
        if db.has_song(checksum):
            result.duplicates.append(info.path)
            task.advance(info.duration_s, f"{info.path.name} already indexed")
            continue
        task.set_message(info.path.name)
        try:
            vectors = extract_file_vectors(
                model,
                info.path,
                batch_size=batch_size,
                device=device,
                on_audio=task.advance,
                task=task,
                on_warning=functools.partial(warn, info.path),
                density=db.density,
            )
        except AudioError as exc:
            skip(info.path, str(exc))
            task.advance(before + info.duration_s - task.done)
            continue
        title, artist = read_tags(info.path)
        try:
            song = db.stage_song(
                title=title,
                artist=artist,
                source=str(info.path.resolve()),
                duration_s=info.duration_s,
                checksum=checksum,
                vectors=vectors,
            )
        except DatabaseError as exc:  # e.g. another process staged the same song meanwhile
            skip(info.path, f"{info.path}: {exc}")
            task.advance(before + info.duration_s - task.done)
            continue
        result.added.append(song)
        fault_point("index.staged")
        result.audio_s += info.duration_s
        task.advance(before + info.duration_s - task.done)

    result.elapsed_s = time.monotonic() - started
    task.set_message("building the index")
    db.commit(progress=lambda done, total: None, cancel=lambda: task.cancelled)
    if not task.cancelled and db.needs_calibration:
        # also after a commit whose calibration was interrupted: nothing else repairs it
        task.set_message("calibrating the no-match threshold")
        calibrate_thresholds(db, model, device)
    return result


def calibrate_thresholds(
    db: FingerprintDB,
    model: Fingerprinter,
    device: str | torch.device = "cpu",
    task: TaskState | None = None,
) -> None:
    """Store "no match" thresholds for both decision rules and the protocol's query lengths.

    From distorted excerpts of the songs' files (``afp_core.calibration``); where fewer
    than two of them can be read, from the database's vectors alone. Lengths longer than
    the longest song are left out (``'auto'`` then uses the longest calibrated length
    below the query's). Spans of digital silence are not used: every song's silence has
    the same fingerprint, which says nothing about the song.
    """
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
