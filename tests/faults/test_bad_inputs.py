"""A corpus of bad and odd files indexed by a real ``afp index``, both database kinds:
each bad file is one clear line naming it, the good ones (24-bit 96 kHz stereo, a name
with spaces, unicode and shell characters) are indexed, and nothing crashes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy import signal

from tests.conftest import synthesise_song

RATE = 22050
SHELL_NAME = "name ü $(touch pwned); 'x' `id`.wav"
# file -> what its one line must say
BAD = {
    "zero.wav": "skipped: {}: empty file (0 bytes)",
    "truncated.wav": "warning: {}: truncated: the header says 12.0 s, the file holds 4.0 s",
    "nan.wav": "skipped: {}: NaN or infinite samples at 0.05 s",
    "short.wav": "skipped: {}: 0.50 s is shorter than",
    "text.mp3": "skipped: {}: not an audio file the decoder recognises",
    "broken.wav": "skipped: {}: a broken symbolic link (to ",
    "loop.wav": "skipped: {}: a symbolic link that loops",
    "fifo.wav": "skipped: {}: not a regular file",
}
GOOD = {"truncated.wav", "flac-named.wav", "garbage-after.wav", "hires.wav", SHELL_NAME}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    song = synthesise_song(7, 12.0)
    (folder / "zero.wav").write_bytes(b"")
    sf.write(folder / "whole.wav", song, RATE)
    whole = (folder / "whole.wav").read_bytes()
    (folder / "truncated.wav").write_bytes(whole[: len(whole) // 3])
    (folder / "whole.wav").unlink()
    sf.write(folder / "flac-named.wav", synthesise_song(8, 12.0), RATE, format="FLAC")
    sf.write(folder / "garbage-after.wav", synthesise_song(9, 12.0), RATE)
    with (folder / "garbage-after.wav").open("ab") as handle:
        handle.write(np.random.default_rng(0).bytes(5000))
    nan = song.astype(np.float32)
    nan[1000:2000] = np.nan
    sf.write(folder / "nan.wav", nan, RATE, subtype="FLOAT")
    sf.write(folder / "short.wav", song[: RATE // 2], RATE)
    hires = signal.resample_poly(synthesise_song(10, 12.0), 320, 73)
    sf.write(folder / "hires.wav", np.stack([hires, 0.5 * hires], 1) * 0.5, 96000, subtype="PCM_24")
    sf.write(folder / SHELL_NAME, synthesise_song(11, 12.0), RATE)
    (folder / "text.mp3").write_text("not audio\n" * 100)
    (folder / "broken.wav").symlink_to(folder / "nowhere.wav")
    (folder / "loop.wav").symlink_to(folder / "loop.wav")
    os.mkfifo(folder / "fifo.wav")  # a decoder would wait on it for ever
    return folder


@pytest.mark.parametrize("kind", ["neural", "landmark"])
def test_every_bad_file_is_one_clear_line(corpus, untrained_checkpoint, tmp_path, ledger, kind):
    db = tmp_path / "db"
    extra = ["--landmark"] if kind == "landmark" else ["--model", str(untrained_checkpoint)]
    done = subprocess.run(
        [sys.executable, "-m", "afp_core.cli", "index", str(db), str(corpus), "--quiet", *extra],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    crashed = done.returncode not in (0, 1) or "Traceback" in done.stderr
    lines = done.stderr.splitlines()
    for name, expected in BAD.items():
        mine = [line for line in lines if f"{corpus / name}:" in line]
        clear = len(mine) == 1 and mine[0].startswith(expected.format(corpus / name))
        ledger.bad_input(f"{kind}: {name}", clear, crashed)
        assert clear, (name, mine)
    assert not crashed and done.returncode == 0, done.stderr
    assert f"added {len(GOOD)} songs (1 with a warning)" in done.stdout
    assert len(lines) == len(BAD), lines  # nothing else: no decoder or faiss chatter
    assert not (tmp_path / "pwned").exists() and not (corpus / "pwned").exists()
