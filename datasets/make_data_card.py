"""Write the training data card, datasets/TRAINING_DATA.md: what each collection adds, and
which tracks are near-duplicates of others.

    .venv/bin/python datasets/make_data_card.py [--landmark-db DIR] [--out FILE]

Collections: the development music (`datasets/fetch_debian_audio.sh`, split into
train / validation / test with seed 0 as every shipped config does) and the training-only
music and noise (`datasets/fetch_training_audio.sh`). Per collection: files, hours, and
the shortest and longest track.

Near-duplicates are found by content with the landmark fingerprinter (a landmark database
of all the music; `--landmark-db` reuses one, e.g. the benchmark's): three clean 10 s
excerpts of every track (at 20, 50 and 80 % of it) are searched with the track itself
left out; a track whose excerpts match another track above the database's calibrated
10 s "no match" count in at least two of the three is a near-duplicate of it (the same
recording, a loop of it, or a remix sharing whole passages). Renderings of the same
composition with other instruments (planetblupi's MIDI files next to its Ogg tracks)
share no landmarks; they are listed by name.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections import Counter, defaultdict
from pathlib import Path

from afp_core.audio import iter_audio_files, probe_audio
from afp_core.devdata import MUSIC_COLLECTIONS, data_roots, find_dev_music
from afp_core.errors import AudioError
from afp_core.landmark import LandmarkDB, LandmarkRecogniser, index_landmark_library
from afp_core.query import load_query
from afp_core.tasks import progress_task
from afp_core.training.data import songs_from_paths, split_items

ROOT = Path(__file__).resolve().parent
TRAINING_AUDIO = ROOT / "cache" / "training-audio"
EXCERPT_S = 10.0
POSITIONS = (0.2, 0.5, 0.8)


def collection_rows() -> list[tuple[str, str, list[Path]]]:
    """(collection, use, files) for every collection found on this machine."""
    rows = []
    for package, folder in MUSIC_COLLECTIONS.items():
        for root in data_roots():
            if (root / folder).is_dir():
                rows.append((package, "development", list(iter_audio_files([root / folder]))))
                break
    for kind in ("music", "noise"):
        for collection in sorted((TRAINING_AUDIO / kind).glob("*")):
            if collection.is_dir():
                files = list(iter_audio_files([collection]))
                rows.append((collection.name, f"training-only {kind}", files))
    return rows


def durations(files: list[Path]) -> list[float]:
    out = []
    for path in files:
        try:
            out.append(probe_audio(path).duration_s)
        except AudioError:
            out.append(0.0)
    return out


def find_near_duplicates(db: LandmarkDB) -> list[tuple[str, str, int]]:
    """(track, the track it repeats, excerpts that matched) for every near-duplicate."""
    recogniser = LandmarkRecogniser(db)
    threshold = db.stored_threshold(EXCERPT_S)
    by_id = {s.id: s for s in db.songs("indexed")}
    found = []
    with progress_task(False, "song", "near-duplicates") as task:
        task.set_total(len(by_id))
        for song in by_id.values():
            hits: Counter[int] = Counter()
            for position in POSITIONS:
                start = max(0.0, position * song.duration_s - EXCERPT_S / 2)
                if start + EXCERPT_S > song.duration_s:
                    continue
                audio = load_query(Path(song.source), db.settings.sample_rate, start, EXCERPT_S)
                analysis = recogniser.analyse(audio)
                first = analysis.anchors
                candidates = db.match(analysis.hashes, first, exclude_song=song.id)
                if candidates and candidates[0][2] >= threshold:
                    hits[candidates[0][0]] += 1
            for other, count in hits.items():
                if count >= 2:
                    found.append((song.source, by_id[other].source, count))
            task.advance(1)
    return found


def write_card(out: Path, rows: list[tuple[str, str, list[Path]]], dupes: list) -> None:
    split = split_items(songs_from_paths(find_dev_music()), 0.1, 0.1, 0, key=lambda s: s.key)
    held_out = {s.path.stem.casefold() for s in (*split.validation, *split.test)}
    lines = [
        "# Training data card",
        "",
        f"Written by `datasets/make_data_card.py` on {datetime.date.today()}. Only the Debian",
        "packages named here are used for development and training (docs/design.md, *Data",
        "policy*); other audio is kept for independent evaluation.",
        "",
        "| collection | use | files | hours | shortest s | longest s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    totals: dict[str, float] = defaultdict(float)
    for name, use, files in rows:
        seconds = durations(files)
        totals[use] += sum(seconds)
        lines.append(
            f"| {name} | {use} | {len(files)} | {sum(seconds) / 3600:.2f} | "
            f"{min(seconds, default=0):.0f} | {max(seconds, default=0):.0f} |"
        )
    lines += ["", "Hours by use: " + ", ".join(f"{u} {t / 3600:.2f}" for u, t in totals.items())]
    lines += [
        "",
        "## Splits",
        "",
        "The development music is split by song with seed 0 (10 % validation, 10 % test);",
        "training-only music joins the training split and never validation or test.",
        "",
        f"- validation ({len(split.validation)}): "
        + ", ".join(sorted(s.path.stem for s in split.validation)),
        f"- test ({len(split.test)}), never trained on: "
        + ", ".join(sorted(s.path.stem for s in split.test)),
        "",
        "## Near-duplicates",
        "",
        "Found by content (landmark matches of clean 10 s excerpts, see the script):",
        "",
    ]
    if dupes:
        lines += ["| track | repeats | excerpts matched (of 3) |", "|---|---|---:|"]
        lines += [f"| {_short(a)} | {_short(b)} | {n} |" for a, b, n in sorted(dupes)]
    else:
        lines.append("none found.")
    midi = TRAINING_AUDIO / "music" / "planetblupi-music-midi"
    renders = sorted(p.stem for p in iter_audio_files([midi])) if midi.is_dir() else []
    lines += [
        "",
        "By name: `planetblupi-music-midi` holds the MIDI versions of the ten",
        "`planetblupi-music-ogg` tracks, rendered with another sound font (other recordings of",
        "the same compositions: for a fingerprint, different songs). Those named like a held-out",
        "song are left out of training: "
        + (", ".join(r for r in renders if r.casefold() in held_out) or "none"),
        "",
    ]
    out.write_text("\n".join(lines), encoding="utf-8")


def _short(source: str) -> str:
    path = Path(source)
    return f"{path.parent.name}/{path.name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--landmark-db", type=Path, default=ROOT / "cache" / "data-card-landmark")
    parser.add_argument("--out", type=Path, default=ROOT / "TRAINING_DATA.md")
    args = parser.parse_args()
    rows = collection_rows()
    music = [f for _, use, files in rows if not use.endswith("noise") for f in files]
    db = LandmarkDB.open_or_create(args.landmark_db)
    with progress_task(False, "s", "landmark index") as task:
        index_landmark_library(db, music, task=task)
    dupes = find_near_duplicates(db)
    write_card(args.out, rows, dupes)
    print(f"{args.out}: {len(rows)} collections, {len(dupes)} near-duplicates", file=sys.stderr)


if __name__ == "__main__":
    main()
