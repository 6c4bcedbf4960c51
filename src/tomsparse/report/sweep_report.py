"""Plots and the self-contained HTML report of a sweep."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from tomsparse.report.claims import claims_section
from tomsparse.report.html import embed_png, write_page
from tomsparse.report.plots import (
    LEVEL_DRAWS,
    levels_from_summary,
    plot_levels,
    plot_specificity,
    safe_level_intervals,
)
from tomsparse.report.style import pyplot, save_figure
from tomsparse.sweep.folder import BASELINE_MODE, SweepFolder, point_label
from tomsparse.sweep.frontier import family_table, goal
from tomsparse.sweep.summary import side_by_side, with_tom_columns


def bars_per_layer_and_role(ax, masks: pd.DataFrame, title: str) -> None:
    """Masked weights per decoder layer, stacked by role (columns layer, role, masked)."""
    pivot = masks.pivot_table(index="layer", columns="role", values="masked", aggfunc="sum").fillna(0)
    bottom = None
    for role in pivot.columns:
        ax.bar(pivot.index, pivot[role], bottom=bottom, label=role)
        bottom = pivot[role] if bottom is None else bottom + pivot[role]
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("masked weights (count)")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=4)


def _plot_masks(masks: pd.DataFrame, m: float, path):
    fig, ax = pyplot().subplots(figsize=(7.5, 4.0), dpi=110)
    bars_per_layer_and_role(ax, masks, f"Where the difference mask lands, m = {m:g}")
    return save_figure(fig, path)


def reading(summary: pd.DataFrame, metric: str) -> str:
    """One paragraph written from the numbers."""
    base = summary[summary["mode"] == BASELINE_MODE]
    if base.empty:
        return "No m = 0 baseline point was run, so changes cannot be read against the unperturbed model."
    b = base.iloc[0]
    top_m = summary[summary["mode"] == "difference"]["m"].max()
    at = summary[summary["m"] == top_m]

    def val(mode, col):
        x = at[at["mode"] == mode][col]
        return float(x.mean()) if len(x) else float("nan")

    d_tom, r_tom = val("difference", metric) - b[metric], val("random", metric) - b[metric]
    t_tom = val("tom-only", metric) - b[metric]
    d_ppl = val("difference", "perplexity") / b["perplexity"] - 1
    r_ppl = val("random", "perplexity") / b["perplexity"] - 1
    t_ppl = val("tom-only", "perplexity") / b["perplexity"] - 1
    masked = val("difference", "masked")
    ratio = abs(d_tom) / abs(r_tom) if r_tom == r_tom and abs(r_tom) > 1e-12 else float("inf")
    verdict = ("hurt ToM more than random masks of the same size"
               if d_tom < 0 and d_tom < r_tom else "did not hurt ToM more than random masks")
    txt = (f"At the largest m ({top_m:g}, {masked:,.0f} weights in all), the difference mask "
           f"{verdict}: the ToM metric moved by {d_tom:+.3f} against {r_tom:+.3f} for random "
           f"masks (about {ratio:.1f}x as much) from a baseline of {b[metric]:.3f}. "
           f"Perplexity moved by {100 * d_ppl:+.1f}% with the difference mask and "
           f"{100 * r_ppl:+.1f}% with random masks.")
    if t_tom == t_tom:
        txt += (f" The ToM-only mask (no generic subtraction) moved the ToM metric by "
                f"{t_tom:+.3f} and perplexity by {100 * t_ppl:+.1f}%.")
    return txt


def _side_table(summary: pd.DataFrame, metric: str) -> str:
    """Per m: baseline, difference mask, random control (mean +- sd) and tom-only, for the
    headline ToM metric and perplexity."""

    side = side_by_side(summary)
    if side.empty:
        return "<p>No masked points.</p>"
    rows = []
    for _, r in side.iterrows():
        def cell(mode, col):
            if mode == "random":
                mean, sd = r.get(f"random_{col}_mean"), r.get(f"random_{col}_sd")
                if mean is None or mean != mean:
                    return ""
                return f"{mean:.4g}" + (f" &plusmn; {sd:.2g}" if sd == sd and sd is not None else "")
            v = r.get(f"{mode}_{col}")
            return "" if v is None or v != v else f"{v:.4g}"
        for col, label in ((metric, "ToM metric"), ("perplexity", "perplexity"),
                           ("masked", "masked weights")):
            rows.append(f"<tr><td>{r['m']:g}</td><td>{label}</td><td>{cell('baseline', col)}</td>"
                        f"<td>{cell('difference', col)}</td><td>{cell('random', col)}</td>"
                        f"<td>{cell('tom-only', col)}</td></tr>")
    head = ("<tr><th>m</th><th>quantity</th><th>baseline</th><th>difference</th>"
            "<th>random (mean &plusmn; sd over seeds)</th><th>tom-only</th></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


GAP_METRICS = ("belief_gap_margin", "belief_gap_accuracy", "bias_shift")
SPECIFICITY_CAPTION = (
    "Every point and seed group of the sweep: x = log(perplexity / baseline perplexity) "
    "(0 = unchanged, 0.69 = doubled); left, the false-belief margin change (bias-adjusted), "
    "right, the belief gap (false-belief minus true-belief control margin change), both paired "
    "per prompt against the unperturbed model and averaged over the families named in the "
    "title (those that pass their own controls, else all). Error bars: 95% t-intervals over "
    "clusters (with the seed-to-seed variance for a seed group); labels: m. Below 0 = damage; a "
    "ToM-specific mask sits low on the left, near x = 0, and low on the right.")


def line_plots(out: Path, summary: pd.DataFrame, metric: str, label: str
               ) -> tuple[list[Path], str]:
    """The ToM metric, ToM accuracy and perplexity against m (PNGs in ``out``), and their
    caption. The ToM lines carry 95% task-cluster bootstrap intervals of the level
    (``level_intervals``) when the points' per-prompt tables are there, else the min-max over
    seeds; perplexity is drawn on a log axis."""
    kinds = (("margin", "accuracy") if metric == "tom_margin"
             else ("cell_accuracy", "cell_accuracy"))
    folder = SweepFolder(out)
    specs = ((metric, label, "ToM vs m", folder.plot("tom_metric"), kinds[0]),
             ("tom_accuracy", "ToM accuracy" if metric != "tom_margin" else
              "ToM prompt accuracy", "ToM accuracy vs m", folder.plot("tom_accuracy"), kinds[1]))
    plots, notes = [], []
    for column, ylabel, title, path, kind in specs:
        levels = safe_level_intervals(out, kind)
        if levels is not None and not levels.empty:
            n, k = int(levels["n_tasks"].max()), int(levels["n_seeds"].max())
            fams = levels["families"].iloc[0].replace(",", ", ")
            band, interval = "95% paired interval of the change from baseline", "change"
            if not notes:
                notes.append(
                    f"ToM plots: the line is the level (mean over families {fams} of each "
                    f"family's mean over all its prompts). The shaded band is the 95% "
                    f"task-cluster bootstrap interval of the paired change from the "
                    f"unperturbed model, placed on the line (n = {n} tasks resampled within "
                    f"their families, {LEVEL_DRAWS} draws shared by all points"
                    + (f"; for a mode run with {k} seeds the line is the seed mean, the seeds "
                       f"are resampled too, and small dots are the single seeds" if k > 1
                       else "") + "). The error bar at m = 0 is the 95% interval of the "
                    "baseline level itself, which also holds the spread between tasks that "
                    "the paired bands leave out.")
        else:
            levels, band = levels_from_summary(summary, column), "min-max over seeds"
            interval = "level"
            if not notes:
                notes.append("ToM plots: no per-prompt tables in points/, so no intervals of "
                             "the level; the shaded band is the min-max over seeds.")
        plots.append(plot_levels(levels, path, ylabel=ylabel,
                                 title=title, band=band, interval=interval))
    ppl = levels_from_summary(summary, "perplexity")
    plots.append(plot_levels(ppl, folder.plot("perplexity"), ylabel="perplexity (log axis)",
                             title="Perplexity vs m", log_y=True, band="min-max over seeds"))
    notes.append("Perplexity: one value per point (no interval), on a log axis; the band is "
                 "the min-max over seeds.")
    return plots, " ".join(notes)


def specificity_section(out: Path) -> str:
    """The verdicts on whether the effect is specific to ToM (from the sweep's
    specificity_*.csv, see ``tomsparse.sweep.specificity``), with the chance check and the
    belief gaps behind them; empty when the sweep has no baseline point."""
    folder = SweepFolder(out)
    verdicts_csv, baseline_csv = folder.specificity("verdicts"), folder.specificity("baseline")
    if not verdicts_csv.is_file():
        return ""
    parts = []
    plot = plot_specificity(out)
    if plot is not None:
        parts.append(embed_png(plot) + f"<p>{html.escape(SPECIFICITY_CAPTION)}</p>")
    if baseline_csv.is_file():
        base = pd.read_csv(baseline_csv)
        cols = [c for c in ("family", "n_tasks", "n_prompts", "n_clusters", "tom_accuracy",
                            "tom_accuracy_lo", "tom_accuracy_hi", "tom_margin", "tom_margin_lo",
                            "tom_margin_hi", "control_accuracy", "weak_controls", "gate_reason")
                if c in base]
        parts.append("<h3>Baseline levels (95% t-intervals over clusters)</h3>"
                     + base[cols].to_html(index=False, float_format=lambda x: f"{x:.3g}",
                                          na_rep=""))
    matched_csv = folder.specificity("matched")
    if matched_csv.is_file():
        matched = pd.read_csv(matched_csv)
        if not matched.empty:
            parts.append("<h3>Damage-matched controls (size searched until the perplexity "
                         "change matches the target's)</h3>" + matched.to_html(
                             index=False, float_format=lambda x: f"{x:.3g}", na_rep=""))
    family = family_section(out)
    if family:
        parts.append(family)
    points_csv = folder.specificity("points")
    if points_csv.is_file():
        table = pd.read_csv(points_csv)
        table = table[table["metric"].isin(GAP_METRICS)]
        cols = [c for c in ("label", "family", "metric", "value", "lo", "hi", "n_tasks",
                            "n_prompts", "ppl_change") if c in table]
        parts.append("<h3>Belief gap (false-belief change minus true-belief control change, "
                     "paired per prompt; 95% t-interval over clusters, not corrected for "
                     "multiplicity) and answer-bias shift</h3>"
                     + table[cols].to_html(index=False, float_format=lambda x: f"{x:.3g}",
                                           na_rep=""))
    return "\n".join(parts)


def family_section(out: Path) -> str:
    """The mask family (difference variants with p >= q and massive channels left out) as a
    table with its Pareto front and the goal's answer; empty with fewer than two members."""
    folder = SweepFolder(out)
    if not folder.specificity("points").is_file():
        return ""
    tables = {"points": pd.read_csv(folder.specificity("points")),
              "baseline": pd.read_csv(folder.specificity("baseline"))}
    frame = family_table(tables)
    if len(frame) < 2 or frame["mode"].nunique() < 2:
        return ""
    reached = goal(frame)
    cols = ["mode", "q", "p", "left_out_channels", "masked", "ppl_change", "belief_gap",
            "belief_gap_lo", "belief_gap_hi", "tom_change", "tom_change_lo", "tom_change_hi",
            "n_tasks", "on_front"]
    return ("<h3>The mask family: ToM-specific damage against perplexity</h3>"
            "<p>Top-q by ToM score and not top-p by generic score (p = factor x q), some with "
            "the massive-activation channels left out; belief gap pooled over the families "
            f"{html.escape(str(frame['pool'].iloc[0]))} (negative = false belief hurt more than "
            "its controls). on_front: on the Pareto front of perplexity change and belief "
            "gap. <code>tomsparse frontier --run RUN_DIR</code> maps a larger grid.</p>"
            f"<p><b>Goal</b> (half the plain difference mask's belief-gap damage at perplexity "
            f"+5% or less): {html.escape(reached['sentence'])}.</p>"
            + frame[cols].to_html(index=False, float_format=lambda x: f"{x:.3g}", na_rep=""))


def write_report(out: str | Path, summary: pd.DataFrame, manifest: dict,
                 extra_sections: Sequence[tuple[str, str]] = ()) -> Path:
    """Render the sweep folder's report (``SweepFolder.report``). ``extra_sections`` ((title,
    html) pairs, e.g. the mechanistic analyses of a run: ``RunFolder.read_report_sections``)
    are handed in by the caller and shown after the tables."""
    out = Path(out)
    folder = SweepFolder(out)
    summary, metric, label = with_tom_columns(summary)
    plots, caption = line_plots(out, summary, metric, label)
    diff = summary[summary["mode"] == "difference"]
    if not diff.empty:
        top = diff["m"].max()
        mfile = folder.point_masks(point_label("difference", 0, top))
        if mfile.exists():
            plots.append(_plot_masks(pd.read_csv(mfile), top, folder.plot("masks")))
    text = reading(summary, metric)
    cols = [c for c in ["mode", "seed", "m", "masked", "perplexity", "tom_margin", "tom_accuracy",
                        "unexpected_percent_mean", "transfer_percent_mean", "irony_percent_mean",
                        "avg_percent_unexpected_transfer", "unexpected_strict", "transfer_strict"]
            if c in summary]
    table = summary[cols].to_html(index=False, float_format=lambda x: f"{x:.4g}")
    side = _side_table(summary, metric)
    opts = html.escape(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    sections = "\n".join(f"<h3>{html.escape(t)}</h3>\n{h}" for t, h in extra_sections)
    model = str(manifest.get("model", ""))
    claims = claims_section(out, model)
    verdict = specificity_section(out)
    verdict = f"<h2>Is the effect specific to ToM? The evidence</h2>{verdict}" if verdict else ""
    body = f"""<h1>tomsparse report: {html.escape(model)}</h1>
{claims}
{verdict}
<h2>Family-level reading (all conditions pooled; not a specificity test)</h2>
<p>{html.escape(text)}</p>
<h2>Plots</h2><p>{html.escape(caption)}</p>{''.join(embed_png(p) for p in plots)}
<h2>Controls side by side</h2>{side}
<h2>Summary table</h2>{table}
{sections}
<h2>Run options and manifest</h2><pre>{opts}</pre>"""
    return write_page(folder.report, "tomsparse report", body)
