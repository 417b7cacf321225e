"""Accuracy against code length (paper §5.3, Figure 7): one library, several PQ sizes.

The library is embedded ONCE with the model. For every number of sub-quantisers m (4,
8, 16, 32, 64 and 128 by default: each divides the 128-d vectors) the same vectors go
into a temporary ``FingerprintDB`` built with ``IndexConfig(m=m, ...)``, so the IVF-PQ
index is trained and filled exactly as ``afp index`` would (same nlist, nprobe, training
sample and seed); an exact flat index of the same vectors is the unquantised reference.
Each index is then evaluated with the real-world protocol on a session (the paper's
Figure 7) or with the baseline protocol on the library's own songs and a folder of noise.
Code length is ``m * nbits`` bits per vector; index size is the index file on disk.

Small libraries: IVF-PQ needs at least 8 training vectors per centroid (2,048 for 8-bit
codebooks) and ``min_train_vectors`` (10,000); below that a database falls back to a flat
index, which would measure nothing. The sweep then lowers ``min_train_vectors``, the
number of lists and, if it must, the codebook bits so that every index is a real IVF-PQ,
and says so in a notice (also kept in the report).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from afp_core.audio import AudioInfo, iter_audio_files, probe_audio
from afp_core.checkpoint import Checkpoint, load_checkpoint
from afp_core.config import IndexConfig, SearchConfig
from afp_core.database import INDEX_FLAT, INDEX_IVFPQ, FingerprintDB, Song
from afp_core.errors import AudioError, ConfigError, DatabaseError
from afp_core.fileutil import file_sha256
from afp_core.indexing import describe_model, extract_file_vectors
from afp_core.ingest import read_tags
from afp_core.protocols.baseline import (
    BaselineResult,
    BaselineSettings,
    QuerySong,
    check_baseline_settings,
    load_noise,
    run_baseline_protocol,
)
from afp_core.protocols.realworld import (
    RealWorldResult,
    RealWorldSettings,
    check_query_lengths,
    check_realworld_settings,
    map_session_songs,
    resolve_takes,
    run_realworld_comparison,
)
from afp_core.protocols.sessions import EvalSession, read_session
from afp_core.recogniser import NeuralRecogniser
from afp_core.search import METHODS
from afp_core.shipped import default_checkpoint_path
from afp_core.tasks import TaskState

DEFAULT_MS: tuple[int, ...] = (4, 8, 16, 32, 64, 128)
_POINTS_PER_CENTROID = 8  # as afp_core.database: fewer gives useless k-means
_VECTORS_PER_LIST = 256  # when lists must be lowered: keep them well filled


@dataclasses.dataclass(frozen=True)
class QuantisationSettings:
    """The sweep: sub-quantiser counts and the index settings they share (paper Table 1)."""

    ms: tuple[int, ...] = DEFAULT_MS
    nbits: int = 8
    nlist: int = 256
    nprobe: int = 4
    min_train_vectors: int = 10_000
    include_flat: bool = True
    k: int = SearchConfig.k


@dataclasses.dataclass(frozen=True)
class IndexPoint:
    """One index of the sweep and its size."""

    label: str  # "m=32" or "flat"
    m: int | None
    nbits: int | None
    nlist: int | None
    nprobe: int | None
    index_type: str
    code_bits: int
    vectors: int
    index_bytes: int

    @property
    def bytes_per_vector(self) -> float:
        return self.code_bits / 8


@dataclasses.dataclass
class QuantisationResult:
    """The sweep's indexes and the evaluation of each (same order)."""

    protocol: str  # "realworld" or "baseline"
    settings: QuantisationSettings
    effective: dict[str, Any]
    notices: list[str]
    checkpoint: dict[str, Any]
    library: list[dict[str, Any]]
    points: list[IndexPoint]
    evaluations: Sequence[RealWorldResult | BaselineResult]  # all of one protocol
    evaluation_settings: dict[str, Any]
    session: dict[str, Any] | None
    noise: list[str] | None
    elapsed_s: float


@dataclasses.dataclass(frozen=True)
class _LibrarySong:
    info: AudioInfo
    checksum: str
    title: str
    artist: str


def effective_index_settings(
    vectors: int, settings: QuantisationSettings
) -> tuple[int, int, int, str | None]:
    """(nbits, nlist, min_train_vectors, notice or None) that make IVF-PQ trainable."""
    nbits, nlist = settings.nbits, settings.nlist
    required = max(settings.min_train_vectors, _POINTS_PER_CENTROID * max(nlist, 2**nbits))
    if vectors >= required:
        return nbits, nlist, settings.min_train_vectors, None
    if vectors >= _POINTS_PER_CENTROID * max(nlist, 2**nbits):
        # enough for the centroids; only the database's flat-below threshold is in the way
        notice = (
            f"the library has {vectors} vectors, fewer than min_train_vectors="
            f"{settings.min_train_vectors}: lowered to {vectors} so that every index is IVF-PQ"
        )
        return nbits, nlist, vectors, notice
    if vectors < _POINTS_PER_CENTROID * 2:
        raise ConfigError(
            f"the library has {vectors} vectors: too few to train any product quantiser "
            f"(at least {_POINTS_PER_CENTROID * 2}); add songs"
        )
    new_bits = min(nbits, math.floor(math.log2(vectors / _POINTS_PER_CENTROID)))
    new_lists = max(1, min(nlist, vectors // _VECTORS_PER_LIST))
    new_min = _POINTS_PER_CENTROID * max(new_lists, 2**new_bits)
    notice = (
        f"the library has {vectors} vectors, fewer than the {required} an IVF-PQ index with "
        f"nlist={nlist} and {nbits}-bit codebooks needs (a database would fall back to a flat "
        f"index): the sweep uses nlist={new_lists}, {new_bits}-bit codebooks and "
        f"min_train_vectors={new_min}, so every index is a real IVF-PQ "
        f"(code length m x {new_bits} bits); use a larger library for the paper's settings"
    )
    return new_bits, new_lists, new_min, notice


@dataclasses.dataclass
class QuantisationPlan:
    """A checked sweep (``plan_quantisation_sweep``); ``run_quantisation_plan`` runs it."""

    checkpoint: Checkpoint
    songs: list[_LibrarySong]
    settings: QuantisationSettings
    session: EvalSession | None
    realworld: RealWorldSettings
    baseline: BaselineSettings
    noise: list[Path] | None
    noise_audio: np.ndarray | None
    notices: list[str]
    device: str
    batch_size: int
    work_dir: Path | None


def plan_quantisation_sweep(
    library: Sequence[Path],
    checkpoint: Checkpoint | Path | None = None,
    *,
    session: EvalSession | Path | None = None,
    noise: Sequence[Path] | None = None,
    settings: QuantisationSettings = QuantisationSettings(),
    realworld: RealWorldSettings = RealWorldSettings(lengths_s=(15,), threshold=None),  # noqa: B008
    baseline: BaselineSettings = BaselineSettings(lengths_s=(5,), threshold=None),  # noqa: B008
    device: str = "cpu",
    batch_size: int = 256,
    work_dir: Path | None = None,
    on_notice: Callable[[str], None] = lambda _: None,
) -> QuantisationPlan:
    """Check everything the sweep needs before any embedding; one-line errors.

    Exactly one of ``session`` (real-world protocol, ``realworld`` settings) and
    ``noise`` (audio files or folders: baseline protocol on the library's songs,
    ``baseline`` settings) is given. ``checkpoint`` None: the shipped model.
    """
    if (session is None) == (noise is None):
        raise ConfigError("give either a session (real-world protocol) or noise (baseline)")
    if checkpoint is None:
        checkpoint = default_checkpoint_path()
        if checkpoint is None:
            raise ConfigError("no model: pass a checkpoint (--model)")
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(checkpoint)
    _check_sweep(settings, checkpoint.spec.arch.dim)
    notices: list[str] = []

    def notice(text: str) -> None:
        notices.append(text)
        on_notice(text)

    songs = _probe_library(library, checkpoint, notice)
    audio = checkpoint.model.spec.audio
    model_like = types.SimpleNamespace(
        kind="neural", methods=METHODS, min_query_s=audio.window_s, hop_s=audio.hop_s
    )
    eval_session: EvalSession | None = None
    noise_audio: np.ndarray | None = None
    if session is not None:
        eval_session = session if isinstance(session, EvalSession) else read_session(session)
        check_realworld_settings(realworld)
        check_query_lengths(model_like, realworld, "model")
        for text in _take_prechecks(eval_session, realworld):
            notice(text)
        pseudo = [_pseudo_song(i, s) for i, s in enumerate(songs)]
        map_session_songs(
            eval_session.songs,
            pseudo,
            "the library",
            fix="add their files to the library folder",
            kind=eval_session.kind,
        )
    elif noise is not None:  # exactly one of session and noise (checked above)
        check_baseline_settings(baseline, model_like)
        longest = max(baseline.lengths_s)
        if not any(s.info.duration_s >= longest + 1 for s in songs):
            raise AudioError(
                f"no library song is {longest + 1:g} s long, needed for {longest:g} s queries"
            )
        noise_audio = load_noise(list(noise), audio.sample_rate, seed=baseline.seed)
    return QuantisationPlan(
        checkpoint=checkpoint,
        songs=songs,
        settings=settings,
        session=eval_session,
        realworld=realworld,
        baseline=baseline,
        noise=None if noise is None else [Path(p) for p in noise],
        noise_audio=noise_audio,
        notices=notices,
        device=device,
        batch_size=batch_size,
        work_dir=work_dir,
    )


def run_quantisation_sweep(
    library: Sequence[Path],
    checkpoint: Checkpoint | Path | None = None,
    *,
    task: TaskState | None = None,
    on_notice: Callable[[str], None] = lambda _: None,
    **options: Any,
) -> QuantisationResult:
    """Embed ``library`` once, index it at every m, evaluate each index.

    ``options`` are those of ``plan_quantisation_sweep`` (session or noise, settings...).
    Everything is checked before the library is embedded. Temporary databases live in
    ``work_dir`` (default: the system's temporary folder) and are deleted at the end.
    """
    plan = plan_quantisation_sweep(library, checkpoint, on_notice=on_notice, **options)
    return run_quantisation_plan(plan, task=task, on_notice=on_notice)


def run_quantisation_plan(
    plan: QuantisationPlan,
    *,
    task: TaskState | None = None,
    on_notice: Callable[[str], None] = lambda _: None,
) -> QuantisationResult:
    """Run a checked sweep; cancellable between songs and between indexes."""
    task = task or TaskState()
    started = time.monotonic()
    checkpoint, songs, settings = plan.checkpoint, plan.songs, plan.settings
    eval_session, noise_audio = plan.session, plan.noise_audio
    realworld, baseline, noise = plan.realworld, plan.baseline, plan.noise
    device, batch_size, work_dir = plan.device, plan.batch_size, plan.work_dir
    dim = checkpoint.spec.arch.dim
    notices = list(plan.notices)

    def notice(text: str) -> None:
        notices.append(text)
        on_notice(text)

    # ---- embed the library once
    task.set_total(sum(s.info.duration_s for s in songs), "embedding the library")
    vectors: list[np.ndarray] = []
    for song in songs:
        task.check_cancelled()
        task.set_message(f"embedding {song.info.path.name}")
        before = task.done
        vectors.append(
            extract_file_vectors(
                checkpoint.model,
                song.info.path,
                batch_size=batch_size,
                device=device,
                on_audio=task.advance,
                task=task,
            )
        )
        task.advance(before + song.info.duration_s - task.done)
    total = int(sum(len(v) for v in vectors))
    nbits, nlist, min_train, lowered = effective_index_settings(total, settings)
    if lowered:
        notice(lowered)

    configs: list[tuple[str, int | None, IndexConfig]] = []
    if settings.include_flat:
        configs.append(
            (
                "flat",
                None,
                IndexConfig(
                    nprobe=settings.nprobe,
                    min_train_vectors=total + 1,
                    max_train_vectors=max(IndexConfig.max_train_vectors, total + 1),
                ),
            )
        )
    for n_sub in settings.ms:
        configs.append(
            (
                f"m={n_sub}",
                n_sub,
                IndexConfig(
                    m=n_sub,
                    nbits=nbits,
                    nlist=nlist,
                    nprobe=settings.nprobe,
                    min_train_vectors=min_train,
                ),
            )
        )

    with tempfile.TemporaryDirectory(prefix="afp-quantisation-", dir=work_dir) as tmp:
        task.set_total(len(configs), "building the indexes")
        points: list[IndexPoint] = []
        recognisers: list[NeuralRecogniser] = []
        for label, m, config in configs:
            task.check_cancelled()
            task.set_message(f"building {label}")
            db = _build_database(
                Path(tmp) / label.replace("=", ""), checkpoint, songs, vectors, config, task
            )
            expected = INDEX_FLAT if m is None else INDEX_IVFPQ
            if db.index_type != expected:
                raise DatabaseError(
                    f"{db.path}: built a {db.index_type} index for {label}, not {expected}"
                )
            info = db.info()
            points.append(
                IndexPoint(
                    label=label,
                    m=m,
                    nbits=None if m is None else nbits,
                    nlist=None if m is None else nlist,
                    nprobe=None if m is None else settings.nprobe,
                    index_type=db.index_type,
                    code_bits=32 * dim if m is None else m * nbits,
                    vectors=db.ntotal,
                    index_bytes=int(info["bytes_index"]),
                )
            )
            recognisers.append(
                NeuralRecogniser(db, checkpoint, k=settings.k, device=device, batch_size=batch_size)
            )
            task.advance(1)

        labels = [p.label for p in points]
        evaluations: Sequence[RealWorldResult | BaselineResult]
        if eval_session is not None:
            evaluations = run_realworld_comparison(
                recognisers, eval_session, realworld, task=task, systems=labels
            )
            evaluation_settings = realworld.to_dict()
        else:
            if noise_audio is None:
                raise ConfigError("a quantisation plan needs a session or noise audio")
            baseline_results: list[BaselineResult] = []
            for label, recogniser in zip(labels, recognisers, strict=True):
                task.set_message(f"evaluating {label}")
                by_checksum = {s.checksum: s for s in recogniser.songs()}
                queries = [QuerySong(s.info, by_checksum.get(s.checksum)) for s in songs]
                baseline_results.append(
                    run_baseline_protocol(
                        recogniser, queries, noise_audio, baseline, task=task, system=label
                    )
                )
            evaluations = baseline_results
            evaluation_settings = dataclasses.asdict(baseline)

    return QuantisationResult(
        protocol="realworld" if eval_session is not None else "baseline",
        settings=settings,
        effective={
            "nbits": nbits,
            "nlist": nlist,
            "nprobe": settings.nprobe,
            "min_train_vectors": min_train,
            "vectors": total,
        },
        notices=notices,
        checkpoint={
            "path": str(checkpoint.path),
            "sha256": checkpoint.sha256,
            "model": checkpoint.spec.to_dict(),
            "trained": checkpoint.meta.get("trained"),
        },
        library=[
            {
                "path": str(s.info.path),
                "title": s.title,
                "checksum": s.checksum,
                "duration_s": s.info.duration_s,
                "vectors": len(v),
            }
            for s, v in zip(songs, vectors, strict=True)
        ],
        points=points,
        evaluations=evaluations,
        evaluation_settings=evaluation_settings,
        session=None if eval_session is None else eval_session.metadata(),
        noise=None if noise is None else [str(p) for p in noise],
        elapsed_s=round(time.monotonic() - started, 3),
    )


def _check_sweep(settings: QuantisationSettings, dim: int) -> None:
    if not settings.ms:
        raise ConfigError("m: give at least one number of sub-quantisers")
    for m in settings.ms:
        if isinstance(m, bool) or not isinstance(m, int) or m < 1 or dim % m:
            raise ConfigError(f"m={m!r} does not divide the model's {dim}-d vectors")
    if len(set(settings.ms)) != len(settings.ms):
        raise ConfigError("m: a value is repeated")
    if not 1 <= settings.nbits <= 16:
        raise ConfigError(f"nbits={settings.nbits} must be in 1..16")
    if settings.nlist < 1 or settings.nprobe < 1 or settings.k < 1:
        raise ConfigError("nlist, nprobe and k must be positive")


def _probe_library(
    library: Sequence[Path], checkpoint: Checkpoint, notice: Callable[[str], None]
) -> list[_LibrarySong]:
    window_s = checkpoint.model.spec.audio.window_s
    songs: list[_LibrarySong] = []
    seen: set[str] = set()
    for path in iter_audio_files(library):
        try:
            info = probe_audio(path)
        except AudioError as exc:
            notice(f"skipped: {exc}")
            continue
        if info.duration_s < window_s:
            notice(f"skipped: {path}: shorter than one {window_s:g} s window")
            continue
        checksum = file_sha256(path)
        if checksum in seen:
            notice(f"skipped: {path}: same content as another library file")
            continue
        seen.add(checksum)
        title, artist = read_tags(path)
        songs.append(_LibrarySong(info, checksum, title, artist))
    if len(songs) < 2:
        names = ", ".join(str(p) for p in library)
        raise AudioError(f"{names}: the sweep needs at least 2 readable songs, found {len(songs)}")
    return songs


def _pseudo_song(index: int, song: _LibrarySong) -> Song:
    return Song(
        id=index + 1,
        title=song.title,
        artist=song.artist,
        source=str(song.info.path),
        duration_s=song.info.duration_s,
        checksum=song.checksum,
        first_vector_id=None,
        vector_count=0,
        status="indexed",
        added_at="",
    )


def _take_prechecks(session: EvalSession, settings: RealWorldSettings) -> list[str]:
    notes: list[str] = []
    resolve_takes(session, settings, notes)
    return notes


def _build_database(
    folder: Path,
    checkpoint: Checkpoint,
    songs: Sequence[_LibrarySong],
    vectors: Sequence[np.ndarray],
    config: IndexConfig,
    task: TaskState,
) -> FingerprintDB:
    db = FingerprintDB.create(
        folder,
        model_info=describe_model(checkpoint),
        dim=checkpoint.spec.arch.dim,
        index_config=config,
    )
    for song, song_vectors in zip(songs, vectors, strict=True):
        db.stage_song(
            title=song.title,
            artist=song.artist,
            source=str(song.info.path.resolve()),
            duration_s=song.info.duration_s,
            checksum=song.checksum,
            vectors=song_vectors,
        )
    db.commit(cancel=lambda: task.cancelled)
    return db
