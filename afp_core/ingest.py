"""Audio files into a database of either kind: the one indexing loop (no torch here).

``index_files`` reads the files' headers (unreadable, not regular and too-short files are
skipped with one line each), then takes the files in order: content checksum (a file
already in the database is a duplicate), fingerprints (the kind's ``Extractor``), staged
in the database; at the end the staged songs are committed and the "no match"
thresholds calibrated where they are missing or stale. What differs between the neural
and the landmark database (what a file's fingerprints are, how they are committed and
calibrated) comes in a ``Fingerprinting``.

Workers. With ``workers`` > 1 the files are fingerprinted in that many processes
(spawned, each with cores / workers torch threads), a few files ahead of the one this
process waits for; this process alone reads the results in the files' order and stages
them, so song ids, vectors and the catalogue are those of a one-process run.

Crash safety is the databases' own (``afp_core.database``): a song is staged whole or not
at all, by this process only, so an interrupt, a cancel, a crash or a killed worker keeps
the songs staged so far and the next run extracts only the rest; the commit switches to
a new generation in one transaction. Workers ignore Ctrl-C (it reaches the whole process
group): this process stops them at their next block of audio and exits as a one-process
run does.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import multiprocessing
import os
import pickle
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent import futures
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import soundfile as sf

from afp_core.audio import AudioInfo, iter_audio_files, probe_audio, quiet_stderr, stream_audio
from afp_core.database import Song
from afp_core.errors import AfpError, AudioError, DatabaseError
from afp_core.faults import fault_point
from afp_core.fileutil import file_sha256
from afp_core.tasks import ProgressCallback, TaskState


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


class Extractor(Protocol):
    """One file -> what its database stages for it (vectors, landmark hashes).

    Reports the seconds of audio it got through with ``task.advance``, stops with
    ``Cancelled`` between blocks once ``task`` is cancelled, passes a problem it indexes
    through anyway (a truncated file) to ``on_warning`` as one line, and raises
    ``AudioError`` (one line) for a file to skip.
    """

    def __call__(self, path: Path, task: TaskState, on_warning: Callable[[str], None]) -> Any: ...


class StagingDB(Protocol):
    """What the loop needs of a database: both ``FingerprintDB`` and ``LandmarkDB``."""

    def has_song(self, checksum: str) -> bool: ...

    def stage_song(
        self, title: str, artist: str, source: str, duration_s: float, checksum: str, data: Any, /
    ) -> Song: ...

    @property
    def needs_calibration(self) -> bool: ...


@dataclasses.dataclass(frozen=True)
class Fingerprinting:
    """What one kind of database brings to ``index_files``."""

    extract: Extractor
    min_duration_s: float  # shorter files are skipped ...
    shortest: str  # ... as "shorter than <shortest>"
    committing: str  # the progress message while the staged songs are committed
    commit: Callable[[Callable[[], bool]], object]  # commit(cancelled): staged -> indexed
    calibrate: Callable[[TaskState], object]  # store the "no match" thresholds
    # What ``extract`` gave, file by file in order, -> what is staged (the neural CUDA
    # path: decoded audio -> vectors, windows batched across files); None: as it is.
    gather: Callable[[Iterator[Extracted], TaskState], Iterator[Extracted]] | None = None


@dataclasses.dataclass(frozen=True)
class Job:
    """A file to fingerprint: its header and content checksum."""

    info: AudioInfo
    checksum: str


# (file, its fingerprints or the AudioError that skips it, seconds of audio reported)
Extracted = tuple[Job, Any, float]


def index_files(
    db: StagingDB,
    paths: Iterable[Path],
    fingerprinting: Fingerprinting,
    *,
    workers: int = 1,
    task: TaskState | None = None,
    on_skip: Callable[[Skipped], None] = lambda _: None,
    on_warning: Callable[[Skipped], None] = lambda _: None,
) -> IndexResult:
    """Add every audio file under ``paths`` to ``db`` and commit (module docstring).

    ``workers`` processes fingerprint the files (1: this one). ``on_skip`` gets each file
    left out, ``on_warning`` each file added despite a problem (a truncated file: what it
    holds is added). Cancelling (``task.cancel()``) or an interrupt keeps the songs
    staged so far; the next run extracts only what is left.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise AfpError(f"workers must be a whole number of at least 1, not {workers!r}")
    task = task or TaskState()
    result = IndexResult()
    started = time.monotonic()
    skip = recorder(result.skipped, on_skip)
    warn = recorder(result.warnings, on_warning)
    plan = plan_library_files(
        paths, fingerprinting.min_duration_s, fingerprinting.shortest, skip, task
    )
    task.set_total(sum(info.duration_s for info in plan))

    def new_files() -> Iterator[Job]:
        for info in plan:
            task.check_cancelled()
            checksum = checksum_or_skip(info, skip, task)
            if checksum is None:
                continue
            if db.has_song(checksum):
                result.duplicates.append(info.path)
                task.advance(info.duration_s, f"{info.path.name} already indexed")
                continue
            yield Job(info, checksum)

    if workers == 1:
        runner = _extract_here(fingerprinting.extract, new_files(), task, warn)
    else:
        runner = _extract_in_processes(fingerprinting.extract, new_files(), task, warn, workers)
    gather = fingerprinting.gather
    try:
        _stage_in_order(db, gather(runner, task) if gather else runner, result, skip, task)
    finally:
        runner.close()  # stops the workers however the loop ended

    result.elapsed_s = time.monotonic() - started
    task.set_message(fingerprinting.committing)
    fingerprinting.commit(lambda: task.cancelled)
    if not task.cancelled and db.needs_calibration:
        # also after a commit whose calibration was interrupted: nothing else repairs it
        task.set_message("calibrating the no-match threshold")
        fingerprinting.calibrate(task.fork(_in_message(task)))
    return result


def _in_message(task: TaskState) -> ProgressCallback:
    """Progress of a step with its own count, shown as a share in ``task``'s message
    (whose count is the audio indexed)."""

    def report(done: float, total: float, message: str) -> None:
        task.set_message(f"{message} {done / total:.0%}" if total else message)

    return report


def _stage_in_order(
    db: StagingDB,
    extracted: Iterator[Extracted],
    result: IndexResult,
    skip: Callable[[Path, str], None],
    task: TaskState,
) -> None:
    for job, fingerprints, reported in extracted:
        info = job.info
        if isinstance(fingerprints, AudioError):
            skip(info.path, str(fingerprints))
        else:
            title, artist = read_tags(info.path)
            source = str(info.path.resolve())
            try:
                song = db.stage_song(
                    title, artist, source, info.duration_s, job.checksum, fingerprints
                )
            except DatabaseError as exc:  # e.g. another process staged the same song meanwhile
                skip(info.path, f"{info.path}: {exc}")
            else:
                result.added.append(song)
                fault_point("index.staged")
                result.audio_s += info.duration_s
        task.advance(info.duration_s - reported)  # the file counts its whole duration done


def _extract_here(
    extract: Extractor,
    jobs: Iterator[Job],
    task: TaskState,
    warn: Callable[[Path, str], None],
) -> Generator[Extracted, None, None]:
    """Each job's ``Extracted``, in order, extracted in this process."""
    for job in jobs:
        task.set_message(job.info.path.name)
        before = task.done
        try:
            fingerprints = extract(job.info.path, task, functools.partial(warn, job.info.path))
        except AudioError as exc:
            fingerprints = exc
        yield job, fingerprints, task.done - before


def _extract_in_processes(
    extract: Extractor,
    jobs: Iterator[Job],
    task: TaskState,
    warn: Callable[[Path, str], None],
    workers: int,
) -> Generator[Extracted, None, None]:
    """Each job's ``Extracted``, in order, extracted in ``workers`` processes."""
    context = multiprocessing.get_context("spawn")  # not fork: torch's threads break in a fork
    done_s = context.Value("d", 0.0)  # seconds of audio the workers got through
    stop = context.Event()
    threads = max(1, (os.cpu_count() or 1) // workers)
    counted = 0.0

    def count_progress() -> None:
        nonlocal counted
        now = done_s.value
        task.advance(now - counted)
        counted = now

    pending: collections.deque[tuple[Job, futures.Future]] = collections.deque()
    with tempfile.TemporaryDirectory(prefix="afp-index-") as tmp:
        # Through a file, not the spawn pipe: starting a worker would wait until it has
        # read a model from the pipe, so the workers would start one after the other.
        extractor = Path(tmp) / "extractor.pickle"
        extractor.write_bytes(pickle.dumps(extract))
        pool = futures.ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=_start_worker,
            initargs=(extractor, done_s, stop, threads),
        )
        try:
            while True:
                # every worker busy, with a file waiting behind each
                while len(pending) < 2 * workers and (job := next(jobs, None)) is not None:
                    pending.append((job, pool.submit(_extract_in_worker, job.info.path)))
                if not pending:
                    return
                job, future = pending[0]
                task.set_message(job.info.path.name)
                while not futures.wait([future], timeout=0.2).done:
                    count_progress()
                    task.check_cancelled()
                count_progress()
                fingerprints, warnings, reported = future.result()
                pending.popleft()
                for line in warnings:
                    warn(job.info.path, line)
                yield job, fingerprints, reported
        except BrokenProcessPool:
            # A worker died. The pool stops the others, except one it started meanwhile,
            # which it then waits for for ever: stop them all (no public handle on them
            # before Python 3.14's terminate_workers).
            for process in list((pool._processes or {}).values()):
                process.terminate()
            first = f"{pending[0][0].info.path}: " if pending else ""
            raise AfpError(
                f"{first}not indexed: a worker process stopped (killed, or out of memory?); "
                "the songs staged so far are kept: run again to finish"
            ) from None
        finally:
            stop.set()  # extractions still running stop at their next block
            pool.shutdown(wait=True, cancel_futures=True)


# A worker process's extractor and shared counters, set by ``_start_worker``.
_worker: dict[str, Any] = {}


def _start_worker(extractor: Path, done_s: Any, stop: Any, threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    extract = pickle.loads(extractor.read_bytes())  # written by this user's indexing process
    torch = sys.modules.get("torch")  # imported by unpickling a neural extractor
    if torch is not None:
        torch.set_num_threads(threads)
    _worker.update(extract=extract, done_s=done_s, stop=stop)


def _extract_in_worker(path: Path) -> tuple[Any, list[str], float]:
    """In a worker: (fingerprints or the ``AudioError`` that skips the file, its warning
    lines, seconds of audio reported)."""
    done_s, stop = _worker["done_s"], _worker["stop"]
    reported = 0.0

    def count(done: float, total: float, message: str) -> None:
        nonlocal reported
        with done_s.get_lock():
            done_s.value += done - reported
        reported = done
        if stop.is_set():
            task.cancel()

    task = TaskState(count)
    warnings: list[str] = []
    try:
        fingerprints = _worker["extract"](path, task, warnings.append)
    except AudioError as exc:
        fingerprints = exc
    fault_point("index.extracted")
    return fingerprints, warnings, reported


def stream_tracked(
    path: Path, sample_rate: int, task: TaskState, on_warning: Callable[[str], None]
) -> Iterator[np.ndarray]:
    """The file's blocks (``stream_audio``), reporting progress and stopping on cancel
    between blocks."""
    for block in stream_audio(path, sample_rate=sample_rate, on_warning=on_warning):
        task.check_cancelled()
        yield block
        task.advance(len(block) / sample_rate)


@dataclasses.dataclass(frozen=True)
class AudioDecoder:
    """A file decoded whole at ``sample_rate``: an ``Extractor`` for a ``gather`` that
    embeds windows of several files together."""

    sample_rate: int

    def __call__(
        self, path: Path, task: TaskState, on_warning: Callable[[str], None]
    ) -> np.ndarray:
        blocks = list(stream_tracked(path, self.sample_rate, task, on_warning))
        return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


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
