"""The colours of takes, one mapping for the reports' figures and the app's plots.

Hex strings, which matplotlib and Qt both read: a take looks the same in a report's
accuracy.png as on the app's Inspect and Evaluate pages.
"""

from __future__ import annotations

__all__ = ["OTHER_TAKE_COLOURS", "TAKE_COLOURS", "take_colour"]

# matplotlib's tab:blue, tab:orange, tab:red: low to high, cold to hot
TAKE_COLOURS = {"low": "#1f77b4", "mid": "#ff7f0e", "high": "#d62728"}
# takes with other names (tab:green, purple, brown, pink, cyan, olive)
OTHER_TAKE_COLOURS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def take_colour(label: str, index: int = 0) -> str:
    """The take's colour: low/mid/high fixed, another take by its ``index`` in a palette."""
    return TAKE_COLOURS.get(label, OTHER_TAKE_COLOURS[index % len(OTHER_TAKE_COLOURS)])
