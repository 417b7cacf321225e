"""Landmark fingerprinting: spectral-peak pairs hashed as in Wang (2003), the approach of
Dejavu (the paper's §5.1 baseline), behind the same database and evaluation interface as
the neural engine.

Fingerprints (``LandmarkSettings``). The 8 kHz signal is cut into 1024-sample Hann frames
(128 ms, 7.8 Hz bins) every 128 samples (16 ms). Peaks are local maxima of the dB
spectrogram in a 29 bins x 21 frames (226 Hz x 336 ms) neighbourhood, between 100 Hz and
3.8 kHz, above the median of their block + ``peak_floor_db``, and at most 30 per second
(the strongest): a bounded density whatever the loudness. Each peak (the anchor) is
paired with the next ``fan_out`` = 5 peaks of its target zone (1..127 frames = 2 s later,
at most 128 bins away): about 130 pairs per second of music. A pair's hash packs
(f_anchor, f_target, dt) into an unsigned 32-bit int::

    hash = f_anchor << (freq_bits + dt_bits) | f_target << dt_bits | dt

(10 + 10 + 7 = 27 bits with the defaults). Peaks are found block by block on a frame grid
that starts at the first sample, with enough context on both sides that a block boundary
changes nothing but the floor, so a song and a long recording holding it give the same
pairs however they are streamed. These settings won over Dejavu-like ones (n_fft 512,
hop 256) on development music: more right answers at 1-2 s and lower chance scores.

Matching. Every query hash looks up its postings (database hash -> anchor frame); a
posting in song s at frame f_db, for a query anchor at f_q, votes for the alignment
(s, f_db - f_q). The score of an alignment counts its votes within +-1 frame (peaks
jitter by a frame between a song and a recording of it on another frame grid), each query
anchor frame once (``LandmarkDB.match``): aligned matching hashes. The best alignment of
each song is a candidate, the best candidate the answer. Decision rule name: "landmark".
"No match" below a calibrated count (``LandmarkDB.calibrate_thresholds``).

Database folder (format "afp-landmark-database"): ``manifest.json`` (format, version,
settings, search settings), ``catalogue.sqlite`` (the same ``songs`` table as the neural
database, shared code ``afp_core.database.SongCatalogue``: a song owns the global frame
ids ``[first_vector_id, first_vector_id + vector_count)``, one per spectrogram frame),
``staging/<checksum>.npy`` (a song's (hash, frame) pairs before the commit) and
``postings-<generation>.npy``: one (2, n) uint32 array, hashes in row 0 sorted ascending,
the global anchor frame in row 1 (the song follows from the frame through the catalogue,
so a posting costs 8 bytes). Lookup of m query hashes is two binary searches each on the
memory-mapped hash row and one gather: no SQL round trips, and opening is instant (the
OS pages in what lookups touch); a SQLite table indexed on hash would cost 3-4 times
the bytes and a query per batch of hashes. A commit merges the staged pairs into a new
generation file (written atomically; the old rows are one sorted run, so the merge is
linear) and switches the catalogue in one transaction, as the neural database does.

Scaling. An hour of audio holds about 0.5 M postings, 4 MB: a few hundred songs are a few
tens of MB, merged in well under a second per commit. The paper's 26,016-song Dejavu
database (Table 2; some 280 h, mostly 30 s clips) would be 1.1 GB here and still searched
fast from the memory map, but each commit would rewrite all of it (tens of seconds, a few
GB of memory); at that size one keeps several sorted segment files, one per commit,
searched together and merged in the background (an LSM layout), or shards by hash
prefix. Frame ids are uint32: 2^32 frames of 16 ms are 19,000 hours.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from afp_core import __version__
from afp_core.audio import window_count
from afp_core.config import from_dict, to_dict
from afp_core.database import (
    CATALOGUE,
    MANIFEST,
    STAGING,
    Song,
    SongCatalogue,
    check_new_database_folder,
    manifest_text,
)
from afp_core.errors import AfpError, AudioError, Cancelled, ConfigError, DatabaseError
from afp_core.faults import fault_point
from afp_core.fileutil import (
    atomic_save_npy,
    check_document,
    file_size,
    one_line,
    read_json_object,
    utc_now,
)
from afp_core.ingest import Fingerprinting, IndexResult, Skipped, index_files, stream_tracked
from afp_core.search import N_CANDIDATES, Candidate, Match
from afp_core.spectral import compute_spectrogram, find_spectral_peaks
from afp_core.tasks import TaskState

FORMAT = "afp-landmark-database"
FORMAT_VERSION = 1
METHOD = "landmark"
METHODS: tuple[str, ...] = (METHOD,)
_POSTINGS_RE = re.compile(r"postings-(\d+)\.npy")
# Votes within this many frames of an alignment count for it (peak jitter between grids).
_TOLERANCE_FRAMES = 1
# Songs shorter than this hold too few pairs to be found (and are skipped when indexing).
MIN_SONG_S = 1.0
# The fewest aligned hashes a match needs, whatever the calibration says: songs not in the
# database scored at most 5 against 20 songs of development music and 6 synthetic songs
# (1-10 s queries, clean and at 10 dB SNR), where right answers scored a median of 4-10 at
# 1 s in noise and 17-40 at 2-5 s.
MIN_ALIGNED = 6
# Calibration: a winner this many times the runner-up shares material with the query's song.
_SHARED_RATIO = 3
# Query lengths (s) of the evaluation protocols, calibrated at each commit.
CALIBRATED_QUERY_S = (1, 2, 3, 4, 5, 10, 15)


@dataclasses.dataclass(frozen=True)
class LandmarkSettings:
    """How audio becomes landmark hashes; stored in the manifest, fixed per database."""

    sample_rate: int = 8000
    n_fft: int = 1024
    hop: int = 128
    # peak picking: a peak is the maximum of its bins x frames neighbourhood (226 Hz x 336 ms)
    neighbourhood_bins: int = 29
    neighbourhood_frames: int = 21
    peak_floor_db: float = 10.0  # above the block's median level
    peaks_per_second: float = 30.0
    min_hz: float = 100.0
    max_hz: float = 3800.0
    # target zone of an anchor
    fan_out: int = 5
    min_dt: int = 1
    max_dt: int = 127
    max_df: int = 128

    def __post_init__(self) -> None:
        ints: tuple[str, ...] = ("sample_rate", "n_fft", "hop", "neighbourhood_bins")
        ints += ("neighbourhood_frames", "fan_out", "min_dt", "max_dt", "max_df")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"landmark settings: {name} must be a positive integer")
        if self.hop > self.n_fft:
            raise ConfigError("landmark settings: hop must not exceed n_fft")
        if self.min_dt > self.max_dt:
            raise ConfigError("landmark settings: min_dt must not exceed max_dt")
        if not 0 <= self.min_hz < self.max_hz <= self.sample_rate / 2:
            raise ConfigError("landmark settings: need 0 <= min_hz < max_hz <= sample_rate / 2")
        if self.peaks_per_second <= 0:
            raise ConfigError("landmark settings: peaks_per_second must be positive")
        if 2 * self.freq_bits + self.dt_bits > 32:
            raise ConfigError(
                f"landmark settings: a hash needs {2 * self.freq_bits + self.dt_bits} bits "
                "(2 x frequency + dt), more than 32"
            )

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def freq_bits(self) -> int:
        return (self.n_bins - 1).bit_length()

    @property
    def dt_bits(self) -> int:
        return self.max_dt.bit_length()

    @property
    def hop_s(self) -> float:
        return self.hop / self.sample_rate

    @property
    def bucket_frames(self) -> int:
        """Frames in the shortest whole number of seconds on the frame grid (125 = 2 s at
        hop 128): blocks start at multiples of it so that the per-second peak cap sees the
        same seconds whatever the block."""
        return self.sample_rate // math.gcd(self.sample_rate, self.hop)


# ---------------------------------------------------------------------- fingerprints


@dataclasses.dataclass(frozen=True)
class Landmarks:
    """The hashed peak pairs of a signal, sorted by anchor frame.

    Frame ``t`` covers samples ``[t * hop, t * hop + n_fft)`` of the signal.
    """

    hashes: np.ndarray  # uint32
    anchors: np.ndarray  # int64 anchor frames
    targets: np.ndarray  # int64 target frames
    n_frames: int
    n_peaks: int
    duration_s: float


def find_landmark_peaks(
    blocks: Iterable[np.ndarray], settings: LandmarkSettings
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Peaks of a signal given as 1-D float32 blocks at ``settings.sample_rate``.

    Returns (freq bins, frames, frame count, sample count), sorted by frame then bin. The
    spectrogram is computed a block of whole 'buckets' at a time with one bucket of
    context each side (more than half a neighbourhood), so memory stays bounded for hours
    of audio.
    """
    s = settings
    margin = s.bucket_frames * math.ceil((s.neighbourhood_frames // 2 + 1) / s.bucket_frames)
    step = s.bucket_frames * max(1, round(2000 / s.bucket_frames))
    low_bin = math.ceil(s.min_hz * s.n_fft / s.sample_rate)
    high_bin = math.floor(s.max_hz * s.n_fft / s.sample_rate)
    freqs: list[np.ndarray] = []
    frames: list[np.ndarray] = []
    buffer = np.zeros(0, np.float32)
    buffer_start = 0  # sample index of buffer[0]
    first = 0  # first frame of the next block

    def process(first: int, n_frames: int) -> None:
        low = max(0, first - margin)
        stop = min(first + step + margin, n_frames)
        segment = buffer[low * s.hop - buffer_start : (stop - 1) * s.hop + s.n_fft - buffer_start]
        spec = compute_spectrogram(segment, s.sample_rate, s.n_fft, s.hop)
        band = spec.db[low_bin : high_bin + 1]
        if band.size == 0:
            return
        f, t = find_spectral_peaks(
            band,
            neighbourhood=(s.neighbourhood_bins, s.neighbourhood_frames),
            min_db=float(np.median(band)) + s.peak_floor_db,
            max_per_second=s.peaks_per_second,
            frames_per_second=s.sample_rate / s.hop,
        )
        t = t + low
        keep = (t >= first) & (t < first + step)
        freqs.append(f[keep] + low_bin)
        frames.append(t[keep])

    total = 0
    for block in blocks:
        block = np.asarray(block, np.float32)
        buffer = np.concatenate([buffer, block]) if len(buffer) else block
        total += len(block)
        # a block is ready once its frames and the context after it are all in
        while buffer_start + len(buffer) >= (first + step + margin - 1) * s.hop + s.n_fft:
            process(first, first + step + margin)
            first += step
            drop = (first - margin) * s.hop - buffer_start
            if drop > 0:
                buffer, buffer_start = buffer[drop:], buffer_start + drop
    n_frames = window_count(total, s.n_fft, s.hop)
    while first < n_frames:
        process(first, n_frames)
        first += step
    if not freqs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), n_frames, total
    return np.concatenate(freqs), np.concatenate(frames), n_frames, total


def pair_peaks(
    freqs: np.ndarray, frames: np.ndarray, settings: LandmarkSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hashes uint32, anchor frames, target frames) of every anchor -> target pair.

    ``freqs`` and ``frames`` are sorted by frame then bin. Each anchor takes the first
    ``fan_out`` peaks of its target zone in that order.
    """
    s = settings
    n = len(frames)
    if n < 2:
        empty = np.zeros(0, np.int64)
        return np.zeros(0, np.uint32), empty, empty
    frames = frames.astype(np.int64)
    freqs = freqs.astype(np.int64)
    end = np.searchsorted(frames, frames + s.max_dt, side="right")
    width = int((end - np.arange(n)).max()) - 1
    if width < 1:
        empty = np.zeros(0, np.int64)
        return np.zeros(0, np.uint32), empty, empty
    hashes, anchors, targets = [], [], []
    chunk = max(1, 500_000 // width)  # bounds the (anchors x width) candidate matrix
    offsets = np.arange(1, width + 1)
    for start in range(0, n, chunk):
        i = np.arange(start, min(n, start + chunk))
        j = i[:, None] + offsets[None, :]
        valid = j < end[i][:, None]
        j = np.minimum(j, n - 1)
        dt = frames[j] - frames[i][:, None]
        df = freqs[j] - freqs[i][:, None]
        valid &= (dt >= s.min_dt) & (np.abs(df) <= s.max_df)
        valid &= np.cumsum(valid, axis=1) <= s.fan_out
        rows, cols = np.nonzero(valid)
        a, t = i[rows], j[rows, cols]
        hashes.append(pack_hashes(freqs[a], freqs[t], frames[t] - frames[a], s))
        anchors.append(frames[a])
        targets.append(frames[t])
    return np.concatenate(hashes), np.concatenate(anchors), np.concatenate(targets)


def pack_hashes(
    f_anchor: np.ndarray, f_target: np.ndarray, dt: np.ndarray, settings: LandmarkSettings
) -> np.ndarray:
    """(f_anchor, f_target, dt) -> uint32 hashes (see the module docstring)."""
    fb, db = settings.freq_bits, settings.dt_bits
    packed = (
        (np.asarray(f_anchor, np.uint64) << np.uint64(fb + db))
        | (np.asarray(f_target, np.uint64) << np.uint64(db))
        | np.asarray(dt, np.uint64)
    )
    return packed.astype(np.uint32)


def fingerprint_blocks(blocks: Iterable[np.ndarray], settings: LandmarkSettings) -> Landmarks:
    """Landmarks of a signal given as blocks (see ``find_landmark_peaks``)."""
    freqs, frames, n_frames, n_samples = find_landmark_peaks(blocks, settings)
    hashes, anchors, targets = pair_peaks(freqs, frames, settings)
    return Landmarks(
        hashes, anchors, targets, n_frames, len(frames), n_samples / settings.sample_rate
    )


def fingerprint_audio(audio: np.ndarray, settings: LandmarkSettings) -> Landmarks:
    """Landmarks of mono ``audio`` at ``settings.sample_rate``."""
    audio = np.asarray(audio, np.float32).reshape(-1)
    block = 30 * settings.sample_rate
    return fingerprint_blocks((audio[i : i + block] for i in range(0, len(audio), block)), settings)


# ---------------------------------------------------------------------- database


class LandmarkDB(SongCatalogue):
    """A landmark database folder opened for reading and writing (module docstring)."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        """Use ``create``, ``open`` or ``open_or_create``."""
        super().__init__(path, manifest)
        self.settings: LandmarkSettings = from_dict(
            LandmarkSettings, manifest["settings"], "settings"
        )
        self._postings = np.zeros((2, 0), np.uint32)
        self._postings_name = ""
        # indexed songs sorted by first frame id (ids ascend with song ids)
        self._first = np.zeros(0, np.int64)
        self._count = np.zeros(0, np.int64)
        self._songs: dict[int, Song] = {}
        self._load_state()

    # ------------------------------------------------------------------ opening

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        settings: LandmarkSettings = LandmarkSettings(),
    ) -> LandmarkDB:
        """Create an empty database at ``path`` (a new or empty folder), atomically."""
        path = Path(path)
        check_new_database_folder(path)
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "created": utc_now(),
            "afp_version": __version__,
            "settings": to_dict(settings),
            "search": {},
        }
        meta = {"postings_file": "", "generation": "0"}
        return cls._build(path, manifest_text(manifest), meta)

    @staticmethod
    def _read_manifest(path: Path) -> dict[str, Any]:
        return _read_manifest(path)

    @classmethod
    def open_or_create(
        cls, path: str | os.PathLike[str], settings: LandmarkSettings | None = None
    ) -> LandmarkDB:
        """Open ``path`` if it holds a database (it keeps its own settings), else create it."""
        path = Path(path)
        if (path / MANIFEST).exists():
            return cls.open(path)
        return cls.create(path, settings or LandmarkSettings())

    # ------------------------------------------------------------------ writing

    def stage_song(
        self,
        title: str,
        artist: str,
        source: str,
        duration_s: float,
        checksum: str,
        landmarks: Landmarks,
    ) -> Song:
        """Store a song's (hash, anchor frame) pairs in staging, its row as 'staged'.

        ``commit`` moves staged songs into the postings; staged songs survive an interrupt.
        Raises ``DuplicateSong`` for a checksum already in the catalogue.
        """
        self._check_song_fields(source, checksum, duration_s)
        if landmarks.n_frames < 1 or len(landmarks.hashes) == 0:
            raise DatabaseError(f"{self.path}: {source} has no landmarks to store")
        if int(landmarks.anchors.max()) >= landmarks.n_frames or landmarks.anchors.min() < 0:
            raise DatabaseError(f"{self.path}: anchor frames of {source} exceed its frames")
        pairs = np.stack([landmarks.hashes.astype(np.uint32), landmarks.anchors.astype(np.uint32)])
        return self._stage(title, artist, source, duration_s, checksum, pairs, landmarks.n_frames)

    def commit(self, cancel: Callable[[], bool] | None = None, calibrate: bool = True) -> int:
        """Merge every staged song into a new postings generation; returns how many.

        ``cancel()`` returning True stops with ``Cancelled`` and leaves the songs staged.
        With ``calibrate``, the "no match" thresholds are measured again afterwards
        (``calibrate_thresholds``): they depend on what the database holds.
        """
        with self._locked():
            self._load_state()
            staged = self.songs("staged")
            if not staged:
                return 0
            try:
                self._commit_locked(staged, cancel or (lambda: False))
            except BaseException:
                self._load_state()
                self._delete_unused_generations()
                raise
        if calibrate:
            self.calibrate_thresholds()
        return len(staged)

    def _commit_locked(self, staged: list[Song], cancel: Callable[[], bool]) -> None:
        next_frame = int(self._count.sum())
        keys, first_ids = [], []
        for song in staged:
            if cancel():
                raise Cancelled(f"{self.path}: commit cancelled; {len(staged)} songs stay staged")
            pairs = self._load_staged(song)
            frames = pairs[1].astype(np.uint64) + np.uint64(next_frame)
            keys.append((pairs[0].astype(np.uint64) << np.uint64(32)) | frames)
            first_ids.append((next_frame, song.id))
            next_frame += song.vector_count
        if next_frame >= 2**32:
            raise DatabaseError(f"{self.path}: more than 2^32 frames; the database is full")
        new = np.sort(np.concatenate(keys))
        old = self._postings
        old_keys = (old[0].astype(np.uint64) << np.uint64(32)) | old[1].astype(np.uint64)
        # two sorted runs: the stable sort (timsort) merges them in linear time
        merged = np.sort(np.concatenate([old_keys, new]), kind="stable")
        postings = np.stack([(merged >> np.uint64(32)), merged & np.uint64(0xFFFFFFFF)])
        postings = postings.astype(np.uint32)
        del old, old_keys, merged, new, keys  # the old memory map too: its file goes below
        generation = self._generation + 1
        name = f"postings-{generation:06d}.npy"
        atomic_save_npy(self.path / name, postings)
        fault_point("index.commit")
        if cancel():
            raise Cancelled(f"{self.path}: commit cancelled; {len(staged)} songs stay staged")
        old_name = self._postings_name
        self._mark_indexed(
            first_ids,
            {
                "postings_file": name,
                "generation": str(generation),
                "postings": str(postings.shape[1]),
            },
        )
        self._postings = np.zeros((2, 0), np.uint32)  # drop the old memory map first
        self._load_state()
        # leftovers only: a failure here (a reader still mapping the file on Windows) is
        # cleaned by the next open
        with contextlib.suppress(OSError):
            if old_name and old_name != name:
                (self.path / old_name).unlink(missing_ok=True)
            for song in staged:
                self._staging_file(song.checksum).unlink(missing_ok=True)

    def _load_staged(self, song: Song) -> np.ndarray:
        file = self._staging_file(song.checksum)
        try:
            pairs = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DatabaseError(f"{file}: unreadable staging file ({one_line(exc)})") from None
        if pairs.ndim != 2 or pairs.shape[0] != 2 or pairs.dtype != np.uint32:
            raise DatabaseError(f"{file}: staging file holds {pairs.dtype} {pairs.shape}")
        if len(pairs[1]) and int(pairs[1].max()) >= song.vector_count:
            raise DatabaseError(f"{file}: anchor frames exceed the song's {song.vector_count}")
        return pairs

    # ------------------------------------------------------------------ settings

    def calibrate_thresholds(
        self, trials: int = 200, quantile: float = 0.99, seed: int = 0
    ) -> dict[str, int]:
        """Measure and store the "no match" threshold for each of ``CALIBRATED_QUERY_S``.

        No audio is needed: a trial takes the pairs of a random span of a random indexed
        song from the postings (the target frame is the anchor plus the hash's dt) and
        matches them with that song EXCLUDED, as a song that is not in the database; the
        best score is the impostor score. Except where the winner stands out (at least
        ``_SHARED_RATIO`` times the runner-up and ``MIN_ALIGNED``): that is a catalogue
        song sharing material with the left-out one (the development music holds two
        arrangements of a theme, scoring up to hundreds), a right answer rather than
        chance, and the runner-up's score is taken instead. The threshold is one more
        than the ``quantile`` of impostor scores (a match must beat them), at least
        ``MIN_ALIGNED``. Spans without pairs (silence) are drawn again. Clean spans hold
        more pairs than recorded queries, which errs on the high (safe) side. Fewer than
        two songs: no thresholds (``threshold`` then falls back to ``MIN_ALIGNED``).
        """
        songs = list(self._songs.values())
        if len(songs) < 2:
            self.save_search_settings(thresholds=None, calibrated_generation=self._generation)
            return {}
        s = self.settings
        hashes, frames = self._postings[0], self._postings[1]
        order = np.argsort(frames, kind="stable")
        sorted_frames = frames[order]
        dt_mask = np.uint32((1 << s.dt_bits) - 1)
        rng = np.random.default_rng(seed)
        table: dict[str, int] = {}
        means: dict[str, float] = {}
        for seconds in CALIBRATED_QUERY_S:
            n = query_frames(seconds, s)
            eligible = [song for song in songs if song.vector_count >= n]
            if not eligible:
                break
            weights = np.array([song.vector_count - n + 1 for song in eligible], np.float64)
            picks = rng.choice(len(eligible), size=trials, p=weights / weights.sum())
            impostor = np.zeros(trials)
            for trial, pick in enumerate(picks):
                song = eligible[pick]
                if song.first_vector_id is None:
                    raise DatabaseError(f"{self.path}: indexed song {song.id} has no frame ids")
                for _ in range(20):
                    start = song.first_vector_id + int(rng.integers(0, song.vector_count - n + 1))
                    low, high = np.searchsorted(sorted_frames, [start, start + n])
                    rows = order[low:high]
                    anchors = frames[rows].astype(np.int64) - start
                    keep = anchors + (hashes[rows] & dt_mask) < n
                    if keep.any():
                        break
                found = self.match(hashes[rows][keep], anchors[keep], exclude_song=song.id)
                best = found[0][2] if found else 0
                runner_up = found[1][2] if len(found) > 1 else 0
                shared = best >= _SHARED_RATIO * max(runner_up, MIN_ALIGNED)
                impostor[trial] = runner_up if shared else best
                fault_point("index.calibrate")
            level = int(np.floor(np.quantile(impostor, quantile))) + 1
            table[str(seconds)] = max(MIN_ALIGNED, level)
            means[str(seconds)] = float(np.mean(impostor))
        entry = {
            "quantile": quantile,
            "trials": trials,
            "songs": len(songs),
            "by_seconds": table,
            "impostor_mean_by_seconds": means,
        }
        # one manifest write: the thresholds and the generation they belong to
        self.save_search_settings(
            thresholds={METHOD: entry}, calibrated_generation=self._generation
        )
        return table

    def stored_impostor_mean(self, length_s: float) -> float:
        """The mean impostor score behind ``stored_threshold(length_s)`` (0 if unknown)."""
        return self._stored("impostor_mean_by_seconds", length_s, 0.0)

    def stored_threshold(self, length_s: float) -> int:
        """The calibrated threshold for queries of ``length_s`` seconds.

        Chance alignments grow with the query's pairs, so the value calibrated for the
        shortest length >= ``length_s`` is used (safe: at least the exact one); beyond
        the longest calibrated length, that one. ``MIN_ALIGNED`` when not calibrated.
        """
        return int(self._stored("by_seconds", length_s, MIN_ALIGNED))

    def _stored(self, table: str, length_s: float, default: float) -> float:
        """``table`` of the calibration entry at the shortest length >= ``length_s``."""
        entry = self.search_settings.get("thresholds", {}).get(METHOD, {})
        values = {float(k): float(v) for k, v in entry.get(table, {}).items()}
        if not values:
            return default
        longer = [k for k in values if k >= length_s - 1e-9]
        return values[min(longer)] if longer else values[max(values)]

    # ------------------------------------------------------------------ search

    @property
    def n_postings(self) -> int:
        return int(self._postings.shape[1])

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Postings of ``hashes``: (index into ``hashes``, global anchor frame) per posting."""
        hashes = np.asarray(hashes, np.uint32)
        if self.n_postings == 0 or len(hashes) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        keys = self._postings[0]
        low = np.searchsorted(keys, hashes, side="left")
        counts = np.searchsorted(keys, hashes, side="right") - low
        total = int(counts.sum())
        which = np.repeat(np.arange(len(hashes)), counts)
        # position of each posting: its hash's first row + its rank among that hash's rows
        starts = np.repeat(low - (np.cumsum(counts) - counts), counts)
        rows = starts + np.arange(total)
        return which, self._postings[1][rows].astype(np.int64)

    def match(
        self, hashes: np.ndarray, frames: np.ndarray, exclude_song: int | None = None
    ) -> list[tuple[int, float, int]]:
        """Candidates for query pairs (hash, query anchor frame), best first, one per song.

        Each is (song id, offset in frames of query frame 0 inside the song, score). The
        score of an alignment counts its matching hashes within +-1 frame, each query
        anchor frame once: the harmonics of one coincidental note pair in another song
        would otherwise cast ten correlated votes, and chance scores would grow a heavy
        tail. ``exclude_song`` leaves one song out (calibration).
        """
        which, found = self.lookup(hashes)
        if len(found) == 0 or len(self._first) == 0:
            return []
        query_frames = np.asarray(frames, np.int64)[which]
        slot = np.searchsorted(self._first, found, side="right") - 1
        delta = found - self._first[slot] - query_frames
        if exclude_song is not None:
            keep = self._song_ids[slot] != exclude_song
            slot, delta, query_frames = slot[keep], delta[keep], query_frames[keep]
            if len(slot) == 0:
                return []
        # one int64 per (song slot, alignment): neighbouring alignments differ by 1
        votes = (slot << 32) + (delta + 2**31)
        order = np.lexsort((query_frames, votes))
        votes, query_frames = votes[order], query_frames[order]
        fresh = np.r_[True, (votes[1:] != votes[:-1]) | (query_frames[1:] != query_frames[:-1])]
        votes = votes[fresh]
        starts = np.flatnonzero(np.r_[True, votes[1:] != votes[:-1]])
        keys = votes[starts]
        counts = np.diff(np.r_[starts, len(votes)])

        def neighbour(shift: int) -> np.ndarray:
            where = np.minimum(np.searchsorted(keys, keys + shift), len(keys) - 1)
            return np.where(keys[where] == keys + shift, counts[where], 0)

        shifts = [d for d in range(-_TOLERANCE_FRAMES, _TOLERANCE_FRAMES + 1) if d]
        near = np.array([neighbour(d) for d in shifts]).reshape(len(shifts), len(keys))
        score = counts + near.sum(axis=0)
        slots = keys >> 32
        # best alignment of each song: highest score, then the earliest alignment
        order = np.lexsort((keys, -score, slots))
        firsts = order[np.r_[True, slots[order][1:] != slots[order][:-1]]]
        ranked = firsts[np.lexsort((self._song_ids[slots[firsts]], -score[firsts]))]
        out = []
        for index in ranked[:N_CANDIDATES]:
            centre = int(keys[index] & 0xFFFFFFFF) - 2**31
            # sub-frame offset: the vote-weighted mean of the counted alignments
            weighted = float(np.dot(near[:, index], shifts))
            offset = centre + weighted / float(score[index])
            out.append((int(self._song_ids[slots[index]]), offset, int(score[index])))
        return out

    def identify_landmarks(
        self,
        hashes: np.ndarray,
        frames: np.ndarray,
        shift_s: float = 0.0,
        exclude_song: int | None = None,
    ) -> Match:
        """The answer for query pairs; ``shift_s``: where query frame 0 starts after the
        query's start (offsets are of the query's start). Never rejects (see
        ``LandmarkRecogniser.threshold``). ``exclude_song`` leaves that song out."""
        candidates = [
            Candidate(
                song=self._songs[song_id],
                offset_s=offset * self.settings.hop_s - shift_s,
                score=float(score),
            )
            for song_id, offset, score in self.match(hashes, frames, exclude_song)
        ]
        if not candidates:
            return Match(None, None, 0.0, METHOD, [])
        top = candidates[0]
        return Match(top.song, top.offset_s, top.score, METHOD, candidates)

    # ------------------------------------------------------------------ info

    def info(self) -> dict[str, Any]:
        """Songs, hashes, hours, settings and bytes on disk (keys as the neural ``info``)."""
        indexed = list(self._songs.values())
        staged = self.songs("staged")
        hours = sum(song.duration_s for song in indexed) / 3600.0
        index_bytes = file_size(self.path / self._postings_name) if self._postings_name else 0
        catalogue_bytes = sum(file_size(p) for p in self.path.glob(f"{CATALOGUE}*"))
        staging_bytes = sum(file_size(p) for p in (self.path / STAGING).glob("*.npy"))
        return {
            "kind": "landmark",
            "path": str(self.path),
            "songs": len(indexed),
            "vectors": self.n_postings,  # the fingerprints: one hash per posting
            "hashes": self.n_postings,
            "hashes_per_second": self.n_postings / (hours * 3600) if hours > 0 else 0.0,
            "hours": hours,
            "staged_songs": len(staged),
            "index": {"type": "landmark", "postings": self.n_postings},
            "settings": to_dict(self.settings),
            "bytes_index": index_bytes,
            "bytes_catalogue": catalogue_bytes,
            "bytes_staging": staging_bytes,
            "bytes_on_disk": index_bytes + catalogue_bytes + staging_bytes,
            "bytes_per_hour": (index_bytes + catalogue_bytes) / hours if hours > 0 else 0.0,
            "search": self.search_settings,
            "created": self._manifest.get("created"),
            "afp_version": self._manifest.get("afp_version"),
        }

    # ------------------------------------------------------------------ internals

    def _load_state(self) -> None:
        """(Re)load the current postings (memory-mapped) and the indexed songs' spans."""
        for attempt in range(2):
            meta, rows = self._read_catalogue()
            name = meta.get("postings_file", "")
            if name == self._postings_name:
                break
            if name and not (self.path / name).is_file() and attempt == 0:
                continue  # a concurrent commit switched generations between the two reads
            empty = np.zeros((2, 0), np.uint32)
            self._postings = self._read_postings(name, meta) if name else empty
            self._postings_name = name
            break
        self._generation = int(meta.get("generation", "0"))
        spans = np.array(rows, dtype=np.int64).reshape(-1, 3)
        self._first, self._count, self._song_ids = spans[:, 0], spans[:, 1], spans[:, 2]
        if len(self._first) and np.any(self._first[1:] != self._first[:-1] + self._count[:-1]):
            raise DatabaseError(f"{self.path}: catalogue frame ranges are not contiguous")
        self._songs = {song.id: song for song in self.songs("indexed")}

    def _read_postings(self, name: str, meta: dict[str, str]) -> np.ndarray:
        file = self.path / name
        try:
            postings = np.load(file, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise DatabaseError(f"{self.path}: postings file {name} is missing") from None
        except (OSError, ValueError) as exc:
            raise DatabaseError(f"{file}: corrupt postings file ({one_line(exc)})") from None
        if postings.ndim != 2 or postings.shape[0] != 2 or postings.dtype != np.uint32:
            what = f"{postings.dtype} {postings.shape}"
            raise DatabaseError(f"{file}: corrupt postings file ({what})")
        if str(postings.shape[1]) != meta.get("postings"):
            raise DatabaseError(
                f"{file}: holds {postings.shape[1]} postings, the catalogue lists "
                f"{meta.get('postings')}"
            )
        return postings

    def _delete_unused_generations(self) -> None:
        for file in self.path.glob("postings-*.npy"):
            if _POSTINGS_RE.fullmatch(file.name) and file.name != self._postings_name:
                file.unlink(missing_ok=True)


def _read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not file.is_file():
        raise DatabaseError(f"{path}: not an afp database (no {MANIFEST})")
    manifest = read_json_object(file, DatabaseError)
    check_document(manifest, FORMAT, FORMAT_VERSION, file, DatabaseError)
    for key in ("settings", "search"):
        if not isinstance(manifest.get(key), dict):
            raise DatabaseError(f"{file}: corrupt manifest ({key!r} missing or not an object)")
    try:
        from_dict(LandmarkSettings, manifest["settings"], "settings")
    except AfpError as exc:
        raise DatabaseError(f"{file}: corrupt manifest ({exc})") from None
    return manifest


# ---------------------------------------------------------------------- indexing


@dataclasses.dataclass(frozen=True)
class LandmarkExtractor:
    """A file's landmark hashes: the landmark ``Extractor`` (``afp_core.ingest``)."""

    settings: LandmarkSettings

    def __call__(self, path: Path, task: TaskState, on_warning: Callable[[str], None]) -> Landmarks:
        blocks = stream_tracked(path, self.settings.sample_rate, task, on_warning)
        landmarks = fingerprint_blocks(blocks, self.settings)
        if len(landmarks.hashes) == 0:
            raise AudioError(f"{path}: no spectral peaks (silent?)")
        return landmarks


def index_landmark_library(
    db: LandmarkDB,
    paths: Iterable[Path],
    task: TaskState | None = None,
    on_skip: Callable[[Skipped], None] = lambda _: None,
    on_warning: Callable[[Skipped], None] = lambda _: None,
    workers: int = 1,
) -> IndexResult:
    """Add every audio file under ``paths`` to ``db``, commit and calibrate
    (``afp_core.ingest.index_files``: skipped files, warnings, resuming, ``workers``).

    Files shorter than ``MIN_SONG_S`` and silent files are skipped too.
    """
    fingerprinting = Fingerprinting(
        extract=LandmarkExtractor(db.settings),
        min_duration_s=MIN_SONG_S,
        shortest=f"{MIN_SONG_S:g} s",
        committing="merging the postings",
        commit=lambda cancel: db.commit(cancel=cancel, calibrate=False),
        calibrate=lambda task: db.calibrate_thresholds(),
    )
    return index_files(
        db,
        paths,
        fingerprinting,
        workers=workers,
        task=task,
        on_skip=on_skip,
        on_warning=on_warning,
    )


# ---------------------------------------------------------------------- recogniser


class LandmarkRecogniser:
    """The evaluation-facing side of a landmark database (``afp_core.recogniser``).

    ``analyse`` hashes a long stretch once; ``identify`` keeps the pairs whose anchor
    and target frames lie wholly inside [start_s, start_s + length_s), numbered from the
    first frame starting at or after start_s, exactly as a query cut from the stretch
    would pair them, except that its frame grid is the stretch's.

    "No match": ``threshold`` is the database's calibrated count of aligned hashes for
    the query length (``LandmarkDB.calibrate_thresholds``).
    """

    kind = "landmark"
    methods: tuple[str, ...] = METHODS
    # Shorter queries hold few pairs (about 130 per second clean, far fewer in noise).
    min_query_s = 1.0

    def __init__(self, db: LandmarkDB) -> None:
        self.db = db
        self.settings = db.settings
        self.sample_rate = db.settings.sample_rate

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "database": str(self.db.path),
            "database_info": self.db.info(),
            "settings": to_dict(self.settings),
            "thresholds": self.db.search_settings.get("thresholds"),
        }

    def songs(self) -> list[Song]:
        return self.db.songs("indexed")

    def analyse(self, audio: np.ndarray) -> Landmarks:
        return fingerprint_audio(audio, self.settings)

    def identify(
        self,
        analysis: Landmarks,
        start_s: float,
        length_s: float,
        method: str,
        exclude_song: int | None = None,
    ) -> Match:
        if method != METHOD:
            raise ConfigError(f"method: {method!r} is not one of {', '.join(METHODS)}")
        s = self.settings
        end_sample = (start_s + length_s) * s.sample_rate
        if start_s < 0 or length_s <= 0 or end_sample > analysis.duration_s * s.sample_rate + 1:
            raise ConfigError(
                f"query [{start_s:g}, {start_s + length_s:g}) s is outside the analysed audio"
            )
        first = math.ceil(start_s * s.sample_rate / s.hop - 1e-9)
        last = math.floor((end_sample - s.n_fft) / s.hop + 1e-9)
        low, high = np.searchsorted(analysis.anchors, [first, last + 1])
        inside = analysis.targets[low:high] <= last
        hashes = analysis.hashes[low:high][inside]
        frames = analysis.anchors[low:high][inside] - first
        return self.db.identify_landmarks(
            hashes, frames, shift_s=first * s.hop_s - start_s, exclude_song=exclude_song
        )

    def threshold(self, method: str, length_s: float) -> float | None:
        """The minimum aligned-hash count of a match (``LandmarkDB.stored_threshold``)."""
        if method != METHOD:
            raise ConfigError(f"method: {method!r} is not one of {', '.join(METHODS)}")
        return float(self.db.stored_threshold(length_s))


def identify_landmark_audio(db: LandmarkDB, audio: np.ndarray, label: str = "query") -> Match:
    """Identify mono audio at the database's sample rate (no threshold applied)."""
    s = db.settings
    if len(audio) < s.n_fft:
        raise AudioError(
            f"{label}: query is {len(audio) / s.sample_rate:.3f} s, shorter than one "
            f"{s.n_fft / s.sample_rate:g} s frame"
        )
    recogniser = LandmarkRecogniser(db)
    return recogniser.identify(recogniser.analyse(audio), 0.0, len(audio) / s.sample_rate, METHOD)


def query_frames(length_s: float, settings: LandmarkSettings) -> int:
    """Frames wholly inside a query of ``length_s`` seconds."""
    return window_count(round(length_s * settings.sample_rate), settings.n_fft, settings.hop)
