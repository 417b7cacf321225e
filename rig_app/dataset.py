"""What the Dataset page shows, without Qt: every song of every take of several sessions.

A query set usually spans sessions (devices, rooms, days), so the table is built from a
list of them: one ``DatasetRow`` per song per take, with the take's quality record
(``rig_app.quality``), its verdict, and whether the session's selection
(``rig_app.selection``) leaves it out and why. The page, ``afp-rig selection`` and the
tests read the same rows; edits go through ``Selection`` and are stored in the session.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import soundfile as sf

from afp_core.errors import AfpError
from afp_core.protocols.realworld import take_sort_key
from afp_core.tasks import TaskState
from rig_app.capture import play_audio
from rig_app.quality import update_session_quality
from rig_app.room import find_take_room
from rig_app.selection import Selection
from rig_app.session import Session, TakeEntry

__all__ = [
    "DatasetRow",
    "collect_rows",
    "describe_condition",
    "measure_missing_quality",
    "play_excerpt",
    "read_excerpt",
    "summarise_rows",
]

EXCERPT_S = 8.0  # long enough to judge a take, short enough to compare it with the clean song
Source = Literal["clean", "take"]


@dataclasses.dataclass(frozen=True)
class DatasetRow:
    """One song of one take of one session, with what the curator decides on."""

    session: Session
    session_name: str  # the folder's name, with its parent's where two sessions share it
    take: str
    song: int  # the program's song index
    title: str
    artist: str
    duration_s: float
    program_start_s: float  # where the song starts on the program clock
    condition: str  # devices or room, noise distance
    verdict: str  # the take's (``TakeVerdict.describe``)
    music_to_noise_db: float | None
    peak_dbfs: float | None
    clipped_samples: int | None
    dropouts: int | None
    xruns: int | None  # inside this song
    loudness_lufs: float | None
    flags: tuple[str, ...]  # the song's own, then the take's ("take: ...")
    excluded: str | None  # the reason, when the selection leaves it out
    note: str  # the selection's note on this song of this take
    measured: bool  # the take has a quality record

    @property
    def included(self) -> bool:
        return self.excluded is None


def describe_condition(take: TakeEntry) -> str:
    """Where a take was made, in a few words: the virtual room and noise distance, or the
    devices and the noise speaker's distance."""
    found = find_take_room(take.notes)
    if found is not None:
        _, details = found
        distance = details.get("noise_distance_m", take.speaker_distance_m)
        where = "simulated room" if details.get("mode") == "simulated" else "live virtual room"
        return f"{where}, noise at {distance:g} m" if distance is not None else where
    devices = take.devices.get("mic_in") or ", ".join(sorted(set(take.devices.values())))
    parts = [devices or "unknown devices"]
    if take.speaker_distance_m is not None:
        parts.append(f"noise at {take.speaker_distance_m:g} m")
    return ", ".join(parts)


def collect_rows(sessions: Sequence[Session]) -> list[DatasetRow]:
    """The rows of ``sessions``: takes in protocol order, songs in program order."""
    rows: list[DatasetRow] = []
    names = [session.folder.name for session in sessions]
    for session in sessions:
        name = session.folder.name
        if names.count(name) > 1:  # e.g. every demo's folder is called "session"
            name = f"{session.folder.parent.name}/{name}"
        selection = Selection.from_session(session)
        songs = list((session.program or {}).get("songs") or [])
        for take in sorted(session.takes, key=lambda t: take_sort_key(t.label)):
            quality = take.quality or {}
            measured = {int(s["index"]): s for s in quality.get("songs") or []}
            take_flags = tuple(f"take: {flag}" for flag in quality.get("flags") or [])
            condition = describe_condition(take)
            verdict = take.verdict.describe()
            for index, placed in enumerate(songs):
                entry = session.songs[index] if index < len(session.songs) else None
                song: dict[str, Any] = measured.get(index, {})
                rows.append(
                    DatasetRow(
                        session=session,
                        session_name=name,
                        take=take.label,
                        song=index,
                        title=str(placed.get("title", "")),
                        artist="" if entry is None else entry.artist,
                        duration_s=float(placed["end_s"]) - float(placed["start_s"]),
                        program_start_s=float(placed["start_s"]),
                        condition=condition,
                        verdict=verdict,
                        music_to_noise_db=song.get("music_to_noise_db"),
                        peak_dbfs=song.get("peak_dbfs"),
                        clipped_samples=song.get("clipped_samples"),
                        dropouts=len(song["silence"]) if "silence" in song else None,
                        xruns=len(song["xrun_times_s"]) if "xrun_times_s" in song else None,
                        loudness_lufs=song.get("loudness_lufs"),
                        flags=tuple(song.get("flags") or ()) + take_flags,
                        excluded=selection.reason_excluded(take.label, index),
                        note=selection.note(take.label, index),
                        measured=bool(quality),
                    )
                )
    return rows


def summarise_rows(rows: Sequence[DatasetRow]) -> str:
    """``"36 songs in 6 takes of 2 sessions: 33 included, 3 left out; 4 flagged"``."""
    takes = {(id(row.session), row.take) for row in rows}
    sessions = {id(row.session) for row in rows}
    included = sum(row.included for row in rows)
    flagged = sum(bool(row.flags) for row in rows)
    unmeasured = len({(id(r.session), r.take) for r in rows if not r.measured})
    text = (
        f"{len(rows)} songs in {len(takes)} take{'s' * (len(takes) != 1)} of {len(sessions)} "
        f"session{'s' * (len(sessions) != 1)}: {included} included, {len(rows) - included} "
        f"left out; {flagged} flagged"
    )
    if unmeasured:
        text += f"; {unmeasured} take{'s' * (unmeasured != 1)} without a quality record"
    return text


def read_excerpt(
    row: DatasetRow, source: Source, seconds: float = EXCERPT_S
) -> tuple[np.ndarray, int]:
    """``seconds`` from the middle of the row's song: the clean program (``clean``) or the
    take on the program clock (``take``), the same samples of both so they compare."""
    session = row.session
    if source == "clean":
        name = (session.program or {}).get("music_file")
    else:
        name = session.take(row.take).aligned_file
    if not name:
        raise AfpError(f"{session.path}: take {row.take!r} is not aligned; nothing to play")
    path = session.resolve(str(name))
    length = min(seconds, row.duration_s)
    start_s = row.program_start_s + (row.duration_s - length) / 2
    try:
        rate = sf.info(str(path)).samplerate
        audio, _ = sf.read(
            str(path),
            start=round(start_s * rate),
            frames=round(length * rate),
            dtype="float32",
            always_2d=True,
        )
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise AfpError(f"{path}: cannot read ({' '.join(str(exc).split())})") from None
    return audio.mean(axis=1), rate


def play_excerpt(task: TaskState, row: DatasetRow, source: Source, device: str | int) -> None:
    """Play ``read_excerpt`` on an output device; cancelling the task stops it."""
    audio, rate = read_excerpt(row, source)
    task.set_message(f"playing {source}: {row.title} ({row.take})")
    play_audio(device, audio, rate, stop=lambda: task.cancelled)


def measure_missing_quality(task: TaskState, sessions: Sequence[Session]) -> None:
    """Make the quality record of every aligned take that has none (aligned by an older
    version), each session's program read once."""
    todo = [
        (session, [t.label for t in session.takes if t.aligned_file and not t.quality])
        for session in sessions
    ]
    todo = [(session, labels) for session, labels in todo if labels]
    task.set_total(sum(len(labels) for _, labels in todo), "measuring quality")
    for session, labels in todo:
        task.check_cancelled()
        update_session_quality(session, labels=labels)
        task.advance(len(labels), f"{session.folder.name}: {', '.join(labels)} measured")
