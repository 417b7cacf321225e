"""The session's songs: added from URLs (yt-dlp), files or folders, checked and deduplicated.

The paper's 15 test songs were downloaded from YouTube with yt-dlp (paper §4.2). Here a
URL goes through yt-dlp's Python API (never a shell: URLs are data), best audio only,
converted by ffmpeg (FFmpegExtractAudio) to FLAC, which libsndfile reads and which keeps
the decoded audio exactly. Files that libsndfile reads are copied as they are; others
are converted to FLAC by ffmpeg.

Every song lands in a private temporary folder inside the songs folder first; only a
song that passed every check is renamed into place (one rename on one file system) and
added to ``songs.json`` (written atomically), one song at a time. So a failure or a
cancel loses nothing added before it and never leaves a partial file among the songs.

Checks: the audio must decode and last at least ``min_duration_s`` (60 s by default:
the paper's queries are cut from whole songs); a song is a duplicate when its decoded
audio has the checksum of a song already there, or when it comes from the same URL or,
for a site's own extractor, the same video id. Title and artist come from the source:
yt-dlp's info (track/title, artist/creator/uploader), for a direct link to a file
(yt-dlp's generic extractor, whose "title" is only the URL's file name) the file's tags
when it has some, for files their tags (libsndfile), else the file name
("Artist - Title.ext" is split).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from afp_core.audio import AudioError, iter_audio_files, load_audio, probe_audio
from afp_core.errors import AfpError, Cancelled
from afp_core.fileutil import atomic_write_text, one_line, utc_now
from afp_core.tasks import TaskState
from rig_app.program import ProgramSong
from rig_app.session import SongEntry

__all__ = [
    "MIN_DURATION_S",
    "SONGS_DIR",
    "SONGS_FILE",
    "DuplicateSongError",
    "Song",
    "SongError",
    "SongResult",
    "add_song_file",
    "add_song_url",
    "add_songs",
    "audio_checksum",
    "is_url",
    "load_songs",
]

SONGS_DIR = "songs"
SONGS_FILE = "songs.json"
SONGS_FORMAT = "afp-rig-songs"
SONGS_VERSION = 1
MIN_DURATION_S = 60.0
_AUDIO_CODEC = "flac"
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_CHECKSUM_BLOCK = 1 << 16


class SongError(AfpError):
    """A song cannot be added (unreachable, not audio, too short, duplicate ...)."""


class DuplicateSongError(SongError):
    """The song is in the songs folder already; ``song`` is the one there."""

    def __init__(self, message: str, song: Song) -> None:
        super().__init__(message)
        self.song = song


@dataclass
class Song:
    """A song in the songs folder. ``file`` is its name in that folder."""

    title: str
    artist: str
    source: str  # the URL or the original file's path
    file: str
    duration_s: float
    checksum: str  # SHA-256 of the decoded audio (see ``audio_checksum``)
    sample_rate: int
    channels: int
    source_id: str | None = None  # "<extractor>:<id>" for a site's own extractor
    added_at: str = ""

    def to_song_entry(self, folder: Path | str, relative_to: Path | str | None = None) -> SongEntry:
        """The session's record of this song; ``file`` relative to ``relative_to`` if given."""
        path = Path(folder) / self.file
        name = str(path.resolve())
        if relative_to is not None:
            with contextlib.suppress(ValueError):
                name = path.resolve().relative_to(Path(relative_to).resolve()).as_posix()
        return SongEntry(
            title=self.title,
            artist=self.artist,
            source=self.source,
            file=name,
            duration_s=self.duration_s,
        )

    def to_program_song(self, folder: Path | str, sample_rate: int) -> ProgramSong:
        """The song's audio, mono at ``sample_rate``, ready for ``build_program``."""
        return ProgramSong(
            audio=load_audio(Path(folder) / self.file, sample_rate),
            title=self.title,
            artist=self.artist,
            source=self.source,
        )


@dataclass
class SongResult:
    """What became of one item given to ``add_songs``.

    ``ok``: the song was added (``song`` is it). A duplicate is not added: ``ok`` is
    False, ``duplicate`` True and ``song`` is the song already there. Otherwise
    ``error`` says in one line what was wrong.
    """

    item: str
    ok: bool
    song: Song | None = None
    error: str | None = None
    duplicate: bool = False


# --- the index ----------------------------------------------------------------------------


def load_songs(folder: Path | str) -> list[Song]:
    """The songs recorded in ``folder``'s songs.json (none when there is no index yet)."""
    path = Path(folder) / SONGS_FILE
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SongError(f"{path}: unreadable song list ({one_line(exc)})") from None
    if not isinstance(data, dict) or data.get("format") != SONGS_FORMAT:
        raise SongError(f"{path}: not an {SONGS_FORMAT} file")
    try:
        return [Song(**entry) for entry in data["songs"]]
    except (KeyError, TypeError) as exc:
        raise SongError(f"{path}: malformed song list ({one_line(exc)})") from None


def _save_songs(folder: Path, songs: Sequence[Song]) -> None:
    data = {
        "format": SONGS_FORMAT,
        "version": SONGS_VERSION,
        "songs": [asdict(song) for song in songs],
    }
    atomic_write_text(folder / SONGS_FILE, json.dumps(data, indent=2) + "\n")


# --- helpers ------------------------------------------------------------------------------


def _tool_message(exc: BaseException | str) -> str:
    """What yt-dlp or ffmpeg said, on one line, without colours, ``ERROR:`` or a cause."""
    text = one_line(re.sub(r"\x1b\[[0-9;]*m", "", one_line(exc)))  # yt-dlp colours its text
    text = re.sub(r"^ERROR:\s*", "", text)
    return re.sub(r"\s*\(caused by .*\)$", "", text)


def is_url(item: str | Path) -> bool:
    """True for "scheme://..." strings (what goes to yt-dlp), False for paths."""
    return isinstance(item, str) and bool(_URL.match(item.strip()))


def audio_checksum(path: Path) -> str:
    """SHA-256 of the decoded samples (float32) with rate and channels: the same audio in
    WAV or FLAC has the same checksum, whatever the tags or the container."""
    digest = hashlib.sha256()
    with sf.SoundFile(str(path)) as handle:
        digest.update(f"{handle.samplerate}:{handle.channels}:".encode())
        for block in handle.blocks(_CHECKSUM_BLOCK, dtype="float32", always_2d=True):
            digest.update(np.ascontiguousarray(block).tobytes())
    return digest.hexdigest()


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:60].rstrip("-") or "song"


def _tags(path: Path) -> dict[str, str]:
    try:
        with sf.SoundFile(str(path)) as handle:
            return {k: v.strip() for k, v in handle.copy_metadata().items() if v.strip()}
    except (sf.SoundFileError, RuntimeError, OSError):
        return {}


def _title_from_name(path: Path) -> tuple[str, str]:
    stem = path.stem.replace("_", " ").strip()
    if " - " in stem:
        artist, title = stem.split(" - ", 1)
        return title.strip(), artist.strip()
    return stem or path.name, ""


@contextlib.contextmanager
def _staging(folder: Path) -> Iterator[Path]:
    """A private temporary folder inside ``folder``, removed whatever happens."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=folder))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        raise SongError("ffmpeg not found; install it with: apt-get install ffmpeg")
    return path


def _find_duplicate(
    songs: Sequence[Song],
    *,
    url: str | None = None,
    source_id: str | None = None,
    checksum: str | None = None,
) -> tuple[Song, str] | None:
    for song in songs:
        if url is not None and song.source == url:
            return song, "same URL"
        if source_id is not None and song.source_id == source_id:
            return song, f"same video id {source_id}"
        if checksum is not None and song.checksum == checksum:
            return song, "same audio"
    return None


def _duplicate_error(item: str, song: Song, why: str) -> DuplicateSongError:
    return DuplicateSongError(
        f"{item}: already in the songs as '{song.title}' ({song.file}; {why})", song
    )


@dataclass
class _Meta:
    title: str
    artist: str
    source: str
    source_id: str | None
    prefer_tags: bool


def _store(staged: Path, folder: Path, meta: _Meta, min_duration_s: float, item: str) -> Song:
    """Check a staged file and move it into the songs folder; returns the new song."""
    try:
        info = probe_audio(staged)
    except AudioError as exc:
        raise SongError(f"{item}: not audio ({one_line(exc).split(': ', 1)[-1]})") from None
    if info.duration_s < min_duration_s:
        raise SongError(
            f"{item}: {info.duration_s:.1f} s long, shorter than the minimum of "
            f"{min_duration_s:g} s"
        )
    checksum = audio_checksum(staged)
    songs = load_songs(folder)
    found = _find_duplicate(songs, source_id=meta.source_id, checksum=checksum)
    if found is not None:
        raise _duplicate_error(item, *found)
    title, artist = meta.title, meta.artist
    tags = _tags(staged)
    if meta.prefer_tags or not title:
        title = tags.get("title") or title
        artist = tags.get("artist") or artist
    name = (
        f"{_slug(f'{artist} {title}' if artist else title)}-{checksum[:8]}{staged.suffix.lower()}"
    )
    target = folder / name
    staged.replace(target)
    song = Song(
        title=title,
        artist=artist,
        source=meta.source,
        file=name,
        duration_s=info.duration_s,
        checksum=checksum,
        sample_rate=info.sample_rate,
        channels=info.channels,
        source_id=meta.source_id,
        added_at=utc_now(),
    )
    try:
        _save_songs(folder, [*songs, song])
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return song


# --- files ------------------------------------------------------------------------------


def add_song_file(
    path: Path | str,
    folder: Path | str,
    *,
    min_duration_s: float = MIN_DURATION_S,
) -> Song:
    """Copy (or convert to FLAC) one audio file into the songs folder; ``SongError`` if not."""
    source = Path(path)
    folder = Path(folder)
    item = str(source)
    if not source.is_file():
        raise SongError(f"{item}: no such file")
    with _staging(folder) as tmp:
        readable = True
        try:
            probe_audio(source)
        except AudioError:
            readable = False
        if readable:
            staged = tmp / f"song{source.suffix.lower()}"
            shutil.copyfile(source, staged)
        else:
            staged = tmp / f"song.{_AUDIO_CODEC}"
            _convert(source, staged, item)
        tags = _tags(staged)
        title, artist = _title_from_name(source)
        meta = _Meta(
            title=tags.get("title") or title,
            artist=tags.get("artist") or artist,
            source=str(source.resolve()),
            source_id=None,
            prefer_tags=False,
        )
        return _store(staged, folder, meta, min_duration_s, item)


def _convert(source: Path, target: Path, item: str) -> None:
    command = [
        _ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(source),
        "-vn", "-map_metadata", "0", "-c:a", _AUDIO_CODEC, str(target),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SongError(f"{item}: ffmpeg failed ({one_line(exc)})") from None
    if done.returncode != 0 or not target.is_file():
        lines = done.stderr.strip().splitlines()
        why = _tool_message(lines[-1]) if lines else "no output"
        raise SongError(f"{item}: not audio ffmpeg can read ({why})")


# --- URLs ----------------------------------------------------------------------------------


class _Quiet:
    """yt-dlp logger: keeps the console clean; errors reach us as exceptions."""

    def debug(self, msg: str) -> None:
        pass

    def info(self, msg: str) -> None:
        pass

    def warning(self, msg: str) -> None:
        pass

    def error(self, msg: str) -> None:
        pass


def _artist(info: dict[str, Any]) -> str:
    artists = info.get("artists")
    if isinstance(artists, list) and artists:
        return ", ".join(str(a) for a in artists)
    for key in ("artist", "creator", "uploader", "channel"):
        value = info.get(key)
        if value:
            return str(value)
    return ""


def add_song_url(
    url: str,
    folder: Path | str,
    task: TaskState | None = None,
    *,
    min_duration_s: float = MIN_DURATION_S,
    timeout_s: float = 30.0,
    on_fraction: Callable[[float], None] | None = None,
) -> Song:
    """Download one URL's audio with yt-dlp into the songs folder; ``SongError`` if not.

    ``task.cancel()`` stops the download at its next progress report (``Cancelled``);
    nothing of it stays behind. ``on_fraction(f)`` (if given) gets the download's
    progress in [0, 1].
    """
    import yt_dlp
    from yt_dlp.utils import (
        DownloadCancelled,
        DownloadError,
        PostProcessingError,
        YoutubeDLError,
    )

    url = url.strip()
    folder = Path(folder)
    ffmpeg = _ffmpeg()
    found = _find_duplicate(load_songs(folder), url=url)
    if found is not None:
        raise _duplicate_error(url, *found)

    class _Stop(DownloadCancelled):
        msg = "cancelled by the user"

    def check() -> None:
        if task is not None and task.cancelled:
            raise _Stop()

    def on_progress(progress: dict[str, Any]) -> None:
        check()
        if on_fraction is not None and progress.get("status") == "downloading":
            total = progress.get("total_bytes") or progress.get("total_bytes_estimate")
            if total:
                on_fraction(min(1.0, float(progress.get("downloaded_bytes") or 0) / total))

    def on_postprocess(progress: dict[str, Any]) -> None:
        check()
        if task is not None and progress.get("status") == "started":
            task.set_message(f"converting {url}")

    with _staging(folder) as tmp:
        params = {
            "format": "bestaudio/best",
            "outtmpl": {"default": "download.%(ext)s"},
            "paths": {"home": str(tmp), "temp": str(tmp)},
            "noplaylist": True,
            "quiet": True,
            "no_warnings": True,
            "noprogress": True,
            "logger": _Quiet(),
            "progress_hooks": [on_progress],
            "postprocessor_hooks": [on_postprocess],
            "postprocessors": [{"key": "FFmpegExtractAudio", "preferredcodec": _AUDIO_CODEC}],
            "ffmpeg_location": ffmpeg,
            "socket_timeout": timeout_s,
            "retries": 1,
            "fragment_retries": 1,
            "cachedir": False,
            "overwrites": True,
        }
        try:
            with yt_dlp.YoutubeDL(params) as ydl:
                check()
                info = ydl.extract_info(url, download=False, process=False)
                if info is None:
                    raise SongError(f"{url}: yt-dlp found nothing to download")
                if info.get("_type") in ("playlist", "multi_video"):
                    raise SongError(f"{url}: is a playlist; add its songs one by one")
                generic = str(info.get("extractor_key", "Generic")).lower() == "generic"
                source_id = None if generic else f"{info.get('extractor_key')}:{info.get('id')}"
                songs = load_songs(folder)
                found = _find_duplicate(songs, url=info.get("webpage_url"), source_id=source_id)
                if found is not None:
                    raise _duplicate_error(url, *found)
                duration = info.get("duration")
                if isinstance(duration, int | float) and 0 < duration < min_duration_s:
                    raise SongError(
                        f"{url}: {duration:.1f} s long, shorter than the minimum of "
                        f"{min_duration_s:g} s"
                    )
                check()
                info = ydl.process_ie_result(info, download=True)
        except _Stop:
            raise Cancelled(f"{url}: download cancelled; nothing of it was kept") from None
        except (DownloadError, YoutubeDLError) as exc:
            # yt-dlp wraps a failed conversion in a DownloadError; its cause says which
            cause = (getattr(exc, "exc_info", None) or (None, None))[1]
            if isinstance(exc, PostProcessingError) or isinstance(cause, PostProcessingError):
                why = re.sub(r"^(Postprocessing:\s*)?(WARNING:\s*)?", "", _tool_message(exc))
                raise SongError(f"{url}: not audio ffmpeg can read ({why})") from None
            raise SongError(f"{url}: {_tool_message(exc)}") from None
        staged = _downloaded_file(info, tmp)
        if staged is None:
            raise SongError(f"{url}: yt-dlp reported success but wrote no audio file")
        meta = _Meta(
            title=str(info.get("track") or info.get("title") or ""),
            artist=_artist(info),
            source=url,
            source_id=None if generic else f"{info.get('extractor_key')}:{info.get('id')}",
            prefer_tags=generic,
        )
        if task is not None:
            task.check_cancelled()
        return _store(staged, folder, meta, min_duration_s, url)


def _downloaded_file(info: dict[str, Any] | None, tmp: Path) -> Path | None:
    for download in (info or {}).get("requested_downloads") or []:
        path = download.get("filepath")
        if path and Path(path).is_file():
            return Path(path)
    candidates = sorted(p for p in tmp.glob(f"*.{_AUDIO_CODEC}") if p.is_file())
    return candidates[0] if candidates else None


# --- many at once ---------------------------------------------------------------------------


def _expand(items: Sequence[str | Path]) -> list[tuple[str, str | Path | None, str | None]]:
    """(label, what to add, error) for every URL, file and audio file in the folders."""
    out: list[tuple[str, str | Path | None, str | None]] = []
    for item in items:
        if is_url(item):
            out.append((str(item).strip(), str(item).strip(), None))
            continue
        path = Path(item)
        if path.is_dir():
            files = list(iter_audio_files([path]))
            if not files:
                out.append((str(path), None, f"{path}: no audio files in this folder"))
            out.extend((str(f), f, None) for f in files)
        elif path.is_file():
            out.append((str(path), path, None))
        else:
            out.append((str(path), None, f"{path}: no such file or folder"))
    return out


def add_songs(
    items: Sequence[str | Path],
    folder: Path | str,
    task: TaskState | None = None,
    *,
    min_duration_s: float = MIN_DURATION_S,
    timeout_s: float = 30.0,
) -> list[SongResult]:
    """Add URLs, files and folders (their audio files) to the songs folder, in order.

    Every item gets a ``SongResult``; a failure is reported for that item and the rest go
    on. Progress counts items (a download moves it on as it goes). ``task.cancel()``
    raises ``Cancelled`` at the next progress report; the songs added before stay.
    """
    folder = Path(folder)
    task = task or TaskState()
    work = _expand(items)
    task.set_total(len(work), "adding songs")
    results: list[SongResult] = []
    for label, what, error in work:
        task.check_cancelled()
        task.set_message(f"adding {label}")
        if what is None:
            results.append(SongResult(label, False, error=error))
            task.advance(1.0)
            continue
        done = 0.0

        def on_fraction(fraction: float) -> None:
            nonlocal done
            step = 0.9 * fraction - done  # the last tenth: conversion and checks
            if step > 0:
                task.advance(step)
                done += step

        try:
            if isinstance(what, str):
                song = add_song_url(
                    what,
                    folder,
                    task,
                    min_duration_s=min_duration_s,
                    timeout_s=timeout_s,
                    on_fraction=on_fraction,
                )
            else:
                song = add_song_file(what, folder, min_duration_s=min_duration_s)
            results.append(SongResult(label, True, song=song))
        except Cancelled:
            raise
        except DuplicateSongError as exc:
            results.append(SongResult(label, False, song=exc.song, error=str(exc), duplicate=True))
        except SongError as exc:
            results.append(SongResult(label, False, error=str(exc)))
        except (AfpError, OSError) as exc:
            results.append(SongResult(label, False, error=f"{label}: {one_line(exc)}"))
        task.advance(1.0 - done)
    return results
