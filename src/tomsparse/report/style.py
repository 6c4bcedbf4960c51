"""One look for every plot: the colours and legend labels of the conditions, and matplotlib
set up for writing files (the Agg backend: no display needed), with figures saved atomically.

matplotlib is imported only when a plot is drawn (it is heavy, and only reports need it).
"""

from __future__ import annotations

from pathlib import Path

from tomsparse.manifest import atomic_path

# The unperturbed model, then the mask modes (tomsparse.masks.MODES).
MODE_COLORS = {"baseline": "#444444", "difference": "#d62728", "random": "#1f77b4",
               "tom-only": "#ff7f0e", "generic-only": "#2ca02c"}
MODE_LABELS = {"baseline": "baseline (unperturbed)",
               "difference": "difference mask (ToM and not generic)",
               "random": "random mask, same count",
               "tom-only": "ToM-only mask",
               "generic-only": "generic-only mask"}
GUIDE_COLOR = "#999999"  # reference lines: 90 degrees, the baseline median


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Lay out ``fig``, write it to ``path`` as PNG (atomically) and close it."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    pyplot().close(fig)
    return Path(path)
