"""Write the seeded synthetic impulse-response collection used for training.

    .venv/bin/python datasets/make_synthetic_irs.py [--out datasets/cache/irs/synthetic-s0]

Room IRs (exponentially decaying noise with early reflections, RT60 0.2-1.0 s) and
microphone/speaker responses (band-pass filters with random corners and resonances) as
8 kHz float WAV files. `afp train` does the same on its own when no IR folder is given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from afp_core.training.irs import write_synthetic_irs

DEFAULT_OUT = Path(__file__).resolve().parent / "cache" / "irs" / "synthetic-s0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--rooms", type=int, default=120, help="room impulse responses")
    parser.add_argument("--mics", type=int, default=60, help="microphone responses")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args()
    collection = write_synthetic_irs(args.out, args.rooms, args.mics, args.seed)
    print(f"{args.out}: {len(collection.room)} room and {len(collection.mic)} microphone IRs")


if __name__ == "__main__":
    main()
