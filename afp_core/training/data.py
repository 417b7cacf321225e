"""Training data: songs, splits, decoded audio, noise and IR collections, batches.

- Songs come from files/folders (``songs_from_paths``) or an FMA full/large layout
  (``load_fma``); ``split_items`` splits them BY SONG into train/validation/test with a
  seed, independent of the order they were found in.
- ``decode_songs`` decodes each song once to 8 kHz int16 and keeps it in an ``.npy``
  cache keyed by the file's checksum; training reads memory maps of those files.
- Noise clips (a folder of AudioSet-derived clips, the development speech, synthetic
  noises) and impulse responses (MicIRP and MIT WAV folders, Aachen AIR ``.mat`` files,
  the synthetic collection) are converted once to 8 kHz mono WAV (``prepare_clips``),
  each collection with its own split.
- ``ContrastiveBatches`` is the paper's Algorithm 1 as an ``IterableDataset``: each batch
  holds N clean windows from N different songs (windows under the energy floor are
  drawn again) and their augmented twins. Every batch is a pure function of (seed, rank,
  epoch, step), so the data order is the same with any number of workers, and a resumed
  run continues with exactly the batches it would have seen.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
import math
import os
import random
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from afp_core.audio import AUDIO_EXTENSIONS, iter_audio_files, load_audio, write_audio_atomic
from afp_core.augment import NOISE_KINDS, Augmenter, draw_spec_masks, synthesise_noise
from afp_core.config import AugmentConfig
from afp_core.errors import AfpError, AudioError, ConfigError
from afp_core.fileutil import atomic_save_npy, atomic_write_text, file_sha256
from afp_core.training.config import TrainConfig, resolve_data_path
from afp_core.training.irs import write_synthetic_irs

Note = Callable[[str], None]
Progress = Callable[[int, int, str], None]

INT16_SCALE = 32768.0
IR_MAX_S = 1.5
CLIP_MIN_S = 0.1


def _ignore(_: str) -> None:
    pass


# --- songs -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SongRef:
    """One song: a stable key (used for splitting), a title and its file."""

    key: str
    title: str
    path: Path
    artist: str = ""


def songs_from_paths(paths: Iterable[Path | str]) -> list[SongRef]:
    """Songs in audio files and folders (recursive); the key is the resolved path."""
    return [SongRef(key=str(p.resolve()), title=p.stem, path=p) for p in iter_audio_files(paths)]


def read_fma_tracks(path: Path | str) -> dict[int, tuple[str, str]]:
    """``fma_metadata/tracks.csv`` -> {track id: (title, artist name)}.

    The file has a 2-row header (``track``/``title``, ``artist``/``name``...) followed,
    in the published file, by a ``track_id`` row naming the index column.
    """
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise AfpError(f"{path}: cannot read FMA metadata: {exc.strerror or exc}") from None
    with handle:
        reader = csv.reader(handle)
        try:
            top, sub = next(reader), next(reader)
        except StopIteration:
            raise AfpError(f"{path}: not an FMA tracks.csv (no 2-row header)") from None
        columns = list(zip(top, sub, strict=False))
        try:
            title_col = columns.index(("track", "title"))
        except ValueError:
            raise AfpError(f"{path}: not an FMA tracks.csv (no track/title column)") from None
        artist_col = columns.index(("artist", "name")) if ("artist", "name") in columns else None
        tracks: dict[int, tuple[str, str]] = {}
        for row in reader:
            if not row or not row[0].strip().isdigit():
                continue  # the "track_id" index-name row, blank lines
            title = row[title_col] if title_col < len(row) else ""
            artist = row[artist_col] if artist_col is not None and artist_col < len(row) else ""
            tracks[int(row[0])] = (title, artist)
    return tracks


def load_fma(audio_root: Path | str, metadata: Path | str | None = None) -> list[SongRef]:
    """Songs of an FMA full/large folder (``fma_full/000/000002.mp3``), titled from tracks.csv.

    The track id is the file name; files whose name is not a number are skipped.
    """
    root = Path(audio_root)
    if not root.is_dir():
        raise AfpError(f"{root}: no such FMA audio folder")
    tracks = read_fma_tracks(metadata) if metadata is not None else {}
    songs = []
    for path in iter_audio_files([root]):
        if not path.stem.isdigit():
            continue
        track_id = int(path.stem)
        title, artist = tracks.get(track_id, ("", ""))
        songs.append(
            SongRef(key=f"fma:{track_id}", title=title or path.stem, path=path, artist=artist)
        )
    if not songs:
        raise AfpError(f"{root}: no FMA audio files (expected NNN/NNNNNN.mp3)")
    return songs


@dataclasses.dataclass(frozen=True)
class Split:
    """Train / validation / test shares of a collection."""

    train: tuple[Any, ...]
    validation: tuple[Any, ...]
    test: tuple[Any, ...] = ()

    def counts(self) -> dict[str, int]:
        return {
            "train": len(self.train),
            "validation": len(self.validation),
            "test": len(self.test),
        }


def split_items(
    items: Sequence[Any],
    val_share: float,
    test_share: float,
    seed: int,
    key: Callable[[Any], str] = str,
) -> Split:
    """Split ``items`` by a seeded permutation of their sorted keys.

    Each non-zero share gets at least one item when there are at least three items; the
    result does not depend on the order of ``items``.
    """
    ordered = sorted(items, key=key)
    n = len(ordered)
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [ordered[i] for i in order]

    def count(share: float) -> int:
        k = round(n * share)
        return max(k, 1) if share > 0 and n >= 3 else k

    n_val, n_test = count(val_share), count(test_share)
    n_val = min(n_val, max(n - 1, 0))
    n_test = min(n_test, max(n - 1 - n_val, 0))
    return Split(
        validation=tuple(shuffled[:n_val]),
        test=tuple(shuffled[n_val : n_val + n_test]),
        train=tuple(shuffled[n_val + n_test :]),
    )


# --- decoding and caches ---------------------------------------------------------------------


class ChecksumMemo:
    """sha256 of files, remembered by (path, size, mtime) in a JSON file in the cache."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.changed = False
        try:
            self.entries: dict[str, list] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def sha256(self, file: Path) -> str:
        stat = file.stat()
        name = str(file.resolve())
        entry = self.entries.get(name)
        if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            return str(entry[2])
        digest = file_sha256(file)
        self.entries[name] = [stat.st_size, stat.st_mtime_ns, digest]
        self.changed = True
        return digest

    def save(self) -> None:
        if self.changed:
            atomic_write_text(self.path, json.dumps(self.entries, indent=0, sort_keys=True))
            self.changed = False


@dataclasses.dataclass(frozen=True)
class DecodedSong:
    """A song decoded to int16 at the training rate, cached as ``.npy``."""

    ref: SongRef
    sha256: str
    cache: Path
    samples: int

    def load(self) -> np.ndarray:
        """The int16 samples as a read-only memory map."""
        return np.load(self.cache, mmap_mode="r")


def decode_songs(
    songs: Sequence[SongRef],
    cache_dir: Path,
    sample_rate: int = 8000,
    min_samples: int = 1,
    on_note: Note = _ignore,
    on_progress: Progress | None = None,
) -> list[DecodedSong]:
    """Decode each song once to ``cache_dir/audio/<sha256>-<rate>.npy`` (int16, mono).

    Unreadable songs and songs shorter than ``min_samples`` are left out with a note.
    """
    audio_dir = cache_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    memo = ChecksumMemo(cache_dir / "checksums.json")
    decoded = []
    try:
        for i, song in enumerate(songs):
            if on_progress is not None:
                on_progress(i, len(songs), song.path.name)
            try:
                digest = memo.sha256(song.path)
            except OSError as exc:
                on_note(f"skipped {song.path}: cannot read ({exc.strerror or exc})")
                continue
            cache = audio_dir / f"{digest}-{sample_rate}.npy"
            if not cache.is_file():
                try:
                    audio = load_audio(song.path, sample_rate)
                except AudioError as exc:
                    on_note(f"skipped: {exc}")
                    continue
                pcm = np.round(np.clip(audio, -1.0, 32767 / INT16_SCALE) * INT16_SCALE)
                # every later run trusts a cache file that is there: whole or absent
                atomic_save_npy(cache, pcm.astype(np.int16))
            samples = int(np.load(cache, mmap_mode="r").shape[0])
            if samples < min_samples:
                on_note(
                    f"skipped {song.path}: {samples / sample_rate:.2f} s is shorter than a "
                    f"training excerpt ({min_samples / sample_rate:.2f} s)"
                )
                continue
            decoded.append(DecodedSong(ref=song, sha256=digest, cache=cache, samples=samples))
    finally:
        memo.save()
    if on_progress is not None:
        on_progress(len(songs), len(songs), "")
    return decoded


def checksum_list_hash(songs: Iterable[DecodedSong]) -> str:
    """sha256 over the sorted content checksums: identifies a song set in metadata."""
    text = "\n".join(sorted(s.sha256 for s in songs))
    return hashlib.sha256(text.encode()).hexdigest()


# --- noise and impulse-response collections -------------------------------------------------


def find_clips(path: Path | str, suffixes: frozenset[str] = AUDIO_EXTENSIONS) -> list[Path]:
    """Files with ``suffixes`` in a folder (recursive, sorted), or the file itself."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise AfpError(f"{path}: no such file or folder")
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [
            Path(root, f)
            for f in files
            if not f.startswith(".") and Path(f).suffix.lower() in suffixes
        ]
    return sorted(found, key=lambda p: p.parts)


def find_noise_clips(folder: Path | str) -> list[Path]:
    """A folder of background-noise clips (e.g. AudioSet-derived), any audio format."""
    return _non_empty(find_clips(folder), folder, "noise clips")


def find_micirp(folder: Path | str) -> list[Path]:
    """MicIRP: a folder of microphone impulse-response WAV files."""
    return _non_empty(find_clips(folder, frozenset({".wav"})), folder, "MicIRP WAV files")


def find_mit_irs(folder: Path | str) -> list[Path]:
    """MIT IR survey: a folder of room impulse-response WAV files."""
    return _non_empty(find_clips(folder, frozenset({".wav"})), folder, "MIT IR WAV files")


def find_air_irs(folder: Path | str) -> list[Path]:
    """Aachen AIR: ``.mat`` files holding ``h_air`` (and ``air_info.fs``)."""
    return _non_empty(find_clips(folder, frozenset({".mat"})), folder, "AIR .mat files")


def find_ir_files(path: Path | str) -> list[Path]:
    """Impulse responses in any of the supported layouts: audio files and AIR ``.mat``."""
    return _non_empty(
        find_clips(path, AUDIO_EXTENSIONS | {".mat"}), path, "impulse responses (audio or .mat)"
    )


def _non_empty(files: list[Path], folder: Path | str, what: str) -> list[Path]:
    if not files:
        raise AudioError(f"{folder}: no {what} found")
    return files


def load_air_ir(path: Path | str) -> tuple[np.ndarray, int]:
    """An Aachen AIR impulse response: (float32 samples, sample rate; 48 kHz if unnamed)."""
    path = Path(path)
    try:
        data = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except (OSError, ValueError, TypeError, NotImplementedError) as exc:
        raise AudioError(f"{path}: not a MATLAB file scipy can read ({exc})") from None
    if "h_air" not in data:
        raise AudioError(f"{path}: no 'h_air' variable (not an AIR impulse response)")
    ir = np.asarray(data["h_air"], dtype=np.float64).squeeze()
    if ir.ndim != 1 or ir.size == 0:
        raise AudioError(f"{path}: 'h_air' is not a non-empty vector (shape {ir.shape})")
    rate = 48000
    info = data.get("air_info")
    fs = getattr(info, "fs", None)
    if fs is not None and np.size(fs) == 1 and float(fs) > 0:
        rate = int(float(fs))
    return ir.astype(np.float32), rate


def _read_clip(path: Path, sample_rate: int) -> np.ndarray:
    if path.suffix.lower() == ".mat":
        from afp_core.audio import resample

        ir, rate = load_air_ir(path)
        return resample(ir, rate, sample_rate)
    return load_audio(path, sample_rate)


def _shape_ir(ir: np.ndarray, sample_rate: int) -> np.ndarray:
    """IR from 1 ms before its first strong sample, at most IR_MAX_S long, peak 1."""
    peak = float(np.max(np.abs(ir))) if ir.size else 0.0
    if peak <= 0:
        return ir[:0]
    first = int(np.argmax(np.abs(ir) > 0.1 * peak))
    start = max(0, first - sample_rate // 1000)
    ir = ir[start : start + round(IR_MAX_S * sample_rate)]
    return (ir / peak).astype(np.float32)


def prepare_clips(
    files: Sequence[Path],
    cache_dir: Path,
    kind: str,
    sample_rate: int = 8000,
    memo: ChecksumMemo | None = None,
    on_note: Note = _ignore,
) -> list[Path]:
    """Each file as 8 kHz mono WAV in ``cache_dir/clips`` (once, keyed by checksum).

    ``kind`` "noise" or "ir" (IRs are trimmed before the direct path, cut to 1.5 s and
    peak-normalised, and kept as float). Unreadable, empty or silent files are left out
    with a note; the caller decides what an empty result means.
    """
    if kind not in ("noise", "ir"):
        raise ValueError(f"kind must be 'noise' or 'ir', got {kind!r}")
    out_dir = cache_dir / "clips"
    out_dir.mkdir(parents=True, exist_ok=True)
    own_memo = memo is None
    memo = memo or ChecksumMemo(cache_dir / "checksums.json")
    prepared = []
    try:
        for path in files:
            try:
                digest = memo.sha256(path)
            except OSError as exc:
                on_note(f"skipped {path}: cannot read ({exc.strerror or exc})")
                continue
            out = out_dir / f"{digest}-{kind}-{sample_rate}.wav"
            if not out.is_file():
                try:
                    clip = _read_clip(path, sample_rate)
                except AudioError as exc:
                    on_note(f"skipped: {exc}")
                    continue
                if kind == "ir":
                    clip = _shape_ir(clip, sample_rate)
                rms = float(np.sqrt(np.mean(np.square(clip, dtype=np.float64)))) if clip.size else 0
                if clip.size < (1 if kind == "ir" else CLIP_MIN_S * sample_rate) or rms < 1e-6:
                    on_note(f"skipped {path}: empty or silent")
                    continue
                if kind == "noise":
                    clip = clip / max(1.0, float(np.max(np.abs(clip))))
                write_audio_atomic(out, clip, sample_rate, "FLOAT" if kind == "ir" else "PCM_16")
            prepared.append(out)
    finally:
        if own_memo:
            memo.save()
    return prepared


def write_synthetic_noises(
    folder: Path, count: int, seed: int = 0, sample_rate: int = 8000, duration_s: float = 10.0
) -> list[Path]:
    """``count`` synthetic noise clips (kinds in turn) as WAV in ``folder``, written once."""
    request = {"version": 1, "count": count, "seed": seed, "rate": sample_rate, "s": duration_s}
    manifest = folder / "manifest.json"
    paths = [folder / f"{NOISE_KINDS[i % len(NOISE_KINDS)]}-{i:03d}.wav" for i in range(count)]
    try:
        done = json.loads(manifest.read_text()) == request
    except (OSError, ValueError):
        done = False
    if done and all(p.is_file() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(paths):
        rng = np.random.default_rng([seed, i])
        noise = synthesise_noise(NOISE_KINDS[i % len(NOISE_KINDS)], duration_s, sample_rate, rng)
        write_audio_atomic(path, 0.25 * noise / max(1.0, 0.25 * np.max(np.abs(noise))), sample_rate)
    atomic_write_text(manifest, json.dumps(request) + "\n")
    return paths


# --- the whole data set of a run -----------------------------------------------------------


@dataclasses.dataclass
class TrainingData:
    """Everything a run reads: decoded songs and prepared noise/IR files, all split."""

    songs: Split  # of DecodedSong
    noise: Split  # of Path (prepared WAV)
    room_irs: Split
    mic_irs: Split
    split_seed: int
    sources: dict[str, Any]
    sample_rate: int = 8000

    def describe(self) -> dict[str, Any]:
        """Plain description for checkpoint metadata and the model card."""
        hours = {
            name: round(
                sum(s.samples for s in getattr(self.songs, name)) / self.sample_rate / 3600, 3
            )
            for name in ("train", "validation", "test")
        }
        return {
            "songs": self.songs.counts(),
            "song_hours": hours,
            "split_seed": self.split_seed,
            "train_checksums_sha256": checksum_list_hash(self.songs.train),
            "validation_checksums_sha256": checksum_list_hash(self.songs.validation),
            "test_checksums_sha256": checksum_list_hash(self.songs.test),
            "validation_titles": [s.ref.title for s in self.songs.validation],
            "test_titles": [s.ref.title for s in self.songs.test],
            "noise_clips": self.noise.counts(),
            "room_irs": self.room_irs.counts(),
            "mic_irs": self.mic_irs.counts(),
            "sources": self.sources,
        }


def excerpt_layout(augment: AugmentConfig, sample_rate: int, window: int) -> tuple[int, int]:
    """(excerpt samples, anchor offset) of the pipelines ``make_augmenter`` builds.

    An excerpt is pre-roll + margin + window + margin, the margin being the largest
    training shift or the retrieval check's 0.2 s, whichever is larger.
    """
    margin = max(round(augment.shift_max_s * sample_rate), round(RETRIEVAL_SHIFT_S * sample_rate))
    preroll = round(augment.preroll_s * sample_rate)
    return preroll + 2 * margin + window, preroll + margin


def prepare_training_data(
    config: TrainConfig,
    on_note: Note = _ignore,
    on_progress: Progress | None = None,
    rank: int = 0,
    world: int = 1,
) -> TrainingData:
    """Find, split, decode and prepare all audio ``config`` names; fail early and clearly."""
    from afp_core.devdata import INSTALL_HINT, find_dev_music, find_dev_speech

    data = config.data
    n = config.training.batch_size
    sample_rate = config.model.audio.sample_rate
    window = config.model.audio.window
    cache_dir = resolve_data_path(data.cache_dir)
    sources: dict[str, Any] = {}

    # Songs: find and split first, so a too-small collection fails before decoding.
    songs: list[SongRef] = []
    if data.fma_audio:
        meta = resolve_data_path(data.fma_metadata) if data.fma_metadata else None
        songs += load_fma(resolve_data_path(data.fma_audio), meta)
        sources["fma_audio"] = data.fma_audio
    if data.songs:
        songs += songs_from_paths(resolve_data_path(p) for p in data.songs)
        sources["songs"] = list(data.songs)
    if not data.fma_audio and not data.songs:
        songs = songs_from_paths(find_dev_music())
        if not songs:
            raise AfpError(INSTALL_HINT)
        sources["songs"] = "development music (afp_core.devdata)"
    split = split_items(
        songs, data.val_share, data.test_share, data.split_seed, key=lambda s: s.key
    )
    if data.train_only_songs:
        held_out = {s.path.stem.casefold() for s in (*split.validation, *split.test)}
        extra = songs_from_paths(resolve_data_path(p) for p in data.train_only_songs)
        dropped = [s for s in extra if s.path.stem.casefold() in held_out]
        for song in dropped:
            on_note(f"{song.path}: left out of training (a held-out song has its name)")
        kept = [s for s in extra if s.path.stem.casefold() not in held_out]
        split = dataclasses.replace(split, train=(*split.train, *kept))
        songs += kept
        sources["train_only_songs"] = list(data.train_only_songs)
    repeat = config.training.repeat_songs
    _check_enough_songs(len(split.train), n, len(songs), world, repeat=repeat)
    excerpt, _ = excerpt_layout(config.augmentation, sample_rate, window)
    decoded = {
        name: decode_songs(
            getattr(split, name),
            cache_dir,
            sample_rate,
            min_samples=excerpt,
            on_note=on_note,
            on_progress=on_progress if name == "train" else None,
        )
        for name in ("train", "validation", "test")
    }
    _check_enough_songs(len(decoded["train"]), n, len(songs), world, "usable ", repeat)
    song_split = Split(
        train=tuple(decoded["train"]),
        validation=tuple(decoded["validation"]),
        test=tuple(decoded["test"]),
    )

    # Noise: the configured folders, else the development speech; plus synthetic clips.
    memo = ChecksumMemo(cache_dir / "checksums.json")
    noise_files: list[Path] = []
    if data.noise:
        for item in data.noise:
            found = prepare_clips(
                find_noise_clips(resolve_data_path(item)),
                cache_dir,
                "noise",
                sample_rate,
                memo,
                on_note,
            )
            if not found:
                raise AudioError(f"{item}: no readable noise clips")
            noise_files += found
        sources["noise"] = list(data.noise)
    else:
        speech = find_dev_speech()
        noise_files += prepare_clips(speech, cache_dir, "noise", sample_rate, memo, on_note)
        sources["noise"] = f"development speech ({len(speech)} prompts)"
    if data.synthetic_noise:
        folder = cache_dir / f"synthetic-noise-s{data.split_seed}"
        noise_files += write_synthetic_noises(folder, data.synthetic_noise, data.split_seed)
        sources["synthetic_noise"] = data.synthetic_noise
    noise_split = split_items(
        noise_files, data.noise_val_share, data.noise_test_share, data.split_seed
    )

    # Impulse responses: configured folders, else the synthetic collection.
    if data.room_irs or data.mic_irs:
        rooms = _prepare_irs(data.room_irs, cache_dir, sample_rate, memo, on_note)
        mics = _prepare_irs(data.mic_irs, cache_dir, sample_rate, memo, on_note)
        sources["room_irs"], sources["mic_irs"] = list(data.room_irs), list(data.mic_irs)
    else:
        collection = write_synthetic_irs(
            cache_dir / f"synthetic-irs-s{data.split_seed}",
            rooms=data.synthetic_rooms,
            mics=data.synthetic_mics,
            seed=data.split_seed,
            sample_rate=sample_rate,
        )
        rooms, mics = list(collection.room), list(collection.mic)
        sources["irs"] = f"synthetic ({len(rooms)} rooms, {len(mics)} microphones)"
    memo.save()
    room_split = split_items(rooms, data.ir_val_share, 0.0, data.split_seed)
    mic_split = split_items(mics, data.ir_val_share, 0.0, data.split_seed)
    return TrainingData(
        songs=song_split,
        noise=noise_split,
        room_irs=room_split,
        mic_irs=mic_split,
        split_seed=data.split_seed,
        sources=sources,
        sample_rate=sample_rate,
    )


def _prepare_irs(
    items: Sequence[str], cache_dir: Path, sample_rate: int, memo: ChecksumMemo, on_note: Note
) -> list[Path]:
    prepared = []
    for item in items:
        found = prepare_clips(
            find_ir_files(resolve_data_path(item)), cache_dir, "ir", sample_rate, memo, on_note
        )
        if not found:
            raise AudioError(f"{item}: no readable impulse responses")
        prepared += found
    return prepared


def _check_enough_songs(
    available: int, n: int, total: int, world: int = 1, what: str = "", repeat: bool = False
) -> None:
    per_rank = available // max(world, 1)
    if per_rank < (2 if repeat else n):
        ranks = f" split over {world} processes ({per_rank} each)" if world > 1 else ""
        needed = "at least 2" if repeat else f"N={n} different"
        raise ConfigError(
            f"training.batch_size: a batch needs {needed} songs, but there are only "
            f"{available} {what}training songs{ranks} (of {total} songs found); lower "
            f"training.batch_size to at most {per_rank}, set training.repeat_songs, "
            "or add songs"
        )


# --- Algorithm 1: batches of N windows from N different songs ------------------------------


class SongPool:
    """Draws clean excerpts from int16 songs, N different songs at a time.

    Songs are opened lazily as memory maps (per process, so workers share the page cache).
    A song is drawn with probability proportional to the excerpts it holds (so every
    window of the collection is about as likely); the anchor window of an excerpt must
    have ``sum(x^2) > energy_floor`` on float audio, else another position (then another
    song) is drawn.
    """

    def __init__(
        self,
        songs: Sequence[DecodedSong],
        excerpt: int,
        anchor_offset: int,
        window: int,
        energy_floor: float = 1.0,
        tries: int = 20,
    ) -> None:
        self.songs = tuple(songs)
        self.excerpt = excerpt
        self.anchor_offset = anchor_offset
        self.window = window
        self.energy_floor = energy_floor
        self.tries = tries
        positions = np.array([max(s.samples - excerpt + 1, 0) for s in self.songs], dtype=float)
        self.weights = positions / positions.sum() if positions.sum() > 0 else positions
        self._audio: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.songs)

    @property
    def audio(self) -> list[np.ndarray]:
        if self._audio is None:
            self._audio = [s.load() for s in self.songs]
        return self._audio

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_audio"] = None  # reopened in the receiving process
        return state

    def total_windows(self, hop: int) -> int:
        """Windows of ``hop`` in all songs (what one pass over the data means)."""
        return sum(max(0, (s.samples - self.window) // hop + 1) for s in self.songs)

    def loud_enough(self, window: np.ndarray) -> bool:
        x = window.astype(np.float64) / INT16_SCALE
        return float(np.dot(x, x)) > self.energy_floor

    def draw(
        self, n: int, rng: np.random.Generator, repeat: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(excerpts (n, excerpt) float32, song indices (n,), excerpt starts (n,)).

        The songs differ; with ``repeat``, once every song has given a window, songs drawn
        again by length fill the rest (a batch of at most N different songs is drawn
        exactly as without ``repeat``).
        """
        usable = int(np.count_nonzero(self.weights))
        needed = 2 if repeat else n
        if usable < needed:
            raise AfpError(f"a batch needs {needed} different songs, only {usable} are long enough")
        order: Iterable[int] = rng.choice(
            len(self.songs), size=usable, replace=False, p=self.weights
        )
        if repeat and usable < n:
            again = rng.choice(len(self.songs), size=self.tries * n, replace=True, p=self.weights)
            order = itertools.chain(order, again)
        excerpts = np.empty((n, self.excerpt), dtype=np.float32)
        chosen: list[int] = []
        starts: list[int] = []
        quiet: set[int] = set()
        for index in map(int, order):
            start = None if index in quiet else self._draw_start(index, rng)
            if start is None:
                quiet.add(index)
                continue  # no loud window found in this song: the next song stands in
            audio = self.audio[index]
            excerpts[len(chosen)] = audio[start : start + self.excerpt] / INT16_SCALE
            chosen.append(index)
            starts.append(start)
            if len(chosen) == n:
                return excerpts, np.array(chosen), np.array(starts)
        raise AfpError(
            f"only {len(chosen)} songs have windows above the energy floor "
            f"({self.energy_floor}); a batch needs {n}"
        )

    def _draw_start(self, index: int, rng: np.random.Generator) -> int | None:
        audio = self.audio[index]
        last = len(audio) - self.excerpt
        for _ in range(self.tries):
            start = int(rng.integers(0, last + 1))
            anchor = audio[start + self.anchor_offset : start + self.anchor_offset + self.window]
            if self.loud_enough(anchor):
                return start
        return None


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """What the batches look like (shared by training and validation batches)."""

    n: int
    sample_rate: int
    window: int
    n_freq: int
    n_time: int
    repeat_songs: bool = False


class ContrastiveBatches(IterableDataset):
    """Algorithm 1 as an iterable data set: ``steps`` batches per epoch.

    Each item is one whole batch: ``anchors`` and ``positives`` (N, window) float32,
    ``masks`` (N, 4) int64 spectrogram masks for the positives (all widths zero in the
    batches without masking), ``songs`` (N,) pool indices and ``step``. Batch ``b`` of
    epoch ``e`` is drawn from ``default_rng([seed, rank, e, b])``; worker ``w`` of ``W``
    makes batches ``b = w, w + W, ...`` (the loader interleaves them back in order).
    The augmentation pipeline is built once per worker process.
    """

    def __init__(
        self,
        pool: SongPool,
        augment: AugmentConfig,
        spec: BatchSpec,
        steps: int,
        seed: int,
        noise_files: Sequence[Path] = (),
        room_ir_files: Sequence[Path] = (),
        mic_ir_files: Sequence[Path] = (),
        rank: int = 0,
    ) -> None:
        super().__init__()
        if len(pool) < spec.n:
            _check_enough_songs(len(pool), spec.n, len(pool), repeat=spec.repeat_songs)
        self.pool = pool
        self.augment = augment
        self.spec = spec
        self.steps = steps
        self.seed = seed
        self.rank = rank
        self.noise_files = tuple(noise_files)
        self.room_ir_files = tuple(room_ir_files)
        self.mic_ir_files = tuple(mic_ir_files)
        self.epoch = 0
        self.start_step = 0
        self._augmenter: Augmenter | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_augmenter"] = None  # built again in each worker
        return state

    @property
    def augmenter(self) -> Augmenter:
        if self._augmenter is None:
            self._augmenter = make_augmenter(
                self.augment,
                self.spec,
                self.noise_files,
                self.room_ir_files,
                self.mic_ir_files,
            )
        return self._augmenter

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Which epoch the next iteration yields, from which step on (for resuming)."""
        self.epoch = epoch
        self.start_step = start_step

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for step in range(self.start_step + worker, self.steps, workers):
            yield self.make_batch(self.epoch, step)

    def make_batch(self, epoch: int, step: int) -> dict[str, Any]:
        """Batch ``step`` of ``epoch``; the same arguments always give the same batch."""
        rng = np.random.default_rng([self.seed, self.rank, epoch, step])
        return make_batch(self.pool, self.augmenter, self.spec, rng, step)


def make_augmenter(
    augment: AugmentConfig,
    spec: BatchSpec,
    noise_files: Sequence[Path],
    room_ir_files: Sequence[Path],
    mic_ir_files: Sequence[Path],
) -> Augmenter:
    """The pipeline, with excerpts wide enough for the retrieval check's 0.2 s shift."""
    return Augmenter(
        augment,
        noise_files,
        room_ir_files,
        mic_ir_files,
        spec.sample_rate,
        spec.window,
        margin_s=RETRIEVAL_SHIFT_S,
    )


def make_batch(
    pool: SongPool, augmenter: Augmenter, spec: BatchSpec, rng: np.random.Generator, step: int
) -> dict[str, Any]:
    """N clean windows from N different songs (or fewer: ``spec.repeat_songs``) and their
    augmented twins."""
    excerpts, songs, _ = pool.draw(spec.n, rng, spec.repeat_songs)
    anchors = np.empty((spec.n, spec.window), dtype=np.float32)
    positives = np.empty_like(anchors)
    for i, excerpt in enumerate(excerpts):
        pair = augmenter.make_pair(excerpt, rng)
        anchors[i], positives[i] = pair.anchor, pair.positive
    cfg = augmenter.config
    if rng.random() < cfg.mask_batch_p:
        masks = draw_spec_masks(
            rng, spec.n, spec.n_freq, spec.n_time, cfg.mask_max_freq, cfg.mask_max_time
        )
    else:
        masks = np.zeros((spec.n, 4), dtype=np.int64)
    return {
        "anchors": torch.from_numpy(anchors),
        "positives": torch.from_numpy(positives),
        "masks": torch.from_numpy(masks),
        "songs": torch.from_numpy(songs.astype(np.int64)),
        "step": step,
    }


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed torch, numpy and random from the worker's torch seed.

    The loader derives that seed from its generator (seeded per epoch) and the worker id.
    Batches do not depend on these seeds (they carry their own), but anything else a
    worker draws stays reproducible.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Ctrl-C, and a SIGTERM sent to the process group (kill -TERM -PGID, timeout, a
    # service manager), reach every worker: the main process finishes its step, saves
    # and shuts the workers down, so they must not die first (torch would raise
    # "DataLoader worker ... is killed by signal" inside the step).
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)
    torch.set_num_threads(1)  # workers do numpy/scipy work; leave the cores to training
    _ = worker_id


def epoch_generator(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    """The loader's generator for ``epoch``: different per epoch and rank, fixed by seed."""
    state = np.random.SeedSequence([seed, rank, epoch]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def make_loader(
    dataset: ContrastiveBatches, workers: int, epoch: int, start_step: int = 0
) -> DataLoader:
    """A loader for one epoch (workers start afresh each epoch, seeded for it)."""
    dataset.set_epoch(epoch, start_step)
    workers = workers if len(dataset) else 0
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        worker_init_fn=seed_worker if workers else None,
        generator=epoch_generator(dataset.seed, epoch, dataset.rank),
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )


# --- validation material ----------------------------------------------------------------------

RETRIEVAL_SHIFT_S = 0.2


@dataclasses.dataclass(frozen=True)
class RetrievalSet:
    """Clean validation windows, their augmented copies and copies shifted by ±0.2 s."""

    clean: np.ndarray
    queries: np.ndarray
    shifted: np.ndarray


def make_validation_batches(
    pool: SongPool, augmenter: Augmenter, spec: BatchSpec, count: int, seed: int
) -> list[dict[str, Any]]:
    """``count`` fixed batches of the validation songs (the same every epoch)."""
    return [
        make_batch(pool, augmenter, spec, np.random.default_rng([seed, 9_999, i]), i)
        for i in range(count)
    ]


def make_retrieval_set(
    pool: SongPool, augmenter: Augmenter, windows: int, seed: int
) -> RetrievalSet:
    """Up to ``windows`` non-overlapping loud windows spread over the validation songs.

    Windows of one song are at least one window apart, so a query shifted by 0.2 s still
    overlaps its own window most.
    """
    rng = np.random.default_rng([seed, 7_777])
    per_song = math.ceil(windows / max(len(pool), 1))
    offset, width = pool.anchor_offset, pool.window
    shift = round(RETRIEVAL_SHIFT_S * augmenter.sample_rate)
    clean, queries, shifted = [], [], []
    for index in range(len(pool)):
        audio = pool.audio[index]
        slots = (len(audio) - pool.excerpt) // width + 1
        if slots <= 0:
            continue
        taken = 0
        for slot in rng.permutation(slots):
            start = int(slot) * width
            excerpt = np.asarray(audio[start : start + pool.excerpt], np.float32) / INT16_SCALE
            if not pool.loud_enough(audio[start + offset : start + offset + width]):
                continue
            clean.append(excerpt[offset : offset + width])
            queries.append(augmenter.make_pair(excerpt, rng, shift=0).positive)
            sign = 1 if rng.random() < 0.5 else -1
            shifted.append(augmenter.make_pair(excerpt, rng, shift=sign * shift).positive)
            taken += 1
            if taken == per_song:
                break
    order = rng.permutation(len(clean))[:windows]
    pick = sorted(order.tolist())
    if not pick:
        empty = np.zeros((0, width), np.float32)
        return RetrievalSet(empty, empty, empty)
    return RetrievalSet(
        clean=np.stack([clean[i] for i in pick]),
        queries=np.stack([queries[i] for i in pick]),
        shifted=np.stack([shifted[i] for i in pick]),
    )
