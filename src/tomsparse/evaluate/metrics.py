"""Metrics of a ToM evaluation from its per-prompt table: per family, condition and scenario,
prompt and scenario accuracy, the reference's per-family percentage (mean and variance over
reps), Kosinski's strict task score, chance levels, the likelihood margin, and bootstrap 95%
intervals resampling tasks and reps; plus a compact text table for the terminal."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def _grid(frame: pd.DataFrame, value: pd.Series, tasks, reps) -> tuple[np.ndarray, np.ndarray]:
    """Per (task, rep) sums and counts of ``value`` as [tasks x reps] arrays."""
    keyed = pd.DataFrame({"t": frame["task_index"].values, "r": frame["rep"].values,
                          "v": value.values.astype(float)})
    sums = keyed.pivot_table(index="t", columns="r", values="v", aggfunc="sum")
    counts = keyed.pivot_table(index="t", columns="r", values="v", aggfunc="count")
    sums = sums.reindex(index=tasks, columns=reps).fillna(0.0).to_numpy()
    counts = counts.reindex(index=tasks, columns=reps).fillna(0.0).to_numpy()
    return sums, counts


def _bootstrap(sums: np.ndarray, counts: np.ndarray, rng: np.random.Generator, n_boot: int
               ) -> tuple[float, float]:
    """95% percentile interval of sum/count, resampling tasks and reps with replacement."""
    n_tasks, n_reps = sums.shape
    if n_boot <= 0 or n_tasks == 0:
        return math.nan, math.nan
    ti = rng.integers(n_tasks, size=(n_boot, n_tasks))
    ri = rng.integers(n_reps, size=(n_boot, n_reps))
    s = sums[ti[:, :, None], ri[:, None, :]].sum(axis=(1, 2))
    c = counts[ti[:, :, None], ri[:, None, :]].sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = s / c
    low, high = np.nanpercentile(stats, [2.5, 97.5])
    return float(low), float(high)


def _group_metrics(rows: pd.DataFrame, rng: np.random.Generator, n_boot: int) -> dict:
    tasks = sorted(rows["task_index"].unique())
    reps = sorted(rows["rep"].unique())
    correct = rows["correct"].astype(bool)
    out = {"n_tasks": len(tasks), "reps": len(reps), "n_prompts": int(len(rows) / len(reps))}

    # Prompts.
    sums, counts = _grid(rows, correct, tasks, reps)
    out["prompt_accuracy"] = float(correct.mean())
    out["prompt_ci_low"], out["prompt_ci_high"] = _bootstrap(sums, counts, rng, n_boot)

    # Cells: a (task, scenario) is right only if all its probes are (ToMi: every question is
    # a cell of its own).
    cell_key = "cell" if "cell" in rows else "scenario"
    cells = rows.groupby(["task_index", "rep", cell_key], sort=False)["correct"].agg(
        ["all", "size"]).reset_index()
    sums, counts = _grid(cells, cells["all"], tasks, reps)
    out["n_cells"] = int(len(cells) / len(reps))
    out["scenario_accuracy"] = float(cells["all"].mean())
    out["scenario_ci_low"], out["scenario_ci_high"] = _bootstrap(sums, counts, rng, n_boot)
    per_rep = 100.0 * cells.groupby("rep")["all"].mean()
    out["reference_percent"] = float(per_rep.mean())
    out["reference_percent_var"] = float(per_rep.var(ddof=1)) if len(per_rep) > 1 else 0.0

    # Strict: a task counts only if every cell of the group is right.
    strict = cells.groupby(["task_index", "rep"])["all"].all().reset_index()
    sums, counts = _grid(strict, strict["all"], tasks, reps)
    out["strict_score"] = float(strict["all"].mean())
    out["strict_ci_low"], out["strict_ci_high"] = _bootstrap(sums, counts, rng, n_boot)

    # Chance under a random pick between the two candidates of every prompt.
    first_rep = cells[cells["rep"] == reps[0]]
    out["chance_prompt"] = 0.5
    out["chance_scenario"] = float((0.5 ** first_rep["size"]).mean())
    per_task = first_rep.groupby("task_index")["size"].sum()
    out["chance_strict"] = float((0.5 ** per_task).mean())

    margin = pd.to_numeric(rows.get("margin"), errors="coerce") if "margin" in rows else None
    if margin is not None and margin.notna().all():
        sums, counts = _grid(rows, margin, tasks, reps)
        out["mean_margin"] = float(margin.mean())
        out["margin_ci_low"], out["margin_ci_high"] = _bootstrap(sums, counts, rng, n_boot)
    else:
        out["mean_margin"] = out["margin_ci_low"] = out["margin_ci_high"] = math.nan
    return out


METRIC_COLUMNS = ["model", "scoring", "m", "family", "level", "condition", "scenario",
                  "n_tasks", "reps", "n_prompts", "n_cells", "prompt_accuracy", "prompt_ci_low",
                  "prompt_ci_high", "scenario_accuracy", "scenario_ci_low", "scenario_ci_high",
                  "reference_percent", "reference_percent_var", "strict_score", "strict_ci_low",
                  "strict_ci_high", "chance_prompt", "chance_scenario", "chance_strict",
                  "mean_margin", "margin_ci_low", "margin_ci_high"]


def compute_metrics(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Metrics per family (level "family"), condition and scenario, per model / scoring / m.

    Also one row ``family="unexpected+transfer"`` holding the reference's
    ``avg_percent_unexpected_transfer`` (mean over reps of the two families' percentages).
    """
    rng = np.random.default_rng(seed)
    records = []
    for (model, scoring, m), run in table.groupby(["model", "scoring", "m"], sort=False):
        base = {"model": model, "scoring": scoring, "m": m}
        for family in [f for f in ("unexpected", "transfer", "irony", "tomi")
                       if f in set(run["family"])]:
            rows = run[run["family"] == family]
            records.append({**base, "family": family, "level": "family", "condition": "all",
                            "scenario": "all", **_group_metrics(rows, rng, n_boot)})
            for condition in dict.fromkeys(rows["condition"]):
                sub = rows[rows["condition"] == condition]
                records.append({**base, "family": family, "level": "condition",
                                "condition": condition, "scenario": "all",
                                **_group_metrics(sub, rng, n_boot)})
            for scenario in dict.fromkeys(rows["scenario"]):
                sub = rows[rows["scenario"] == scenario]
                records.append({**base, "family": family, "level": "scenario",
                                "condition": sub["condition"].iloc[0], "scenario": scenario,
                                **_group_metrics(sub, rng, n_boot)})
        both = run[run["family"].isin(["unexpected", "transfer"])]
        if set(both["family"]) == {"unexpected", "transfer"}:
            cells = both.groupby(["family", "task_index", "rep", "scenario"])["correct"].all()
            per_rep = 100.0 * cells.groupby(["rep", "family"]).mean().unstack("family")
            avg = per_rep.mean(axis=1)
            records.append({**base, "family": "unexpected+transfer", "level": "family",
                            "condition": "all", "scenario": "all",
                            "reps": len(avg), "reference_percent": float(avg.mean()),
                            "reference_percent_var": float(avg.var(ddof=1)) if len(avg) > 1
                            else 0.0})
    counts = {c: "Int64" for c in ("n_tasks", "reps", "n_prompts", "n_cells")}
    return pd.DataFrame.from_records(records).reindex(columns=METRIC_COLUMNS).astype(counts)


def format_metrics(metrics: pd.DataFrame, levels=("family", "condition")) -> str:
    """A compact text table of the metrics for the terminal."""
    rows = metrics[metrics["level"].isin(levels)]
    cols = ["family", "condition", "n_tasks", "reps", "prompt_accuracy", "scenario_accuracy",
            "reference_percent", "strict_score", "chance_scenario", "mean_margin"]
    shown = rows[cols].copy()
    ci = rows.apply(lambda r: f"[{r.scenario_ci_low:.2f}, {r.scenario_ci_high:.2f}]"
                    if pd.notna(r.scenario_ci_low) else "", axis=1)
    shown.insert(shown.columns.get_loc("scenario_accuracy") + 1, "scenario_95ci", ci)
    if shown["mean_margin"].isna().all():
        shown = shown.drop(columns=["mean_margin"])
    return shown.to_string(index=False, float_format=lambda v: f"{v:.3f}")
