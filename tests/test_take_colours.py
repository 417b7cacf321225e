"""A take has one colour: in the report's figure and on the app's pages alike."""

from __future__ import annotations

import io
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

from afp_core.colours import TAKE_COLOURS, take_colour
from afp_core.protocols import report
from afp_core.protocols.realworld import RealWorldCell, RealWorldResult

pytest.importorskip("PySide6")


def _result(takes: tuple[str, ...]) -> RealWorldResult:
    """A ``RealWorldResult`` with what ``plot_realworld`` reads of one."""
    cells = [
        RealWorldCell(
            system="nafp",
            take=take,
            method="sequence",
            length_s=length,
            queries=10,
            accuracy=0.9,
            offset_accuracy=0.9,
            accuracy_with_rejection=0.9,
            no_match_rate=0.0,
        )
        for take in takes
        for length in (1.0, 2.0)
    ]
    return RealWorldResult(
        system="nafp",
        recogniser={},
        methods=("sequence",),
        session={"folder": "/tmp/session"},
        settings={"lengths_s": [1, 2]},
        songs=[],
        trials=[],
        summary=cells,
        takes=takes,
        notes=[],
        elapsed_s=0.0,
    )


def test_the_report_figure_and_the_app_colour_a_take_alike(monkeypatch):
    from matplotlib.colors import to_hex

    from rig_app.ui.pages import evaluate, inspect

    drawn = {}

    def finish(figure, ax, target):
        drawn.update(
            {line.get_label().split(",")[0]: to_hex(line.get_color()) for line in ax.lines}
        )

    monkeypatch.setattr(report, "_finish", finish)
    report.plot_realworld([_result(("low", "mid", "high", "far"))], io.BytesIO())

    assert drawn["low"] == TAKE_COLOURS["low"] == inspect.take_colour("low", 0)
    for index, take in enumerate(("low", "mid", "high", "far")):
        assert drawn[take] == inspect.take_colour(take, index) == take_colour(take, index)
    assert evaluate.take_colour is inspect.take_colour  # the Evaluate page draws the same
    assert drawn["far"] not in TAKE_COLOURS.values()  # another take: its own colour
