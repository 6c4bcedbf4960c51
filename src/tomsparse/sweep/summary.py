"""The tables of a sweep folder, from its finished points: the tidy per-metric table,
``perplexity_results.csv`` and ``tom_summary.csv`` (the reference's files), ``summary.csv`` (one row per mode, seed and m, the reference's
columns plus ours) and ``summary_side_by_side.csv`` (per m: the baseline, the difference mask
and the controls, random as mean and sd over seeds), and the headline ToM column."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tomsparse.errors import UserError
from tomsparse.manifest import write_csv
from tomsparse.masks import MODES
from tomsparse.sweep.reference import reference_summary
from tomsparse.sweep.specificity import write_specificity

POINT_FIELDS = ("mode", "seed", "m", "perplexity", "masked")


def _damaged(path: Path, point: Path, problem: str) -> UserError:
    """The one line for a damaged point: what is wrong, and how to have it recomputed."""
    stem = point.stem
    return UserError(f"{path}: {problem}; the sweep point {stem} is damaged: delete its files "
                     f"({point.parent}/{stem}.json and {stem}_*.csv) and run the same "
                     "`tomsparse sweep` again to recompute it (or rerun the whole sweep)")


def read_point(path: Path) -> tuple[dict, pd.DataFrame]:
    """A finished point's record and its metrics table, checked: a damaged or missing file is
    a UserError naming it and the fix."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise _damaged(path, path, "not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise _damaged(path, path, f"not valid JSON ({exc.msg} at line {exc.lineno} column "
                                   f"{exc.colno})") from None
    if not isinstance(info, dict):
        raise _damaged(path, path, f"holds a JSON {type(info).__name__}, not a point record")
    missing = [k for k in POINT_FIELDS if k not in info]
    if missing:
        raise _damaged(path, path, f"not a point record (no {', '.join(missing)})")
    try:
        info["m"], info["seed"] = float(info["m"]), int(info["seed"])
        info["perplexity"], info["masked"] = float(info["perplexity"]), int(info["masked"])
    except (TypeError, ValueError):
        raise _damaged(path, path, "a field of the point record is not a number") from None
    metrics_path = path.with_name(path.stem + "_metrics.csv")
    if not metrics_path.is_file():
        raise _damaged(metrics_path, path, "missing (every finished point has its metrics "
                                           "table)")
    try:
        metrics = pd.read_csv(metrics_path)
    except (ValueError, UnicodeDecodeError) as exc:  # pandas' EmptyDataError, ParserError
        first = " ".join(str(exc).split())[:120]
        raise _damaged(metrics_path, path, f"not a readable CSV table ({first})") from None
    for column in ("level", "family"):
        if column not in metrics.columns:
            raise _damaged(metrics_path, path, f"not a metrics table (no {column!r} column)")
    prompts_path = path.with_name(path.stem + "_prompts.csv")
    if not prompts_path.is_file():  # the specificity tables read it
        raise _damaged(prompts_path, path, "missing (every finished point has its per-prompt "
                                           "table)")
    return info, metrics


def collect(out: str | Path) -> pd.DataFrame:
    """Read every finished point; write the tidy table, perplexity_results.csv and summary.
    Every point is read and checked before anything is written."""
    out = Path(out)
    points, tidy = [], []
    read = [read_point(path) for path in sorted((out / "points").glob("*.json"))]
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
                     "family": "", "metric": "perplexity", "value": info["perplexity"]})
        tidy.append({"m": info["m"], "mode": info["mode"], "seed": info["seed"],
                     "family": "", "metric": "masked", "value": info["masked"]})
    if not points:
        raise UserError(f"{out} holds no finished sweep points")
    tidy = pd.DataFrame(tidy).sort_values(["mode", "seed", "m", "family", "metric"])
    pts = pd.DataFrame(points)
    ref = pts[pts["mode"].isin(["none", "difference"])].sort_values("m")
    # the reference's summary CSV of its own layout (read, and checked, before any write)
    tom_summary = reference_summary(out / "tom") if (out / "tom").is_dir() else None
    summary = summarize(tidy)
    side = side_by_side(summary)
    write_csv(out / "sweep_points.csv", tidy)
    write_csv(out / "perplexity_results.csv", ref[["m", "perplexity"]])
    if tom_summary is not None:
        write_csv(out / "tom_summary.csv", tom_summary)
    write_csv(out / "summary.csv", summary)
    write_csv(out / "summary_side_by_side.csv", side)
    if (pts["mode"] == "none").any():  # the specificity tables compare every point with m = 0
        write_specificity(out)
    return summary


def summarize(tidy: pd.DataFrame) -> pd.DataFrame:
    """One row per (mode, seed, m): the reference's summary columns plus ours."""
    rows = []
    for (mode, seed, m), g in tidy.groupby(["mode", "seed", "m"], sort=True):
        get = {(r.family, r.metric): r.value for r in g.itertuples()}
        row = {"mode": mode, "seed": seed, "m": m, "masked": get.get(("", "masked")),
               "perplexity": get.get(("", "perplexity"))}
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

    summary = summary.copy()
    tom_column(summary)  # adds the headline tom_margin / tom_accuracy columns
    metrics = [c for c in SIDE_METRICS if c in summary]
    metrics += [c for c in summary.columns
                if any(c.endswith("_" + s) for s in SIDE_FAMILY_METRICS)
                and not c.startswith(("tom_", "avg_"))]
    base = summary[summary["mode"] == "none"]
    rows = []
    for m, group in summary[summary["mode"] != "none"].groupby("m", sort=True):
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


def tom_column(summary: pd.DataFrame) -> tuple[str, str]:
    """The headline ToM metric: the likelihood margin averaged over families if present."""
    fams = [f for f in ("unexpected", "transfer", "irony") if f"{f}_margin" in summary]
    if fams and summary[[f"{f}_margin" for f in fams]].notna().all().all():
        summary["tom_margin"] = summary[[f"{f}_margin" for f in fams]].mean(axis=1)
        summary["tom_accuracy"] = summary[[f"{f}_accuracy" for f in fams]].mean(axis=1)
        return "tom_margin", "mean log-prob margin, expected - alternative (nats)"
    summary["tom_accuracy"] = summary[[f"{f}_percent_mean" for f in fams]].mean(axis=1) / 100
    return "tom_accuracy", "ToM accuracy"
