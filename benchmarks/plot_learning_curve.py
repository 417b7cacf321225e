"""Validation top-1 against training steps, from the history inside checkpoints.

    python benchmarks/plot_learning_curve.py OUT.png LABEL=CHECKPOINT [LABEL=CHECKPOINT...]
        [--offset LABEL=STEPS]

Every checkpoint ``afp train`` writes carries its run's per-epoch history (the retrieval
check of the trainer: single augmented 1 s windows of the validation songs among 300, and
the same shifted by 0.2 s). ``--offset`` shifts a run that started from another one's
weights (``training.init_from``) to continue its x axis. The validation sets of runs with
other noise or impulse-response collections differ: compare the shapes, not the levels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from matplotlib.figure import Figure

from afp_core.checkpoint import load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("runs", nargs="+", metavar="LABEL=CHECKPOINT")
    parser.add_argument("--offset", action="append", default=[], metavar="LABEL=STEPS")
    args = parser.parse_args()
    offsets = {k: int(v) for k, v in (item.rsplit("=", 1) for item in args.offset)}
    figure = Figure(figsize=(7.5, 4.2), dpi=110)
    ax = figure.subplots()
    for i, item in enumerate(args.runs):
        label, path = item.rsplit("=", 1)
        history = load_checkpoint(path).meta["history"]
        steps = [row["step"] + offsets.get(label, 0) for row in history]
        ax.plot(steps, [row["val_top1"] for row in history], color=f"C{i}", label=label)
        ax.plot(
            steps,
            [row["val_top1_shift"] for row in history],
            color=f"C{i}",
            linestyle="--",
            label=f"{label}, shifted 0.2 s",
        )
        print(f"{label}: {len(history)} epochs, last val top-1 {history[-1]['val_top1']:.3f}")
    ax.set_xlabel("training steps")
    ax.set_ylabel("validation top-1 (1 s windows among 300)")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.out, format="png")


if __name__ == "__main__":
    main()
