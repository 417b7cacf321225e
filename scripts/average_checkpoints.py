"""Average the weights of checkpoints of one training run into a new checkpoint.

    python scripts/average_checkpoints.py runs/nafp-elu-n128/model.pt \\
        runs/nafp-elu-n192/model.pt --out runs/nafp-elu-avg/model.pt [--weights 1 1]

See ``afp_core.checkpoint.average_checkpoints``; the result is measured like any
candidate (docs/training.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from afp_core.checkpoint import average_checkpoints, save_checkpoint
from afp_core.errors import AfpError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", type=Path, nargs="+", help="two or more checkpoints")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    parser.add_argument(
        "--weights", type=float, nargs="+", help="one per checkpoint (default equal)"
    )
    args = parser.parse_args(argv)
    try:
        model, meta = average_checkpoints(args.checkpoints, args.weights)
        save_checkpoint(args.out, model, meta)
    except AfpError as exc:
        print(f"average_checkpoints: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"average_checkpoints: {args.out}: cannot write: {exc.strerror or exc}", file=sys.stderr
        )
        return 1
    shares = ", ".join(f"{s['file']} x {s['weight']:.2f}" for s in meta["averaged_from"])
    print(f"{args.out}: average of {shares}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
