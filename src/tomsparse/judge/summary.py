"""The tables of a sweep folder, from its finished points: the tidy per-metric table,
``perplexity_results.csv`` and ``tom_summary.csv`` (the reference's files), ``summary.csv`` (one row per mode, seed and m, the reference's
columns plus ours) and ``summary_side_by_side.csv`` (per m: the baseline, the difference mask
and the controls, random as mean and sd over seeds), and the headline ToM column."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tomsparse.errors import UserError
from tomsparse.files import write_csv
from tomsparse.masks import MODES
from tomsparse.stats import perplexity_ratio_interval
from tomsparse.sweep.folder import BASELINE_MODE, SweepFolder
from tomsparse.judge.reference import reference_summary
from tomsparse.judge.tables import write_specificity


def collect(out: str | Path, rules=None) -> pd.DataFrame:
    """Read every finished point; write the tidy table, perplexity_results.csv and summary,
    and the specificity tables with verdicts judged by ``rules`` (a
    ``config.VerdictRules``; None: the ones the folder kept, else the defaults).
    Every point is read and checked before anything is written."""
    folder = SweepFolder(out)
    points, tidy = [], []
    read = [folder.read_point(path) for path in folder.record_paths()]
    base_losses = next((info.get("ppl_unit_losses") for info, _ in read
                        if info["mode"] == BASELINE_MODE), None)
    base_ppl = next((info["perplexity"] for info, _ in read if info["mode"] == BASELINE_MODE),
                    None)
    for info, metrics in read:
        points.append(info)
        fam = metrics[metrics["level"] == "family"]
        for _, row in fam.iterrows():
            for metric in ("reference_percent", "reference_percent_var", "prompt_accuracy",
                           "scenario_accuracy", "strict_score", "mean_margin",
                           "margin_ci_low", "margin_ci_high", "prompt_ci_low", "prompt_ci_high",
                           "n_cells"):
                if metric in row and pd.notna(row[metric]):
                    tidy.append({"m": info["m"], "mode": info["mode"], "seed": info["seed"],
                                 "family": row["family"], "metric": metric,
                                 "value": float(row[metric])})
        tidy.append({"m": info["m"], "mode": info["mode"], "seed": info["seed"],
                     "family": "", "metric": "perplexity",
                     "value": comparable_perplexity(info, base_losses, base_ppl)})
        if info.get("ppl_windows") is not None:
            tidy.append({"m": info["m"], "mode": info["mode"], "seed": info["seed"],
                         "family": "", "metric": "ppl_windows",
                         "value": float(info["ppl_windows"])})
        tidy.append({"m": info["m"], "mode": info["mode"], "seed": info["seed"],
                     "family": "", "metric": "masked", "value": info["masked"]})
    if not points:
        raise UserError(f"{folder.root} holds no finished sweep points")
    tidy = pd.DataFrame(tidy).sort_values(["mode", "seed", "m", "family", "metric"])
    pts = pd.DataFrame(points)
    ref = pts[pts["mode"].isin([BASELINE_MODE, "difference"])].sort_values("m")
    # the reference's summary CSV of its own layout (read, and checked, before any write)
    tom_summary = reference_summary(folder.tom_dir) if folder.tom_dir.is_dir() else None
    summary = summarize(tidy)
    side = side_by_side(summary)
    write_csv(folder.table("sweep_points"), tidy)
    write_csv(folder.table("perplexity"), ref[["m", "perplexity"]])
    if tom_summary is not None:
        write_csv(folder.table("tom_summary"), tom_summary)
    write_csv(folder.table("summary"), summary)
    write_csv(folder.table("side_by_side"), side)
    # The specificity tables compare every point with m = 0; with the baseline alone they
    # are its chance check and verdicts that cannot be measured. Always rewritten from the
    # points, so a damaged one is repaired, never read.
    if (pts["mode"] == BASELINE_MODE).any():
        write_specificity(folder.root, rules=rules)
    return summary


def comparable_perplexity(info: dict, base_losses, base_ppl) -> float:
    """A point's perplexity on the baseline's tokens: its own when it was evaluated on all of
    them; for a point on the first k windows only (random masks under --random-ppl-tokens),
    the baseline's perplexity times the ratio of the two on those k windows (the paired
    estimate; its own perplexity on k windows is not comparable with the baseline's on all)."""
    losses = info.get("ppl_unit_losses")
    if (base_losses is None or base_ppl is None or not losses
            or len(losses) >= len(base_losses) or info["mode"] == BASELINE_MODE):
        return info["perplexity"]
    paired = perplexity_ratio_interval(losses, base_losses[:len(losses)])
    return float(base_ppl * paired.ratio)


def summarize(tidy: pd.DataFrame) -> pd.DataFrame:
    """One row per (mode, seed, m): the reference's summary columns plus ours."""
    rows = []
    for (mode, seed, m), g in tidy.groupby(["mode", "seed", "m"], sort=True):
        get = {(r.family, r.metric): r.value for r in g.itertuples()}
        row = {"mode": mode, "seed": seed, "m": m, "masked": get.get(("", "masked")),
               "perplexity": get.get(("", "perplexity")),
               "ppl_windows": get.get(("", "ppl_windows"))}
        for fam in ("unexpected", "transfer", "irony", "tomi"):
            pct = get.get((fam, "reference_percent"))
            if pct is None:
                continue
            var = get.get((fam, "reference_percent_var"), 0.0)
            cells = get.get((fam, "n_cells"), float("nan"))
            row[f"{fam}_total_mean"] = pct / 100 * cells
            row[f"{fam}_total_var"] = var * (cells / 100) ** 2
            row[f"{fam}_percent_mean"] = pct
            row[f"{fam}_percent_var"] = var
            row[f"{fam}_strict"] = get.get((fam, "strict_score"))
            row[f"{fam}_margin"] = get.get((fam, "mean_margin"))
            row[f"{fam}_margin_ci_low"] = get.get((fam, "margin_ci_low"))
            row[f"{fam}_margin_ci_high"] = get.get((fam, "margin_ci_high"))
            row[f"{fam}_accuracy"] = get.get((fam, "prompt_accuracy"))
        both = get.get(("unexpected+transfer", "reference_percent"))
        if both is not None:
            row["avg_percent_unexpected_transfer"] = both
        rows.append(row)
    return pd.DataFrame(rows)


def print_summary(summary: pd.DataFrame, log=print) -> None:
    cols = [c for c in ("mode", "seed", "m", "masked", "perplexity", "unexpected_margin",
                        "transfer_margin", "irony_margin", "tomi_margin") if c in summary]
    log(summary[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))


SIDE_METRICS = ("masked", "perplexity", "tom_margin", "tom_accuracy",
                "avg_percent_unexpected_transfer")


SIDE_FAMILY_METRICS = ("margin", "accuracy", "percent_mean", "strict")


def side_by_side(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per m > 0: the baseline, the difference mask, the random control (mean and
    sample sd over its seeds) and the other masks next to each other."""

    summary = with_tom_columns(summary)[0]  # the headline tom_margin / tom_accuracy columns
    metrics = [c for c in SIDE_METRICS if c in summary]
    metrics += [c for c in summary.columns
                if any(c.endswith("_" + s) for s in SIDE_FAMILY_METRICS)
                and not c.startswith(("tom_", "avg_"))]
    base = summary[summary["mode"] == BASELINE_MODE]
    rows = []
    for m, group in summary[summary["mode"] != BASELINE_MODE].groupby("m", sort=True):
        row = {"m": m}
        for c in metrics:
            if not base.empty and c != "masked":
                row[f"baseline_{c}"] = base[c].iloc[0]
        present = set(group["mode"])
        # the paper's modes in their order, then the family's variants and matched controls
        for mode in [x for x in MODES if x in present] + sorted(present - set(MODES)):
            g = group[group["mode"] == mode]
            for c in metrics:
                values = g[c].dropna()
                if mode == "random":
                    row[f"random_{c}_mean"] = values.mean() if len(values) else float("nan")
                    row[f"random_{c}_sd"] = values.std(ddof=1) if len(values) > 1 else float("nan")
                else:
                    row[f"{mode}_{c}"] = values.iloc[0] if len(values) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def with_tom_columns(summary: pd.DataFrame) -> tuple[pd.DataFrame, str, str]:
    """A copy of ``summary`` with the headline ToM columns added, the headline metric's column
    and its label: the likelihood margin averaged over families if present, else accuracy."""
    summary = summary.copy()
    fams = [f for f in ("unexpected", "transfer", "irony") if f"{f}_margin" in summary]
    if fams and summary[[f"{f}_margin" for f in fams]].notna().all().all():
        summary["tom_margin"] = summary[[f"{f}_margin" for f in fams]].mean(axis=1)
        summary["tom_accuracy"] = summary[[f"{f}_accuracy" for f in fams]].mean(axis=1)
        return summary, "tom_margin", "mean log-prob margin, expected - alternative (nats)"
    summary["tom_accuracy"] = summary[[f"{f}_percent_mean" for f in fams]].mean(axis=1) / 100
    return summary, "tom_accuracy", "ToM accuracy"
