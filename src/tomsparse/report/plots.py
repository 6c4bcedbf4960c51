"""The plots of a sweep against m and against perplexity, with their intervals.

* ``level_intervals``: the headline ToM level of every point (the mean over the reference
  families of each family's mean prompt margin or accuracy, as ``sweep.summary.with_tom_columns``)
  with a 95% task-cluster bootstrap interval; seeds of one mode and m are replicates (the
  seed group ``<mode>_sall_m<m>``).
* ``draw_levels`` / ``plot_levels``: one line per mode over m, a shaded interval band.
* ``draw_specificity`` / ``plot_specificity``: ToM change against the log perplexity ratio
  for every point and seed group of ``sweep/specificity.csv`` (``tomsparse.sweep.specificity``).

Each ``draw_*`` draws into given matplotlib axes (and can be inspected); each ``plot_*``
writes a PNG.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from tomsparse.data.tasks.model import REFERENCE_FAMILIES
from tomsparse.errors import UserError
from tomsparse.report.style import (
    GUIDE_COLOR,
    mode_color,
    mode_label,
    mode_marker,
    pyplot,
    save_figure,
)
from tomsparse.stats.bootstrap import family_weights, percentile_interval, seed_weights
from tomsparse.sweep.folder import BASELINE_MODE, SweepFolder, group_label, point_label
from tomsparse.sweep.roles import natural_key
from tomsparse.sweep.specificity import POOL_ABOVE, POOL_ALL

# The modes drawn first (and in this order); any other mode follows, sorted by name.
PLOT_MODES = ("difference", "tom-only", "generic-only", "random")
LEVEL_KINDS = ("margin", "accuracy", "cell_accuracy")
LEVEL_DRAWS = 1000
LEVEL_COLUMNS = ("label", "mode", "seed", "m", "n_seeds", "value", "lo", "hi", "change",
                 "change_lo", "change_hi", "n_tasks", "families")


def mode_order(modes) -> list[str]:
    """``modes`` without the baseline, the known ones first."""
    modes = {str(m) for m in modes} - {BASELINE_MODE}
    return [m for m in PLOT_MODES if m in modes] + sorted(modes - set(PLOT_MODES))


# ----------------------------------------------------------------------------- levels

def _unit_values(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """(family, task_id, value) rows whose per-family mean is the level of ``kind``."""
    frame = frame.copy()
    frame["family"] = frame["family"].astype(str)
    frame["task_id"] = frame["task_id"].astype(str)
    correct = frame["correct"]
    if correct.dtype == object or str(correct.dtype).startswith(("str", "string")):
        correct = correct.astype(str).str.strip().str.lower().map(
            {"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0})
    frame["correct"] = pd.to_numeric(correct, errors="coerce").astype(float)
    if kind == "margin":
        frame["value"] = pd.to_numeric(frame.get("margin"), errors="coerce")
        return frame[["family", "task_id", "value"]]
    if kind == "accuracy":
        frame["value"] = frame["correct"]
        return frame[["family", "task_id", "value"]]
    # cell accuracy: a (task, rep, cell) is right when all its probes are
    cell = "cell" if "cell" in frame else "scenario"
    rep = "rep" if "rep" in frame else None
    keys = ["family", "task_id"] + ([rep] if rep else []) + [cell]
    cells = frame.groupby(keys, sort=False)["correct"].min().reset_index()
    return cells.rename(columns={"correct": "value"})[["family", "task_id", "value"]]


def level_intervals(sweep_dir: str | Path, kind: str = "margin", *, draws: int = LEVEL_DRAWS,
                    seed: int = 0, families=REFERENCE_FAMILIES) -> pd.DataFrame:
    """The ToM level of every point of a sweep folder, with a 95% interval.

    ``kind``: ``margin`` (mean prompt margin), ``accuracy`` (prompt accuracy) or
    ``cell_accuracy`` (a cell is right when all its probes are). The level is the unweighted
    mean over ``families`` (those present) of each family's mean over its prompts (all reps),
    which is the summary's ``tom_margin`` / ``tom_accuracy``. Interval: tasks are resampled
    with replacement within each family (``stats.bootstrap.family_weights``; one set of
    ``draws`` made up front, families in order, shared by every point), the
    statistic recomputed as a ratio of sums, and its 2.5 / 97.5 percentiles taken. A seed
    group (label ``<mode>_sall_m<m>``, one per mode and m with several seeds) is the mean of
    its seeds; each draw also resamples the seeds (``stats.bootstrap.seed_weights``).

    ``change`` is the level minus the baseline's (mode ``none``), and ``change_lo`` /
    ``change_hi`` its paired interval: the same draw's statistic minus the baseline's (the
    prompts of a sweep are the same at every point, so this is the paired task bootstrap).

    Columns: label, mode, seed, m, n_seeds, value, lo, hi, change, change_lo, change_hi,
    n_tasks (over the families), families (comma-joined). Empty when the points hold no
    usable values of ``kind``.
    Raises ``UserError`` when the folder has no per-prompt tables.
    """
    if kind not in LEVEL_KINDS:
        raise ValueError(f"kind must be one of {LEVEL_KINDS}, not {kind!r}")
    infos, prompts = SweepFolder(sweep_dir).read_sweep()
    values = {label: _unit_values(frame, kind) for label, frame in prompts.items()}
    present = set().union(*(set(v["family"]) for v in values.values()))
    fams = [f for f in families if f in present]
    if not fams:
        return pd.DataFrame(columns=list(LEVEL_COLUMNS))
    tasks = {}
    for f in fams:
        ids = set().union(*(set(v.loc[v["family"] == f, "task_id"]) for v in values.values()))
        tasks[f] = {t: i for i, t in enumerate(sorted(ids, key=natural_key))}
    weights = family_weights({f: len(tasks[f]) for f in fams}, draws, seed)
    n_tasks = sum(len(t) for t in tasks.values())
    per = {}
    for info in infos.itertuples():
        est, dr = _level_statistic(values[info.label], fams, tasks, weights)
        if math.isfinite(est):
            per[info.label] = (info.mode, info.seed, info.m, 1, est, dr)
    done = infos[infos["label"].isin(per)]
    _add_seed_groups(per, done, draws, seed)
    base = done[done["mode"] == BASELINE_MODE].sort_values("seed")["label"]
    base_est, base_dr = (per[base.iloc[0]][4], per[base.iloc[0]][5]) if len(base) else (
        math.nan, np.full(draws, np.nan))
    rows = []
    for label, (mode, point_seed, m, k, est, dr) in per.items():
        lo, hi = percentile_interval(dr)
        clo, chi = percentile_interval(dr - base_dr)
        rows.append({"label": label, "mode": mode, "seed": point_seed, "m": m, "n_seeds": k,
                     "value": est, "lo": lo, "hi": hi, "change": est - base_est,
                     "change_lo": clo, "change_hi": chi, "n_tasks": n_tasks,
                     "families": ",".join(fams)})
    return pd.DataFrame(rows, columns=list(LEVEL_COLUMNS))


def _level_statistic(frame: pd.DataFrame, fams: list[str], tasks: dict, weights: dict
                     ) -> tuple[float, np.ndarray]:
    """One point's level (the mean over ``fams`` of each family's mean value) and its
    resampled values (a ratio of per-task sums for each draw)."""
    est, dr = [], []
    for f in fams:
        sub = frame[(frame["family"] == f) & frame["value"].notna()]
        idx = sub["task_id"].map(tasks[f]).to_numpy(int)
        s = np.bincount(idx, weights=sub["value"].to_numpy(float), minlength=len(tasks[f]))
        c = np.bincount(idx, minlength=len(tasks[f])).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            est.append(s.sum() / c.sum() if c.sum() else math.nan)
            dr.append((weights[f] @ s) / (weights[f] @ c))
    with np.errstate(invalid="ignore"):
        return float(np.mean(est)), np.mean(np.vstack(dr), axis=0)


def _add_seed_groups(per: dict, done: pd.DataFrame, draws: int, seed: int) -> None:
    """A seed group per mode and m with several seeds: the seeds' mean, each draw resampling
    the seeds too."""
    for (mode, m), grp in done.groupby(["mode", "m"], sort=True):
        if len(grp) < 2:
            continue
        members = list(grp.sort_values("seed")["label"])
        v = seed_weights(len(members), draws, seed)
        mat = np.vstack([per[label][5] for label in members]).T
        with np.errstate(invalid="ignore", divide="ignore"):
            dr = np.nansum(mat * v, axis=1) / v.sum(axis=1)
        per[group_label(mode, m)] = (mode, pd.NA, m, len(members),
                                     float(np.mean([per[label][4] for label in members])), dr)


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
                    label="baseline level, 95% task-bootstrap interval")
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
    """``above chance`` when the baseline is above chance on some family, else ``all``."""
    if baseline is not None and "state" in baseline and (baseline["state"]
                                                         == "above chance").any():
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


def safe_level_intervals(sweep_dir: str | Path, kind: str, **options) -> pd.DataFrame | None:
    """``level_intervals``, or None when the sweep lacks its per-prompt tables."""
    try:
        return level_intervals(sweep_dir, kind, **options)
    except UserError:
        return None
