"""The rig's jobs: each step of the protocol on a session, for the app, the command line
and the demo.

Jobs are ordinary functions ``job(task, ...)`` taking an ``afp_core.tasks.TaskState``
first, so ``rig_app.ui.workers.Worker`` runs them on a thread and ``rig_app.cli`` runs
them with a tqdm bar. They only glue the logic modules together (``songs``, ``program``,
``capture``, ``align``, ``room``, ``session``); every rule about audio lives there. No Qt
here: the app's model is ``rig_app.ui.state``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from afp_core.audio import load_audio, resample
from afp_core.errors import AfpError, Cancelled
from afp_core.faults import fault_point
from afp_core.fileutil import (
    atomic_write_text,
    check_document,
    one_line,
    read_json_object,
    utc_now,
)
from afp_core.protocols.sessions import describe_xruns
from afp_core.tasks import TaskState
from rig_app.align import Alignment, align_take, align_without_markers
from rig_app.capture import (
    TakeConfig,
    TakeRecorder,
    TakeResult,
    read_take_info,
    record_take,
    recording_process,
    recover_take,
    take_info_path,
)
from rig_app.devices import DeviceError, find_device
from rig_app.program import (
    Overload,
    Program,
    ProgramSlot,
    ProgramSong,
    build_noise_program,
    build_program,
    load_noise_track,
)
from rig_app.quality import update_take_quality
from rig_app.room import VirtualRoom, live_take_audio, room_from_notes, simulated_take_audio
from rig_app.session import (
    PROGRAM_DIR,
    RAW_TAKE_SUFFIX,
    TAKES_DIR,
    Session,
    SessionError,
    SongEntry,
)
from rig_app.songs import MIN_DURATION_S, SONGS_DIR, SongResult, add_songs, load_songs
from rig_app.virtual_devices import VirtualDevicesError, start_virtual_devices

__all__ = [
    "Overview",
    "ProgramOptions",
    "ProgramView",
    "RoomTake",
    "TakeSettings",
    "add_session_songs",
    "align_session_take",
    "build_session_program",
    "describe_alignment",
    "format_duration",
    "format_number",
    "load_program_view",
    "make_overview",
    "program_is_stale",
    "record_or_simulate_takes",
    "record_session_take",
    "recover_session_takes",
    "simulate_session_take",
    "songs_folder",
    "sync_session_songs",
    "unstored_takes",
]

OVERVIEW_COLUMNS = 1600
TAKE_SETTINGS_FORMAT = "afp-rig-take-settings"
TAKE_SETTINGS_VERSION = 1


def format_duration(seconds: float) -> str:
    """``m:ss.s`` below an hour, ``h:mm:ss`` above."""
    if not math.isfinite(seconds):
        return "—"
    if seconds >= 3600:
        hours, rest = divmod(round(seconds), 3600)
        return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    minutes, remainder = divmod(seconds, 60)
    return f"{int(minutes)}:{remainder:04.1f}"


def format_number(value: float | None, unit: str, decimals: int) -> str:
    """``value`` with ``decimals`` and ``unit``; ``—`` for None or not finite."""
    if value is None or not math.isfinite(value):
        return "—"
    value = round(value, decimals) + 0.0  # a residual of -1e-9 ms reads 0.000, not -0.000
    return f"{value:.{decimals}f} {unit}"


# --- songs --------------------------------------------------------------------------------


def songs_folder(session: Session) -> Path:
    """Where the session keeps its song files (``songs.json`` lists them)."""
    return session.folder / SONGS_DIR


def sync_session_songs(session: Session) -> list[SongEntry]:
    """Make ``session.songs`` the songs folder's list (in its order) and save.

    Loudness measured by an earlier program build is kept for songs still there. A
    session without a songs folder (e.g. an imported layout) keeps its list.
    """
    folder = songs_folder(session)
    songs = load_songs(folder)
    if not songs and not (folder / "songs.json").is_file():
        return session.songs
    known = {entry.file: entry for entry in session.songs}
    entries = []
    for song in songs:
        entry = song.to_song_entry(folder, relative_to=session.folder)
        old = known.get(entry.file)
        if old is not None:
            entry.loudness_before, entry.loudness_after = old.loudness_before, old.loudness_after
        entries.append(entry)
    session.songs = entries
    session.save()
    return entries


def add_session_songs(
    task: TaskState,
    session: Session,
    items: Sequence[str | Path],
    *,
    min_duration_s: float = MIN_DURATION_S,
    timeout_s: float = 30.0,
) -> list[SongResult]:
    """Add URLs, files and folders to the session's songs; one result per item.

    The session's song list is brought up to date even when the work is cancelled or
    interrupted, so every song that made it into the folder is listed.
    """
    try:
        return add_songs(
            items,
            songs_folder(session),
            task,
            min_duration_s=min_duration_s,
            timeout_s=timeout_s,
        )
    finally:
        sync_session_songs(session)


# --- the program --------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgramOptions:
    """How to build the music and noise programs (see ``rig_app.program``)."""

    target_lufs: float = -23.0
    on_overload: Overload = "lower_gain"
    peak_ceiling_db: float = -1.0
    gap_s: float = 1.0
    noise_files: tuple[Path, ...] = ()
    noise_level_db: float = 0.0
    seed: int = 0
    sample_rate: int = 48000
    min_song_s: float = 60.0


@dataclass
class Overview:
    """Per-column minimum and maximum of the tracks, for a waveform overview."""

    duration_s: float
    music_min: np.ndarray
    music_max: np.ndarray
    noise_min: np.ndarray | None = None
    noise_max: np.ndarray | None = None


@dataclass
class ProgramView:
    """What the Program page shows about the session's program."""

    sample_rate: int
    samples: int
    duration_s: float
    markers: list[tuple[str, float]]
    songs: list[ProgramSlot]
    notes: list[str]
    target_lufs: float | None
    has_noise: bool
    overview: Overview
    stale: bool = False

    @property
    def marker_count(self) -> int:
        return len(self.markers)


def make_overview(x: np.ndarray, columns: int = OVERVIEW_COLUMNS) -> tuple[np.ndarray, np.ndarray]:
    """Minimum and maximum of ``x`` in ``columns`` equal slices (fewer for short ``x``)."""
    x = np.asarray(x, dtype=np.float32)
    columns = max(1, min(columns, len(x)))
    if not len(x):
        return np.zeros(1, np.float32), np.zeros(1, np.float32)
    edges = np.linspace(0, len(x), columns + 1).astype(np.int64)
    return np.minimum.reduceat(x, edges[:-1]), np.maximum.reduceat(x, edges[:-1])


def _view(program: Program, noise: np.ndarray | None, session: Session) -> ProgramView:
    music_min, music_max = make_overview(program.music)
    noise_min = noise_max = None
    if noise is not None:
        noise_min, noise_max = make_overview(noise)
    return ProgramView(
        sample_rate=program.sample_rate,
        samples=program.samples,
        duration_s=program.duration_s,
        markers=[(m.label, m.position / program.sample_rate) for m in program.markers],
        songs=list(program.songs),
        notes=list(program.notes),
        target_lufs=program.target_lufs,
        has_noise=noise is not None,
        overview=Overview(program.duration_s, music_min, music_max, noise_min, noise_max),
        stale=program_is_stale(session),
    )


def program_is_stale(session: Session) -> bool:
    """True when the session's songs changed since its program was built."""
    if session.program is None:
        return False
    built = [str(song.get("title")) for song in session.program.get("songs", [])]
    return built != [song.title for song in session.songs]


def build_session_program(
    task: TaskState, session: Session, options: ProgramOptions
) -> ProgramView:
    """Build the music (and noise) program from the session's songs and store it.

    Cancelling stops before anything is written: the session keeps its old program.
    """
    entries = list(session.songs)
    if not entries:
        raise SessionError(f"{session.path}: the session has no songs yet; add some first")
    rate = options.sample_rate
    steps = 2 * len(entries) + (1 if options.noise_files else 0) + 1
    task.set_total(steps, "loading songs")
    songs = []
    for entry in entries:
        task.check_cancelled()
        path = session.resolve(entry.file)
        songs.append(
            ProgramSong(
                audio=load_audio(path, rate),
                title=entry.title,
                artist=entry.artist,
                source=entry.source,
            )
        )
        task.advance(1, f"loaded {entry.title}")
    task.check_cancelled()
    task.set_message(f"normalising {len(songs)} songs to {options.target_lufs:g} LUFS")
    program = build_program(
        songs,
        rate,
        gap_s=options.gap_s,
        target_lufs=options.target_lufs,
        peak_ceiling_db=options.peak_ceiling_db,
        on_overload=options.on_overload,
        min_song_s=options.min_song_s,
    )
    del songs
    task.advance(len(entries), "program built")
    noise = None
    if options.noise_files:
        task.check_cancelled()
        task.set_message("building the noise program")
        noise = build_noise_program(
            list(options.noise_files),
            program.samples,
            rate,
            level_db_relative_to_music=options.noise_level_db,
            music_loudness_lufs=options.target_lufs,
            seed=options.seed,
            quiet_ranges=program.noise_quiet_ranges(),
            peak_ceiling_db=options.peak_ceiling_db,
        )
        task.advance(1, "noise program built")
    task.check_cancelled()  # the last chance: from here on the program is written whole
    task.set_message("writing the program")
    updated = [
        dataclasses.replace(
            entry, loudness_before=slot.loudness_before, loudness_after=slot.loudness_after
        )
        for entry, slot in zip(entries, program.songs, strict=True)
    ]
    session.set_program(program, noise, songs=updated)
    task.advance(1, "program written")
    return _view(program, noise, session)


def load_program_view(task: TaskState, session: Session) -> ProgramView | None:
    """The session's program as the Program page shows it (None when it has none)."""
    if session.program is None:
        return None
    task.set_total(2, "loading the program")
    program = session.load_program()
    task.advance(1)
    folder = session.folder / str(session.program.get("folder", PROGRAM_DIR))
    noise = load_noise_track(folder)
    task.advance(1)
    return _view(program, noise, session)


# --- takes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TakeSettings:
    """A take to record: label, devices (names or indices) and what to note about it.

    ``noise_out`` None plays the music only (e.g. the noise comes from another player).
    ``sample_rate`` None records at the program's rate; another rate plays the program
    resampled to it. ``room``: play the program through a virtual room
    (``rig_app.room``): the music and noise as they would arrive at a microphone there,
    the noise speaker at the room's distance for ``label``; without ``noise_out`` both
    play on the music output. The take's notes say how it was made.
    """

    label: str
    music_out: str | int
    mic_in: str | int
    noise_out: str | int | None = None
    sample_rate: int | None = None
    speaker_distance_m: float | None = None
    notes: str = ""
    lead_in_s: float = 1.0
    tail_s: float = 2.0
    replace: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # more TakeConfig fields
    room: VirtualRoom | None = None


def _new_take_path(session: Session, label: str, replace: bool) -> Path:
    """Where a new take of ``label`` goes; ``SessionError`` when a take is there already
    (stored or not) and is not to be replaced."""
    out = session.raw_take_path(label)
    if replace:
        return out
    stored = session.find_take(label)
    if _stranded(session, label) or (out.exists() and stored is None):
        raise SessionError(_stranded_message(session, label))
    if stored is not None:
        raise SessionError(f"{session.path}: a take labelled {label!r} exists already")
    return out


def _stranded(session: Session, label: str) -> bool:
    """Whether takes/LABEL.raw.wav holds a recording the session does not hold: the rig's
    recorder wrote it (its sidecar, LABEL.raw.wav.json, is there), no process records it
    any more, and the session holds no take of ``label``, or one stored before this
    recording started (a ``record --replace`` killed before it could store its take: its
    sidecar still says it is recording, as no stored take's does)."""
    path = session.raw_take_path(label)
    info = read_take_info(path)
    if info is None or not path.is_file() or recording_process(path) is not None:
        return False
    stored = session.find_take(label)
    if stored is None or info.get("state") == "recording":
        return True
    try:  # ended but not stored; recorded_at counts whole seconds
        started = datetime.fromisoformat(str(info.get("started_at"))).replace(microsecond=0)
        return started > datetime.fromisoformat(stored.recorded_at)
    except (TypeError, ValueError):  # no time to compare: the stored take stands
        return False


def _stranded_message(session: Session, label: str) -> str:
    return (
        f"{session.raw_take_path(label)}: a take the session does not hold (a killed "
        f"recording?); bring it back with `afp-rig recover {session.folder} --label "
        f"{label}`, or replace it"
    )


def _store_recording(
    session: Session,
    label: str,
    result: TakeResult,
    notes: str,
    speaker_distance_m: float | None = None,
    replace: bool = False,
) -> None:
    """Store a recorded (or recovered) take, unaligned, with what the recorder knows."""
    session.add_take(
        label,
        result.path,
        result.sample_rate,
        devices=result.devices,
        sample_rates=result.sample_rates,
        speaker_distance_m=speaker_distance_m,
        notes=_join_notes(notes, _xrun_note(result)),
        xruns=result.xrun_total,
        xrun_times_s=result.xrun_times_s,
        replace=replace,
    )


def _save_take_settings(
    session: Session, label: str, notes: str, speaker_distance_m: float | None
) -> Path:
    """Write takes/LABEL.settings.json before the take records: what ``_store_recording``
    will store it with besides the recorder's result, so that ``recover_session_takes``
    stores a killed take the same way. Atomic (a reader never sees half of it); one that
    cannot be written is a ``SessionError`` before anything is recorded. It replaces any
    earlier one (a ``record --replace`` of a killed take: that recording is gone)."""
    path = session.take_settings_path(label)
    data = {
        "format": TAKE_SETTINGS_FORMAT,
        "version": TAKE_SETTINGS_VERSION,
        "label": label,
        "speaker_distance_m": speaker_distance_m,
        "notes": notes,
        "written_at": utc_now("milliseconds"),
        "pid": os.getpid(),
    }
    try:
        atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
    except (OSError, ValueError) as exc:
        raise SessionError(f"{path}: cannot write the take's settings ({one_line(exc)})") from None
    return path


def _read_take_settings(
    session: Session, label: str, info: dict[str, Any]
) -> tuple[str, float | None]:
    """The notes and speaker distance takes/LABEL.settings.json holds for the recording
    whose recorder sidecar is ``info`` (read before ``recover_take`` rewrites it); a
    ``SessionError`` saying why not: none, unreadable, malformed, or written for another
    recording (after this one started, or by another process than the one recording it)."""
    path = session.take_settings_path(label)
    name = f"{TAKES_DIR}/{path.name}"
    if not path.is_file():
        raise SessionError(f"no {name}")
    data = read_json_object(path, SessionError, name)
    check_document(data, TAKE_SETTINGS_FORMAT, TAKE_SETTINGS_VERSION, name, SessionError)
    notes, distance = data.get("notes"), data.get("speaker_distance_m")
    if data.get("label") != label:
        raise SessionError(f"{name}: written for take {data.get('label')!r}")
    if not isinstance(notes, str):
        raise SessionError(f"{name}: notes {notes!r} are not text")
    if distance is not None and (
        isinstance(distance, bool)
        or not isinstance(distance, int | float)
        or not math.isfinite(distance)
    ):
        raise SessionError(f"{name}: speaker distance {distance!r} is not a number")
    try:
        written = datetime.fromisoformat(str(data.get("written_at")))
    except ValueError:
        raise SessionError(f"{name}: bad written_at {data.get('written_at')!r}") from None
    pid = info.get("pid")  # the recorder's sidecar names its process until the take ends
    if isinstance(pid, int) and data.get("pid") != pid:
        raise SessionError(f"{name}: written by process {data.get('pid')}, not by {pid}")
    try:
        later = written > datetime.fromisoformat(str(info.get("started_at")))
    except (TypeError, ValueError):  # no start time to compare with
        later = False
    if later:
        raise SessionError(f"{name}: written after this recording started, for a later one")
    return notes, None if distance is None else float(distance)


def _forget_take_settings(session: Session, label: str) -> None:
    """Remove takes/LABEL.settings.json once the take is stored (or nothing is left to
    recover): a later take of ``label`` must not be stored with its settings. One that
    cannot be removed is harmless: ``_read_take_settings`` refuses it for a later take."""
    with contextlib.suppress(OSError):
        session.take_settings_path(label).unlink(missing_ok=True)


def _xrun_note(result: TakeResult) -> str:
    """What a take's notes say about audio lost while recording: how many xruns, where."""
    if not result.xrun_total:
        return ""
    return f"{describe_xruns(result.xrun_total, result.xrun_times_s)} (seconds into the take)"


def _join_notes(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


def _song_ranges(program: Program, rate: int) -> list[tuple[int, int]]:
    """Where the program's songs lie in it at ``rate``, in samples."""
    scale = rate / program.sample_rate
    return [(round(s.start * scale), round(s.end * scale)) for s in program.songs]


def unstored_takes(session: Session) -> list[str]:
    """Labels of takes the recorder wrote into the session's folder but the session does
    not hold: a recording killed before it could store itself, a new label's or one
    replacing a stored take. Takes another process is still recording are left out;
    ``recover_session_takes`` brings the others back."""
    paths = sorted((session.folder / TAKES_DIR).glob(f"*{RAW_TAKE_SUFFIX}"))
    labels = [path.name.removesuffix(RAW_TAKE_SUFFIX) for path in paths]
    return [label for label in labels if _stranded(session, label)]


def recover_session_takes(
    task: TaskState, session: Session, labels: Sequence[str] | None = None
) -> list[TakeResult]:
    """Store takes whose recording was killed (default: every ``unstored_takes``).

    Each take file is made to cover every whole frame on disk (``capture.recover_take``)
    and stored unaligned, with the speaker distance and notes ``record_session_take``
    wrote beside it before it recorded (takes/LABEL.settings.json), its notes then saying
    how much was recovered; align it with ``align_session_take``. Without those settings
    (none, unreadable, or another recording's) the take is stored without a distance or
    notes of its own, and its notes say why. A killed ``record --replace`` replaces the
    take it was replacing (whose audio it had overwritten already).
    """
    labels = unstored_takes(session) if labels is None else list(labels)
    results = []
    for label in labels:
        task.check_cancelled()
        task.set_message(f"recovering {label}")
        stored = session.find_take(label) is not None
        if stored and not _stranded(session, label):
            raise SessionError(f"{session.path}: take {label!r} is stored already")
        path = session.raw_take_path(label)
        if not path.is_file():
            raise SessionError(f"{path}: no such take file to recover")
        info = read_take_info(path) or {}  # as the recording left it: recover_take rewrites it
        result = recover_take(path)
        if result.frames == 0:
            raise SessionError(f"{path}: the recording ended before any audio reached it")
        expected = result.frames_expected / result.sample_rate
        recovered = (
            f"recovered after the recording stopped ({result.ended_by}): "
            f"{format_duration(result.duration_s)} of {format_duration(expected)}"
        )
        try:
            notes, distance = _read_take_settings(session, label, info)
        except SessionError as exc:
            notes, distance = "", None
            recovered = _join_notes(
                recovered, f"its speaker distance and notes are not known ({exc})"
            )
        _store_recording(
            session, label, result, _join_notes(notes, recovered), distance, replace=stored
        )
        _forget_take_settings(session, label)
        results.append(result)
    return results


def record_session_take(
    task: TaskState,
    session: Session,
    settings: TakeSettings,
    on_recorder: Callable[[TakeRecorder], None] | None = None,
    before_recording: Callable[[], None] | None = None,
) -> TakeResult:
    """Play the session's program and record a take; the take is stored unaligned.

    ``on_recorder`` gets the recorder before it starts (a view polls its level, position
    and xruns). ``before_recording`` is called once the take's audio is ready, just
    before it records. Cancelling the task stops the take early and keeps it, like
    ``stop``.
    Whatever was recorded is stored in the session (``replace`` an existing take of the
    same label); align it with ``align_session_take``.
    """
    label = settings.label
    out = _new_take_path(session, label, settings.replace)
    # a wrong device name should not cost the wait for a long program to load
    find_device(settings.music_out, "output")
    find_device(settings.mic_in, "input")
    if settings.noise_out is not None:
        find_device(settings.noise_out, "output")
    if settings.room is not None:
        settings.room.noise_distance(label)  # a label the room has no distance for
    task.set_total(0, "loading the program")
    program = session.load_program()
    noise = None
    if settings.noise_out is not None or settings.room is not None:
        noise = load_noise_track(session.program_folder())
        if noise is None and settings.noise_out is not None:
            raise SessionError(
                f"{session.path}: the program has no noise track; record without a noise output"
            )
    rate = settings.sample_rate or program.sample_rate
    music = resample(program.music, program.sample_rate, rate)
    if noise is not None:
        noise = resample(noise, program.sample_rate, rate)
    notes, distance = settings.notes, settings.speaker_distance_m
    if settings.room is not None:
        task.set_message(f"{label}: rendering the virtual room")
        songs = _song_ranges(program, rate)
        music, noise, note = live_take_audio(settings.room, music, noise, rate, label, songs)
        if settings.noise_out is None and noise is not None:
            music, noise = music + noise, None
        notes = _join_notes(notes, note)
        if distance is None:
            distance = settings.room.noise_distance(label)
    out.parent.mkdir(parents=True, exist_ok=True)
    # before ``before_recording``: takes recorded side by side start together after it
    _save_take_settings(session, label, notes, distance)
    try:
        if before_recording is not None:
            before_recording()
        task.check_cancelled()
        config = TakeConfig(
            music_out=settings.music_out,
            noise_out=settings.noise_out,
            mic_in=settings.mic_in,
            sample_rate=rate,
            label=label,
            lead_in_s=settings.lead_in_s,
            tail_s=settings.tail_s,
            **settings.extra,
        )
        result = record_take(
            config, music, noise, out, task, overwrite=settings.replace, on_recorder=on_recorder
        )
        fault_point("record.recorded")
        if result.frames > 0:
            _store_recording(session, label, result, notes, distance, replace=True)
    except BaseException:
        if not _stranded(session, label):  # no recording left for a recovery to store
            _forget_take_settings(session, label)
        raise
    _forget_take_settings(session, label)  # stored, or nothing was recorded
    return result


def align_session_take(task: TaskState, session: Session, label: str) -> Alignment:
    """Align a stored take to the program and store the alignment and aligned audio.

    A program with markers uses ``align_take``; one without (an imported layout) uses
    ``align_without_markers``. A take that cannot be aligned: ``AlignmentError`` saying
    why; the take stays stored as it was.
    """
    take = session.take(label)
    if _stranded(session, label):  # its file holds another recording now
        raise SessionError(_stranded_message(session, label))
    task.set_total(4, f"aligning {label}: loading")
    program = session.load_program()
    path = session.resolve(take.raw_file)
    recording = load_audio(path, take.recording_rate)
    task.advance(1, f"aligning {label}: finding the markers")
    task.check_cancelled()
    if program.marker_spec is not None:
        alignment = align_take(recording, take.recording_rate, program, name=str(path))
    else:
        alignment = align_without_markers(
            recording,
            take.recording_rate,
            program.music,
            program.sample_rate,
            songs=program.songs,
            name=str(path),
        )
    del recording
    task.advance(1, f"aligning {label}: storing")
    task.check_cancelled()
    stored = session.add_take(
        label,
        path,
        take.recording_rate,
        alignment=alignment,
        devices=take.devices,
        sample_rates=take.sample_rates,
        speaker_distance_m=take.speaker_distance_m,
        notes=take.notes,
        xruns=take.xruns,
        xrun_times_s=take.xrun_times_s,
        replace=True,
    )
    if take.recorded_at:
        stored.recorded_at = take.recorded_at  # aligning again does not make it a new take
        session.save()
    task.advance(1, f"aligning {label}: measuring its quality")
    task.check_cancelled()
    if stored.aligned_file and stored.ground_truth:
        update_take_quality(session, label, program=program)
    task.advance(1, f"{label} aligned")
    return alignment


def describe_alignment(
    alignment: Alignment | dict[str, Any], xruns: int = 0, xrun_times_s: Sequence[float] = ()
) -> str:
    """One line: offset, drift, residual, SNR and the take's verdict with its reasons."""
    if isinstance(alignment, dict):
        alignment = Alignment.from_dict(alignment)
    return (
        f"offset {alignment.offset_s * 1000:.2f} ms, drift {alignment.drift_ppm:+.1f} ppm, "
        f"max residual {format_number(alignment.max_residual_ms, 'ms', 3)}, "
        f"min SNR {format_number(alignment.min_snr_db, 'dB', 1)}: "
        f"{alignment.verdict(xruns, xrun_times_s).describe()}"
    )


# --- takes through a virtual room ---------------------------------------------------------


class _Devices(Protocol):
    music_out: str
    noise_out: str
    mic_in: str


@dataclass
class RoomTake:
    """A take made through a virtual room and how it went."""

    label: str
    mode: Literal["live", "simulated"]
    path: Path
    noise_distance_m: float
    music_to_noise_db: float
    alignment: Alignment | None = None
    error: str | None = None  # alignment refused, or the recording ended with an error
    details: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        ratio = (
            f"{self.music_to_noise_db:+.1f} dB"
            if math.isfinite(self.music_to_noise_db)
            else "no noise"
        )
        text = (
            f"{self.label} ({self.mode}, noise speaker at {self.noise_distance_m:.2f} m, "
            f"music-to-noise {ratio})"
        )
        lost = self.details.get("xruns", 0)
        if lost:
            text += f", {describe_xruns(lost, self.details.get('xrun_times_s', ()))}"
        return text + (f": {self.error}" if self.error else "")


def simulate_session_take(
    task: TaskState,
    session: Session,
    room: VirtualRoom,
    label: str,
    *,
    offset_s: float = 0.7,
    drift_ppm: float = 35.0,
    mic_noise_db: float = -75.0,
    seed: int | None = None,
    notes: str = "",
    replace: bool = False,
) -> RoomTake:
    """Simulate the take ``label`` of the session's program in ``room`` and store it like a
    recorded one (takes/LABEL.raw.wav, unaligned, the room in its notes)."""
    out = _new_take_path(session, label, replace)
    distance = room.noise_distance(label)
    task.set_total(3, f"{label}: loading the program")
    program = session.load_program()
    rate = program.sample_rate
    task.advance(1, f"{label}: simulating the room")
    task.check_cancelled()
    made = simulated_take_audio(
        room,
        program.music,
        load_noise_track(session.program_folder()),  # its only reference: freed before the mix
        rate,
        label,
        _song_ranges(program, rate),
        offset_s=offset_s,
        drift_ppm=drift_ppm,
        mic_noise_db=mic_noise_db,
        seed=seed,
    )
    task.advance(1, f"{label}: storing")
    task.check_cancelled()
    session.add_take(
        label,
        made.audio,
        rate,
        devices={"simulated": "rig_app.room.simulate_take"},
        speaker_distance_m=distance,
        notes=_join_notes(notes, made.note),
        replace=True,
    )
    _forget_take_settings(session, label)  # a replaced killed take's: not this take's
    # and its recorder's status, which would list the simulated take as one to recover
    take_info_path(out).unlink(missing_ok=True)
    task.advance(1, f"{label}: simulated")
    return RoomTake(label, "simulated", out, distance, made.music_to_noise_db, details=made.details)


def record_or_simulate_takes(
    task: TaskState,
    session: Session,
    room: VirtualRoom | None = None,
    labels: Sequence[str] | None = None,
    *,
    live: bool | None = None,
    devices: _Devices | None = None,
    align: bool = True,
    replace: bool = False,
    offset_s: float = 0.7,
    drift_ppm: float = 35.0,
    parallel: bool = True,
) -> list[RoomTake]:
    """Make the session's takes (default: every label of ``room``) through a virtual room.

    ``live`` True records each take through ``devices`` in real time, playing the
    rendered paths; False simulates them offline (``simulate_session_take`` with
    ``offset_s`` and ``drift_ppm``); None records live when virtual devices can be
    started and simulates otherwise. Without ``devices`` the virtual devices are started
    here and stopped at the end: with ``parallel`` one set per label (each its own
    daemon, so its own room), and all takes are recorded at once, which takes as long as
    the program instead of three times as long. Each take is then aligned (``align``); a
    refused alignment is reported in the take's ``error`` and the others go on.
    Cancelling ``task`` stops the takes being made (``Cancelled``); what was recorded
    stays stored.
    """
    room = room or VirtualRoom()
    labels = list(labels or room.labels)
    for label in labels:
        room.noise_distance(label)
    if session.program is None:
        raise SessionError(f"{session.path}: the session has no program yet")
    started: list[Any] = []
    routes: dict[str, _Devices] | None = None
    if devices is not None:
        routes = dict.fromkeys(labels, devices)
    elif live is not False:
        own_sets = len(labels) if parallel else 1
        try:
            for number in range(own_sets):
                prefix = f"{labels[number]}_" if parallel else ""
                started.append(start_virtual_devices(prefix=prefix))
            routes = {label: started[i if parallel else 0] for i, label in enumerate(labels)}
        except (VirtualDevicesError, DeviceError):
            for running in started:
                running.stop()
            started = []
            if live:
                raise
    results: list[RoomTake] = []
    try:
        if routes is None:
            for label in labels:
                results.append(
                    simulate_session_take(
                        task,
                        session,
                        room,
                        label,
                        offset_s=offset_s,
                        drift_ppm=drift_ppm,
                        replace=replace,
                        seed=room.seed + len(results),
                    )
                )
        elif parallel and devices is None and len(labels) > 1:
            results = _record_side_by_side(task, session, room, labels, routes, replace)
        else:
            for label in labels:
                results.append(_record_live(task, session, room, label, routes[label], replace))
        task.check_cancelled()
        if align:
            for made in results:
                try:
                    made.alignment = align_session_take(task, session, made.label)
                except Cancelled:
                    raise
                except AfpError as exc:
                    made.error = str(exc)
    finally:
        for running in started:
            running.stop()
    return results


def _record_live(
    task: TaskState,
    session: Session,
    room: VirtualRoom,
    label: str,
    devices: _Devices,
    replace: bool,
    before_recording: Callable[[], None] | None = None,
) -> RoomTake:
    has_noise = bool(session.program and session.program.get("noise_file"))
    settings = TakeSettings(
        label=label,
        music_out=devices.music_out,
        mic_in=devices.mic_in,
        noise_out=devices.noise_out if has_noise else None,
        speaker_distance_m=room.noise_distance(label),
        room=room,
        replace=replace,
    )
    result = record_session_take(task, session, settings, before_recording=before_recording)
    if result.frames == 0:
        raise AfpError(f"{result.path}: nothing was recorded ({result.error})")
    found = room_from_notes(session.take(label).notes)
    ratio = (found[1] if found else {}).get("music_to_noise_db")
    return RoomTake(
        label,
        "live",
        result.path,
        room.noise_distance(label),
        math.inf if ratio is None else float(ratio),
        error=result.error,
        details={
            "xruns": result.xrun_total,
            "xrun_times_s": result.xrun_times_s,
            "ended_by": result.ended_by,
        },
    )


def _record_side_by_side(
    task: TaskState,
    session: Session,
    room: VirtualRoom,
    labels: Sequence[str],
    routes: dict[str, _Devices],
    replace: bool,
) -> list[RoomTake]:
    """One thread per take; the task's progress is the sum of theirs. Every take's audio
    is rendered before any records: rendering a room beside a recording take starved its
    streams on a busy 2-core machine (benchmarks/bench_capture_load.py)."""
    progress = dict.fromkeys(labels, (0.0, 0.0))
    lock = threading.Lock()
    ready = threading.Barrier(len(labels))

    def start_together() -> None:
        with contextlib.suppress(threading.BrokenBarrierError):  # another take failed
            ready.wait()

    def record(label: str) -> RoomTake:
        try:
            return _record_live(
                task.fork(report(label)),
                session,
                room,
                label,
                routes[label],
                replace,
                start_together,
            )
        finally:
            ready.abort()  # a take that failed before the barrier holds no other back

    def report(label: str) -> Callable[[float, float, str], None]:
        def on_progress(done: float, total: float, message: str) -> None:
            with lock:
                progress[label] = (done, total)
                task.total = sum(t for _, t in progress.values())
                task.done = sum(d for d, _ in progress.values())
                task.set_message(message if message.startswith(label) else f"{label}: {message}")

        return on_progress

    with ThreadPoolExecutor(max_workers=len(labels), thread_name_prefix="take") as pool:
        futures = [pool.submit(record, label) for label in labels]
        results, errors = [], []
        for future in futures:
            try:
                results.append(future.result())
            except (AfpError, OSError) as exc:  # the other takes finish and are kept first
                errors.append(exc)
    if errors:
        raise errors[0]
    return results
