"""The paper authors' layout: their published evaluation material, read into a session,
and recorded sessions written out in it.

The authors published their real-world takes as::

    recording_songs.csv          the song files in play order, one name a line
    true_songs/                  the clean songs (often a link to a folder elsewhere)
    recordings/low_t.wav         the takes (also mid_t.wav, high_t.wav)

``import_authors_layout`` makes a session of it (the program is the songs joined with no
gaps and no markers; each recording aligned without markers). ``export_authors_layout``
writes a recorded session so: the songs as the program played them and each aligned
take cut to the songs, joined with no gaps, so the authors' scripts (which assume exactly
that) run on it. docs/session-format.md says what is assumed and written.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from afp_core import __version__
from afp_core.audio import AUDIO_EXTENSIONS, load_audio, probe_audio
from afp_core.fileutil import atomic_folder, atomic_write_text, one_line, utc_now
from afp_core.protocols.sessions import (
    TAKE_LABELS,
    EvalSession,
    SessionSong,
    SessionTake,
    read_session,
)
from afp_core.tasks import TaskState
from rig_app.align import align_without_markers
from rig_app.program import ProgramSong, build_program
from rig_app.selection import Selection
from rig_app.session import Session, SessionError, SongEntry

__all__ = [
    "SONG_LIST",
    "SongRow",
    "export_authors_layout",
    "import_authors_layout",
    "read_song_list",
]

SONG_LIST = "recording_songs.csv"  # the published song list's name
RECORDING_SUFFIX = "_t"  # the published takes are low_t.wav, mid_t.wav, high_t.wav


@dataclass(frozen=True)
class SongRow:
    """One song of a play-order list: its file, title and artist."""

    file: Path
    title: str
    artist: str = ""


_FILE_HEADERS = ("file", "filename", "file_name", "path", "filepath", "audio", "wav", "song_file")
_TITLE_HEADERS = ("title", "name", "song", "track", "song_name")
_ARTIST_HEADERS = ("artist", "band", "performer", "singer")
# a row of the song list: its line number in the file and its cells
_Row = tuple[int, list[str]]


def _files_below(folder: Path) -> list[Path]:
    """Every file below ``folder`` (hidden ones and hidden folders skipped), shallowest
    first, then by path.

    Links to folders are followed (the published true_songs/ is often one), but each real
    folder is entered once, so a link back up the tree ends the walk instead of looping.
    """
    seen: set[tuple[int, int]] = set()
    found: list[Path] = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        try:
            stat = Path(root).stat()
        except OSError:
            dirs[:] = []
            continue
        if (stat.st_dev, stat.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(root, name) for name in names if not name.startswith("."))
    return sorted(found, key=lambda p: (len(p.parts), p.parts))


class _Below:
    """``_files_below(folder)``, walked once and only if a name has to be searched for."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._files: list[Path] | None = None

    def named(self, name: str) -> list[Path]:
        if self._files is None:
            self._files = _files_below(self.folder)
        return [p for p in self._files if p.name == name and p.is_file()]


def read_song_list(csv_path: Path | str) -> list[SongRow]:
    """Songs in play order from a CSV (or TSV/semicolon) list, header or not.

    The file column is the one headed like a file name (file, filename, path, ...) or,
    without such a header, the one whose cells most often name existing audio files.
    Titles come from a title/name/song column if there is one, else from the file name;
    artists from an artist column. Files are looked up as given, next to the CSV, then
    by name anywhere below the CSV's folder (through linked folders). Blank lines and
    lines starting with '#' are skipped. A file that cannot be found: ``SessionError``
    naming the line.
    """
    csv_path = Path(csv_path)
    folder = csv_path.parent
    header, body = _split_header(_read_rows(csv_path), folder)
    if not body:
        raise SessionError(f"{csv_path}: no songs listed (only a header)")
    columns = _Columns.pick(csv_path, header, body)
    below = _Below(folder)
    return [_song_row(csv_path, number, row, columns, below) for number, row in body]


def _read_rows(csv_path: Path) -> list[_Row]:
    """The list's rows, blank lines and comments left out, in the dialect it is written in."""
    if not csv_path.is_file():
        raise SessionError(f"{csv_path}: no such file")
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SessionError(f"{csv_path}: cannot read ({one_line(exc)})") from None
    lines = [
        (number, line)
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise SessionError(f"{csv_path}: no songs listed")
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(
            "\n".join(line for _, line in lines[:20]), delimiters=",;\t|"
        )
    except csv.Error:
        dialect = csv.excel
    return [
        (number, [cell.strip() for cell in row])
        for (number, _), row in zip(
            lines,
            csv.reader(io.StringIO("\n".join(line for _, line in lines)), dialect),
            strict=True,
        )
    ]


def _split_header(rows: list[_Row], folder: Path) -> tuple[list[str], list[_Row]]:
    """The header's cells in lower case ([] when the first row is a song) and the songs.

    The first row is a header when none of its cells names audio, and either it is the
    only row, a later row names audio, or a cell is a known column name.
    """
    first = [cell.lower() for cell in rows[0][1]]
    has_header = not any(_looks_like_audio(cell, folder) for cell in rows[0][1]) and (
        len(rows) == 1
        or any(_looks_like_audio(cell, folder) for _, row in rows[1:] for cell in row)
        or any(name in first for name in _FILE_HEADERS + _TITLE_HEADERS)
    )
    return (first, rows[1:]) if has_header else ([], rows)


@dataclass(frozen=True)
class _Columns:
    """Which column of the song list holds the file, the title and the artist."""

    file: int
    title: int | None
    artist: int | None

    @classmethod
    def pick(cls, csv_path: Path, header: list[str], body: list[_Row]) -> _Columns:
        file_col = _pick_column(header, _FILE_HEADERS)
        if file_col is None:
            file_col = _audio_column(csv_path, body)
        return cls(
            file=file_col,
            title=_pick_column(header, _TITLE_HEADERS, exclude=file_col),
            artist=_pick_column(header, _ARTIST_HEADERS, exclude=file_col),
        )


def _audio_column(csv_path: Path, body: list[_Row]) -> int:
    """The column whose cells most often name audio files (the first of equals)."""
    folder = csv_path.parent
    width = max(len(row) for _, row in body)
    counts = [
        sum(_looks_like_audio(row[c], folder) for _, row in body if c < len(row))
        for c in range(width)
    ]
    if max(counts) == 0:
        raise SessionError(f"{csv_path}: no column names audio files")
    return counts.index(max(counts))


def _song_row(
    csv_path: Path, number: int, row: list[str], columns: _Columns, below: _Below
) -> SongRow:
    """The song on line ``number``, its file found (``_find_file``) or ``SessionError``."""
    if columns.file >= len(row) or not row[columns.file]:
        raise SessionError(f"{csv_path}: line {number}: no file name in column {columns.file + 1}")
    name = row[columns.file]
    path = _find_file(name, below)
    if path is None:
        raise SessionError(f"{csv_path}: line {number}: song file {name!r} not found")
    return SongRow(
        file=path,
        title=_cell(row, columns.title) or path.stem,
        artist=_cell(row, columns.artist),
    )


def _cell(row: list[str], column: int | None) -> str:
    return row[column] if column is not None and column < len(row) else ""


def _pick_column(header: list[str], names: Sequence[str], exclude: int | None = None) -> int | None:
    for name in names:
        for index, cell in enumerate(header):
            if index != exclude and cell.replace(" ", "_") == name:
                return index
    return None


def _looks_like_audio(cell: str, folder: Path) -> bool:
    return Path(cell).suffix.lower() in AUDIO_EXTENSIONS or (
        bool(cell) and (folder / cell).is_file()
    )


def _find_file(name: str, below: _Below) -> Path | None:
    """``name`` as given, next to the song list, or by name anywhere below its folder."""
    path = Path(name)
    if path.is_absolute():
        return path if path.is_file() else None
    if (below.folder / path).is_file():
        return below.folder / path
    matches = below.named(path.name)
    return matches[0] if matches else None


def _find_recording(label: str, files: Sequence[Path], songs: Sequence[Path]) -> Path | None:
    """The take ``label`` among ``files`` (``_files_below``'s order): ``<label>_t`` (the
    published name) or ``<label>``, any audio suffix, the first found; never a song."""
    stems = {label, f"{label}{RECORDING_SUFFIX}"}
    song_files = {p.resolve() for p in songs}
    for path in files:
        if (
            path.stem.lower() in stems
            and path.suffix.lower() in AUDIO_EXTENSIONS
            and path.is_file()
            and path.resolve() not in song_files
        ):
            return path
    return None


def _recording_names(labels: Sequence[str]) -> str:
    published = ", ".join(f"{label}{RECORDING_SUFFIX}.wav" for label in labels)
    return f"{published} or {', '.join(f'{label}.wav' for label in labels)}"


def _song_list(source: Path) -> tuple[Path, Path]:
    """The song list and the layout's folder, from the CSV or the folder holding it."""
    if source.is_file():
        return source, source.parent
    if not source.is_dir():
        raise SessionError(f"{source}: no such file or folder")
    if (source / SONG_LIST).is_file():
        return source / SONG_LIST, source
    lists = sorted(p for p in source.glob("*.csv") if p.is_file())
    if len(lists) != 1:
        found = ", ".join(p.name for p in lists) or "none"
        raise SessionError(
            f"{source}: expected one CSV song list ({SONG_LIST} or another), found {found}"
        )
    return lists[0], source


def import_authors_layout(
    folder_or_csv: Path | str,
    destination: Path | str,
    *,
    sample_rate: int = 16000,
    min_song_s: float = 60.0,
    labels: Sequence[str] = TAKE_LABELS,
    segment_s: float = 30.0,
    edge_margin_s: float = 10.0,
    checkpoints: int = 5,
    max_drift_ppm: float = 300.0,
) -> Session:
    """A session from the paper authors' published layout, takes aligned without markers.

    The layout: a CSV listing the song files in play order (``read_song_list``;
    recording_songs.csv when a folder holds several), the song files (found through a
    linked true_songs/ folder too), and the recordings low_t, mid_t and high_t (or low,
    mid and high; any audio suffix, found by name below the folder, e.g. in
    recordings/). Assumptions, since the layout states none: the music program is the
    songs concatenated in CSV order with no gaps and no markers; the songs are used at
    the level they are stored at (the authors normalised them already, so no gain is
    applied, but their loudness is measured and recorded); the program is built at
    ``sample_rate`` (16 kHz keeps margin above the models' 8 kHz). Each recording is
    aligned with ``align_without_markers``, so it may start before or after song 1 and
    run at a slightly different clock. Recordings that are missing are skipped (noted in
    the session); none at all is a ``SessionError``. Recordings stay where they are; the
    aligned takes are written into ``destination``.
    """
    csv_path, folder = _song_list(Path(folder_or_csv))
    rows = read_song_list(csv_path)
    files = _files_below(folder)
    song_files = [row.file for row in rows]
    recordings = {label: _find_recording(label, files, song_files) for label in labels}
    if not any(recordings.values()):
        raise SessionError(f"{folder}: none of the recordings ({_recording_names(labels)}) found")

    songs = [
        ProgramSong(
            audio=load_audio(row.file, sample_rate),
            title=row.title,
            artist=row.artist,
            source=str(row.file),
        )
        for row in rows
    ]
    program = build_program(
        songs,
        sample_rate,
        marker=None,
        gap_s=0.0,
        normalise=False,
        min_song_s=min_song_s,
    )
    session = Session.create(destination, origin="authors-layout")
    missing = [label for label, path in recordings.items() if path is None]
    session.notes = f"imported from {csv_path}" + (
        f"; recordings not found: {', '.join(missing)}" if missing else ""
    )
    session.set_program(
        program,
        songs=[
            SongEntry(
                title=row.title,
                artist=row.artist,
                source=str(row.file),
                file=str(row.file),
                duration_s=slot.duration_s,
                loudness_before=slot.loudness_before,
                loudness_after=slot.loudness_after,
            )
            for row, slot in zip(rows, program.songs, strict=True)
        ],
    )
    for label, path in recordings.items():
        if path is None:
            continue
        rate = probe_audio(path).sample_rate
        alignment = align_without_markers(
            load_audio(path, rate),
            rate,
            program.music,
            program.sample_rate,
            songs=program.songs,
            name=str(path),
            segment_s=segment_s,
            edge_margin_s=edge_margin_s,
            checkpoints=checkpoints,
            max_drift_ppm=max_drift_ppm,
        )
        session.add_take(
            label,
            path,
            rate,
            alignment=alignment,
            notes="authors' recording, aligned without markers",
        )
    return session


# --- export ---------------------------------------------------------------------------------

SONGS_DIR = "true_songs"
RECORDINGS_DIR = "recordings"
NOTES_FILE = "NOTES.txt"
_BLOCK = 1 << 18  # frames copied at a time
# bad in a file name somewhere, or split by a CSV reader (ours sniffs , ; | and tabs)
_UNSAFE = re.compile(r'[\x00-\x1f<>:"/\\|?*,;]')


@dataclass(frozen=True)
class _ExportPlan:
    """One session's part of an export, checked before anything is written."""

    session: EvalSession
    music: Path  # the program's music track
    songs: tuple[SessionSong, ...]  # the songs exported, in play order
    names: tuple[str, ...]  # their files in true_songs/
    takes: tuple[tuple[SessionTake, Path], ...]  # the takes exported, with their aligned files
    left_out: tuple[str, ...]  # what was left out and why, a line each


def export_authors_layout(
    sessions: Sequence[Path | str],
    out_dir: Path | str,
    *,
    task: TaskState | None = None,
) -> Path:
    """Write recorded sessions in the paper authors' layout, for their evaluation scripts
    (and ``import_authors_layout``); returns ``out_dir``.

    For each session: ``recording_songs.csv`` (the song files in play order, one a line),
    ``true_songs/`` (each song as the program played it, loudness-normalised, cut from
    the program's music track at its interval; named after its title) and
    ``recordings/<label>_t.wav`` (the aligned take's song intervals joined in the same
    order with no gaps, so the layout's "songs back to back from the first sample" holds),
    all at the program's rate, 32-bit float; ``NOTES.txt`` says where it came from and
    what was left out. The session's selection (``rig_app.selection``) is honoured: an
    excluded take gets no recording, and a song excluded in any exported take is left out
    of all of them (the layout has one song list). One session is written into
    ``out_dir`` itself, several each into a subfolder named after its folder (made
    unique). Everything is checked first (``out_dir`` new or empty; every exported take
    aligned); the files are written into a temporary folder beside ``out_dir`` that is
    renamed at the end, so a failure or ``task``'s cancel leaves nothing half-written.
    """
    task = task or TaskState()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SessionError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise SessionError(f"{out}: folder is not empty (export into a new or empty one)")
    if not sessions:
        raise SessionError(f"{out}: no session to export")
    plans = [_plan_export(Path(folder)) for folder in sessions]
    names = _unique_folder_names(plans) if len(plans) > 1 else [""]
    task.set_total(
        sum(len(plan.songs) + len(plan.takes) for plan in plans),
        "exporting in the authors' layout",
        unit="files",
    )
    try:
        with atomic_folder(out) as building:
            for plan, name in zip(plans, names, strict=True):
                _write_layout(plan, building / name, task)
    except (OSError, sf.SoundFileError) as exc:
        raise SessionError(f"{out}: cannot write the export ({one_line(exc)})") from None
    return out


def _plan_export(folder: Path) -> _ExportPlan:
    session = Session.load(folder)
    selection = Selection.from_session(session)
    read = read_session(folder)
    music = session.resolve(str((session.program or {}).get("music_file") or ""))
    last = max(song.end for song in read.songs)
    _check_track(music, "the program's music", read.sample_rate, last)
    left_out: list[str] = []
    takes: list[tuple[SessionTake, Path]] = []
    for take in read.takes:
        reason = selection.reason_excluded(take.label)
        if reason is not None:
            left_out.append(f"take {take.label!r}: {reason}")
            continue
        if take.aligned_file is None or take.alignment is None:
            raise SessionError(
                f"{session.path}: take {take.label!r} is not aligned "
                f"(afp-rig align {folder} --label {take.label})"
            )
        _check_track(take.aligned_file, f"take {take.label!r}", read.sample_rate, last)
        takes.append((take, take.aligned_file))
    if not takes:
        why = "every take is left out by the selection" if read.takes else "no takes recorded"
        raise SessionError(f"{session.path}: no take to export ({why})")
    songs: list[SessionSong] = []
    for song in read.songs:
        reasons: dict[str, list[str]] = {}
        for take, _ in takes:
            reason = selection.reason_excluded(take.label, song.index)
            if reason is not None:
                reasons.setdefault(reason, []).append(take.label)
        if not reasons:
            songs.append(song)
            continue
        why = "; ".join(
            reason if len(labels) == len(takes) else f"{reason} (take {', '.join(labels)})"
            for reason, labels in reasons.items()
        )
        left_out.append(f"song {song.index} {song.title!r}, from every recording: {why}")
    if not songs:
        raise SessionError(f"{session.path}: the selection leaves out every song")
    return _ExportPlan(
        read,
        music,
        tuple(songs),
        tuple(_song_file_names([song.title for song in songs])),
        tuple(takes),
        tuple(left_out),
    )


def _check_track(path: Path, what: str, rate: int, samples: int) -> None:
    """Refuse a track that is not on the program clock at ``rate`` for ``samples``."""
    info = probe_audio(path)
    if info.sample_rate != rate:
        raise SessionError(
            f"{path}: {what} is at {info.sample_rate} Hz, not the program's {rate} Hz"
        )
    if info.frames < samples:
        raise SessionError(
            f"{path}: {what} ends at {info.frames} samples, before the last song ({samples})"
        )


def _song_file_names(titles: Sequence[str]) -> list[str]:
    """A .wav file name for each title: the title with what a file system or a CSV
    reader would trip on replaced, unique (case ignored) by a " (2)" suffix."""
    names: list[str] = []
    used: set[str] = set()
    for number, title in enumerate(titles, 1):
        # a leading '#' reads as a comment, a leading '.' as a hidden file
        stem = _UNSAFE.sub("_", title).strip().lstrip(".#").rstrip(". ")[:120] or f"song {number}"
        name, copy = stem, 1
        while name.casefold() in used:
            copy += 1
            name = f"{stem} ({copy})"
        used.add(name.casefold())
        names.append(f"{name}.wav")
    return names


def _unique_folder_names(plans: Sequence[_ExportPlan]) -> list[str]:
    names: list[str] = []
    used: set[str] = set()
    for plan in plans:
        stem = plan.session.folder.resolve().name.lstrip(".") or "session"
        name, copy = stem, 1
        while name.casefold() in used:
            copy += 1
            name = f"{stem}-{copy}"
        used.add(name.casefold())
        names.append(name)
    return names


def _write_layout(plan: _ExportPlan, folder: Path, task: TaskState) -> None:
    where = plan.session.folder.name
    (folder / SONGS_DIR).mkdir(parents=True)
    for song, name in zip(plan.songs, plan.names, strict=True):
        task.check_cancelled()
        _copy_spans(
            plan.music,
            [(song.start, song.end)],
            folder / SONGS_DIR / name,
            plan.session.sample_rate,
        )
        task.advance(1, f"{where}: {song.title}")
    (folder / RECORDINGS_DIR).mkdir()
    spans = [(song.start, song.end) for song in plan.songs]
    for take, aligned in plan.takes:
        task.check_cancelled()
        out = folder / RECORDINGS_DIR / f"{take.label}{RECORDING_SUFFIX}.wav"
        _copy_spans(aligned, spans, out, plan.session.sample_rate)
        task.advance(1, f"{where}: take {take.label}")
    atomic_write_text(folder / SONG_LIST, "".join(f"{name}\n" for name in plan.names))
    atomic_write_text(folder / NOTES_FILE, _notes(plan))


def _copy_spans(source: Path, spans: Sequence[tuple[int, int]], out: Path, rate: int) -> None:
    """``source``'s samples ``[start, end)`` of each span, one after another, into ``out``
    (mono, 32-bit float), a block at a time: a take can be longer than memory allows.
    Written in place: the whole export folder is renamed into place at the end."""
    with (
        sf.SoundFile(str(source)) as reader,
        sf.SoundFile(str(out), "w", rate, 1, subtype="FLOAT") as writer,
    ):
        for start, end in spans:
            reader.seek(start)
            left = end - start
            while left > 0:
                block = reader.read(min(left, _BLOCK), dtype="float32", always_2d=True)
                if not len(block):
                    raise SessionError(f"{source}: ends before sample {end}")
                writer.write(block.mean(axis=1) if block.shape[1] > 1 else block[:, 0])
                left -= len(block)


def _notes(plan: _ExportPlan) -> str:
    session = plan.session
    recordings = ", ".join(
        f"{take.label}{RECORDING_SUFFIX}.wav (take {take.label!r}: {take.verdict.describe()})"
        for take, _ in plan.takes
    )
    left_out = ["Nothing was left out."]
    if plan.left_out:
        left_out = [
            "Left out (songs are numbered by their index in the program, 0 for the first):",
            *(f"- {line}" for line in plan.left_out),
        ]
    return "\n".join(
        [
            f"Exported by afp-rig {__version__} on {utc_now()} from the session "
            f"{session.folder.resolve()} (origin {session.origin}, created {session.created}).",
            "",
            f"{SONG_LIST} lists the {len(plan.songs)} songs of {SONGS_DIR}/ in play order. "
            f"{SONGS_DIR}/ holds each song as the program played it (cut from the program's "
            "music track), named after its title. Each recording in "
            f"{RECORDINGS_DIR}/ is a take aligned to the program clock, cut to the songs' "
            "intervals and joined in the same order with no gaps and no markers: each song "
            "starts where the one before ends, the first at the first sample. "
            f"{session.sample_rate} Hz, mono, 32-bit float.",
            "",
            f"Recordings: {recordings}.",
            "",
            *left_out,
            "",
        ]
    )
