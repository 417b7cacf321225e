"""Adding songs: yt-dlp against a real HTTP server on 127.0.0.1, files and folders."""

from __future__ import annotations

import functools
import shutil
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from afp_core.errors import Cancelled
from afp_core.tasks import TaskState
from rig_app.session import SongEntry
from rig_app.songs import (
    SONGS_FILE,
    Song,
    SongError,
    SongResult,
    add_song_file,
    add_songs,
    load_songs,
)

pytestmark = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="ffmpeg not installed (apt-get install ffmpeg)"
)

RATE = 8000


def _song(seconds: float, frequency: float) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * frequency * t) * (1 + 0.2 * np.sin(t))).astype(np.float32)


class _Handler(SimpleHTTPRequestHandler):
    """Serves the folder; ``/slow/<name>`` trickles the file out in small chunks."""

    def log_message(self, format, *args) -> None:
        pass

    def do_GET(self) -> None:
        if not self.path.startswith("/slow/"):
            super().do_GET()
            return
        name = urllib.parse.unquote(self.path.removeprefix("/slow/"))
        data = (Path(self.directory) / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "audio/x-wav")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            for start in range(0, len(data), 16384):
                self.wfile.write(data[start : start + 16384])
                self.wfile.flush()
                time.sleep(0.02)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up: that is the point of the test


@pytest.fixture(scope="module")
def www(tmp_path_factory) -> Path:
    """The folder the server serves."""
    return tmp_path_factory.mktemp("www")


@pytest.fixture(scope="module")
def server(www) -> Iterator[str]:
    """Base URL of an HTTP server on 127.0.0.1 serving ``www``."""
    root = www
    sf.write(root / "Fancy Song.wav", _song(61.0, 440.0), RATE, subtype="PCM_16")
    shutil.copy(root / "Fancy Song.wav", root / "same-audio-elsewhere.wav")
    tagged = root / "tagged.flac"
    with sf.SoundFile(tagged, "w", RATE, 1, format="FLAC") as handle:
        handle.title = "Tagged Title"
        handle.artist = "Tagged Artist"
        handle.write(_song(62.0, 330.0))
    sf.write(root / "short.ogg", _song(10.0, 550.0), RATE)
    (root / "page.html").write_text("<html><head><title>No audio</title></head></html>")
    (root / "garbage.wav").write_bytes(np.random.default_rng(0).bytes(100_000))
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name != SONGS_FILE)


def _added(result: SongResult) -> Song:
    """The song an item added (it must have been)."""
    assert result.ok and result.song is not None, result.error
    return result.song


def _failed(result: SongResult) -> str:
    """Why an item was not added (it must not have been)."""
    assert not result.ok and result.error is not None, result
    return result.error


def test_url_is_downloaded_converted_and_stored(server, www, tmp_path):
    folder = tmp_path / "songs"
    progress: list[float] = []
    task = TaskState(lambda done, total, message: progress.append(done))

    [result] = add_songs([server + "Fancy%20Song.wav"], folder, task)

    song = _added(result)
    assert song.title == "Fancy Song"  # from the URL: a direct link has no other title
    assert song.source == server + "Fancy%20Song.wav"
    assert song.file.endswith(".flac")
    assert song.duration_s == pytest.approx(61.0)
    stored, rate = sf.read(folder / song.file, dtype="float32")
    assert rate == RATE and len(stored) == 61 * RATE
    original, _ = sf.read(www / "Fancy Song.wav", dtype="float32")
    np.testing.assert_array_equal(stored, original)  # FLAC keeps the audio exactly
    assert progress[-1] == 1.0
    assert load_songs(folder) == [song]
    assert _audio_files(folder) == [folder / song.file]  # no temporary files left
    entry = song.to_song_entry(folder, relative_to=tmp_path)
    assert entry == SongEntry(
        title="Fancy Song",
        source=song.source,
        file=f"songs/{song.file}",
        duration_s=song.duration_s,
    )


def test_duplicates_are_detected_by_url_and_by_audio(server, www, tmp_path):
    folder = tmp_path / "songs"
    first = add_songs([server + "Fancy%20Song.wav"], folder)[0]
    assert first.ok

    again, elsewhere = add_songs(
        [server + "Fancy%20Song.wav", server + "same-audio-elsewhere.wav"], folder
    )
    assert again.duplicate and again.song == first.song
    assert "same URL" in _failed(again)
    assert elsewhere.duplicate
    assert "same audio" in _failed(elsewhere)
    with pytest.raises(SongError, match="same audio"):
        add_song_file(www / "Fancy Song.wav", folder)
    assert len(load_songs(folder)) == 1
    assert len(_audio_files(folder)) == 1


def test_failures_are_reported_and_the_other_songs_still_added(server, tmp_path):
    folder = tmp_path / "songs"
    missing, tagged, short, page, garbage = add_songs(
        [
            server + "not-there.wav",
            server + "tagged.flac",
            server + "short.ogg",
            server + "page.html",
            server + "garbage.wav",
        ],
        folder,
    )
    assert "404" in _failed(missing) and "\n" not in _failed(missing)
    assert (_added(tagged).title, _added(tagged).artist) == ("Tagged Title", "Tagged Artist")
    assert "10.0 s long, shorter than the minimum of 60 s" in _failed(short)
    assert _failed(page).startswith(server + "page.html: ")
    assert "not audio ffmpeg can read" in _failed(garbage)
    assert [s.title for s in load_songs(folder)] == ["Tagged Title"]
    assert _audio_files(folder) == [folder / _added(tagged).file]


def test_minimum_duration_is_configurable(server, tmp_path):
    [result] = add_songs([server + "short.ogg"], tmp_path / "songs", min_duration_s=5.0)
    assert _added(result).duration_s == pytest.approx(10.0)


def test_cancel_mid_download_leaves_no_partial_file(server, tmp_path):
    folder = tmp_path / "songs"
    add_songs([server + "tagged.flac"], folder)
    before = (folder / SONGS_FILE).read_text()
    task = TaskState()
    task._on_progress = lambda done, total, message: task.cancel() if 0 < done < 1 else None

    with pytest.raises(Cancelled):
        add_songs([server + "slow/Fancy%20Song.wav", server + "short.ogg"], folder, task)

    assert (folder / SONGS_FILE).read_text() == before
    assert len(_audio_files(folder)) == 1  # only the song added before


def test_files_and_folders_are_added_with_tags_or_file_names(tmp_path):
    source = tmp_path / "music"
    (source / "sub").mkdir(parents=True)
    sf.write(source / "Some Artist - Some Title.wav", _song(61.0, 220.0), RATE)
    with sf.SoundFile(source / "sub" / "x.flac", "w", RATE, 1, format="FLAC") as handle:
        handle.title = "From Tags"
        handle.write(_song(61.0, 660.0))
    (source / "notes.txt").write_text("not a song")
    m4a = tmp_path / "converted.m4a"  # a format libsndfile cannot read: ffmpeg converts it
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
         "sine=frequency=500:sample_rate=8000:duration=61", "-c:a", "aac", str(m4a)],
        check=True,
    )  # fmt: skip
    folder = tmp_path / "songs"

    results = add_songs([source, m4a, tmp_path / "nowhere.wav"], folder)

    assert [r.ok for r in results] == [True, True, True, False]
    named, tagged, converted = (_added(r) for r in results[:3])
    assert (named.title, named.artist) == ("Some Title", "Some Artist")
    assert tagged.title == "From Tags"
    assert converted.title == "converted" and converted.file.endswith(".flac")
    assert converted.duration_s == pytest.approx(61.0, abs=0.1)
    assert "no such file or folder" in _failed(results[3])
    assert len(load_songs(folder)) == 3
