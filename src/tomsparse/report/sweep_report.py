"""Plots and the self-contained HTML report of a sweep."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from tomsparse.errors import UserError
from tomsparse.report.claims import claims_section
from tomsparse.report.html import embed_png, write_page
from tomsparse.report.plots import (
    levels_from_summary,
    plot_change_vs_m,
    plot_levels,
    plot_perplexity_vs_m,
    plot_specificity,
)
from tomsparse.report.style import pyplot, save_figure
from tomsparse.report.tables import (
    FAMILY_NAMES,
    csv_link,
    folded,
    number,
    readable_table,
    table_one,
    with_interval,
)
from tomsparse.scores.store import read_manifest as read_score_manifest
from tomsparse.sweep.folder import BASELINE_MODE, SweepFolder, point_label
from tomsparse.judge.frontier import family_table, goal
from tomsparse.judge.summary import with_tom_columns


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
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _plot_masks(masks: pd.DataFrame, m: float, path):
    fig, ax = pyplot().subplots(figsize=(8.5, 4.0), dpi=110)
    bars_per_layer_and_role(ax, masks, f"Where the difference mask lands, m = {m:g}")
    return save_figure(fig, path)


GAP_METRICS = ("belief_gap_margin", "belief_gap_accuracy", "bias_shift")
SPECIFICITY_CAPTION = (
    "Every point and seed group of the sweep, the damage-matched controls among them: x = "
    "log(perplexity / baseline perplexity) (0 = unchanged, 0.69 = doubled); left, the "
    "false-belief margin change (for irony minus its Yes/No answer-bias shift), "
    "right, the belief gap (false-belief minus true-belief control margin change), both paired "
    "per prompt against the unperturbed model and averaged over the families named in the "
    "title (those that pass their own controls, else all). Error bars: 95% t-intervals over "
    "clusters (with the seed-to-seed variance for a seed group); labels: m. Below 0 = damage; a "
    "ToM-specific mask sits low on the left, near x = 0, and low on the right.")




# The sizes below which a run is a pilot: its intervals are valid but too wide to rule much in
# or out. 20 clusters per family is the default run's (issue 23: the power to answer); a
# mask-to-mask variance wants 3 random seeds, a perplexity interval 4 windows.
PILOT_CLUSTERS = 20
PILOT_RANDOM_SEEDS = 3
PILOT_PPL_WINDOWS = 4


def _score_samples(manifest: dict) -> str:
    """"24 ToM and 24 generic samples" from the score stores the sweep names, or ""."""
    parts = []
    for kind, name in (("tom", "ToM"), ("generic", "generic")):
        directory = (manifest.get("scores") or {}).get(kind)
        try:
            store = read_score_manifest(directory) if directory else None
        except UserError:
            store = None
        if store and "nsamples" in store:
            parts.append(f"{store['nsamples']} {name}")
    return " and ".join(parts) + " samples" if parts else ""


def run_summary(out: Path) -> str:
    """The run at a glance (model, tasks, clusters, m values, seeds, perplexity text, score
    samples) and a pilot warning when it is below the sizes its statistics need."""
    folder = SweepFolder(out)
    try:
        manifest = folder.read_manifest()
    except UserError:
        manifest = {}
    cfg = manifest.get("config", {}) if isinstance(manifest, dict) else {}
    bcsv, pcsv = folder.specificity("baseline"), folder.specificity("points")
    base = pd.read_csv(bcsv) if bcsv.is_file() else pd.DataFrame()
    items = [f"model <b>{html.escape(str(manifest.get('model', '?')))}</b>"
             + (f" (fingerprint {html.escape(str(manifest['model_fingerprint']))})"
                if manifest.get("model_fingerprint") else "")]
    if len(base):
        items.append("; ".join(
            f"{FAMILY_NAMES.get(r.family, r.family)}: {number(r.n_tasks)} tasks, "
            f"{number(r.n_prompts)} false-belief prompts"
            + (f" in {number(r.n_clusters)} {r.cluster_unit}s" if r.cluster_unit != "task"
               else "") for r in base.itertuples()))
    m_values = [m for m in cfg.get("m_values", []) if m > 0]
    if m_values:
        items.append("m = " + ", ".join(f"{m:.3g}" for m in m_values))
    seeds = cfg.get("random_seeds")
    if seeds:
        secondary = cfg.get("secondary_seeds")     # sweep_points: below the largest m
        if secondary is not None and len(m_values) > 1 and secondary < len(seeds):
            items.append(f"random masks: {len(seeds)} seeds at m = {max(m_values):.3g}, "
                         f"{secondary} at smaller m")
        else:
            items.append(f"random masks: {len(seeds)} seeds at every m")
    windows = math.nan
    if pcsv.is_file():
        points = pd.read_csv(pcsv, usecols=lambda c: c in ("ppl_windows",))
        if "ppl_windows" in points and points["ppl_windows"].notna().any():
            windows = float(points["ppl_windows"].max())
    if cfg.get("ppl_max_tokens"):
        items.append(f"perplexity on {number(cfg['ppl_max_tokens'])} tokens of "
                     f"{html.escape(str(cfg.get('corpus', '')))}"
                     + (f" ({number(windows)} windows of {number(cfg.get('ppl_seqlen'))})"
                        if np.isfinite(windows) else "")
                     + (f"; random masks on the first {number(cfg['random_ppl_tokens'])} "
                        "of them, paired with the baseline's (a check)"
                        if cfg.get("random_ppl_tokens")
                        and cfg["random_ppl_tokens"] < cfg["ppl_max_tokens"] else ""))
    samples = _score_samples(manifest)
    if samples:
        items.append("scores from " + samples)
    if cfg.get("scoring"):
        items.append(f"scoring: {html.escape(str(cfg['scoring']))}")
    short = []
    if len(base) and (base["n_clusters"] < PILOT_CLUSTERS).any():
        short.append(f"fewer than {PILOT_CLUSTERS} clusters in "
                     + ", ".join(FAMILY_NAMES.get(f, f) for f in
                                 base.loc[base["n_clusters"] < PILOT_CLUSTERS, "family"]))
    if seeds is not None and len(seeds) < PILOT_RANDOM_SEEDS:
        short.append(f"{len(seeds)} random seed(s), fewer than {PILOT_RANDOM_SEEDS}")
    if np.isfinite(windows) and windows < PILOT_PPL_WINDOWS:
        short.append(f"{number(windows)} perplexity window(s), fewer than {PILOT_PPL_WINDOWS}")
    warning = ""
    if short:
        warning = ("<p class='warning'><b>Pilot-sized run</b> (" + html.escape("; ".join(short))
                   + "): its intervals are valid but wide, so a claim \u201cnot shown\u201d "
                   "here says little either way. For a result, run the default sizes "
                   "(<code>tomsparse run</code> without <code>--quick</code>) or larger "
                   "(<code>--clusters 20</code>).</p>")
    return f"<p class='run-summary'>{'; '.join(items)}.</p>{warning}"


def change_plots(out: Path, summary: pd.DataFrame) -> tuple[list[Path], str]:
    """The ToM change against m (margin, accuracy) and the perplexity ratio against m, for
    the sweep's own modes (the damage-matched controls have their own plot), from
    specificity.csv; falls back to the summary's perplexity when there is none."""
    folder = SweepFolder(out)
    try:
        cfg = folder.read_manifest().get("config", {})
    except UserError:
        cfg = {}
    modes = list(cfg.get("modes") or [m for m in summary["mode"].unique()
                                      if m not in MATCHED_MODES])
    plots = [p for p in (plot_change_vs_m(out, "margin", folder.plot("tom_metric"), modes),
                         plot_change_vs_m(out, "accuracy", folder.plot("tom_accuracy"), modes),
                         plot_perplexity_vs_m(out, folder.plot("perplexity"), modes))
             if p is not None]
    left_out = sorted(set(summary["mode"]) - set(modes) - {BASELINE_MODE})
    caption = (
        "One panel per family: the change from the unperturbed model (0, the grey line) "
        "against m on a log axis, for the difference mask (error bars: 95% t-intervals over "
        "clusters) and the random masks of the same count (the shaded band: the 95% interval "
        "of the random masks' mean, which holds the mask-to-mask variance where several seeds "
        "ran). A ToM-specific mask falls below the band; the band is what random damage of "
        "that size does. Perplexity: the ratio to the unperturbed model (log axes), 95% "
        "intervals over text windows.")
    if left_out:
        caption += (" The damage-matched controls (" + ", ".join(left_out) + ") sit at "
                    "their own sizes and are drawn against perplexity in the next section.")
    if not plots:
        ppl = levels_from_summary(summary, "perplexity")
        plots.append(plot_levels(ppl, folder.plot("perplexity"), ylabel="perplexity (log axis)",
                                 title="Perplexity vs m", log_y=True, band="min-max over seeds"))
        caption = ("No specificity tables (no m = 0 baseline point), so no ToM changes; "
                   "perplexity per point, the band the min-max over seeds.")
    return plots, caption


MATCHED_MODES = ("random-fraction", "generic-only")


def evidence_tables(out: Path) -> str:
    """The tables behind the verdicts, folded: baseline levels, belief gaps (conditions as
    columns), the dose-response slopes and the damage-matched searches; each linked to its
    CSV."""
    folder = SweepFolder(out)
    parts = []
    bcsv = folder.specificity("baseline")
    if bcsv.is_file():
        base = pd.read_csv(bcsv)
        cols = {"family": "family", "n_clusters": "clusters", "tom_accuracy": "false-belief "
                "accuracy", "tom_accuracy_lo": "lo", "tom_accuracy_hi": "hi", "tom_margin":
                "false-belief margin", "tom_margin_lo": "lo ", "tom_margin_hi": "hi ",
                "control_accuracy": "true-belief control accuracy", "weak_controls":
                "weak controls", "gate_reason": "gate"}
        table = base[[c for c in cols if c in base]]
        parts.append(folded("Unperturbed model per family (95% t-intervals over clusters)",
                            readable_table(table, keys=("family",), headers=cols)
                            + f"<p class='caption'>Source: {csv_link(bcsv, out)}</p>"))
    pcsv = folder.specificity("points")
    if pcsv.is_file():
        table = pd.read_csv(pcsv)
        table = table[table["metric"].isin(GAP_METRICS) & table["value"].notna()]
        if len(table):
            table = table.assign(cell=[with_interval(v, lo, hi) for v, lo, hi in
                                       zip(table["value"], table["lo"], table["hi"])])
            wide = table.pivot_table(index=["family", "metric"], columns="label", values="cell",
                                     aggfunc="first").reset_index()
            wide.columns.name = None
            parts.append(folded(
                "Belief gap and answer-bias shift per condition (conditions as columns)",
                "<div style='overflow-x:auto'>" + readable_table(wide, keys=("family", "metric"))
                + "</div><p class='caption'>belief_gap_*: the false-belief change minus the "
                "true-belief control change, paired per prompt (negative: false belief hurt "
                "more); bias_shift: the change in log P(A) - log P(B) of a two-answer family. "
                "95% t-intervals over clusters, not corrected for multiplicity. Conditions are "
                "named mode_s&lt;seed&gt;_m&lt;m&gt; (sall: the group of all seeds). Source: "
                + csv_link(pcsv, out) + "</p>"))
    dcsv = folder.specificity("dose")
    if dcsv.is_file():
        dose = pd.read_csv(dcsv)
        dose = dose[dose["value"].notna()]
        if len(dose):
            dose = dose.assign(slope=[with_interval(v, lo, hi) for v, lo, hi in
                                      zip(dose["value"], dose["lo"], dose["hi"])])
            parts.append(folded("Dose-response: slope of the change per unit of log m",
                                readable_table(dose[["mode", "family", "metric", "slope",
                                                     "p_value", "n_clusters", "m_values"]],
                                               keys=("mode", "family", "metric"))
                                + f"<p class='caption'>Source: {csv_link(dcsv, out)}</p>"))
    mcsv = folder.specificity("matched")
    if mcsv.is_file():
        matched = pd.read_csv(mcsv)
        if len(matched):
            parts.append(folded(
                "Damage-matched searches (a control's size searched until its perplexity "
                "change matches the target's)",
                readable_table(matched, keys=("target", "mode"))
                + f"<p class='caption'>Source: {csv_link(mcsv, out)}</p>"))
    family = family_section(out)
    if family:
        parts.append(folded("The mask family: ToM-specific damage against perplexity", family))
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
    return ("<p>Top-q by ToM score and not top-p by generic score (p = factor x q), some with "
            "the massive-activation channels left out; belief gap pooled over the families "
            f"{html.escape(str(frame['pool'].iloc[0]))} (negative = false belief hurt more than "
            "its controls). on_front: on the Pareto front of perplexity change and belief "
            "gap. <code>tomsparse frontier --run RUN_DIR</code> maps a larger grid.</p>"
            f"<p><b>Goal</b> (half the plain difference mask's belief-gap damage at perplexity "
            f"+5% or less): {html.escape(reached['sentence'])}.</p>"
            + readable_table(frame[cols], keys=("mode", "q", "p")))


def reference_section(out: Path, summary: pd.DataFrame) -> str:
    """The reference's own summary (percent of answers right per m), reconciled with the
    verdicts in one sentence, and the per-point summary table; both folded."""
    folder = SweepFolder(out)
    parts = ["<p>The paper's summary counts the percent of all probes answered right by the "
             "difference mask, true-belief controls included and without random masks or "
             "intervals, so it can move where the claims above do not (and the other way "
             "round): it is here to compare with the paper, not to judge specificity.</p>"]
    tcsv = folder.table("tom_summary")
    if tcsv.is_file():
        tom = pd.read_csv(tcsv)
        cols = [c for c in tom.columns if c == "m" or c.endswith("_percent_mean")
                or c == "avg_percent_unexpected_transfer"]
        parts.append(folded(f"Percent right per m (the reference's {tcsv.name})",
                            readable_table(tom[cols], keys=("m",))
                            + f"<p class='caption'>Source: {csv_link(tcsv, out)}</p>"))
    cols = [c for c in ["mode", "seed", "m", "masked", "perplexity", "tom_margin", "tom_accuracy",
                        "unexpected_percent_mean", "transfer_percent_mean", "irony_percent_mean",
                        "avg_percent_unexpected_transfer"] if c in summary]
    scsv = folder.table("summary")
    parts.append(folded(f"Every point ({scsv.name})", readable_table(
        summary[cols], keys=("mode", "seed", "m")) + (
        f"<p class='caption'>Source: {csv_link(scsv, out)}</p>" if scsv.is_file() else "")))
    return "".join(parts)


PLANTED_CAPTION = (
    "The model was planted (tomsparse plant): its ToM skill was trained into a known random "
    "set P of its weights (density d of every target matrix), so the masks can be scored "
    "against the weights the skill lives in. Per m and mask: the share of the mask inside P "
    "(precision) and the share of P inside the mask (recall), beside what a uniformly random "
    "mask of the same size per matrix gives (d, and the mask's own fraction of the matrices: "
    "density x m expected in both), and their ratio (enrichment; 1 = chance). Random masks: "
    "mean over the sweep's seeds. The claims above are judged as for any model.")


def planted_section(out: Path) -> str:
    """The "planted ground truth" section of a sweep on a planted model (the sweep folder's
    planted-recovery table, ``judge.recovery``); "" for any other sweep."""
    folder = SweepFolder(out)
    table = folder.read_planted_recovery(("mode", "seed", "m", "role", "masked", "planted",
                                          "overlap", "mask_in_planted", "planted_in_mask",
                                          "random_mask_in_planted", "random_planted_in_mask",
                                          "enrichment"))
    if table is None or table.empty:
        return ""
    keys = ["m", "mode", "role"]
    values = ["masked", "planted", "overlap", "mask_in_planted", "random_mask_in_planted",
              "planted_in_mask", "random_planted_in_mask", "enrichment"]
    mean = table.groupby(keys, sort=False)[values].mean().reset_index()
    headers = {"masked": "mask size", "planted": "|P|", "overlap": "in both",
               "mask_in_planted": "mask in P", "random_mask_in_planted": "random: mask in P",
               "planted_in_mask": "P in mask", "random_planted_in_mask": "random: P in mask",
               "enrichment": "enrichment"}

    def shown(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        frame["m"] = frame["m"].map(lambda x: f"{x:g}")
        for col in ("mask_in_planted", "random_mask_in_planted", "planted_in_mask",
                    "random_planted_in_mask"):
            frame[col] = frame[col].map(lambda x: f"{x:.4g}" if np.isfinite(x) else "")
        frame["enrichment"] = frame["enrichment"].map(
            lambda x: f"x{x:.3g}" if np.isfinite(x) else "")
        return frame

    overall = shown(mean[mean["role"] == "all"].drop(columns="role"))
    by_role = shown(mean[mean["role"] != "all"])
    density = table["density"].dropna().iloc[0] if "density" in table and \
        table["density"].notna().any() else math.nan
    head = (f"<p>Planted set P: {number(int(mean[(mean['role'] == 'all')]['planted'].iloc[0]))} "
            f"weights, density {density:g}.</p>" if np.isfinite(density) else "")
    return (head + readable_table(overall, keys=("m", "mode"), headers=headers)
            + folded("Per matrix role", readable_table(by_role, keys=("m", "mode", "role"),
                                                        headers=headers))
            + f"<p class='caption'>{html.escape(PLANTED_CAPTION)} Source: "
            + csv_link(folder.planted_recovery, out) + "</p>")


AGREEMENT_CAPTION = (
    "Jaccard index |A & B| / |A | B| of two masks at the same m (the difference mask, top m "
    "by ToM score and not top m by generic score, and each task-swapped mask, built the same "
    "way from a non-ToM or no-belief task's scores), over every weight and per role; 1 = the "
    "same weights. Random: what two masks of the same counts per matrix drawn independently "
    "and uniformly would share: the expected intersection sum k1 k2 / n over the matrices "
    "(exact, the hypergeometric mean) and the Jaccard index at it (a ratio of expectations); "
    "x random: the Jaccard index over that. Claim (f) above asks whether the difference mask "
    "hurts ToM more than the swapped mask does.")


def agreement_section(out: Path) -> str:
    """The masks' agreement (the sweep folder's mask-agreement table, ``judge.agreement``):
    every weight per pair and m, per role folded; "" for a sweep without task-swapped
    stores."""
    folder = SweepFolder(out)
    table = folder.read_mask_agreement(("first", "second", "m", "role", "masked_first",
                                        "masked_second", "shared", "jaccard", "random_shared",
                                        "random_jaccard", "ratio"))
    if table is None or table.empty:
        return ""
    headers = {"first": "mask A", "second": "mask B", "masked_first": "|A|",
               "masked_second": "|B|", "shared": "shared", "jaccard": "Jaccard",
               "random_shared": "random: shared", "random_jaccard": "random: Jaccard",
               "ratio": "x random"}
    cols = ["first", "second", "m", "masked_first", "masked_second", "shared", "jaccard",
            "random_shared", "random_jaccard", "ratio"]
    frame = table.copy()
    frame["m"] = frame["m"].map(lambda x: f"{x:g}")
    for col in ("jaccard", "random_jaccard"):
        frame[col] = frame[col].map(lambda x: f"{x:.4g}" if np.isfinite(x) else "")
    frame["random_shared"] = frame["random_shared"].map(
        lambda x: f"{x:.4g}" if np.isfinite(x) else "")
    frame["ratio"] = frame["ratio"].map(lambda x: f"x{x:.3g}" if np.isfinite(x) else "")
    overall = frame[frame["role"] == "all"][cols]
    by_role = frame[frame["role"] != "all"][cols[:3] + ["role"] + cols[3:]]
    return (readable_table(overall, keys=("first", "second", "m"), headers=headers)
            + folded("Per matrix role", readable_table(by_role, keys=("first", "second", "m",
                                                                      "role"),
                                                        headers=headers))
            + f"<p class='caption'>{html.escape(AGREEMENT_CAPTION)} Source: "
            + csv_link(folder.mask_agreement, out) + "</p>")


def write_report(out: str | Path, summary: pd.DataFrame, manifest: dict,
                 extra_sections: Sequence[tuple[str, str]] = ()) -> Path:
    """Render the sweep folder's report (``SweepFolder.report``): the verdict first (bottom
    line, gate, claims), then the paper's Table 1, ToM change against m, the
    damage-matched controls, the evidence tables, the reference's summary, the mask, the
    ``extra_sections`` ((title, html) pairs handed in by the caller, e.g. the mechanistic
    analyses: ``RunFolder.read_report_sections``) and the manifest."""
    out = Path(out)
    folder = SweepFolder(out)
    summary = with_tom_columns(summary)[0]
    model = str(manifest.get("model", ""))
    sections: list[tuple[str, str, str]] = []     # (anchor, title, html)
    claims = claims_section(out, model)
    if claims:
        sections.append(("verdict", "Verdict", claims))
    table1 = table_one(out)
    if table1:
        sections.append(("table-1", "ToM and perplexity at each m (the paper's Table 1)",
                         table1))
    plots, caption = change_plots(out, summary)
    sections.append(("tom-vs-m", "ToM change against m: the difference mask against random "
                     "masks", "".join(embed_png(p) for p in plots)
                     + f"<p class='caption'>{html.escape(caption)}</p>"))
    spec = plot_specificity(out)
    if spec is not None:
        sections.append(("matched", "Damage-matched controls: ToM change against perplexity "
                         "change", embed_png(spec)
                         + f"<p class='caption'>{html.escape(SPECIFICITY_CAPTION)}</p>"))
    evidence = evidence_tables(out)
    if evidence:
        sections.append(("evidence", "The tables behind the verdicts", evidence))
    sections.append(("reference", "The reference's summary", reference_section(out, summary)))
    diff = summary[summary["mode"] == "difference"]
    if not diff.empty:
        top = diff["m"].max()
        mfile = folder.point_masks(point_label("difference", 0, top))
        if mfile.exists():
            sections.append(("masks", "Where the difference mask lands", embed_png(
                _plot_masks(pd.read_csv(mfile), top, folder.plot("masks")))))
    agreement = agreement_section(out)
    if agreement:
        sections.append(("agreement", "Mask agreement: the difference mask and the "
                         "task-swapped masks", agreement))
    planted = planted_section(out)
    if planted:
        sections.append(("planted", "Planted ground truth: how much of the planted set each "
                         "mask finds", planted))
    for i, (title, body) in enumerate(extra_sections):
        sections.append((f"extra-{i + 1}", title, body))
    opts = html.escape(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    sections.append(("manifest", "Run options and manifest",
                     folded("The whole manifest (versions, model fingerprint, data hashes, "
                            "every option)", f"<pre>{opts}</pre>")))
    contents = "".join(f"<li><a href='#{a}'>{html.escape(t, quote=False)}</a></li>"
                       for a, t, _ in sections)
    # edited results judged anyway, or points without an integrity record: said at the top
    warnings = "".join(f"<p class='warning'>{html.escape(note)}</p>\n"
                       for note in folder.integrity_notes())
    body = (f"<h1>tomsparse report: {html.escape(model)}</h1>\n{warnings}{run_summary(out)}\n"
            + "\n".join(f"<h2 id='{a}'>{html.escape(t, quote=False)}</h2>\n{h}"
                        for a, t, h in sections[:1])
            + f"\n<nav><b>Contents</b><ol>{contents}</ol></nav>\n"
            + "\n".join(f"<h2 id='{a}'>{html.escape(t, quote=False)}</h2>\n{h}"
                        for a, t, h in sections[1:]))
    return write_page(folder.report, "tomsparse report", body)
