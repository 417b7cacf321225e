"""The ``afp-rig`` command: the recording rig's app, and every step of it without a display.

``afp-rig`` alone opens the app. The sub-commands run the paper's protocol (§3) step by
step: ``new`` session, add ``songs``, build the ``program``, ``record`` the low/mid/high
takes (each aligned as soon as it is recorded), ``recover`` a take whose recording was
killed, ``align`` again, print each take's ``quality``, or ``import-authors`` the paper
authors' published recordings. A user error prints one line ``afp-rig: error: ...`` and
exits 1; usage errors exit 2; Ctrl-C stops at the next safe point, keeps what was done and
exits 130 (a second Ctrl-C quits at once).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from afp_core import __version__
from afp_core.cli import EPILOG, Subcommands, run_guarded
from afp_core.errors import AfpError, Cancelled

if TYPE_CHECKING:
    from afp_core.tasks import TaskState
    from rig_app.room import VirtualRoom
    from rig_app.session import Session

PROG = "afp-rig"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except empty ones and where the help states its own."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, "") or "default" in text:
            return text
        return super()._get_help_string(action) or text


def _distance_m(text: str) -> float:
    """A speaker distance: a finite number of metres, not negative."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of metres") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a distance is a finite number >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Recording rig for the paper's real-world evaluation protocol: songs, "
        "a loudness-normalised music program with alignment markers, a noise program, and "
        "takes recorded at three speaker distances, aligned to the program. Without a "
        "command, opens the app.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_parser in _PARSERS:
        add_parser(sub)
    return parser


def _add_app_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "app",
        help="open the app (the default without a command)",
        description="Open the recording rig's window, with SESSION_DIR open if given.",
        formatter_class=_HelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("session", metavar="SESSION_DIR", type=Path, nargs="?", help="session folder")


def _add_devices_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "devices",
        help="list the audio devices",
        description="List the audio devices PortAudio sees, with their index, host API, "
        "input/output channels and default sample rate. Devices are named in `record` by "
        "name, a unique part of the name, or index.",
        formatter_class=_HelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("--json", action="store_true", help="one JSON object per device per line")


def _add_new_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "new",
        help="create an empty session folder",
        description="Create a new session in SESSION_DIR (created if missing; it must not "
        "hold a session yet). See docs/session-format.md.",
        formatter_class=_HelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("session", metavar="SESSION_DIR", type=Path, help="new session folder")
    p.add_argument("--notes", default="", help="free text stored with the session")


def _add_songs_parser(sub: Subcommands) -> None:
    from rig_app.songs import MIN_DURATION_S

    p = sub.add_parser(
        "songs",
        help="add songs by URL, file or folder",
        description="Add each ITEM to the session's songs (SESSION_DIR/songs): a URL is "
        "downloaded with yt-dlp (best audio, converted to FLAC), a file is copied (or "
        "converted), a folder adds every audio file below it. Songs already there (same "
        "audio, same URL or video id) are reported as duplicates. A failed item is "
        "reported with its reason and the others are still added.",
        formatter_class=_HelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("session", metavar="SESSION_DIR", type=Path, help="session folder")
    p.add_argument("items", metavar="ITEM", nargs="+", help="URLs, audio files or folders")
    p.add_argument(
        "--min-duration",
        type=float,
        default=MIN_DURATION_S,
        help="refuse songs shorter than this many seconds",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_program_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "program",
        help="build the music (and noise) program from the session's songs",
        description="Normalise the session's songs to the target loudness (BS.1770), join "
        "them with sweep markers at the start, between songs and at the end, and write "
        "program/music.wav and program/program.json. With --noise, also write "
        "program/noise.wav: the clips shuffled, crossfaded and looped to the program's "
        "length, at the music's loudness plus --noise-level-db, silent around the markers. "
        "Replaces the session's previous program.",
        formatter_class=_HelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("session", metavar="SESSION_DIR", type=Path, help="session folder")
    p.add_argument("--target-lufs", type=float, default=-23.0, help="song loudness (LUFS)")
    p.add_argument(
        "--on-overload",
        choices=["lower-gain", "limit"],
        default="lower-gain",
        help="a song whose peak would pass the ceiling: lower its gain (it plays quieter, "
        "noted) or limit its peaks (look-ahead limiter)",
    )
    p.add_argument(
        "--peak-ceiling", type=float, default=-1.0, help="highest true peak allowed (dBFS)"
    )
    p.add_argument("--gap", type=float, default=1.0, help="silence around each marker (s)")
    p.add_argument(
        "--noise",
        type=Path,
        nargs="+",
        metavar="PATH",
        help="noise clips: audio files or folders of them (default: no noise program)",
    )
    p.add_argument(
        "--noise-level-db",
        type=float,
        default=0.0,
        help="noise loudness relative to the music's (dB)",
    )
    p.add_argument("--seed", type=int, default=0, help="shuffle of the noise clips")
    p.add_argument("--sample-rate", type=int, default=48000, help="program sample rate (Hz)")
    p.add_argument(
        "--min-song-s", type=float, default=60.0, help="refuse songs shorter than this (s)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_record_parser(sub: Subcommands) -> None:
    from afp_core.protocols.sessions import TAKE_LABELS

    p = sub.add_parser(
        "record",
        help="record a take (play the program, record the microphone), then align it",
        description="Play the session's music program on --music-out (and its noise program "
        "on --noise-out) while recording --mic, store the take as takes/LABEL.raw.wav and "
        "align it to the program (offset, drift, residual at every marker). The paper's "
        "takes: low (speaker far, least distorted), mid, high (speaker close). Ctrl-C ends "
        "the take early and keeps it.",
        formatter_class=_HelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("session", metavar="SESSION_DIR", type=Path, help="session folder")
    p.add_argument(
        "--label",
        required=True,
        choices=TAKE_LABELS,
        help="which take: low (speaker far), mid, high (speaker close)",
    )
    p.add_argument(
        "--music-out", required=True, help="output device for the music (name, part, index)"
    )
    p.add_argument(
        "--noise-out",
        help="output device for the noise program (omit when the noise plays elsewhere)",
    )
    p.add_argument("--mic", required=True, help="input device (name, part of it, or index)")
    p.add_argument("--distance", type=_distance_m, help="speaker distance in metres (stored)")
    p.add_argument("--notes", default="", help="free text stored with the take")
    p.add_argument(
        "--sample-rate",
        type=int,
        help="recording rate in Hz (default: the program's; another rate plays it resampled)",
    )
    p.add_argument("--lead-in", type=float, default=1.0, help="silence before the program (s)")
    p.add_argument("--tail", type=float, default=2.0, help="recording after the program (s)")
    p.add_argument("--replace", action="store_true", help="replace a take of this label")
    p.add_argument("--no-align", action="store_true", help="store the take without aligning")
    p.add_argument(
        "--virtual-room",
        nargs="?",
        const="",
        metavar="ROOM_JSON",
        help="play the program through a virtual room (rig_app.room; the default room, or "
        "one from ROOM_JSON): the music as a laptop speaker in the room delivers it to a "
        "laptop microphone, the noise from a speaker at the label's distance (--distance "
        "overrides it); for the virtual devices. The take's notes say so",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_recover_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "recover",
        help="store takes whose recording was killed",
        description="A recording killed mid-way (kill -9, a crash, a power cut) leaves "
        "takes/LABEL.raw.wav readable up to its last half second but not in the session. "
        "Extend the file's header to every whole frame on disk and store it, unaligned, as "
        "the take LABEL (its notes say how much was recovered); then run `align`, which "
        "aligns a take cut short on the markers it holds and gives ground truth for the "
        "songs it holds whole: a partial take, flagged, its missing songs named.",
        formatter_class=_HelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("session", metavar="SESSION_DIR", type=Path, help="session folder")
    p.add_argument(
        "--label", help="only this take (default: every take file the session does not hold)"
    )


def _add_simulate_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate takes through a virtual room (no audio devices), then align them",
        description="Make each LABEL's take without audio devices: the program's music "
        "through a laptop speaker, a room (image-source method) and a laptop microphone, "
        "the noise program from a speaker at the label's distance, mixed, on a recorder "
        "clock --drift-ppm fast after --offset seconds, with a little microphone "
        "self-noise. Stored as takes/LABEL.raw.wav like a recorded take (its notes say it "
        "was simulated, with the room) and aligned. See docs/virtual-room.md.",
        formatter_class=_HelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("session", metavar="SESSION_DIR", type=Path, help="session folder")
    p.add_argument(
        "labels",
        metavar="LABEL",
        nargs="*",
        help="takes to simulate (default: every label of the room: low mid high)",
    )
    p.add_argument("--room", type=Path, metavar="ROOM_JSON", help="the room (default: built in)")
    p.add_argument(
        "--save-room", type=Path, metavar="FILE", help="write the room used to FILE (a template)"
    )
    p.add_argument("--offset", type=float, default=0.7, help="silence before the program (s)")
    p.add_argument("--drift-ppm", type=float, default=35.0, help="recorder clock drift (ppm)")
    p.add_argument(
        "--mic-noise-db", type=float, default=-75.0, help="microphone self-noise (dBFS RMS)"
    )
    p.add_argument("--seed", type=int, help="self-noise seed (default: the room's, +1 per take)")
    p.add_argument("--replace", action="store_true", help="replace takes of these labels")
    p.add_argument("--no-align", action="store_true", help="store the takes without aligning")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_align_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "align",
        help="align the session's takes to the program again",
        description="Align each take (or the one labelled --label) to the program: find the "
        "markers, fit offset and drift, resample the take onto the program clock "
        "(takes/LABEL.aligned.wav) and check the residual at every marker. A program "
        "without markers (an imported layout) is aligned by correlation with the music.",
        formatter_class=_HelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("session", metavar="SESSION_DIR", type=Path, help="session folder")
    p.add_argument("--label", help="only this take (default: every take)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_quality_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "quality",
        help="measure and print each take's quality (music-to-noise ratio, clipping, xruns)",
        description="Print the quality record of every aligned take: the music-to-noise "
        "ratio at the microphone measured over the program's calibration segments (per take "
        "and per song), loudness, clipping, dropouts, xruns and where they fell, the "
        "alignment's residuals and drift, and every flag with its reason. Records are made "
        "when a take is aligned; --recompute measures again (e.g. a session aligned by an "
        "older version). See docs/session-format.md, 'Quality record'.",
        formatter_class=_HelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("session", metavar="SESSION_DIR", type=Path, help="session folder")
    p.add_argument("--label", help="only this take (default: every aligned take)")
    p.add_argument("--recompute", action="store_true", help="measure again and store")
    p.add_argument(
        "--threshold",
        action="append",
        metavar="NAME=VALUE",
        help="a flag's threshold for this measurement (implies --recompute; kept in each "
        "record): " + ", ".join(f"{name}={value:g}" for name, value in _quality_defaults().items()),
    )
    p.add_argument("--json", action="store_true", help="print the records as JSON")


def _add_import_authors_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "import-authors",
        help="make a session from the paper authors' published layout",
        description="Read a CSV of song files in play order (or a folder holding one), the "
        "songs and the low/mid/high recordings, and write a new session in SESSION_DIR: the "
        "program is the songs joined without gaps or markers, and each recording is aligned "
        "to it by correlation. See docs/session-format.md for the assumptions.",
        formatter_class=_HelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("source", metavar="CSV_OR_FOLDER", type=Path, help="song list or folder")
    p.add_argument("session", metavar="SESSION_DIR", type=Path, help="new session folder")
    p.add_argument("--sample-rate", type=int, default=16000, help="program sample rate (Hz)")
    p.add_argument(
        "--min-song-s", type=float, default=60.0, help="refuse songs shorter than this (s)"
    )


def _add_exclude_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "exclude",
        help="leave a take, a song or one song of a take out of published query sets",
        description="Record in the session that --take (the whole take), --song (that song "
        "in every take) or both (that song of that take) go into no exported query set, "
        "and why. No audio is deleted; `include` takes it back. See `afp-rig selection`.",
        formatter_class=_HelpFormatter,
        epilog=EPILOG,
    )
    _add_target(p)
    p.add_argument("--reason", required=True, help="why it is left out (shown in the data card)")


def _add_include_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "include",
        help="take back exclusions (see `exclude`)",
        description="Remove the exclusions of --take (all of that take's), --song (that "
        "song's, in every take) or both (that song of that take). An exclusion of the whole "
        "take or of the song in every take still leaves it out; the command says so.",
        formatter_class=_HelpFormatter,
        epilog=EPILOG,
    )
    _add_target(p)


def _add_note_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "note",
        help="note something about a take, a song or the session (shown in the data card)",
        description="Keep TEXT as the note on --take, --song, both (that song of that "
        "take) or, with neither, the session: what a curator noticed (the Dataset page's Note "
        "column; exported in the data card). An empty TEXT removes the note.",
        formatter_class=_HelpFormatter,
        epilog=EPILOG,
    )
    _add_target(p)
    p.add_argument("text", metavar="TEXT", help="the note ('' removes it)")


def _add_selection_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "selection",
        help="show what is left out of published query sets, and why",
        description="List the session's takes and songs (with the numbers `exclude` and "
        "`include` take), what is excluded and why, and the notes.",
        formatter_class=_HelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("session", metavar="SESSION_DIR", type=Path, help="session folder")


def _add_export_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "export",
        help="publish sessions as a query set (clips, indexes, data card, checksums)",
        description="Cut the real-world protocol's queries from every included take of "
        "each SESSION (the selection of `exclude` / `include` decides) and write them into "
        "OUT_DIR with queries.csv, references.csv (the songs as the program played them), "
        "queryset.json, a README.md data card and SHA256SUMS; `afp evaluate realworld DB "
        "OUT_DIR` evaluates it. OUT_DIR must be new, empty, or a query set to add the "
        "sessions it does not hold yet to. --format authors writes the paper authors' "
        "layout instead (long takes and a song list). See docs/query-set-format.md.",
        formatter_class=_HelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument(
        "paths",
        metavar="SESSION_DIR... OUT_DIR",
        type=Path,
        nargs="+",
        help="session folders, then the query set folder",
    )
    p.add_argument(
        "--lengths",
        type=float,
        nargs="+",
        default=[1, 2, 3, 5, 10, 15],
        help="query lengths in seconds",
    )
    p.add_argument(
        "--per-song",
        type=int,
        metavar="N",
        help="queries kept per song and length, spread evenly (default: all, back to back)",
    )
    p.add_argument(
        "--format",
        choices=["folder", "authors"],
        default="folder",
        help="folder: query clips and indexes; authors: the paper authors' layout",
    )
    p.add_argument(
        "--audio",
        choices=["flac", "wav"],
        default="flac",
        help="clips as FLAC (24-bit) or WAV (32-bit float)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_demo_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "demo",
        help="the real-world protocol end to end on the development music (the README's job)",
        description="Build a session of development songs the shipped model did not train "
        "on (an excerpt of each, markers, a speech-babble noise program), record low/mid/high "
        "through the virtual room on PulseAudio virtual devices (all three at once; simulated "
        "offline, said clearly, when the devices cannot start), align the takes, index the "
        "development music with the model (reused on a rerun) and run the real-world "
        "protocol: prints the table and saves the report in OUT/report.",
        formatter_class=_HelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="the same steps on less audio, a few minutes: 4 excerpts of 20 s, a database "
        "of 30 songs, OUT demo-quick (the options below still override)",
    )
    p.add_argument("--out", type=Path, help="output folder (default: demo-output)")
    p.add_argument("--songs", type=int, help="songs in the session (default: 6)")
    p.add_argument("--excerpt-s", type=float, help="seconds of each song (default: 40)")
    p.add_argument(
        "--library-songs", type=int, help="songs in the database (default: the whole library)"
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--live", dest="live", action="store_const", const=True,
                      help="record through the virtual devices or fail")  # fmt: skip
    mode.add_argument("--offline", dest="live", action="store_const", const=False,
                      help="simulate the takes offline (no devices)")  # fmt: skip
    p.add_argument("--model", type=Path, help="checkpoint (default: the shipped model)")
    p.add_argument("--library", type=Path, nargs="+", help="music (default: development music)")
    p.add_argument("--seed", type=int, default=0, help="song choice, noise and room")
    p.add_argument("--device", default="cpu", help="torch device for the model")
    p.add_argument("--quiet", action="store_true", help="no progress bars or notes")


_PARSERS: tuple[Callable[[Subcommands], None], ...] = (
    _add_app_parser,
    _add_devices_parser,
    _add_new_parser,
    _add_songs_parser,
    _add_program_parser,
    _add_record_parser,
    _add_recover_parser,
    _add_simulate_parser,
    _add_align_parser,
    _add_quality_parser,
    _add_import_authors_parser,
    _add_exclude_parser,
    _add_include_parser,
    _add_note_parser,
    _add_selection_parser,
    _add_export_parser,
    _add_demo_parser,
)


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("session", metavar="SESSION_DIR", type=Path, help="session folder")
    p.add_argument("--take", metavar="LABEL", help="take label (omitted: every take)")
    p.add_argument(
        "--song",
        metavar="N_OR_TITLE",
        help="the song's number (1 = the first, as `afp-rig selection` lists them) or title "
        "(omitted: the whole take)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0] not in COMMANDS and Path(argv[0]).is_dir():
        argv = ["app", argv[0]]  # `afp-rig SESSION_DIR` opens the app on that session
    args = build_parser().parse_args(argv)
    command = args.command or "app"
    if command == "app" and not hasattr(args, "session"):
        args.session = None
    return run_guarded(PROG, lambda: COMMANDS[command](args), "interrupted; finished work is kept")


@contextlib.contextmanager
def _interrupt_cancels(task: TaskState) -> Iterator[None]:
    """The first Ctrl-C cancels ``task`` (it stops at a safe point), the second quits."""
    presses = 0

    def on_interrupt(signum: int, frame: object) -> None:
        nonlocal presses
        presses += 1
        if presses > 1:
            raise KeyboardInterrupt
        task.cancel()
        print(
            f"\n{PROG}: stopping at the next safe point (Ctrl-C again to quit at once)",
            file=sys.stderr,
        )

    try:
        previous = signal.signal(signal.SIGINT, on_interrupt)
    except ValueError:  # not the main thread: leave Ctrl-C as it is
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _progress(quiet: bool, unit: str, description: str) -> Iterator[TaskState]:
    """A TaskState drawing a tqdm bar (none with ``quiet``) that Ctrl-C cancels."""
    from afp_core.tasks import progress_task

    with progress_task(quiet, unit, description) as task, _interrupt_cancels(task):
        yield task


def _open(folder: Path) -> Session:
    from rig_app.session import Session

    return Session.load(folder)


def run_app(args: argparse.Namespace) -> int:
    from rig_app.ui.main_window import run_app as start

    return start(args.session)


def run_devices(args: argparse.Namespace) -> int:
    from rig_app.devices import list_devices

    devices = list_devices()
    for device in devices:
        if args.json:
            print(
                json.dumps(
                    {
                        "index": device.index,
                        "name": device.name,
                        "hostapi": device.hostapi,
                        "inputs": device.max_input_channels,
                        "outputs": device.max_output_channels,
                        "default_samplerate": device.default_samplerate,
                    }
                )
            )
        else:
            print(device.describe())
    if not devices and not args.json:
        print(f"{PROG}: no audio devices found", file=sys.stderr)
    return 0


def run_new(args: argparse.Namespace) -> int:
    from rig_app.session import Session

    session = Session.create(args.session)
    if args.notes:
        session.notes = args.notes
        session.save()
    print(f"{session.folder}: new session")
    return 0


def run_songs(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from rig_app.jobs import add_session_songs, format_duration

    session = _open(args.session)
    with _progress(args.quiet, "song", "adding songs") as task:
        results = add_session_songs(
            task, session, args.items, min_duration_s=args.min_duration, timeout_s=args.timeout
        )
    failed = 0
    for result in results:
        if result.ok and result.song is not None:
            song = result.song
            print(f"added: {song.title} ({format_duration(song.duration_s)}) from {result.item}")
        elif result.duplicate:
            tqdm.write(f"duplicate: {result.error}", file=sys.stderr)
        else:
            failed += 1
            tqdm.write(f"failed: {result.error}", file=sys.stderr)
    added = sum(r.ok for r in results)
    duplicates = sum(r.duplicate for r in results)
    print(
        f"{session.folder}: {added} added, {duplicates} duplicate(s), {failed} failed; "
        f"the session has {len(session.songs)} songs"
    )
    return 1 if failed else 0


def run_program(args: argparse.Namespace) -> int:
    from afp_core.audio import iter_audio_files
    from rig_app.jobs import ProgramOptions, build_session_program, format_duration

    session = _open(args.session)
    noise = tuple(iter_audio_files(args.noise)) if args.noise else ()
    if args.noise and not noise:
        raise AfpError(f"{', '.join(map(str, args.noise))}: no noise audio files found")
    options = ProgramOptions(
        target_lufs=args.target_lufs,
        on_overload="limit" if args.on_overload == "limit" else "lower_gain",
        peak_ceiling_db=args.peak_ceiling,
        gap_s=args.gap,
        noise_files=noise,
        noise_level_db=args.noise_level_db,
        seed=args.seed,
        sample_rate=args.sample_rate,
        min_song_s=args.min_song_s,
    )
    with _progress(args.quiet, "step", "building the program") as task:
        view = build_session_program(task, session, options)
    for slot in view.songs:
        before = "—" if slot.loudness_before is None else f"{slot.loudness_before:.1f}"
        after = "—" if slot.loudness_after is None else f"{slot.loudness_after:.1f}"
        print(
            f"  {slot.index + 1:>3}  {format_duration(slot.start_s):>9}  "
            f"{format_duration(slot.duration_s):>8}  {before:>6} -> {after:>6} LUFS  {slot.title}"
        )
    for note in view.notes:
        print(f"note: {note}")
    noise_text = (
        f", noise at {options.noise_level_db:+g} dB re music" if view.has_noise else ", no noise"
    )
    print(
        f"{session.folder}: program {format_duration(view.duration_s)} at {view.sample_rate} Hz, "
        f"{len(view.songs)} songs, {view.marker_count} markers{noise_text}"
    )
    return 0


def _room(
    path: Path | str | None, label: str | None = None, distance: float | None = None
) -> VirtualRoom:
    from rig_app.room import VirtualRoom

    room = VirtualRoom() if not path else VirtualRoom.load(path)
    if label is not None and distance is not None:
        room = room.with_noise_distance(label, distance)
    return room


def run_record(args: argparse.Namespace) -> int:
    from rig_app.jobs import TakeSettings, format_duration, record_session_take

    session = _open(args.session)
    room = None
    if args.virtual_room is not None:
        room = _room(args.virtual_room, args.label, args.distance)
    settings = TakeSettings(
        label=args.label,
        music_out=args.music_out,
        mic_in=args.mic,
        noise_out=args.noise_out,
        sample_rate=args.sample_rate,
        speaker_distance_m=args.distance,
        notes=args.notes,
        lead_in_s=args.lead_in,
        tail_s=args.tail,
        replace=args.replace,
        room=room,
    )
    with _progress(args.quiet, "s", f"recording {args.label}") as task:
        result = record_session_take(task, session, settings)
    problems = result.problems
    print(
        f"{result.path}: {format_duration(result.duration_s)} recorded at {result.sample_rate} "
        f"Hz ({result.ended_by})" + (f"; {'; '.join(problems)}" if problems else "")
    )
    if result.frames == 0:
        raise AfpError(f"{result.path}: nothing was recorded ({result.error or result.ended_by})")
    if task.cancelled:
        print(f"{PROG}: stopped; the take is stored unaligned (run: {PROG} align)", file=sys.stderr)
        return 130
    if args.no_align:
        return 1 if result.error else 0
    refused = _align(session, [args.label], args.quiet)
    return 1 if refused or result.error else 0


def run_recover(args: argparse.Namespace) -> int:
    from afp_core.tasks import TaskState
    from rig_app.jobs import format_duration, recover_session_takes, unstored_takes

    session = _open(args.session)
    labels = [args.label] if args.label else unstored_takes(session)
    if not labels:
        raise AfpError(f"{session.path}: every take file is stored already; nothing to recover")
    results = recover_session_takes(TaskState(), session, labels)
    for label, result in zip(labels, results, strict=True):
        expected = format_duration(result.frames_expected / result.sample_rate)
        print(
            f"{result.path}: {format_duration(result.duration_s)} of {expected} recovered "
            f"({result.ended_by}); stored as take {label!r}, unaligned "
            f"(next: {PROG} align {session.folder} --label {label})"
        )
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    from rig_app.jobs import simulate_session_take

    session = _open(args.session)
    room = _room(args.room)
    labels = list(args.labels) or list(room.labels)
    for label in labels:
        room.noise_distance(label)  # every label checked before any work
    if args.save_room:
        room.save(args.save_room)
    for number, label in enumerate(labels):
        with _progress(args.quiet, "step", f"simulating {label}") as task:
            made = simulate_session_take(
                task,
                session,
                room,
                label,
                offset_s=args.offset,
                drift_ppm=args.drift_ppm,
                mic_noise_db=args.mic_noise_db,
                seed=(room.seed if args.seed is None else args.seed) + number,
                replace=args.replace,
            )
        print(f"{made.path}: simulated {made.describe()}")
    if args.no_align:
        return 0
    return 1 if _align(session, labels, args.quiet) else 0


def run_align(args: argparse.Namespace) -> int:
    session = _open(args.session)
    labels = [args.label] if args.label else [take.label for take in session.takes]
    if args.label:
        session.take(args.label)  # says which takes there are
    if not labels:
        raise AfpError(f"{session.path}: no takes to align")
    return 1 if _align(session, labels, args.quiet) else 0


def _align(session: Session, labels: Sequence[str], quiet: bool) -> int:
    """Align the takes, one line each; returns how many were refused."""
    from rig_app.jobs import align_session_take, describe_alignment

    refused = 0
    for label in labels:
        with _progress(quiet, "step", f"aligning {label}") as task:
            try:
                alignment = align_session_take(task, session, label)
            except Cancelled:
                raise
            except AfpError as exc:
                refused += 1
                print(f"{PROG}: error: take '{label}' not aligned: {exc}", file=sys.stderr)
                continue
        take = session.take(label)
        print(f"{label}: {describe_alignment(alignment, take.xruns, take.xrun_times_s)}")
    return refused


def _quality_defaults() -> dict[str, float]:
    from rig_app.quality import QualityThresholds

    return dataclasses.asdict(QualityThresholds())


def run_quality(args: argparse.Namespace) -> int:
    from rig_app.quality import format_quality, parse_thresholds, update_session_quality

    settings = args.threshold or []
    thresholds = parse_thresholds(settings)
    session = _open(args.session)
    labels = [args.label] if args.label else None
    if args.label:
        session.take(args.label)  # says which takes there are
    takes = [t for t in session.takes if labels is None or t.label in labels]
    again = args.recompute or bool(settings)
    stale = [t.label for t in takes if t.aligned_file and (again or t.quality is None)]
    if stale:
        update_session_quality(session, thresholds, labels=stale)
    if args.json:
        records = {t.label: t.quality for t in takes}
        print(json.dumps(records, indent=2, allow_nan=False))
    else:
        print(format_quality(session, labels))
    return 0


def run_import_authors(args: argparse.Namespace) -> int:
    from rig_app.authors import import_authors_layout
    from rig_app.jobs import describe_alignment, format_duration

    print(f"{PROG}: importing {args.source} (aligning the recordings takes a while)")
    session = import_authors_layout(
        args.source, args.session, sample_rate=args.sample_rate, min_song_s=args.min_song_s
    )
    duration = float((session.program or {}).get("duration_s", 0.0))
    print(
        f"{session.folder}: {len(session.songs)} songs, program "
        f"{format_duration(duration)}, {len(session.takes)} takes"
    )
    for take in session.takes:
        if take.alignment is not None:
            described = describe_alignment(take.alignment, take.xruns, take.xrun_times_s)
            print(f"{take.label}: {described}")
    if session.notes:
        print(f"note: {session.notes}")
    return 0


def _target(
    session: Session, args: argparse.Namespace, whole_session: bool = False
) -> tuple[str | None, int | None]:
    """The take and song index the command names, checked against the session (neither:
    the session itself, where ``whole_session`` allows it)."""
    from rig_app.selection import check_target, find_song

    if args.take is None and args.song is None:
        if whole_session:
            return None, None
        raise AfpError(f"{session.path}: give --take, --song or both")
    song = None if args.song is None else find_song(session, args.song)
    check_target(session, args.take, song)
    return args.take, song


def run_exclude(args: argparse.Namespace) -> int:
    from rig_app.selection import Selection, describe_target

    session = _open(args.session)
    take, song = _target(session, args)
    if not args.reason.strip():
        raise AfpError(f"{session.path}: give the reason for leaving it out (--reason)")
    selection = Selection.from_session(session)
    selection.exclude(take, song, args.reason)
    selection.store(session)
    print(f"{session.folder}: excluded {describe_target(session, take, song)}: {args.reason}")
    return 0


def run_include(args: argparse.Namespace) -> int:
    from rig_app.selection import Selection, describe_target

    session = _open(args.session)
    take, song = _target(session, args)
    selection = Selection.from_session(session)
    before = len(selection.exclusions)
    selection.include(take, song)
    selection.store(session)
    what = describe_target(session, take, song)
    removed = before - len(selection.exclusions)
    print(f"{session.folder}: included {what} ({removed} exclusion(s) removed)")
    still = [
        (label, selection.reason_excluded(label, song))
        for label in ([take] if take is not None else [t.label for t in session.takes])
    ]
    for label, reason in still:
        if reason is not None:
            print(f"note: take {label}: still excluded by a wider exclusion: {reason}")
    return 0


def run_note(args: argparse.Namespace) -> int:
    from rig_app.selection import Selection, describe_target

    session = _open(args.session)
    take, song = _target(session, args, whole_session=True)
    selection = Selection.from_session(session)
    selection.set_note(take, song, args.text)
    selection.store(session)
    what = "the session" if take is None and song is None else describe_target(session, take, song)
    done = (
        f"note on {what}: {args.text.strip()}"
        if args.text.strip()
        else f"removed the note on {what}"
    )
    print(f"{session.folder}: {done}")
    return 0


def run_selection(args: argparse.Namespace) -> int:
    from rig_app.selection import Selection, describe_target, session_song_titles

    session = _open(args.session)
    selection = Selection.from_session(session)
    titles = session_song_titles(session) if session.program is not None else []
    print(f"{session.folder}: {len(session.takes)} takes, {len(titles)} songs")
    for index, title in enumerate(titles):
        print(f"  song {index + 1}: {title}")
    for take in session.takes:
        reason = selection.reason_excluded(take.label)
        state = f"excluded: {reason}" if reason is not None else take.verdict.describe()
        print(f"  take {take.label}: {state}")
    if not selection.exclusions:
        print("nothing excluded")
    for exclusion in selection.exclusions:
        target = describe_target(session, exclusion.take, exclusion.song)
        print(f"excluded: {target}: {exclusion.reason}")
    for note in selection.notes:
        print(f"note on {describe_target(session, note.take, note.song)}: {note.text}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from rig_app.export import export_query_set

    if len(args.paths) < 2:
        raise AfpError("give one or more session folders, then the query set folder")
    *sessions, out = args.paths
    lengths = [int(x) if float(x).is_integer() else float(x) for x in args.lengths]
    with _progress(args.quiet, "s", "exporting") as task:
        result = export_query_set(
            task,
            sessions,
            out,
            lengths_s=lengths,
            per_song=args.per_song,
            layout=args.format,
            audio=args.audio,
        )
    for note in result.notes:
        print(f"note: {note}")
    if args.format == "authors":
        print(f"{result.folder}: written in the paper authors' layout")
        return 0
    added = ", ".join(result.added) or "none"
    print(
        f"{result.folder}: {result.clips} query clips added (sessions added: {added}); "
        f"check with: cd {result.folder} && sha256sum -c SHA256SUMS"
    )
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from afp_core.audio import iter_audio_files
    from rig_app.demo import DemoOptions, quick_demo_options, run_demo_job

    given = {
        "out": args.out,
        "songs": args.songs,
        "excerpt_s": args.excerpt_s,
        "library_songs": args.library_songs,
    }
    options = {key: value for key, value in given.items() if value is not None}
    if args.library:
        options["library"] = tuple(iter_audio_files(args.library))
    options |= {
        "live": args.live,
        "model": args.model,
        "seed": args.seed,
        "device": args.device,
        "quiet": args.quiet,
    }
    run_demo_job(quick_demo_options(**options) if args.quick else DemoOptions(**options))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "app": run_app,
    "demo": run_demo,
    "devices": run_devices,
    "new": run_new,
    "songs": run_songs,
    "program": run_program,
    "record": run_record,
    "recover": run_recover,
    "simulate": run_simulate,
    "align": run_align,
    "quality": run_quality,
    "import-authors": run_import_authors,
    "exclude": run_exclude,
    "include": run_include,
    "note": run_note,
    "selection": run_selection,
    "export": run_export,
}

if __name__ == "__main__":
    raise SystemExit(main())
