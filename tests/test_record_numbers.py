"""How the Record page and ``afp-rig align`` write an alignment's numbers."""

from __future__ import annotations

from rig_app.jobs import format_number


def test_a_residual_rounding_to_zero_has_no_minus_sign():
    assert format_number(-1e-9, "ms", 3) == "0.000 ms"  # was "-0.000 ms" in the markers table
    assert format_number(-0.0012, "ms", 3) == "-0.001 ms"
    assert format_number(None, "dB", 1) == "—" and format_number(float("nan"), "dB", 1) == "—"
