"""The plots of a sweep against m and against perplexity, with their intervals.

* ``draw_change_vs_m`` / ``plot_change_vs_m``: the ToM change against m (log axis), one panel
  per family, the difference mask against a band for the random masks (the paper's
  random-control figure), from ``sweep/specificity.csv``: 95% t-intervals over clusters, a
  seed group's holding the mask-to-mask variance too (``tomsparse.stats``).
* ``draw_perplexity_vs_m`` / ``plot_perplexity_vs_m``: the perplexity ratio against m, with
  its interval over text windows.
* ``levels_from_summary`` / ``draw_levels`` / ``plot_levels``: one line per mode over m from
  a sweep summary (no intervals; the fallback for a sweep without a baseline point).
* ``draw_specificity`` / ``plot_specificity``: ToM change against the log perplexity ratio
  for every point and seed group of ``sweep/specificity.csv`` (``tomsparse.judge.specificity``).

Each ``draw_*`` draws into given matplotlib axes (and can be inspected); each ``plot_*``
writes a PNG.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from tomsparse.data.tasks.model import REFERENCE_FAMILIES
from tomsparse.report.style import (
    GUIDE_COLOR,
    mode_color,
    mode_label,
    mode_marker,
    pyplot,
    save_figure,
)
from tomsparse.report.tables import perplexity_ratio
from tomsparse.sweep.folder import BASELINE_MODE, SweepFolder, group_label, point_label
from tomsparse.judge.specificity import ABOVE, POOL_ABOVE, POOL_ALL

# The modes drawn first (and in this order); any other mode follows, sorted by name.
PLOT_MODES = ("difference", "tom-only", "generic-only", "random")
LEVEL_COLUMNS = ("label", "mode", "seed", "m", "n_seeds", "value", "lo", "hi", "change",
                 "change_lo", "change_hi", "n_tasks", "families")


def mode_order(modes) -> list[str]:
    """``modes`` without the baseline, the known ones first."""
    modes = {str(m) for m in modes} - {BASELINE_MODE}
    return [m for m in PLOT_MODES if m in modes] + sorted(modes - set(PLOT_MODES))


# ----------------------------------------------------------------------------- levels

def levels_from_summary(summary: pd.DataFrame, column: str) -> pd.DataFrame:
    """The same table from a sweep summary (one value per point, no intervals): for a mode
    with several seeds at an m, a seed group whose value is their mean and whose lo / hi are
    their min / max."""
    rows = []
    for r in summary.itertuples():
        value = getattr(r, column, math.nan)
        rows.append({"label": point_label(r.mode, r.seed, r.m), "mode": r.mode, "seed": r.seed,
                     "m": r.m, "n_seeds": 1, "value": value, "lo": math.nan, "hi": math.nan,
                     "change": math.nan, "change_lo": math.nan, "change_hi": math.nan,
                     "n_tasks": math.nan, "families": ""})
    for (mode, m), grp in summary.groupby(["mode", "m"], sort=True):
        if len(grp) < 2 or column not in grp:
            continue
        rows.append({"label": group_label(mode, m), "mode": mode, "seed": pd.NA, "m": m,
                     "n_seeds": len(grp), "value": grp[column].mean(), "lo": grp[column].min(),
                     "hi": grp[column].max(), "change": math.nan, "change_lo": math.nan,
                     "change_hi": math.nan, "n_tasks": math.nan, "families": ""})
    out = pd.DataFrame(rows, columns=list(LEVEL_COLUMNS))
    return out[out["value"].notna()]


def mode_lines(levels: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{mode: rows over m, the baseline at m = 0 first}: per m the seed group if there is one,
    else the single point."""
    levels = levels.copy()
    levels["group"] = levels["n_seeds"] > 1
    base = levels[levels["mode"] == BASELINE_MODE].sort_values(["group", "seed"]).head(1)
    out = {}
    for mode in mode_order(levels["mode"].unique()):
        sub = levels[levels["mode"] == mode]
        picked = (sub.sort_values(["m", "group", "seed"], ascending=[True, False, True])
                  .drop_duplicates("m"))
        out[mode] = pd.concat([base, picked]).sort_values("m").reset_index(drop=True)
    return out


def band_limits(rows: pd.DataFrame, interval: str) -> tuple[np.ndarray, np.ndarray]:
    """The band drawn around a mode's line: ``level`` (lo, hi) or ``change`` (the paired
    change interval placed on the line: baseline level + change_lo .. change_hi)."""
    if interval == "change":
        base = (rows["value"] - rows["change"]).to_numpy(float)
        return base + rows["change_lo"].to_numpy(float), base + rows["change_hi"].to_numpy(float)
    return rows["lo"].to_numpy(float), rows["hi"].to_numpy(float)


def draw_levels(ax, levels: pd.DataFrame, *, ylabel: str, title: str, log_y: bool = False,
                band: str = "95% interval", interval: str = "level",
                seed_dots: bool = True) -> None:
    """One line per mode over m (x in units of 1e-6) through the seed groups, a shaded
    ``band`` (``band_limits(rows, interval)``) where known, and the single seeds of a group as
    small dots. With ``interval="change"`` the baseline (m = 0) gets an error bar: the 95%
    interval of its level (lo, hi)."""
    lines = mode_lines(levels)
    for mode, rows in lines.items():
        color = mode_color(mode)
        x = rows["m"].to_numpy(float) * 1e6
        label = mode_label(mode)
        k = int(rows["n_seeds"].max()) if len(rows) else 1
        if k > 1:
            label += f" (mean of {k} seeds)"
        ax.plot(x, rows["value"], marker=mode_marker(mode), ms=4, color=color, label=label,
                ls="--" if mode == "random" else "-")
        lo, hi = band_limits(rows, interval)
        if np.isfinite(lo).any():
            ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0)
        if seed_dots and k > 1:
            single = levels[(levels["mode"] == mode) & (levels["n_seeds"] == 1)]
            ax.plot(single["m"] * 1e6, single["value"], ls="none", marker=".", ms=3,
                    color=color, alpha=0.6)
    base = levels[levels["mode"] == BASELINE_MODE].head(1)
    if interval == "change" and len(base) and np.isfinite(base[["lo", "hi"]].to_numpy(float)
                                                          ).all():
        b = base.iloc[0]
        ax.errorbar([0.0], [b["value"]], yerr=[[b["value"] - b["lo"]], [b["hi"] - b["value"]]],
                    fmt="o", color=mode_color("baseline"), ms=4, capsize=3,
                    label="baseline level, 95% t-interval over clusters")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("m, fraction of each matrix perturbed (x 1e-6)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both" if log_y else "major")
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        if band:
            from matplotlib.patches import Patch
            handles.append(Patch(color=GUIDE_COLOR, alpha=0.3))
            labels.append(f"shaded: {band}")
        ax.legend(handles, labels, fontsize=7)


def plot_levels(levels: pd.DataFrame, path: str | Path, **options) -> Path:
    """``draw_levels`` into a new figure, written to ``path``."""
    fig, ax = pyplot().subplots(figsize=(6.4, 4.0), dpi=110)
    draw_levels(ax, levels, **options)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- specificity

SPEC_METRICS = (("tom_margin_change_adj", "ToM change: false-belief margin change, "
                                          "bias-adjusted (nats)"),
                ("belief_gap_margin", "belief gap: false-belief minus true-belief "
                                      "control margin change (nats)"))


def specificity_pool(baseline: pd.DataFrame | None) -> str:
    """The pool of the families that pass their controls when one does, else ``all``."""
    if baseline is not None and "state" in baseline and (baseline["state"]
                                                         == ABOVE).any():
        return POOL_ABOVE
    return POOL_ALL


def baseline_perplexity(sweep_dir: str | Path) -> float:
    """The perplexity of the sweep's m = 0 point, NaN if none."""
    return SweepFolder(sweep_dir).baseline_perplexity()


def specificity_points(points: pd.DataFrame, metric: str, pool: str,
                       baseline_ppl: float = math.nan) -> pd.DataFrame:
    """The rows of ``metric`` in ``pool`` drawn in the specificity plot: every point and seed
    group, a seed group replacing its member points; with ``log_ppl_ratio`` =
    log(perplexity / baseline perplexity) (from ``ppl_change``, else ``baseline_ppl``)."""
    rows = points[(points["family"] == pool) & (points["metric"] == metric)
                  & (points["mode"] != BASELINE_MODE)].copy()
    if rows.empty:
        return rows.assign(log_ppl_ratio=pd.Series(dtype=float))
    n_seeds = rows["n_seeds"] if "n_seeds" in rows else pd.Series(1, index=rows.index)
    grouped = rows[n_seeds > 1]
    member = pd.Series(False, index=rows.index)
    for g in grouped.itertuples():
        member |= ((rows["mode"] == g.mode) & np.isclose(rows["m"].astype(float), g.m)
                   & (n_seeds == 1))
    rows = rows[~member]
    ratio = (1.0 + rows["ppl_change"].astype(float)) if "ppl_change" in rows else np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        log_ratio = np.log(ratio)
        fallback = np.log(rows["perplexity"].astype(float) / baseline_ppl)
    rows["log_ppl_ratio"] = np.where(np.isfinite(log_ratio), log_ratio, fallback)
    return rows.sort_values(["mode", "m"]).reset_index(drop=True)


def annotate_apart(ax, notes, step: float = 8.0, near: float = 14.0) -> None:
    """Label points ((x, y, text, color) in data units) next to them, a label moved up by
    ``step`` points for each earlier label within ``near`` pixels, so they do not overlap."""
    ax.autoscale_view()
    placed = []
    for x, y, text, color in notes:
        px = ax.transData.transform((x, y))
        shift = sum(1 for q in placed if abs(q[0] - px[0]) < near * 4 and abs(q[1] - px[1]) < near)
        placed.append(px)
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 3 + step * shift),
                    fontsize=6, color=color)


def _pool_families(rows: pd.DataFrame) -> str:
    notes = rows["note"].dropna().astype(str) if "note" in rows else pd.Series(dtype=str)
    notes = [n.removeprefix("families: ") for n in notes if n.startswith("families: ")]
    return notes[0] if notes else ""


def draw_specificity(axes, points: pd.DataFrame, baseline: pd.DataFrame | None = None,
                     baseline_ppl: float = math.nan) -> dict:
    """ToM change (left) and belief gap (right) against log(perplexity / baseline) for every
    point and seed group, one error bar (its 95% interval) per point, coloured and marked by
    mode and annotated with m. Returns {"pool", "metrics": {metric: drawn rows}}."""
    pool = specificity_pool(baseline)
    drawn = {}
    for ax, (metric, ylabel) in zip(axes, SPEC_METRICS):
        rows = specificity_points(points, metric, pool, baseline_ppl)
        rows = rows[np.isfinite(rows["value"].astype(float))
                    & np.isfinite(rows["log_ppl_ratio"].astype(float))] if len(rows) else rows
        drawn[metric] = rows
        seen, notes = set(), []
        for r in rows.itertuples():
            lo, hi = float(r.lo), float(r.hi)
            yerr = None
            if math.isfinite(lo) and math.isfinite(hi):
                yerr = [[max(r.value - lo, 0.0)], [max(hi - r.value, 0.0)]]
            k = int(getattr(r, "n_seeds", 1) or 1)
            label = None
            if r.mode not in seen:
                seen.add(r.mode)
                label = mode_label(r.mode)
            ax.errorbar([r.log_ppl_ratio], [r.value], yerr=yerr, fmt=mode_marker(r.mode),
                        color=mode_color(r.mode), ms=5, capsize=2, lw=1, label=label)
            notes.append((r.log_ppl_ratio, r.value, f"m={r.m:.2g}"
                          + (f" ({k} seeds)" if k > 1 else ""), mode_color(r.mode)))
        ax.margins(x=0.12)
        annotate_apart(ax, notes)
        ax.axhline(0.0, color=GUIDE_COLOR, lw=1)
        ax.axvline(0.0, color=GUIDE_COLOR, lw=0.8, ls=":")
        ax.set_xlabel("log(perplexity / baseline perplexity)")
        ax.set_ylabel(ylabel, fontsize=8)
        fams = _pool_families(rows)
        n = int(rows["n_tasks"].max()) if len(rows) and rows["n_tasks"].notna().any() else 0
        title = ("ToM change" if metric == "tom_margin_change_adj" else "Belief gap")
        title += f"; families {pool}" + (f" ({fams})" if fams else "") + f", n = {n} tasks"
        if rows.empty:
            ax.text(0.5, 0.5, "nothing to draw (no finite value in this pool)",
                    transform=ax.transAxes, ha="center", fontsize=8, color=GUIDE_COLOR)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        if seen:
            ax.legend(fontsize=7)
    return {"pool": pool, "metrics": drawn}


def plot_specificity(sweep_dir: str | Path, path: str | Path | None = None) -> Path | None:
    """Draw ``draw_specificity`` from ``sweep_dir``'s specificity.csv and
    specificity_baseline.csv into ``path`` (default ``sweep_dir/plot_specificity.png``);
    None when the sweep has no specificity.csv."""
    folder = SweepFolder(sweep_dir)
    points_csv = folder.specificity("points")
    if not points_csv.is_file():
        return None
    points = pd.read_csv(points_csv)
    base_csv = folder.specificity("baseline")
    baseline = pd.read_csv(base_csv) if base_csv.is_file() else None
    fig, axes = pyplot().subplots(1, 2, figsize=(12.0, 4.6), dpi=110)
    draw_specificity(axes, points, baseline, folder.baseline_perplexity())
    return save_figure(fig, path or folder.plot("specificity"))


# ----------------------------------------------------------------------------- change vs m

# The change a point made, per cluster, as ``sweep/specificity.csv`` holds it (t-intervals
# over clusters, with the mask-to-mask variance for a seed group): (column, axis label).
CHANGE_METRICS = {
    "margin": ("tom_margin_change_adj", "false-belief margin change (nats)"),
    "accuracy": ("tom_accuracy_change", "false-belief accuracy change"),
}


def _interval_line(ax, x, y, lo, hi, mode: str, **style) -> None:
    """A mode's line through (x, y) with error bars from lo to hi (none where unknown)."""
    yerr = np.vstack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)])
    ax.errorbar(x, y, yerr=np.where(np.isfinite(yerr), yerr, 0.0), marker=mode_marker(mode),
                ms=4, capsize=2, lw=1.2, color=mode_color(mode), **style)


def _log_m_axis(ax, m_values) -> None:
    """A log m axis ticked at the m values drawn, with room on either side."""
    ax.set_xscale("log")
    ms = np.unique(np.asarray(m_values, dtype=float))
    ax.set_xticks(ms, [f"{m:.2g}" for m in ms])
    ax.minorticks_off()
    ax.set_xlim(ms.min() / 1.6, ms.max() * 1.6)


def change_families(points: pd.DataFrame) -> list[str]:
    """The task families of ``points`` (pools left out), in the reference order."""
    present = set(points["family"].astype(str)) - {POOL_ABOVE, POOL_ALL}
    return [f for f in REFERENCE_FAMILIES if f in present] + sorted(
        present - set(REFERENCE_FAMILIES))


def draw_change_vs_m(axes, points: pd.DataFrame, metric: str, families: list[str],
                     modes: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """One panel per family: the change of ``metric`` against m (log axis) for each mode of
    ``modes`` (all when None), its 95% interval as error bars; the random masks as a shaded
    band (their seed group's interval where several seeds ran) around a dashed line; 0 = the
    unperturbed model. Returns {family: drawn rows}."""
    drawn = {}
    for ax, family in zip(axes, families):
        rows = specificity_points(points, metric, family)
        rows = rows[np.isfinite(rows["value"].astype(float)) & (rows["m"].astype(float) > 0)]
        if modes is not None:
            rows = rows[rows["mode"].isin(modes)]
        drawn[family] = rows
        for mode in mode_order(rows["mode"].unique()):
            sub = rows[rows["mode"] == mode].sort_values("m")
            x = sub["m"].to_numpy(float)
            y, lo, hi = (sub[c].to_numpy(float) for c in ("value", "lo", "hi"))
            k = int(sub["n_seeds"].max()) if "n_seeds" in sub and len(sub) else 1
            label = mode_label(mode) + (f" (up to {k} seeds)" if k > 1 else "")
            color = mode_color(mode)
            if mode == "random":
                ax.fill_between(x, lo, hi, color=color, alpha=0.22, lw=0)
                ax.plot(x, y, ls="--", marker=mode_marker(mode), ms=4, color=color,
                        label=label + ", 95% band")
            else:
                _interval_line(ax, x, y, lo, hi, mode, label=label)
        ax.axhline(0.0, color=mode_color("baseline"), lw=1, label="unperturbed model")
        if len(rows):
            _log_m_axis(ax, rows["m"])
        else:
            ax.text(0.5, 0.5, "nothing to draw", transform=ax.transAxes, ha="center",
                    fontsize=8, color=GUIDE_COLOR)
        n = int(rows["n_clusters"].max()) if len(rows) and "n_clusters" in rows else 0
        ax.set_title(f"{family} (n = {n} clusters)", fontsize=9)
        ax.set_xlabel("m (fraction of each matrix perturbed, log axis)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(CHANGE_METRICS_LABELS.get(metric, metric), fontsize=8)
    return drawn


CHANGE_METRICS_LABELS = {column: label for column, label in CHANGE_METRICS.values()}


def plot_change_vs_m(sweep_dir: str | Path, kind: str, path: str | Path,
                     modes: list[str] | None = None) -> Path | None:
    """``draw_change_vs_m`` for ``kind`` (``margin`` or ``accuracy``) from the sweep's
    specificity.csv, one panel per family and the legend below them; None when there is
    nothing to draw (no specificity.csv, or no finite value: e.g. margins under generation)."""
    points_csv = SweepFolder(sweep_dir).specificity("points")
    if not points_csv.is_file():
        return None
    points = pd.read_csv(points_csv)
    if points.empty:
        return None
    metric = CHANGE_METRICS[kind][0]
    sub = points[(points["metric"] == metric) & (points["mode"] != BASELINE_MODE)]
    if not np.isfinite(sub["value"].astype(float)).any():
        return None
    families = change_families(sub)
    fig, axes = pyplot().subplots(1, len(families), figsize=(3.7 * len(families) + 0.6, 3.9),
                                  dpi=110, sharey=True, squeeze=False)
    draw_change_vs_m(list(axes[0]), sub, metric, families, modes)
    handles = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center",
               ncol=min(len(handles), 4), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return save_figure(fig, path, layout=False)


def draw_perplexity_vs_m(ax, points: pd.DataFrame, modes: list[str] | None = None
                         ) -> pd.DataFrame:
    """The perplexity ratio (point / unperturbed) against m, both on log axes, with its 95%
    interval over text windows where the table has one (``tables.perplexity_ratio``). Returns
    the drawn rows (with columns ratio, ratio_lo, ratio_hi)."""
    family = POOL_ALL if (points["family"] == POOL_ALL).any() else points["family"].iloc[0]
    metric = points["metric"].iloc[0]
    rows = specificity_points(points, metric, family)
    ratios = [perplexity_ratio(r) for _, r in rows.iterrows()]
    rows = rows.assign(ratio=[r[0] for r in ratios], ratio_lo=[r[1] for r in ratios],
                       ratio_hi=[r[2] for r in ratios])
    rows = rows[(rows["m"].astype(float) > 0) & np.isfinite(rows["ratio"])]
    if modes is not None:
        rows = rows[rows["mode"].isin(modes)]
    for mode in mode_order(rows["mode"].unique()):
        sub = rows[rows["mode"] == mode].sort_values("m")
        y = sub["ratio"].to_numpy(float)
        lo, hi = sub["ratio_lo"].to_numpy(float), sub["ratio_hi"].to_numpy(float)
        _interval_line(ax, sub["m"].to_numpy(float), y, lo, hi, mode, label=mode_label(mode),
                       ls="--" if mode == "random" else "-")
    ax.axhline(1.0, color=mode_color("baseline"), lw=1, label="unperturbed model")
    if len(rows):
        _log_m_axis(ax, rows["m"])
    ax.set_yscale("log")
    from matplotlib.ticker import ScalarFormatter

    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel("m (fraction of each matrix perturbed, log axis)", fontsize=8)
    ax.set_ylabel("perplexity / unperturbed perplexity (log axis)", fontsize=8)
    ax.set_title("Perplexity against m", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return rows


def plot_perplexity_vs_m(sweep_dir: str | Path, path: str | Path,
                         modes: list[str] | None = None) -> Path | None:
    """``draw_perplexity_vs_m`` from the sweep's specificity.csv; None without one or when
    it has no masked point with a perplexity."""
    points_csv = SweepFolder(sweep_dir).specificity("points")
    if not points_csv.is_file():
        return None
    points = pd.read_csv(points_csv)
    points = points[points["mode"] != BASELINE_MODE]
    if points.empty:
        return None
    points = points[points["metric"] == points["metric"].iloc[0]]
    fig, ax = pyplot().subplots(figsize=(7.6, 3.6), dpi=110)
    if draw_perplexity_vs_m(ax, points, modes).empty:
        pyplot().close(fig)
        return None
    return save_figure(fig, path)
