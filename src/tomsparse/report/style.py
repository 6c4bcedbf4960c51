"""One look for every plot: the colours, markers and legend labels of the conditions, and
matplotlib set up for writing files (the Agg backend: no display needed), with figures saved
atomically.

matplotlib is imported only when a plot is drawn (it is heavy, and only reports need it).
"""

from __future__ import annotations

import zlib
from pathlib import Path

from tomsparse.files import atomic_path

# The unperturbed model, then the mask modes (tomsparse.masks.MODES).
MODE_COLORS = {"baseline": "#444444", "difference": "#d62728", "random": "#1f77b4",
               "tom-only": "#ff7f0e", "generic-only": "#2ca02c"}
MODE_LABELS = {"baseline": "baseline (unperturbed)",
               "difference": "difference mask (ToM and not generic)",
               "random": "random mask, same count",
               "tom-only": "ToM-only mask",
               "generic-only": "generic-only mask"}
MODE_MARKERS = {"baseline": "o", "difference": "o", "random": "s", "tom-only": "^",
                "generic-only": "v"}
GUIDE_COLOR = "#999999"  # reference lines: 90 degrees, the baseline median

# Colours and markers for modes not named above (e.g. random-fraction, difference-p4): picked
# from the mode's name, so a mode keeps its look from one report to the next.
EXTRA_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
                "#393b79", "#637939", "#8c6d31", "#843c39")
EXTRA_MARKERS = ("D", "P", "X", "*", "h", "<", ">", "p")


def _pick(mode: str, choices: tuple[str, ...]) -> str:
    return choices[zlib.crc32(mode.encode()) % len(choices)]


def mode_color(mode: str) -> str:
    """The colour of ``mode``: its own if it has one, else a stable pick from its name."""
    return MODE_COLORS.get(mode) or _pick(mode, EXTRA_COLORS)


def mode_marker(mode: str) -> str:
    """The marker of ``mode`` (as ``mode_color``)."""
    return MODE_MARKERS.get(mode) or _pick(mode, EXTRA_MARKERS)


def mode_label(mode: str) -> str:
    """The legend label of ``mode``; an unknown mode is labelled by its name."""
    return MODE_LABELS.get(mode, f"{mode} mask")


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, layout: bool = True) -> Path:
    """Lay out ``fig`` (unless ``layout`` is False: the caller laid it out), write it to
    ``path`` as PNG (atomically) and close it."""
    if layout:
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    pyplot().close(fig)
    return Path(path)
