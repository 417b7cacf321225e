"""How the Record page writes an alignment's numbers."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("PySide6")


def test_a_residual_rounding_to_zero_has_no_minus_sign():
    from rig_app.ui.pages.record import _number

    assert _number(-1e-9, "ms", 3) == "0.000 ms"  # was "-0.000 ms" in the markers table
    assert _number(-0.0012, "ms", 3) == "-0.001 ms"
    assert _number(None, "dB", 1) == "—" and _number(float("nan"), "dB", 1) == "—"
