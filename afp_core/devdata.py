"""Where the development audio lives (docs/design.md §6): Debian packages of music, speech.

``datasets/fetch_debian_audio.sh`` unpacks them into ``datasets/cache/debian``; packages
installed system-wide with apt-get are found too. Only this audio is used for training and
development; other audio is kept for independent evaluation.
"""

from __future__ import annotations

import os
from pathlib import Path

from afp_core.audio import iter_audio_files

REPO_ROOT = Path(__file__).resolve().parents[1]

# package -> folder inside the package's file tree
MUSIC_COLLECTIONS: dict[str, str] = {
    "wesnoth-1.16-music": "usr/share/games/wesnoth/1.16/data/core/music",
    "planetblupi-music-ogg": "usr/share/planetblupi/music",
    "drascula-music": "usr/share/scummvm/drascula/audio",
    "singularity-music": "usr/share/games/singularity/music",
    "asc-music": "usr/share/games/asc/music",
}
SPEECH_COLLECTIONS: dict[str, str] = {
    "asterisk-core-sounds-en-wav": "usr/share/asterisk/sounds/en_US_f_Allison",
}
INSTALL_HINT = (
    "no development audio found: run `./dev data` (or `bash datasets/fetch_debian_audio.sh`), "
    "or `apt-get install " + " ".join(MUSIC_COLLECTIONS) + "`, or pass your own folder"
)


def data_roots() -> list[Path]:
    """Folders searched for unpacked packages: $AFP_DATA_DIR, the repo cache, then /."""
    roots = []
    if env := os.environ.get("AFP_DATA_DIR"):
        roots.append(Path(env))
    roots += [REPO_ROOT / "datasets" / "cache" / "debian", Path("/")]
    return roots


def find_collection_files(collections: dict[str, str]) -> list[Path]:
    """Audio files of every collection found in the first root that has it."""
    files: list[Path] = []
    for folder in collections.values():
        for root in data_roots():
            path = root / folder
            if path.is_dir():
                files.extend(iter_audio_files([path]))
                break
    return files


def find_training_music() -> list[Path]:
    """Folders of the training-only music (``datasets/fetch_training_audio.sh``) that exist."""
    root = REPO_ROOT / "datasets" / "cache" / "training-audio" / "music"
    return sorted(p for p in root.glob("*") if p.is_dir())


def find_dev_music() -> list[Path]:
    """All development music tracks, in a stable order."""
    return find_collection_files(MUSIC_COLLECTIONS)


def find_dev_speech() -> list[Path]:
    """Speech recordings (for babble noise)."""
    return find_collection_files(SPEECH_COLLECTIONS)
