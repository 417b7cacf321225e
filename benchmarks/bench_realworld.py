"""Neural vs landmark on real-world takes through the virtual room (paper Tables 2 and 4).

    nice -n 10 python benchmarks/bench_realworld.py [--split validation|test]
        [--model CKPT ...] [--rooms demo harsh] [--lengths 1 2 3 5 10 15]
        [--hub-neighbours N] [--out DIR]

Everything is made once and reused on a rerun (``--out``, default
``runs/bench-realworld``):

1. **Sessions**: the development songs of the ``--split`` (the songs the training split
   with seed 0 keeps out of training: 10 validation songs to tune on, 10 test songs to
   report on), a 40 s excerpt of each from 30 % into the song, loudness-normalised and
   joined with sweep markers, with a speech-babble noise program (as ``afp-rig demo``).
   Three takes per room, simulated offline (offset 0.7 s, drift 35 ppm) and aligned by
   their markers:
   - ``demo``: the demo's room (``rig_app.room.VirtualRoom()``; noise speaker at 3.0 /
     1.5 / 0.5 m, RT60 0.27 s, clean speaker);
   - ``harsh``: ``benchmarks/rooms/harsh.json``: a reverberant room (RT60 0.9 s), the
     noise speaker closer and louder (music-to-noise about +5 / 0 / -5 dB at the
     microphone) and an overdriven laptop speaker.
2. **Library**: the 101 development tracks plus the training-only music of
   ``datasets/fetch_training_audio.sh`` when it is there (about 230 songs, 20 h), so
   that hash collisions and near neighbours have a realistic catalogue to come from.
3. **Databases**: one neural database per ``--model`` (default: the shipped model) and
   one landmark database, all of the same library.
4. **Evaluation**: the real-world protocol, every database on the same takes, both
   neural rules, the landmark rule and each neural database fused with the landmark one
   (``afp_core.fusion``); song accuracy and offset accuracy (no rejection,
   the paper's measure); the "no match" trade-off: each database's calibrated threshold
   (its measured false-match rate on impostors: the same queries answered without their
   song) and the operating point at 1 % false matches. Tables are printed and each
   report is saved under ``<out>/reports/<session>-<models>``.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

from afp_core.audio import iter_audio_files, probe_audio
from afp_core.checkpoint import load_checkpoint
from afp_core.config import IndexConfig
from afp_core.devdata import find_dev_music, find_training_music
from afp_core.fusion import FusedRecogniser
from afp_core.indexing import index_library, open_database_for_indexing
from afp_core.ingest import read_tags
from afp_core.landmark import LandmarkDB, LandmarkRecogniser, index_landmark_library
from afp_core.protocols.realworld import RealWorldSettings, plan_realworld, run_realworld_plan
from afp_core.protocols.report import format_realworld_table, write_realworld_report
from afp_core.protocols.sessions import SESSION_FILE, read_session
from afp_core.recogniser import NeuralRecogniser, open_recogniser
from afp_core.shipped import default_checkpoint_path
from afp_core.tasks import progress_task
from afp_core.training.data import songs_from_paths, split_items
from rig_app.demo import DemoOptions, DemoSong, build_demo_session
from rig_app.jobs import record_or_simulate_takes
from rig_app.room import VirtualRoom
from rig_app.session import Session

ROOMS_DIR = Path(__file__).resolve().parent / "rooms"
EXCERPT_S = 40.0


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def held_out_songs(split: str) -> list[Path]:
    """The development songs of ``split`` under the training split (shares 0.1, seed 0)."""
    songs = songs_from_paths(find_dev_music())
    parts = split_items(songs, 0.1, 0.1, 0, key=lambda s: s.key)
    return [s.path for s in getattr(parts, split)]


def load_room(name: str) -> VirtualRoom:
    return VirtualRoom() if name == "demo" else VirtualRoom.load(ROOMS_DIR / f"{name}.json")


def make_session(folder: Path, split: str, room: VirtualRoom) -> Path:
    """The session of ``split``'s songs through ``room``, unless it is already complete."""
    if (folder / SESSION_FILE).exists():
        stored = read_session(folder).takes
        if len(stored) == len(room.labels) and all(t.aligned_file for t in stored):
            return folder
    songs = []
    for path in held_out_songs(split):
        duration = probe_audio(path).duration_s
        title, artist = read_tags(path)
        start = round(min(0.3 * duration, max(duration - EXCERPT_S - 5, 0.0)), 1)
        songs.append(DemoSong(path, title, artist, start))
    options = DemoOptions(excerpt_s=EXCERPT_S, quiet=True)
    session: Session = build_demo_session(folder, songs, options, log)
    with progress_task(False, "s", f"simulating {folder.name}") as task:
        takes = record_or_simulate_takes(task, session, room, live=False, replace=True)
    for take in takes:
        log(f"  take {take.describe()}")
    return folder


def library() -> list[Path]:
    return [*find_dev_music(), *iter_audio_files(find_training_music())]


def neural_database(out: Path, model: Path, music: list[Path], config: IndexConfig) -> Path:
    checkpoint = load_checkpoint(model)
    suffix = f"-d{config.density}" if config.density != IndexConfig.density else ""
    if config.hub_neighbours != IndexConfig.hub_neighbours:
        suffix += f"-hub{config.hub_neighbours}"
    db_dir = out / f"db-{checkpoint.sha256[:12]}{suffix}"
    db, checkpoint = open_database_for_indexing(db_dir, model, config, on_notice=log)
    with progress_task(False, "s", f"indexing {db_dir.name}") as task:
        result = index_library(db, checkpoint.model, music, task=task)
    log(result.summary())
    return db_dir


def landmark_database(out: Path, music: list[Path]) -> Path:
    db_dir = out / "db-landmark"
    db = LandmarkDB.open_or_create(db_dir)
    with progress_task(False, "s", "indexing db-landmark") as task:
        result = index_landmark_library(db, music, task=task)
    log(result.summary())
    return db_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("validation", "test"), default="test")
    parser.add_argument("--model", type=Path, action="append", help="checkpoint(s)")
    parser.add_argument("--rooms", nargs="+", default=["demo", "harsh"])
    parser.add_argument("--lengths", nargs="+", type=float, default=[1, 2, 3, 5, 10, 15])
    parser.add_argument("--no-landmark", action="store_true", help="neural databases only")
    parser.add_argument(
        "--density", type=int, default=IndexConfig.density, help="stored windows per query hop"
    )
    parser.add_argument(
        "--hub-neighbours",
        type=int,
        default=IndexConfig.hub_neighbours,
        help="hub-aware scores (afp_core.hubness); 0: plain similarity",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench-realworld"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    out: Path = args.out
    models = args.model or [default_checkpoint_path()]
    music = library()
    log(f"library: {len(music)} songs")
    config = IndexConfig(density=args.density, hub_neighbours=args.hub_neighbours)
    dbs = [neural_database(out, m, music, config) for m in models]
    if not args.no_landmark:
        dbs.append(landmark_database(out, music))
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}; library {len(music)} songs")  # fmt: skip
    for room_name in args.rooms:
        folder = make_session(out / f"{args.split}-{room_name}", args.split, load_room(room_name))
        session = read_session(folder)
        recognisers = [open_recogniser(db) for db in dbs]
        if not args.no_landmark:  # each neural database fused with the landmark one
            landmark = recognisers[-1]
            assert isinstance(landmark, LandmarkRecogniser)  # landmark_database's, last
            for neural in recognisers[:-1]:
                assert isinstance(neural, NeuralRecogniser)  # neural_database's
                recognisers.append(FusedRecogniser(neural, landmark))
        settings = RealWorldSettings(lengths_s=tuple(args.lengths))
        plan = plan_realworld(recognisers, session, settings)
        with progress_task(False, "s", f"evaluating {folder.name}") as task:
            results = run_realworld_plan(plan, task=task)
        name = "-".join(db.name.removeprefix("db-") for db in dbs)
        report = write_realworld_report(
            out / "reports" / f"{folder.name}-{name}", results, extra={"command": sys.argv}
        )
        print(f"\n## {folder.name} ({len(session.songs)} songs)\n")
        print(format_realworld_table(results))
        log(f"report: {report}")
        del recognisers


if __name__ == "__main__":
    main()
