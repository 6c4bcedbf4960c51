"""The one owner of an analysis folder's layout (``tomsparse analyze --out``, a run's
``analysis/``): every file name is spelled here, and the analyses, their page and the command
line ask it for paths."""

from __future__ import annotations

from pathlib import Path

from tomsparse.sweep.folder import RunFolder


class AnalysisFolder:
    """Paths of one analysis folder: a CSV per table, ``headline.json``, one PNG per plot,
    ``analysis.html``, ``analysis_manifest.json`` and the report sections a run's report
    embeds (``RunFolder.REPORT_SECTIONS``, which ``RunFolder`` reads back)."""

    PAGE = "analysis.html"
    HEADLINE = "headline.json"
    MANIFEST = "analysis_manifest.json"
    PLOTS = {"mask_anatomy": "plot_mask_anatomy.png",
             "dominant_frequencies": "plot_dominant_frequencies.png",
             "attention_sinks": "plot_attention_sinks.png",
             "qk_geometry": "plot_qk_geometry.png",
             "massive_activations": "plot_massive_activations.png"}

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def table(self, name: str) -> Path:
        """The CSV of one analysis table (``analysis.tables``' names)."""
        return self.root / f"{name}.csv"

    def plot(self, name: str) -> Path:
        return self.root / self.PLOTS[name]

    @property
    def page(self) -> Path:
        return self.root / self.PAGE

    @property
    def headline(self) -> Path:
        return self.root / self.HEADLINE

    @property
    def manifest(self) -> Path:
        return self.root / self.MANIFEST

    @property
    def report_sections(self) -> Path:
        return self.root / RunFolder.REPORT_SECTIONS
