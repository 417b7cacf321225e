"""The ``afp`` command: index a library, identify queries, describe a database, run the demo.

Other tools script against this contract (issue 2): ``afp index DB PATH...``,
``afp identify DB QUERY... [--json]``, ``afp info DB [--json]``. A user error prints one
line ``afp: error: ...`` and exits 1; usage errors exit 2; an interrupt exits 130 and keeps
what was done.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from afp_core import __version__
from afp_core.errors import AfpError, Cancelled

EPILOG = "Exit status: 0 success, 1 error (one line on stderr), 2 bad usage, 130 interrupted."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="afp",
        description="Deep audio fingerprinting: index songs, identify excerpts, evaluate.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"afp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser(
        "index",
        help="add audio files to a fingerprint database (created if missing)",
        description="Fingerprint every audio file under PATH (files or folders, recursive) and "
        "add it to the database DB_DIR. Files already in the database (same content) are "
        "skipped; unreadable or too-short files are skipped with a reason. An interrupted run "
        "resumes: songs extracted before the interrupt are not extracted again.",
        formatter_class=fmt,
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
    p.add_argument("--m", type=int, default=32, help="IVF-PQ sub-quantisers (new database)")
    p.add_argument("--nbits", type=int, default=8, help="bits per sub-quantiser (new database)")
    p.add_argument("--nlist", type=int, default=256, help="IVF coarse centroids (new database)")
    p.add_argument(
        "--nprobe",
        type=int,
        help="IVF lists visited per search, saved in the database (default: 4 for a new one)",
    )
    p.add_argument(
        "--min-train-vectors",
        type=int,
        default=10_000,
        help="below this many vectors the index is exact (flat) instead of IVF-PQ",
    )
    _add_runtime_options(p)

    p = sub.add_parser(
        "identify",
        help="identify audio excerpts against a database",
        description="Identify each QUERY file (or an excerpt of it) in DB_DIR. The query is "
        "cut into 1 s windows (0.5 s hop); each window retrieves its k nearest fingerprints; "
        "the decision is made by offset-consistent search (default) or the paper's majority "
        "vote. A score below the threshold is reported as no match.",
        formatter_class=fmt,
        epilog=EPILOG,
    )
    p.add_argument("db", metavar="DB_DIR", type=Path, help="database folder")
    p.add_argument("queries", metavar="QUERY", type=Path, nargs="+", help="audio files")
    p.add_argument("--json", action="store_true", help="one JSON object per query per line")
    p.add_argument(
        "--method",
        choices=["sequence", "vote"],
        default="sequence",
        help="sequence: offset-consistent search; vote: majority vote over k neighbours",
    )
    p.add_argument("-k", type=int, default=4, help="neighbours retrieved per window")
    p.add_argument(
        "--threshold",
        type=float,
        help="minimum score for a match (default: the database's calibrated value, if any)",
    )
    p.add_argument("--nprobe", type=int, help="IVF lists visited per search (default: database)")
    p.add_argument("--start", type=float, default=0.0, help="excerpt start in seconds")
    p.add_argument("--duration", type=float, help="excerpt length in seconds (default: to end)")
    p.add_argument("--model", type=Path, help="checkpoint; must be the database's own model")
    _add_runtime_options(p)

    p = sub.add_parser(
        "info",
        help="describe a database",
        description="Songs, vectors, index type and parameters, bytes on disk and bytes per "
        "hour of audio, and the model that made the vectors.",
        formatter_class=fmt,
        epilog=EPILOG,
    )
    p.add_argument("db", metavar="DB_DIR", type=Path, help="database folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--songs", action="store_true", help="also list the songs")

    p = sub.add_parser(
        "demo",
        help="end-to-end demo on the development music (no configuration, no network)",
        description="Builds a database from the development music (notes §4), identifies "
        "distorted excerpts of indexed songs and clean excerpts of songs left out of the "
        "database, prints a results table and writes a report.",
        formatter_class=fmt,
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

    p = sub.add_parser(
        "train",
        help="train a fingerprint model (contrastive learning, paper §2.1)",
        description="Train the model CONFIG.yaml describes (see configs/). The configuration "
        "is checked before any work. Every epoch writes OUT/model.pt (a checkpoint `afp index "
        "--model` takes), OUT/train-state.pt and a line of OUT/log.csv. Ctrl-C finishes the "
        "current step, saves and exits 130; --resume continues where the run stopped.",
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
    return parser


def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device for the encoder (cpu, cuda)")
    p.add_argument("--batch-size", type=int, default=256, help="windows per encoder batch")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_guarded(prog: str, command: Callable[[], int], interrupted: str) -> int:
    """Run a command under the exit-status contract shared by ``afp`` and ``afp-rig``.

    A user error prints one line ``PROG: error: ...`` and gives 1; a cancel or Ctrl-C
    prints ``interrupted`` (or the cancel message) and gives 130, keeping finished work.
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(
        "afp",
        lambda: COMMANDS[args.command](args),
        "interrupted; finished work is kept, run again to resume",
    )


def run_index(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from afp_core.audio import iter_audio_files
    from afp_core.config import IndexConfig
    from afp_core.indexing import index_library, open_database_for_indexing
    from afp_core.tasks import TaskState, TqdmProgress

    def notice(text: str) -> None:
        tqdm.write(f"afp: note: {text}", file=sys.stderr)

    config = IndexConfig(
        m=args.m,
        nbits=args.nbits,
        nlist=args.nlist,
        nprobe=args.nprobe or IndexConfig.nprobe,
        min_train_vectors=args.min_train_vectors,
    )
    files = list(iter_audio_files(args.paths))
    if not files:
        names = ", ".join(str(p) for p in args.paths)
        raise AfpError(f"{names}: no audio files found (looked for {_extensions()})")
    db, checkpoint = open_database_for_indexing(args.db, args.model, config, on_notice=notice)
    if args.nprobe is not None and args.nprobe != db.nprobe:
        db.nprobe = args.nprobe
        db.save_search_settings(nprobe=args.nprobe)
    model = checkpoint.model.to(args.device)
    progress = None if args.quiet else TqdmProgress(unit="s", description="indexing")
    try:
        result = index_library(
            db,
            model,
            files,
            batch_size=args.batch_size,
            device=args.device,
            task=TaskState(progress),
            on_skip=lambda s: tqdm.write(f"skipped: {s.reason}", file=sys.stderr),
        )
    finally:
        if progress is not None:
            progress.close()
    print(f"{args.db}: {result.summary()}")
    info = db.info()
    print(
        f"{args.db}: {info['songs']} songs, {info['vectors']} vectors, "
        f"{info['index']['type']} index, {_format_bytes(info['bytes_on_disk'])} on disk"
    )
    nothing_usable = not result.added and not result.duplicates and result.skipped
    return 1 if nothing_usable else 0


def run_identify(args: argparse.Namespace) -> int:
    from afp_core.database import FingerprintDB
    from afp_core.indexing import load_database_model
    from afp_core.query import identify_file

    db = FingerprintDB.open(args.db)
    checkpoint = load_database_model(db, args.model)
    model = checkpoint.model.to(args.device)
    if args.nprobe is not None:
        db.nprobe = args.nprobe
    threshold = args.threshold if args.threshold is not None else db.search_threshold
    failures = 0
    for query in args.queries:
        try:
            match = identify_file(
                db,
                model,
                query,
                start_s=args.start,
                duration_s=args.duration,
                method=args.method,
                k=args.k,
                threshold=threshold,
                device=args.device,
            )
        except AfpError as exc:
            failures += 1
            if args.json:
                print(json.dumps({"query": str(query), "song": None, "error": str(exc)}))
            print(f"afp: error: {exc}", file=sys.stderr)
            continue
        song = match.song
        record = {
            "query": str(query),
            "song": song.title if song else None,
            "artist": song.artist if song else None,
            "song_id": song.id if song else None,
            "path": song.source if song else None,
            "offset_s": round(match.offset_s, 3) if song and match.offset_s is not None else None,
            "score": round(float(match.score), 4),
            "method": match.method,
        }
        if args.json:
            print(json.dumps(record), flush=True)
        elif song is None:
            print(f"{query}: no match (best score {match.score:.3f})")
        else:
            print(
                f"{query}: {song.title}"
                + (f" — {song.artist}" if song.artist else "")
                + f" at {match.offset_s:.1f} s (score {match.score:.3f})"
            )
    return 1 if failures else 0


def run_info(args: argparse.Namespace) -> int:
    from afp_core.database import FingerprintDB

    db = FingerprintDB.open(args.db)
    info = db.info()
    if args.songs:
        info["song_list"] = [
            {
                "id": s.id,
                "title": s.title,
                "artist": s.artist,
                "duration_s": s.duration_s,
                "vectors": s.vector_count,
                "status": s.status,
                "source": s.source,
            }
            for s in db.songs()
        ]
    if args.json:
        print(json.dumps(info, indent=None, default=str))
        return 0
    index = info["index"]
    model = info["model_info"]
    rows = [
        ("database", str(args.db)),
        ("songs", f"{info['songs']} ({info['hours']:.2f} h of audio)"),
        ("vectors", f"{info['vectors']}"),
        ("staged", f"{info['staged_songs']} songs not yet in the index"),
        ("index", ", ".join(f"{k}={v}" for k, v in index.items())),
        ("on disk", _format_bytes(info["bytes_on_disk"])),
        ("per hour of audio", _format_bytes(info["bytes_per_hour"])),
        ("model", f"{model.get('name')} (sha256 {str(model.get('checkpoint_sha256'))[:12]})"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for song in info.get("song_list", []):
        print(f"  {song['id']:>5}  {song['duration_s']:7.1f} s  {song['title']}")
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
    from afp_core.training.trainer import train

    config = load_train_config(args.config)
    overrides = {}
    if args.device is not None:
        overrides["device"] = args.device
    if args.max_minutes is not None:
        overrides["max_minutes"] = args.max_minutes
    if overrides:
        training = dataclasses.replace(config.training, **overrides)  # validates again
        config = dataclasses.replace(config, training=training)
    result = train(config, out=args.out, resume=args.resume, quiet=args.quiet)
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


def _format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


COMMANDS = {
    "index": run_index,
    "identify": run_identify,
    "info": run_info,
    "demo": run_demo,
    "train": run_train,
}

if __name__ == "__main__":
    raise SystemExit(main())
