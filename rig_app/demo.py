"""The README's main job: the paper's real-world protocol, end to end, on the embedded default.

1. A session of development songs the shipped model never trained on: an excerpt of each,
   loudness-normalised and joined with sweep markers (``rig_app.program``), and a noise
   program of speech babble at the music's loudness.
2. Three takes, ``low`` / ``mid`` / ``high``, through the virtual room (``rig_app.room``):
   played and recorded live through PulseAudio virtual devices, one room per take, all
   three at once; or, when the devices cannot start, simulated offline (said clearly).
3. Each take aligned to the program by its markers (``rig_app.align``).
4. A database of all the development music with the shipped model (reused on a rerun).
5. The real-world protocol (``afp_core.protocols.realworld``): queries of 1-15 s cut
   back-to-back inside every song of every take, both decision rules; the table printed
   (paper Table 4's shape) and the report saved.
6. The takes published as a query set (``rig_app.export``): ``DEMO_PER_SONG`` clips per
   song and length, with their indexes, data card and checksums, in OUT/query-set. A
   take whose alignment was flagged is left out, with its verdict as the reason, the way
   a curator would on the Dataset page.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from afp_core.audio import probe_audio
from afp_core.augment import make_babble
from afp_core.checkpoint import load_checkpoint
from afp_core.devdata import INSTALL_HINT, find_dev_music, find_dev_speech
from afp_core.errors import AfpError, AudioError
from afp_core.indexing import index_library, open_database_for_indexing
from afp_core.ingest import read_tags
from afp_core.protocols.realworld import RealWorldSettings
from afp_core.protocols.sessions import SESSION_FILE
from afp_core.query import load_query
from afp_core.shipped import default_checkpoint_path
from afp_core.tasks import progress_task
from rig_app.devices import DeviceError
from rig_app.export import ExportResult, export_query_set
from rig_app.jobs import record_or_simulate_takes
from rig_app.program import ProgramSong, build_noise_program, build_program
from rig_app.quality import format_quality
from rig_app.room import VirtualRoom
from rig_app.selection import Selection
from rig_app.session import Session, SessionError, SongEntry, TakeEntry
from rig_app.virtual_devices import VirtualDevicesError

PROGRAM_RATE = 16_000  # keeps the whole band an 8 kHz model hears, and the markers
DEMO_PER_SONG = 2  # clips per song and length in the exported set: a sample, a few MB


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    """What the demo does; the defaults are the README's main job."""

    out: Path = Path("demo-output")
    songs: int = 6
    excerpt_s: float = 40.0
    live: bool | None = None  # None: live when the virtual devices start, else offline
    model: Path | None = None
    library: tuple[Path, ...] = ()
    library_songs: int | None = None  # None: the whole library; else the session's songs + others
    seed: int = 0
    device: str = "cpu"
    quiet: bool = False


def quick_demo_options(**overrides: Any) -> DemoOptions:
    """``afp-rig demo --quick``: the same steps on less audio (a few minutes on 2 cores).

    Four 20 s excerpts, and a database of those songs among 30 of the library instead of
    all of it: the figures are less precise and the search easier than the full job's.
    """
    quick = DemoOptions(songs=4, excerpt_s=20.0, library_songs=30, out=Path("demo-quick"))
    return dataclasses.replace(quick, **overrides)


def pick_database_songs(
    music: list[Path], session_songs: list[DemoSong], options: DemoOptions
) -> list[Path]:
    """The library to index: all of it, or the session's songs and others drawn by seed."""
    if options.library_songs is None or options.library_songs >= len(music):
        return music
    chosen = {song.path for song in session_songs}
    others = [path for path in music if path not in chosen]
    rng = np.random.default_rng(options.seed + 1)
    extra = max(0, options.library_songs - len(chosen))
    picked = rng.choice(len(others), min(extra, len(others)), replace=False)
    return sorted(chosen) + [others[i] for i in sorted(picked)]


@dataclasses.dataclass(frozen=True)
class DemoSong:
    path: Path
    title: str
    artist: str
    start_s: float


def pick_demo_songs(
    music: list[Path], unseen: set[str], options: DemoOptions, log: Callable[[str], None]
) -> list[DemoSong]:
    """``options.songs`` songs long enough for an excerpt, preferring ones the model did
    not train on; the excerpt starts 30 % into the song (past most intros)."""
    usable = []
    for path in music:
        try:
            duration = probe_audio(path).duration_s
        except AudioError as exc:
            log(f"skipped: {exc}")
            continue
        if duration >= options.excerpt_s + 10:
            usable.append((path, duration))
    fresh = [(p, d) for p, d in usable if p.stem in unseen]
    pool = fresh if len(fresh) >= options.songs else usable
    if len(pool) < options.songs:
        raise AfpError(
            f"the demo needs {options.songs} songs of {options.excerpt_s + 10:g} s or more, "
            f"found {len(pool)}"
        )
    rng = np.random.default_rng(options.seed)
    chosen = sorted(rng.choice(len(pool), options.songs, replace=False))
    songs = []
    for index in chosen:
        path, duration = pool[index]
        title, artist = read_tags(path)
        start = round(min(0.3 * duration, duration - options.excerpt_s - 5), 1)
        songs.append(DemoSong(path, title, artist, start))
    return songs


def build_demo_session(
    folder: Path, songs: list[DemoSong], options: DemoOptions, log: Callable[[str], None]
) -> Session:
    """A fresh session in ``folder`` with the program of ``songs`` and a babble program."""
    if (folder / SESSION_FILE).exists():
        shutil.rmtree(folder)  # the demo's own session: rebuilt on every run
    session = Session.create(folder)
    program = build_program(
        [
            ProgramSong(
                audio=load_query(song.path, PROGRAM_RATE, song.start_s, options.excerpt_s),
                title=song.title,
                artist=song.artist,
                source=str(song.path),
                source_start_s=song.start_s,
            )
            for song in songs
        ],
        PROGRAM_RATE,
        min_song_s=min(10.0, options.excerpt_s),
    )
    speech = find_dev_speech()
    rng = np.random.default_rng(options.seed)
    if speech:
        clips = [make_babble(speech, 60.0, PROGRAM_RATE, rng)]
        noise_kind = "speech babble (4 voices)"
    else:
        clips = [rng.standard_normal(60 * PROGRAM_RATE).astype(np.float32)]
        noise_kind = "white noise (no speech found)"
    noise = build_noise_program(
        clips,
        program.samples,
        PROGRAM_RATE,
        seed=options.seed,
        quiet_ranges=program.noise_quiet_ranges(),
    )
    session.notes = f"afp-rig demo: {len(songs)} excerpts of {options.excerpt_s:g} s; {noise_kind}"
    session.set_program(
        program,
        noise,
        songs=[
            SongEntry(
                title=song.title,
                artist=song.artist,
                source=str(song.path),
                file=str(song.path),
                duration_s=slot.duration_s,
                loudness_before=slot.loudness_before,
                loudness_after=slot.loudness_after,
            )
            for song, slot in zip(songs, program.songs, strict=True)
        ],
    )
    log(
        f"session {folder}: {len(songs)} songs, program {program.duration_s / 60:.1f} min "
        f"at {PROGRAM_RATE} Hz, noise: {noise_kind}"
    )
    return session


def make_demo_takes(
    session: Session, options: DemoOptions, log: Callable[[str], None]
) -> tuple[str, list]:
    """The three takes, live when possible; returns (how they were made, the takes)."""
    room = VirtualRoom(seed=options.seed)
    duration = float(session.program["duration_s"]) if session.program else 0.0
    with progress_task(options.quiet, "s", "recording") as task:
        if options.live is not False:
            try:
                log(
                    f"recording low, mid and high at once through three virtual rooms "
                    f"({duration / 60:.1f} min in real time)"
                )
                takes = record_or_simulate_takes(task, session, room, live=True)
            except (VirtualDevicesError, DeviceError) as exc:
                if options.live:
                    raise
                log(f"NOTE: the virtual audio devices cannot start here ({exc})")
                log("NOTE: the takes are SIMULATED OFFLINE instead (same room, no devices)")
                why = "the virtual devices could not start"
            else:
                return "recorded live through PulseAudio virtual devices", takes
        else:
            why = "--offline"
        takes = record_or_simulate_takes(task, session, room, live=False, replace=True)
        return f"SIMULATED OFFLINE ({why})", takes


def run_demo_job(options: DemoOptions) -> Path:
    """Run the demo end to end; returns the report folder."""
    from rig_app.evaluate import evaluate_session, new_report_folder

    log = (lambda _: None) if options.quiet else (lambda text: print(text, file=sys.stderr))
    music = list(options.library) or find_dev_music()
    if not music:
        raise AfpError(INSTALL_HINT)
    model_path = options.model or default_checkpoint_path()
    if model_path is None:
        raise AfpError("no shipped model (assets/models/afp-default.pt); pass --model")
    checkpoint = load_checkpoint(model_path)
    meta = checkpoint.meta.get("data", {}) if isinstance(checkpoint.meta, dict) else {}
    unseen = set(meta.get("validation_titles", [])) | set(meta.get("test_titles", []))

    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    songs = pick_demo_songs(music, unseen, options, log)
    music = pick_database_songs(music, songs, options)
    session = build_demo_session(out / "session", songs, options, log)
    how, takes = make_demo_takes(session, options, log)
    for take in takes:
        log(f"take {take.describe()}")
    failed = [t for t in takes if t.error or t.alignment is None]
    if failed:
        bad = failed[0]
        raise SessionError(f"{session.path}: take {bad.label} did not align: {bad.error}")
    # the loopbacks' rate control can bend the clock enough for one marker to be dropped;
    # such a take is still on the program clock within milliseconds: evaluate it, say so
    stored = Session.load(session.folder)
    log(format_quality(stored))
    flagged = [take for take in stored.takes if not take.verdict.trusted]
    for take in flagged:
        log(f"NOTE: take {take.label} is {take.verdict.describe()}; evaluated anyway")
    settings = RealWorldSettings(allow_unchecked=bool(flagged))

    db_dir = out / "db"
    db, checkpoint = open_database_for_indexing(
        db_dir, model_path, on_notice=log, rebuild_for_another_model=True
    )
    with progress_task(options.quiet, "s", "indexing") as task:
        result = index_library(db, checkpoint.model, music, task=task)
    log(result.summary())
    del db

    with progress_task(options.quiet, "s", "evaluating") as task:
        # inside the session, where the app's Evaluate page lists earlier reports
        report, _results = evaluate_session(
            task,
            session.folder,
            checkpoint=model_path,
            database=db_dir,
            out=new_report_folder(session.folder),
            settings=settings,
            device=options.device,
        )
    print(
        f"afp-rig demo: {len(songs)} songs x 3 takes ({how}); shipped model; "
        f"{db_dir} holds {len(music)} songs\n"
    )
    print((report / "table.md").read_text(encoding="utf-8"))
    log(f"report: {report}")
    query_set = export_demo_takes(stored, flagged, out / "query-set", options.quiet)
    print(
        f"query set: {query_set.folder} ({query_set.clips} clips of {len(query_set.added)} "
        f"session, {DEMO_PER_SONG} per song and length; its README.md is the data card)"
    )
    log(f"to see it in the app (Dataset and Evaluate pages): afp-rig {session.folder}")
    return report


def export_demo_takes(
    session: Session, flagged: list[TakeEntry], folder: Path, quiet: bool
) -> ExportResult:
    """Publish the demo's trusted takes as a query set in ``folder`` (rebuilt each run,
    like the session); a flagged take is left out with its verdict as the reason."""
    if flagged:
        selection = Selection.from_session(session)
        for take in flagged:
            selection.exclude(take.label, None, f"the demo's take was {take.verdict.describe()}")
        selection.store(session)
    if folder.exists():
        shutil.rmtree(folder)
    with progress_task(quiet, "s", "exporting") as task:
        return export_query_set(task, [session.folder], folder, per_song=DEMO_PER_SONG)
