"""The ``afp`` command: index a library, identify queries, describe a database, run the demo.

Other tools script against this contract: ``afp index DB PATH...``,
``afp identify DB QUERY... [--json]``, ``afp info DB [--json]``. A user error prints one
line ``afp: error: ...`` and exits 1; usage errors exit 2; an interrupt exits 130 and keeps
what was done.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from afp_core import __version__
from afp_core.config import IndexConfig, SearchConfig
from afp_core.errors import AfpError, Cancelled, as_disk_full
from afp_core.fileutil import format_bytes

if TYPE_CHECKING:
    import numpy as np

    from afp_core.database import FingerprintDB, Song
    from afp_core.ingest import IndexResult
    from afp_core.search import Match
    from afp_core.tasks import TaskState

EPILOG = "Exit status: 0 success, 1 error (one line on stderr), 2 bad usage, 130 interrupted."


# `afp index` options that set an IndexConfig field of the same name
_INDEX_OPTIONS = (
    "m",
    "nbits",
    "nlist",
    "nprobe",
    "min_train_vectors",
    "density",
    "hub_neighbours",
)

# what ``add_subparsers`` returns: each command's parser builder adds its parser to it
Subcommands = argparse._SubParsersAction  # argparse gives the type no public name
_FORMATTER = argparse.ArgumentDefaultsHelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="afp",
        description="Deep audio fingerprinting: index songs, identify excerpts, evaluate.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"afp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parser in _PARSERS:
        add_parser(sub)
    return parser


def _add_index_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "index",
        help="add audio files to a fingerprint database (created if missing)",
        description="Fingerprint every audio file under PATH (files or folders, recursive) and "
        "add it to the database DB_DIR. Files already in the database (same content) are "
        "skipped; unreadable or too-short files are skipped with a reason. An interrupted run "
        "resumes: songs extracted before the interrupt are not extracted again.",
        formatter_class=_FORMATTER,
        epilog=EPILOG,
    )
    p.add_argument("db", metavar="DB_DIR", type=Path, help="database folder")
    p.add_argument("paths", metavar="PATH", type=Path, nargs="+", help="audio files or folders")
    p.add_argument(
        "--model",
        type=Path,
        help="checkpoint for a NEW database (default: the shipped model); an existing "
        "database keeps its own model and refuses another",
    )
    # None: not given (the defaults live in IndexConfig; an existing database keeps its own)
    index = IndexConfig()
    p.add_argument("--m", type=int, help=f"IVF-PQ sub-quantisers (new database; {index.m})")
    p.add_argument(
        "--nbits", type=int, help=f"bits per sub-quantiser (new database; {index.nbits})"
    )
    p.add_argument(
        "--nlist",
        type=int,
        help="IVF coarse lists (new database; default: about 4 sqrt(N) for N vectors, "
        "chosen when the index is trained)",
    )
    p.add_argument(
        "--nprobe",
        type=int,
        help="IVF lists visited per search, saved in the database (default for a new one: "
        "4 sqrt(nlist / 256), the recall of the paper's 4 of 256 lists)",
    )
    p.add_argument(
        "--min-train-vectors",
        type=int,
        help="below this many vectors the index is exact (flat) instead of IVF-PQ "
        f"(default: {index.min_train_vectors:,})",
    )
    p.add_argument(
        "--density",
        type=int,
        help="windows stored per query hop (new database; default: "
        f"{index.density}): 2 stores one every 0.25 s, so a query's windows are never more "
        "than 0.125 s from a stored one, at twice the size",
    )
    p.add_argument(
        "--hub-neighbours",
        type=int,
        help="new database: discount stored windows that resemble every song, measured "
        f"against this many nearest windows of other songs (default: {index.hub_neighbours}; "
        "0: plain similarity)",
    )
    p.add_argument(
        "--landmark",
        action="store_true",
        help="a NEW database of landmark hashes (spectral-peak pairs, Wang 2003, as Dejavu) "
        "instead of neural fingerprints; an existing database keeps its kind",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes fingerprinting files side by side, each with cores / N torch "
        "threads; this one stages the songs in order, so the database is the one a single "
        "process builds. With --device cuda they decode the files and the GPU embeds the "
        "windows of several files per batch",
    )
    _add_runtime_options(p)


def _add_identify_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "identify",
        help="identify audio excerpts against a database",
        description="Identify each QUERY file (or an excerpt of it) in DB_DIR. The query is "
        "cut into 1 s windows (0.5 s hop); each window retrieves its k nearest fingerprints; "
        "the decision is made by offset-consistent search (default) or the paper's majority "
        "vote. In a landmark database (afp index --landmark) the query's spectral-peak pair "
        "hashes vote for (song, offset) alignments instead, and the score counts aligned "
        "hashes. A score below the threshold is reported as no match.",
        formatter_class=_FORMATTER,
        epilog=EPILOG,
    )
    p.add_argument("db", metavar="DB_DIR", type=Path, help="database folder")
    p.add_argument("queries", metavar="QUERY", type=Path, nargs="+", help="audio files")
    p.add_argument(
        "--db",
        dest="more_dbs",
        metavar="DB_DIR",
        type=Path,
        action="append",
        default=[],
        help="another neural database of the same model, searched together with the first "
        "as one (repeatable): parts of one library; answers name their database",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per query per line")
    p.add_argument(
        "--method",
        choices=["sequence", "vote", "landmark", "fused"],
        help="sequence: offset-consistent search (neural default); vote: majority vote over "
        "k neighbours; landmark: aligned hash count (the only rule of a landmark database); "
        "fused: the neural database and --landmark-db answering together",
    )
    p.add_argument(
        "--landmark-db",
        type=Path,
        help="with --method fused: a landmark database of the same library",
    )
    p.add_argument(
        "-k", type=int, help=f"neighbours retrieved per window (default: {SearchConfig.k})"
    )
    p.add_argument(
        "--threshold",
        type=_threshold_option,
        help="minimum score for a match: a number, or 'none' to never answer \"no match\" "
        "(default: the database's calibrated value for the rule and query length, if any)",
    )
    p.add_argument("--nprobe", type=int, help="IVF lists visited per search (default: database)")
    p.add_argument("--start", type=float, default=0.0, help="excerpt start in seconds")
    p.add_argument("--duration", type=float, help="excerpt length in seconds (default: to end)")
    p.add_argument("--model", type=Path, help="checkpoint; must be the database's own model")
    _add_runtime_options(p)


def _add_info_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "info",
        help="describe a database",
        description="Songs, vectors, index type and parameters, bytes on disk and bytes per "
        "hour of audio, and the model that made the vectors (for a landmark database: its "
        "hashes, settings and no-match thresholds).",
        formatter_class=_FORMATTER,
        epilog=EPILOG,
    )
    p.add_argument("db", metavar="DB_DIR", type=Path, help="database folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--songs", action="store_true", help="also list the songs")


def _add_models_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "models",
        help="list the model architectures a training config can name",
        description="Every registered architecture with its parameter count (at its default "
        "settings), the front-end it needs and a description. A training config picks one "
        "with model.name.",
        formatter_class=_FORMATTER,
        epilog=EPILOG,
    )
    p.add_argument("--json", action="store_true", help="print a JSON list of objects")


def _add_demo_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "demo",
        help="end-to-end demo on the development music (no configuration, no network)",
        description="Builds a database from the development music (docs/design.md §6), "
        "identifies distorted excerpts of indexed songs and clean excerpts of songs left out "
        "of the database, prints a results table and writes a report.",
        formatter_class=_FORMATTER,
        epilog=EPILOG,
    )
    p.add_argument("--library", type=Path, nargs="+", help="music to use instead of the dev set")
    p.add_argument("--noise", type=Path, nargs="+", help="noise audio (default: dev speech)")
    p.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder")
    p.add_argument("--songs", type=int, default=0, help="use at most this many songs (0: all)")
    p.add_argument("--held-out", type=int, default=5, help="songs kept out of the database")
    p.add_argument("--excerpts", type=int, default=2, help="excerpts per song and condition")
    p.add_argument("--seed", type=int, default=0, help="random seed for splits and excerpts")
    p.add_argument("--model", type=Path, help="checkpoint (default: the shipped model)")
    _add_runtime_options(p)


def _add_train_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "train",
        help="train a fingerprint model (contrastive learning, paper §2.1)",
        description="Train the model CONFIG.yaml describes (see configs/). The configuration "
        "is checked before any work. Every epoch writes OUT/model.pt (a checkpoint `afp index "
        "--model` takes), OUT/train-state.pt and a line of OUT/log.csv. Ctrl-C finishes the "
        "current step, saves and exits 130 (so does SIGTERM); --resume continues where the run "
        "stopped.",
        epilog=EPILOG,
    )
    p.add_argument("config", metavar="CONFIG.yaml", type=Path, help="training configuration")
    p.add_argument("--resume", action="store_true", help="continue the run in the output folder")
    p.add_argument("--out", type=Path, help="output folder (default: the config's `output`)")
    p.add_argument("--device", help="torch device: auto, cpu, cuda (default: the config's)")
    p.add_argument(
        "--max-minutes",
        type=float,
        help="stop cleanly (resumable) after this many minutes (default: the config's)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_evaluate_parser(sub: Subcommands) -> None:
    from afp_core.protocols.commands import add_evaluate_parser

    add_evaluate_parser(sub, EPILOG)


def _add_index_shards_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "index-shards",
        help="index a library in several processes or on several machines (torchrun)",
        description="Under torchrun, each process (rank R of W) fingerprints every W-th file "
        "of the sorted list under PATH into its own area of STAGING; once every rank is "
        "through, rank 0 commits them all, in order: the database is the one `afp index` "
        "builds. A rank that failed is rerun alone with --shard R/W: it extracts only what "
        "it had left, then commits if every other rank is through.",
        formatter_class=_FORMATTER,
        epilog="torchrun --nproc-per-node 2 -m afp_core.cli index-shards DB_DIR PATH... "
        f"--staging DIR. {EPILOG}",
    )
    p.add_argument("db", metavar="DB_DIR", type=Path, help="database folder")
    p.add_argument("paths", metavar="PATH", type=Path, nargs="+", help="audio files or folders")
    p.add_argument(
        "--staging",
        type=Path,
        required=True,
        help="folder for the ranks' extracted songs, seen by every rank (a shared disk "
        "across machines); deleted after the commit",
    )
    p.add_argument(
        "--shard", metavar="RANK/WORLD", help="run one rank alone, without torchrun (e.g. 1/2)"
    )
    p.add_argument(
        "--model",
        type=Path,
        help="checkpoint for a NEW database (default: the shipped model)",
    )
    _add_runtime_options(p)


_PARSERS: tuple[Callable[[Subcommands], None], ...] = (
    _add_index_parser,
    _add_index_shards_parser,
    _add_identify_parser,
    _add_info_parser,
    _add_models_parser,
    _add_demo_parser,
    _add_train_parser,
    _add_evaluate_parser,
)


def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device for the encoder (cpu, cuda)")
    p.add_argument("--batch-size", type=int, default=256, help="windows per encoder batch")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(encoder_device=True)


def run_guarded(prog: str, command: Callable[[], int], interrupted: str) -> int:
    """Run a command under the exit-status contract shared by ``afp`` and ``afp-rig``.

    A user error prints one line ``PROG: error: ...`` and gives 1, and so does a write
    that found the disk full; a cancel or Ctrl-C prints ``interrupted`` (or the cancel
    message) and gives 130, keeping finished work.
    """
    try:
        return command()
    except Cancelled as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130
    except AfpError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        full = as_disk_full(exc)
        if full is None:
            raise
        # no bug: files are written whole or not at all, so a rerun finishes the job
        print(f"{prog}: error: {full}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # reports record the command that made them

    def run() -> int:
        if getattr(args, "encoder_device", False):
            from afp_core.indexing import encoder_device

            encoder_device(args.device)  # no CUDA device: one line before any work
        return COMMANDS[args.command](args)

    return run_guarded("afp", run, "interrupted; finished work is kept, run again to resume")


def run_index(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from afp_core.indexing import encoder_device, index_library, open_database_for_indexing

    def notice(text: str) -> None:
        tqdm.write(f"afp: note: {text}", file=sys.stderr)

    kind = _existing_database_kind(args.db)
    if kind == "neural" and args.landmark:
        raise AfpError(f"{args.db}: is a neural database; --landmark only makes a new one")
    if kind == "landmark" or args.landmark:
        if args.device != "cpu":
            raise AfpError(f"--device {args.device}: a landmark database is built on the CPU")
        return _run_landmark_index(args)
    given = {
        name: getattr(args, name) for name in _INDEX_OPTIONS if getattr(args, name) is not None
    }
    device = encoder_device(args.device)
    files = _list_audio_files(args.paths)
    # None when no option is given: an existing database then has nothing to refuse
    config = IndexConfig(**given) if given else None
    db, checkpoint = open_database_for_indexing(args.db, args.model, config, on_notice=notice)
    if args.nprobe is not None and args.nprobe != db.nprobe:
        db.nprobe = args.nprobe
        db.save_search_settings(nprobe=args.nprobe)
    model = checkpoint.model.to(device)

    def describe() -> str:
        info = db.info()
        return (
            f"{info['songs']} songs, {info['vectors']} vectors, "
            f"{info['index']['type']} index, {format_bytes(info['bytes_on_disk'])} on disk"
        )

    return _index_and_report(
        args,
        lambda task: index_library(
            db,
            model,
            files,
            batch_size=args.batch_size,
            device=device,
            workers=args.workers,
            task=task,
            **_index_reports(),
        ),
        describe,
    )


def _index_and_report(
    args: argparse.Namespace,
    index: Callable[[TaskState], IndexResult],
    describe: Callable[[], str],
) -> int:
    """``afp index``'s run of either kind: a progress bar, the summary and ``describe()``
    of the database; 1 when no file was usable."""
    from afp_core.tasks import progress_task

    with progress_task(args.quiet, unit="s", description="indexing") as task:
        result = index(task)
    print(f"{args.db}: {result.summary()}")
    print(f"{args.db}: {describe()}")
    nothing_usable = not result.added and not result.duplicates and result.skipped
    return 1 if nothing_usable else 0


def run_identify(args: argparse.Namespace) -> int:
    from afp_core.audio import window_count
    from afp_core.database import FingerprintDB
    from afp_core.indexing import load_database_model
    from afp_core.query import identify_audio, load_query
    from afp_core.search import as_method, stored_threshold
    from afp_core.shards import ShardedDB

    if _existing_database_kind(args.db) == "landmark":
        return _run_landmark_identify(args)
    if args.method == "landmark":
        raise AfpError(f"{args.db}: --method landmark needs a landmark database")
    if (args.method == "fused") != (args.landmark_db is not None):
        raise AfpError("--method fused and --landmark-db go together")
    if args.method == "fused":
        return _run_fused_identify(args)
    db: FingerprintDB | ShardedDB = (
        ShardedDB.open(_neural_dbs(args)) if args.more_dbs else FingerprintDB.open(args.db)
    )
    checkpoint = load_database_model(db, args.model)
    model = checkpoint.model.to(args.device)
    if args.nprobe is not None:
        db.nprobe = args.nprobe
    method = as_method(args.method or "sequence")  # landmark and fused are handled above
    spec = model.spec.audio
    operating_point = _operating_point(db.search_settings, method, args)
    _note_stale_thresholds(args, db.needs_calibration)
    failures = 0
    for query in args.queries:
        try:
            audio = load_query(query, spec.sample_rate, args.start, args.duration)
            threshold = args.threshold
            if threshold is None:
                n = window_count(len(audio), spec.window, spec.hop)
                threshold = stored_threshold(db, method, max(n, 1), k=_k(args))
            match = identify_audio(
                db,
                model,
                audio,
                method=method,
                k=_k(args),
                threshold=threshold,
                device=args.device,
                label=str(query),
            )
        except AfpError as exc:
            failures += 1
            _report_failure(args, query, exc)
            continue
        _report_match(args, query, match, ".3f", threshold, operating_point)
    return 1 if failures else 0


def _run_fused_identify(args: argparse.Namespace) -> int:
    from afp_core.fusion import METHOD, FusedRecogniser
    from afp_core.landmark import LandmarkRecogniser
    from afp_core.recogniser import NeuralRecogniser, open_recogniser

    neural = open_recogniser(_neural_dbs(args), args.model, k=_k(args), device=args.device)
    if not isinstance(neural, NeuralRecogniser):
        raise AfpError(f"{args.db}: --method fused needs a neural database here")
    if args.nprobe is not None:
        neural.db.nprobe = args.nprobe
    landmark = open_recogniser(args.landmark_db)
    if not isinstance(landmark, LandmarkRecogniser):
        raise AfpError(f"{args.landmark_db}: --landmark-db must be a landmark database")
    fused = FusedRecogniser(neural, landmark)

    def answer(query: Path, audio: np.ndarray) -> Match:
        length = len(audio) / fused.sample_rate
        if length < fused.min_query_s:
            raise AfpError(f"{query}: query is {length:.2f} s, shorter than one window")
        return fused.identify(fused.analyse(audio), 0.0, length, METHOD)

    return _identify_each(
        args, fused.sample_rate, answer, lambda s: fused.threshold(METHOD, s), ".2f", None
    )


def _neural_dbs(args: argparse.Namespace) -> list[Path]:
    """``afp identify``'s databases: DB_DIR and each --db, every one neural."""
    for folder in args.more_dbs:
        if _existing_database_kind(folder) != "neural":
            raise AfpError(f"{folder}: --db takes neural databases (afp index without --landmark)")
    return [args.db, *args.more_dbs]


def _identify_each(
    args: argparse.Namespace,
    rate: int,
    answer: Callable[[Path, np.ndarray], Match],
    threshold_for: Callable[[float], float | None],
    score_format: str,
    operating_point: dict[str, Any] | None,
) -> int:
    """Each query read at ``rate``, answered, held to its threshold (``--threshold`` or
    ``threshold_for(seconds)``, None: none) and reported; exit status 1 if any query failed."""
    import dataclasses

    from afp_core.query import load_query

    failures = 0
    for query in args.queries:
        try:
            audio = load_query(query, rate, args.start, args.duration)
            match = answer(query, audio)
        except AfpError as exc:
            failures += 1
            _report_failure(args, query, exc)
            continue
        threshold = args.threshold
        if threshold is None:
            threshold = threshold_for(len(audio) / rate)
        if threshold is not None and match.song is not None and match.score < threshold:
            match = dataclasses.replace(match, song=None, offset_s=None)
        _report_match(args, query, match, score_format, threshold, operating_point)
    return 1 if failures else 0


def _operating_point(
    search: dict[str, Any], method: str, args: argparse.Namespace
) -> dict[str, Any] | None:
    """What the calibrated threshold promises (None with --threshold or uncalibrated)."""
    entry = search.get("thresholds", {}).get(method)
    if args.threshold is not None or not entry:
        return None
    rate = entry.get("false_match_rate")
    if rate is None and "quantile" in entry:  # landmark and older neural calibrations
        rate = round(1.0 - float(entry["quantile"]), 6)
    point = {"false_match_rate": rate, "source": entry.get("source", "database vectors")}
    if "false_match_rate_bound" in entry:  # databases searched as one (afp_core.shards)
        point["false_match_rate_bound"] = entry["false_match_rate_bound"]
    return point


def _threshold_option(text: str) -> float:
    """``--threshold``: a number, or none / -inf (never reject)."""
    if text.strip().lower() in ("none", "-inf", "off"):
        return -math.inf
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'none'") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError("the threshold cannot be NaN")
    return value


def _report_match(
    args: argparse.Namespace,
    query: Path,
    match: Match,
    score_format: str,
    threshold: float | None,
    operating_point: dict[str, Any] | None,
) -> None:
    """One line per query: JSON (the scripting contract) or text.

    ``best`` is the best candidate whether or not it passed ``threshold`` (the score a
    match needs; None: no threshold), so a "no match" still says what came closest.
    """
    song = match.song
    best = match.candidates[0] if match.candidates else None
    no_song = {"song": None, "artist": None, "song_id": None, "path": None}
    record = {
        "query": str(query),
        **(_song_record(song) if song else no_song),
        "offset_s": round(match.offset_s, 3) if song and match.offset_s is not None else None,
        "score": round(float(match.score), 4),
        "method": match.method,
        "threshold": None if threshold is None or math.isinf(threshold) else round(threshold, 4),
        "operating_point": operating_point,
        "best": None
        if best is None
        else {
            **_song_record(best.song),
            "offset_s": round(best.offset_s, 3),
            "score": round(float(best.score), 4),
        },
    }
    if args.json:
        print(json.dumps(record), flush=True)
    elif song is None:
        closest = f"; closest: {best.song.title}" if best is not None else ""
        print(f"{query}: no match (best score {match.score:{score_format}}{closest})")
    else:
        print(
            f"{query}: {song.title}"
            + (f" — {song.artist}" if song.artist else "")
            + f" at {match.offset_s:.1f} s (score {match.score:{score_format}})"
            + (f" in {record['database']}" if "database" in record else "")
        )


def _song_record(song: Song) -> dict[str, Any]:
    """A song as ``identify`` reports it. One of several databases searched as one also
    names its ``database``, and ``song_id`` is its id there."""
    from afp_core.shards import ShardSong

    record = {"song": song.title, "artist": song.artist, "song_id": song.id, "path": song.source}
    if isinstance(song, ShardSong):
        record |= {"song_id": song.shard_id, "database": song.database}
    return record


def _report_failure(args: argparse.Namespace, query: Path, exc: AfpError) -> None:
    if args.json:
        print(json.dumps({"query": str(query), "song": None, "error": str(exc)}))
    print(f"afp: error: {exc}", file=sys.stderr)


class _IndexReports(TypedDict):
    on_skip: Callable[[Any], None]
    on_warning: Callable[[Any], None]


def _index_reports() -> _IndexReports:
    """``afp index``'s one line per file left out (skipped) or added despite a problem."""
    from tqdm import tqdm

    def line(prefix: str) -> Callable[[Any], None]:
        return lambda entry: tqdm.write(f"{prefix}: {entry.reason}", file=sys.stderr)

    return {"on_skip": line("skipped"), "on_warning": line("warning")}


def _existing_database_kind(db_dir: Path) -> str | None:
    """ "neural" or "landmark" for a database folder, None where there is none yet."""
    from afp_core.database import MANIFEST
    from afp_core.recogniser import database_kind

    return database_kind(db_dir) if (Path(db_dir) / MANIFEST).is_file() else None


def _list_audio_files(paths: list[Path]) -> list[Path]:
    from afp_core.audio import iter_audio_files

    files = list(iter_audio_files(paths))
    if not files:
        names = ", ".join(str(p) for p in paths)
        raise AfpError(f"{names}: no audio files found (looked for {_extensions()})")
    return files


def _refuse_neural_options(db_dir: Path, given: dict[str, bool]) -> None:
    """A one-line error naming the first neural-only option used on a landmark database."""
    for option, used in given.items():
        if used:
            raise AfpError(
                f"{db_dir}: is a landmark database; {option} applies to neural databases only"
            )


def _run_landmark_index(args: argparse.Namespace) -> int:
    from afp_core.landmark import LandmarkDB, index_landmark_library

    _refuse_neural_options(
        args.db,
        {
            "--model": args.model is not None,
            **{
                f"--{name.replace('_', '-')}": getattr(args, name) is not None
                for name in _INDEX_OPTIONS
            },
        },
    )
    files = _list_audio_files(args.paths)
    db = LandmarkDB.open_or_create(args.db)

    def describe() -> str:
        info = db.info()
        return (
            f"{info['songs']} songs, {info['hashes']} hashes "
            f"({info['hashes_per_second']:.0f} per s of audio), landmark index, "
            f"{format_bytes(info['bytes_on_disk'])} on disk"
        )

    return _index_and_report(
        args,
        lambda task: index_landmark_library(
            db, files, task=task, workers=args.workers, **_index_reports()
        ),
        describe,
    )


def _run_landmark_identify(args: argparse.Namespace) -> int:
    from afp_core.landmark import METHOD, LandmarkDB, LandmarkRecogniser, identify_landmark_audio

    _refuse_neural_options(
        args.db,
        {
            "--model": args.model is not None,
            "--nprobe": args.nprobe is not None,
            "-k": args.k is not None,
            f"--method {args.method}": args.method not in (None, METHOD),
            "--db": bool(args.more_dbs),
        },
    )
    db = LandmarkDB.open(args.db)
    _note_stale_thresholds(args, db.needs_calibration)
    recogniser = LandmarkRecogniser(db)
    return _identify_each(
        args,
        recogniser.sample_rate,
        lambda query, audio: identify_landmark_audio(db, audio, label=str(query)),
        lambda seconds: recogniser.threshold(METHOD, seconds),
        ".0f",
        _operating_point(db.search_settings, METHOD, args),
    )


def run_info(args: argparse.Namespace) -> int:
    from afp_core.database import FingerprintDB

    if _existing_database_kind(args.db) == "landmark":
        return _run_landmark_info(args)
    db = FingerprintDB.open(args.db)
    info = db.info()
    # a copy: info["model_info"] is the database's own manifest entry
    info["model_info"] = {**info["model_info"], "frontend": _model_frontend(info["model_info"])}
    info["needs_calibration"] = db.needs_calibration
    if args.songs:
        info["song_list"] = _song_records(db.songs())
    if args.json:
        print(json.dumps(info, indent=None, default=str))
        return 0
    index = info["index"]
    model = info["model_info"]
    thresholds = info["search"].get("thresholds", {}).get("sequence", {})
    rows = [
        ("database", str(args.db)),
        ("songs", f"{info['songs']} ({info['hours']:.2f} h of audio)"),
        ("vectors", f"{info['vectors']}"),
        ("staged", f"{info['staged_songs']} songs not yet in the index"),
        ("index", ", ".join(f"{k}={v}" for k, v in index.items())),
        *_describe_lists(info),
        (
            "index size",
            f"{format_bytes(info['bytes_index_ram'])} in memory, "
            f"{format_bytes(info['bytes_index'])} on disk",
        ),
        ("on disk", format_bytes(info["bytes_on_disk"])),
        ("per hour of audio", format_bytes(info["bytes_per_hour"])),
        ("model", f"{model.get('name')} (sha256 {str(model.get('checkpoint_sha256'))[:12]})"),
        ("front-end", _format_frontend(model.get("frontend"))),
        ("no-match thresholds", _describe_thresholds(thresholds, db.needs_calibration)),
        ("hub-aware scores", _describe_hubness(db, info["search"])),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for song in info.get("song_list", []):
        print(f"  {song['id']:>5}  {song['duration_s']:7.1f} s  {song['title']}")
    return 0


def _describe_hubness(db: FingerprintDB, search: dict[str, Any]) -> str:
    """``afp info``'s row on the hubness table (afp_core.hubness)."""
    if db.index_config.hub_neighbours < 1:
        return "off"
    measured = search.get("hubness")
    if not measured:
        return "not measured yet (run afp index again)"
    stale = "" if measured.get("generation") == db.generation else "; older than the index"
    return f"on ({measured['neighbours']} neighbours of other songs per vector{stale})"


def _k(args: argparse.Namespace) -> int:
    return SearchConfig.k if args.k is None else args.k


def _note_stale_thresholds(args: argparse.Namespace, stale: bool) -> None:
    if args.threshold is None and stale:
        print(
            f"afp: note: {args.db}: the no-match thresholds predate the last change to the "
            f"index or to its scoring (an interrupted calibration, or a database made before "
            f"hub-aware scores); run afp index {args.db} again",
            file=sys.stderr,
        )


def _describe_lists(info: dict[str, Any]) -> list[tuple[str, str]]:
    """``afp info``'s rows on an IVF index's lists and training (none for a flat one)."""
    lists, training = info.get("lists"), info.get("training")
    if not lists or not training:
        return []
    rows = [
        (
            "lists",
            f"{lists['count']:,}; vectors per list min {lists['min']:,}, median "
            f"{lists['median']:,.0f}, max {lists['max']:,} (imbalance {lists['imbalance']:.2f}); "
            f"{lists['quantizer'].upper() if lists['quantizer'] == 'hnsw' else 'flat'} coarse "
            f"quantiser; lists {'on disk, memory-mapped' if lists['on_disk'] else 'in memory'}",
        )
    ]
    trained = training["vectors"]
    if trained is None:
        rows.append(("trained on", "not recorded (trained before this was kept)"))
    else:
        added = training["added_since"]
        rows.append(
            (
                "trained on",
                f"{trained:,} vectors; {added:,} added since ({100 * added / trained:.0f} %), "
                f"imbalance {training['imbalance']:.2f} after training",
            )
        )
    reasons = training["retrain"]
    rows.append(
        (
            "retrain",
            "would help: " + "; ".join(reasons) + " (rebuild the database from its songs)"
            if reasons
            else "not needed",
        )
    )
    return rows


def _describe_thresholds(entry: dict[str, Any], stale: bool) -> str:
    if not entry:
        return "none (run afp index again to calibrate)" if stale else "none"
    rate = entry.get("false_match_rate")
    text = f"calibrated for {100 * rate:g} % false matches" if rate else "calibrated"
    if stale:
        text += "; STALE: made before the last change to the index, run afp index again"
    return text


def _song_records(songs: list[Any]) -> list[dict[str, Any]]:
    """``afp info --songs``; ``vectors`` counts a landmark song's spectrogram frames."""
    return [
        {
            "id": s.id,
            "title": s.title,
            "artist": s.artist,
            "duration_s": s.duration_s,
            "vectors": s.vector_count,
            "status": s.status,
            "source": s.source,
        }
        for s in songs
    ]


def _run_landmark_info(args: argparse.Namespace) -> int:
    from afp_core.landmark import LandmarkDB

    db = LandmarkDB.open(args.db)
    info = db.info()
    info["needs_calibration"] = db.needs_calibration
    if args.songs:
        info["song_list"] = _song_records(db.songs())
    if args.json:
        print(json.dumps(info, indent=None, default=str))
        return 0
    s = info["settings"]
    entry = info["search"].get("thresholds", {}).get("landmark", {})
    thresholds = entry.get("by_seconds")
    rows = [
        ("database", str(args.db)),
        ("kind", "landmark (spectral-peak pair hashes)"),
        ("songs", f"{info['songs']} ({info['hours']:.2f} h of audio)"),
        ("hashes", f"{info['hashes']} ({info['hashes_per_second']:.0f} per s of audio)"),
        ("staged", f"{info['staged_songs']} songs not yet in the index"),
        (
            "settings",
            f"{s['sample_rate']} Hz, n_fft {s['n_fft']}, hop {s['hop']}, "
            f"{s['peaks_per_second']:g} peaks/s, fan-out {s['fan_out']}, dt <= {s['max_dt']}",
        ),
        ("on disk", format_bytes(info["bytes_on_disk"])),
        ("per hour of audio", format_bytes(info["bytes_per_hour"])),
        (
            "no-match threshold",
            ", ".join(f"{k} s: {v}" for k, v in thresholds.items())
            + (f" ({_describe_thresholds(entry, info['needs_calibration'])})")
            if thresholds
            else _describe_thresholds(entry, info["needs_calibration"]),
        ),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for song in info.get("song_list", []):
        print(f"  {song['id']:>5}  {song['duration_s']:7.1f} s  {song['title']}")
    return 0


def _model_frontend(model_info: dict) -> dict | None:
    """The front-end a database's model needs: from its checkpoint's metadata, or derived
    from its spec for checkpoints written before the metadata recorded it."""
    from afp_core.checkpoint import describe_frontend
    from afp_core.errors import ConfigError
    from afp_core.models import ModelSpec

    meta = model_info.get("checkpoint_meta")
    if isinstance(meta, dict) and isinstance(meta.get("frontend"), dict):
        return meta["frontend"]
    try:
        return describe_frontend(ModelSpec.from_dict(model_info.get("spec")))
    except ConfigError:
        return None


def _format_frontend(frontend: dict | None) -> str:
    if not frontend:
        return "unknown"
    config = ", ".join(f"{k}={v}" for k, v in (frontend.get("config") or {}).items())
    return (
        f"{frontend.get('name')} at {frontend.get('sample_rate')} Hz, "
        f"{frontend.get('window_s')} s windows ({config})"
    )


def _default_parameter_count(name: str) -> int:
    """Parameters of model ``name`` at its default settings, without running it.

    Built on torch's "meta" device (shapes only, no memory, no initialisation), which is
    instant even for large models; a builder that needs real tensors is built on the CPU.
    """
    import torch

    from afp_core.models import ModelSpec, count_parameters, get_model_entry

    entry = get_model_entry(name)
    spec = ModelSpec(name)
    try:
        with torch.device("meta"):
            model = entry.build(spec)
    except Exception:  # any failure on meta: fall back to a real build
        model = entry.build(spec)
    return count_parameters(model)


def run_models(args: argparse.Namespace) -> int:
    from afp_core.config import to_dict
    from afp_core.models import list_models

    rows: list[dict[str, Any]] = [
        {
            "name": entry.name,
            "parameters": _default_parameter_count(entry.name),
            "frontend": entry.frontend_name,
            "description": entry.description,
            "arch_defaults": to_dict(entry.arch_config()),
        }
        for entry in list_models()
    ]
    if args.json:
        print(json.dumps(rows))
        return 0
    table = [("model.name", "parameters", "front-end", "description")]
    table += [(r["name"], f"{r['parameters']:,}", r["frontend"], r["description"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for name, count, frontend, description in table:
        print(f"{name:<{widths[0]}}  {count:>{widths[1]}}  {frontend:<{widths[2]}}  {description}")
    print(
        "\nParameters at each model's default settings. Pick one in a training config with "
        "model.name (`model: {name: resnet_sta}`); model.arch sets its options (e.g. width); "
        "see configs/."
    )
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from afp_core.demo import DemoOptions, run_demo_job

    options = DemoOptions(
        library=args.library,
        noise=args.noise,
        out=args.out,
        songs=args.songs,
        held_out=args.held_out,
        excerpts=args.excerpts,
        seed=args.seed,
        model=args.model,
        device=args.device,
        batch_size=args.batch_size,
        quiet=args.quiet,
    )
    run_demo_job(options)
    return 0


def run_train(args: argparse.Namespace) -> int:
    import dataclasses

    from afp_core.training.config import load_train_config
    from afp_core.training.trainer import TrainingInterrupted, train

    config = load_train_config(args.config)
    overrides = {}
    if args.device is not None:
        overrides["device"] = args.device
    if args.max_minutes is not None:
        overrides["max_minutes"] = args.max_minutes
    if overrides:
        training = dataclasses.replace(config.training, **overrides)  # validates again
        config = dataclasses.replace(config, training=training)
    try:
        result = train(config, out=args.out, resume=args.resume, quiet=args.quiet)
    except TrainingInterrupted:
        return 130  # saved; the trainer's last line said where and how to resume
    last = result.history[-1] if result.history else {}
    print(
        f"{result.checkpoint}: {result.stopped} after {result.epochs} epochs, "
        f"{result.steps} steps; val loss {last.get('val_loss', float('nan')):.4f}, "
        f"val top-1 {last.get('val_top1', float('nan')):.3f} "
        f"(0.2 s shift: {last.get('val_top1_shift', float('nan')):.3f})"
    )
    return 0


def _extensions() -> str:
    from afp_core.audio import AUDIO_EXTENSIONS

    common = [".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff"]
    return ", ".join(e for e in common if e in AUDIO_EXTENSIONS) + ", ..."


def run_evaluate(args: argparse.Namespace) -> int:
    from afp_core.protocols.commands import run_evaluate as evaluate

    return evaluate(args)


def run_index_shards(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from afp_core import distributed
    from afp_core.indexing import open_database_for_indexing
    from afp_core.tasks import progress_task

    shard = distributed.parse_shard(args.shard) if args.shard else distributed.join_torchrun()
    device = args.device
    files = _list_audio_files(args.paths)

    def notice(text: str) -> None:
        tqdm.write(f"afp: note: {text}", file=sys.stderr)

    with distributed.rank_zero_first(shard):  # rank 0 creates the database
        db, checkpoint = open_database_for_indexing(args.db, args.model, on_notice=notice)
        area = distributed.StagingArea(args.staging, db)
    model = checkpoint.model.to(device)
    with progress_task(args.quiet, unit="s", description=str(shard)) as task:
        extracted = distributed.extract_shard(
            db,
            model,
            files,
            area,
            shard,
            batch_size=args.batch_size,
            device=device,
            task=task,
            **_index_reports(),
        )
    print(f"{args.staging}: {distributed.shard_summary(shard, extracted)}")
    distributed.barrier(shard)
    if shard.rank and shard.grouped:
        return 0  # rank 0 commits
    unfinished = area.unfinished(shard.world)
    if unfinished:
        waiting = ", ".join(f"{rank}/{shard.world}" for rank in unfinished)
        print(f"{args.staging}: rank {waiting} not finished yet; the last one through commits")
        return 0
    with progress_task(args.quiet, unit="s", description="committing") as task:
        result = distributed.commit_shards(
            db, model, files, area, shard.world, device=device, task=task, **_index_reports()
        )
    info = db.info()
    print(
        f"{args.db}: committed {len(result.added)} songs from {shard.world} ranks, "
        f"{len(result.duplicates)} already in the database, {len(result.skipped)} skipped; "
        f"{info['songs']} songs, {info['vectors']} vectors, {info['index']['type']} index"
    )
    return 0


COMMANDS = {
    "index": run_index,
    "index-shards": run_index_shards,
    "identify": run_identify,
    "info": run_info,
    "models": run_models,
    "demo": run_demo,
    "train": run_train,
    "evaluate": run_evaluate,
}

if __name__ == "__main__":
    raise SystemExit(main())
