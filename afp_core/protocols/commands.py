"""``afp evaluate``: the evaluation protocols on the command line.

    afp evaluate realworld DB [DB ...] SESSION      # paper Tables 2 and 4
    afp evaluate baseline DB SONGS_DIR NOISE_DIR    # paper Table 3
    afp evaluate quantisation LIBRARY_DIR (--session SESSION | --noise NOISE_DIR)  # Figure 7

Each checks every input before work starts (one-line errors), shows a progress bar on
stderr, prints the Markdown table on stdout followed by the report folder, and writes the
report (``afp_core.protocols.report``). This module only imports the heavy parts when a
command runs, so ``afp --help`` stays fast.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from afp_core.config import SearchConfig
from afp_core.errors import ConfigError
from afp_core.tasks import progress_task

if TYPE_CHECKING:
    from afp_core.cli import Subcommands
    from afp_core.fusion import FusedRecogniser
    from afp_core.protocols.baseline import BaselineSettings
    from afp_core.recogniser import Recogniser

DEFAULT_OUT = Path("evaluations")


def add_evaluate_parser(sub: Subcommands, epilog: str) -> None:
    """Add ``evaluate`` and its three protocols to the ``afp`` subcommands."""
    parser = sub.add_parser(
        "evaluate",
        help="run an evaluation protocol and write a report",
        description="Evaluate fingerprinting systems: the real-world protocol on a recorded "
        "session (paper §3, Tables 2 and 4), the baseline protocol with noise added offline "
        "(Table 3), or the accuracy / index size trade-off of product quantisation "
        "(§5.3, Figure 7). Prints the table and writes a report folder (report.json, "
        "trials.csv, accuracy.png, table.md).",
        epilog=epilog,
    )
    protocols = parser.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")

    p = protocols.add_parser(
        "realworld",
        help="queries cut from the aligned takes of a session (paper Tables 2 and 4)",
        description="For every take of SESSION (low, mid, high...) and every song, cut "
        "queries of each length back to back inside the song's interval of the aligned take "
        "and identify them with every decision rule of each database (neural or landmark); "
        "or identify the clips of a query set exported from sessions (afp-rig export), "
        "which gives the same report. "
        "Several databases are compared on the same takes in one table (paper Table 2). "
        "Reports song-level accuracy (the paper's measure, no rejection), offset accuracy "
        "(±0.5 s) and the 'no match' rate.",
        epilog=epilog,
    )
    p.add_argument("dbs", metavar="DB", type=Path, nargs="+", help="database folder(s)")
    p.add_argument(
        "session",
        metavar="SESSION",
        type=Path,
        help="session folder, or query set folder (afp-rig export)",
    )
    p.add_argument(
        "--model", type=Path, help="checkpoint for the neural databases (must be their model)"
    )
    p.add_argument(
        "--lengths",
        type=float,
        nargs="+",
        default=[1, 2, 3, 4, 5, 10, 15],
        help="query lengths in seconds (default: %(default)s)",
    )
    p.add_argument("--takes", nargs="+", help="take labels to evaluate (default: all)")
    p.add_argument("--method", nargs="+", help="decision rules (default: every rule)")
    p.add_argument(
        "--fuse",
        action="store_true",
        help="add the fused rule: the first neural and the first landmark database (of the "
        "same library) answering together, reported beside each alone",
    )
    p.add_argument(
        "--as-one",
        action="store_true",
        help="the neural databases are parts of one library (same model): search them as "
        "one database instead of comparing them",
    )
    p.add_argument(
        "--allow-unchecked",
        action="store_true",
        help="evaluate takes whose alignment is missing or failed its checks (an unaligned "
        "take is assumed to start exactly with the program)",
    )
    _add_common(p, "realworld")

    p = protocols.add_parser(
        "baseline",
        help="noise added offline at fixed SNRs (paper Table 3)",
        description="Cut random excerpts of the songs in SONGS_DIR, add noise from NOISE_DIR "
        "at each SNR and identify prefixes of several lengths. A hit is the right song with "
        "the offset within ±0.5 s. Songs of SONGS_DIR not in DB (by content) measure false "
        "matches. --repeats draws everything again with the next seeds and reports the "
        "spread.",
        epilog=epilog,
    )
    p.add_argument("db", metavar="DB", type=Path, help="database folder")
    p.add_argument("songs", metavar="SONGS_DIR", type=Path, help="query songs (files or folder)")
    p.add_argument("noise", metavar="NOISE_DIR", type=Path, help="noise audio (files or folder)")
    p.add_argument("--model", type=Path, help="checkpoint for a neural database")
    _add_baseline_options(p, default_lengths=[1, 2, 3, 4, 5, 10])
    p.add_argument("--method", nargs="+", help="decision rules (default: every rule)")
    _add_common(p, "baseline")

    p = protocols.add_parser(
        "quantisation",
        help="accuracy vs code length and index size of IVF-PQ (paper Figure 7)",
        description="Embed LIBRARY_DIR once with the model, build an IVF-PQ index of the "
        "same vectors for every --m (plus an exact flat reference), and evaluate each with "
        "the real-world protocol on --session or the baseline protocol with --noise (queries "
        "from the library's own songs). Small libraries get fewer lists and codebook bits "
        "so that every index is a real IVF-PQ (a notice says so).",
        epilog=epilog,
    )
    p.add_argument("library", metavar="LIBRARY_DIR", type=Path, nargs="+", help="songs to index")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--session", type=Path, help="evaluate on this session (real world)")
    source.add_argument("--noise", type=Path, nargs="+", help="evaluate with this noise (baseline)")
    p.add_argument("--model", type=Path, help="checkpoint (default: the shipped model)")
    p.add_argument(
        "--m",
        type=int,
        nargs="+",
        default=[4, 8, 16, 32, 64, 128],
        help="sub-quantiser counts (default: %(default)s)",
    )
    p.add_argument(
        "--nbits",
        type=int,
        default=8,
        help="bits per sub-quantiser codebook (default: %(default)s)",
    )
    p.add_argument(
        "--nlist", type=int, default=256, help="IVF coarse centroids (default: %(default)s)"
    )
    p.add_argument(
        "--nprobe", type=int, default=4, help="IVF lists visited per search (default: %(default)s)"
    )
    p.add_argument(
        "--min-train-vectors",
        type=int,
        default=10_000,
        help="flat index below this many vectors, as `afp index` (default: %(default)s)",
    )
    p.add_argument("--no-flat", action="store_true", help="leave out the unquantised reference")
    p.add_argument("--takes", nargs="+", help="with --session: take labels (default: all)")
    p.add_argument(
        "--allow-unchecked", action="store_true", help="with --session: as in `realworld`"
    )
    _add_baseline_options(p, default_lengths=None)
    _add_common(p, "quantisation", threshold=False)


def _add_baseline_options(p: argparse.ArgumentParser, default_lengths: list[float] | None) -> None:
    p.add_argument(
        "--lengths",
        type=float,
        nargs="+",
        default=default_lengths,
        help="query lengths in seconds (default: "
        + ("%(default)s)" if default_lengths else "15 with --session, 5 with --noise)"),
    )
    p.add_argument(
        "--snrs",
        type=float,
        nargs="+",
        default=[0.0, 5.0, 10.0, 15.0],
        help="SNRs in dB (default: %(default)s)",
    )
    p.add_argument("--clean", action="store_true", help="also queries without noise")
    p.add_argument(
        "--excerpts",
        type=int,
        default=2,
        help="excerpts per song and repeat (default: %(default)s)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="repeated draws, spread reported across them (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the first draw; repeat r uses seed + r (default: %(default)s)",
    )


def _add_common(p: argparse.ArgumentParser, name: str, threshold: bool = True) -> None:
    if threshold:
        p.add_argument(
            "--threshold",
            default="auto",
            help="'no match' threshold: auto (the database's calibrated one, the default), none, "
            "or a score",
        )
    p.add_argument(
        "-k",
        type=int,
        default=SearchConfig.k,
        help="neighbours retrieved per window, neural databases (default: %(default)s)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help=f"report folder (default: {DEFAULT_OUT}/{name}-NAME-TIME)",
    )
    p.add_argument(
        "--device", default="cpu", help="torch device for the encoder (default: %(default)s)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=256,
        help="windows per encoder batch (default: %(default)s)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_evaluate(args: argparse.Namespace) -> int:
    """Dispatch ``afp evaluate PROTOCOL``."""
    return {
        "realworld": _run_realworld,
        "baseline": _run_baseline,
        "quantisation": _run_quantisation,
    }[args.protocol](args)


# ---------------------------------------------------------------------- helpers


def _threshold(text: str) -> float | str | None:
    value = str(text).strip().lower()
    if value == "auto":
        return "auto"
    if value == "none":
        return None
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"--threshold: {text!r} is not auto, none or a number") from None


def _out_folder(args: argparse.Namespace, name: str) -> Path:
    if args.out is not None:
        return Path(args.out)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return DEFAULT_OUT / f"{args.protocol}-{name}-{stamp}"


def _notice(_quiet: bool = False) -> Callable[[str], None]:
    def say(text: str) -> None:
        from tqdm import tqdm

        tqdm.write(f"afp: note: {text}", file=sys.stderr)

    return say


def _open(db: Path | list[Path], model: Path | None, args: argparse.Namespace) -> Recogniser:
    """One database's recogniser, or a list's (neural databases searched as one)."""
    from afp_core.recogniser import database_kind, open_recogniser

    checkpoint = model if isinstance(db, list) or database_kind(db) == "neural" else None
    recogniser = open_recogniser(db, checkpoint, k=args.k, device=args.device)
    if hasattr(recogniser, "batch_size"):
        recogniser.batch_size = args.batch_size
    return recogniser


def _fused(recognisers: list[Recogniser], dbs: list[Path]) -> FusedRecogniser:
    """The fused recogniser of the first neural and the first landmark database given."""
    from afp_core.fusion import FusedRecogniser
    from afp_core.landmark import LandmarkRecogniser
    from afp_core.recogniser import NeuralRecogniser

    neural = next((r for r in recognisers if isinstance(r, NeuralRecogniser)), None)
    landmark = next((r for r in recognisers if isinstance(r, LandmarkRecogniser)), None)
    if neural is None or landmark is None:
        given = ", ".join(f"{db} ({r.kind})" for db, r in zip(dbs, recognisers, strict=False))
        raise ConfigError(
            f"--fuse needs a neural and a landmark database of the same library (given: {given})"
        )
    return FusedRecogniser(neural, landmark)


def _command_line(args: argparse.Namespace) -> str:
    return shlex.join(["afp", *args.argv])


def _finish(table: str, out: Path) -> int:
    print(table.rstrip())
    print(f"\nreport: {out}")
    return 0


# ---------------------------------------------------------------------- protocols


def _run_realworld(args: argparse.Namespace) -> int:
    from afp_core.protocols.querysets import is_queryset_folder, read_session_or_queryset
    from afp_core.protocols.realworld import RealWorldSettings, plan_realworld, run_realworld_plan
    from afp_core.protocols.report import format_realworld_table, write_realworld_report
    from afp_core.protocols.sessions import is_session_folder

    def usable(path: Path) -> bool:
        return is_session_folder(path) or is_queryset_folder(path)

    if not usable(args.session):
        hint = ""
        if any(usable(db) for db in args.dbs):
            hint = " (give the databases first, the session last)"
        raise ConfigError(
            f"{args.session}: not a session or query set folder (no session.json or "
            f"queryset.json){hint}"
        )
    session = read_session_or_queryset(args.session)
    if args.as_one:
        recognisers = _open_as_one(args)
    else:
        if args.model is not None and len(args.dbs) > 1:
            from afp_core.recogniser import database_kind

            neural = [db for db in args.dbs if database_kind(db) == "neural"]
            if len(neural) > 1:
                raise ConfigError("--model applies to one neural database; give one, or no --model")
        recognisers = [_open(db, args.model, args) for db in args.dbs]
    if args.fuse:
        recognisers.append(_fused(recognisers, args.dbs))
    settings = RealWorldSettings(
        lengths_s=tuple(_number(x) for x in args.lengths),
        methods=tuple(args.method) if args.method else None,
        takes=tuple(args.takes) if args.takes else None,
        threshold=_threshold(args.threshold),
        allow_unchecked=args.allow_unchecked,
    )
    plan = plan_realworld(recognisers, session, settings)
    for note in plan.notes:
        _notice(args.quiet)(note)
    out = _out_folder(args, session.folder.name)
    with progress_task(args.quiet, "s", "evaluating") as task:
        results = run_realworld_plan(plan, task=task)
    write_realworld_report(out, results, extra={"command": _command_line(args)})
    return _finish(format_realworld_table(results), out)


def _open_as_one(args: argparse.Namespace) -> list[Recogniser]:
    """``--as-one``: the neural databases searched as one, then each landmark database."""
    from afp_core.recogniser import database_kind

    neural = [db for db in args.dbs if database_kind(db) == "neural"]
    if len(neural) < 2:
        raise ConfigError(
            f"--as-one needs two or more neural databases (given: {len(neural)} of {len(args.dbs)})"
        )
    others = [_open(db, None, args) for db in args.dbs if db not in neural]
    return [_open(neural, args.model, args), *others]


def _baseline_settings(args: argparse.Namespace, lengths: list[float]) -> BaselineSettings:
    from afp_core.protocols.baseline import BaselineSettings

    snrs: list[float | None] = [None] if args.clean else []
    snrs += [float(x) for x in args.snrs]
    return BaselineSettings(
        lengths_s=tuple(_number(x) for x in lengths),
        snrs_db=tuple(snrs),
        excerpts_per_song=args.excerpts,
        repeats=args.repeats,
        methods=tuple(args.method) if getattr(args, "method", None) else None,
        threshold=_threshold(getattr(args, "threshold", "none")),
        seed=args.seed,
    )


def _run_baseline(args: argparse.Namespace) -> int:
    from afp_core.protocols.baseline import (
        check_baseline_settings,
        load_noise,
        query_songs,
        run_baseline_protocol,
    )
    from afp_core.protocols.report import write_baseline_report

    recogniser = _open(args.db, args.model, args)
    settings = _baseline_settings(args, args.lengths)
    check_baseline_settings(settings, recogniser)
    songs = query_songs(recogniser, [args.songs])
    if not songs:
        raise ConfigError(f"{args.songs}: no audio files")
    if not any(s.song is not None for s in songs):
        raise ConfigError(
            f"{args.songs}: none of these songs is in {args.db} (by content); "
            f"index them with: afp index {args.db} {args.songs}"
        )
    noise = load_noise([args.noise], recogniser.sample_rate, seed=args.seed)
    out = _out_folder(args, Path(args.db).name)
    with progress_task(args.quiet, "excerpt", "evaluating") as task:
        result = run_baseline_protocol(recogniser, songs, noise, settings, task=task)
    for note in result.notes:
        _notice(args.quiet)(note)
    write_baseline_report(
        out, result, extra={"command": _command_line(args), "noise": str(args.noise)}
    )
    from afp_core.protocols.baseline import format_accuracy_tables

    return _finish(format_accuracy_tables(result.summary), out)


def _run_quantisation(args: argparse.Namespace) -> int:
    import dataclasses

    from afp_core.protocols.quantisation import (
        QuantisationSettings,
        plan_quantisation_sweep,
        run_quantisation_plan,
    )
    from afp_core.protocols.realworld import RealWorldSettings
    from afp_core.protocols.report import format_quantisation_table, write_quantisation_report

    settings = QuantisationSettings(
        ms=tuple(args.m),
        nbits=args.nbits,
        nlist=args.nlist,
        nprobe=args.nprobe,
        min_train_vectors=args.min_train_vectors,
        include_flat=not args.no_flat,
        k=args.k,
    )
    lengths = args.lengths or ([15] if args.session is not None else [5])
    realworld = RealWorldSettings(
        lengths_s=tuple(_number(x) for x in lengths),
        takes=tuple(args.takes) if args.takes else None,
        threshold=None,
        allow_unchecked=args.allow_unchecked,
    )
    baseline = dataclasses.replace(_baseline_settings(args, lengths), threshold=None)
    name = args.session.name if args.session is not None else Path(args.library[0]).name
    out = _out_folder(args, name)
    plan = plan_quantisation_sweep(
        args.library,
        args.model,
        session=args.session,
        noise=args.noise,
        settings=settings,
        realworld=realworld,
        baseline=baseline,
        device=args.device,
        batch_size=args.batch_size,
        on_notice=_notice(),
    )
    with progress_task(args.quiet, "step", "quantisation sweep") as task:
        result = run_quantisation_plan(plan, task=task, on_notice=_notice())
    write_quantisation_report(out, result, extra={"command": _command_line(args)})
    return _finish(format_quantisation_table(result), out)


def _number(value: float) -> float:
    """1.0 -> 1 (so reports and tables say "1 s", as the paper does)."""
    return int(value) if float(value).is_integer() else float(value)
