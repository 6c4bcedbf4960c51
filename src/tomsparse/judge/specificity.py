"""Is the effect on ToM specific? Paired statistics of a finished sweep (issues 15 and 22).

Works only from the per-prompt tables a sweep writes (read by ``sweep.folder.SweepFolder``);
it never loads a model. Which prompts are ToM, control and fact: ``data.tasks.roles``; the tables
written to the folder: ``judge.tables``; the verdicts: ``judge.verdicts``; every
interval and test: ``tomsparse.stats``.

Every number is PAIRED: a prompt at a point is compared with the same prompt at the baseline
(mode ``none``). A drop in margin (log P(expected) - log P(alternative)) is damage, so
negative changes are losses, and a negative belief gap means the false-belief prompts lost
more than their controls.

The unit is the CLUSTER: the task for unexpected contents, transfer and ToMi; the story
scenario for irony (the bank's irony tasks reuse 26 scenarios; the per-prompt tables carry it
in their ``cluster`` column, and a table without one falls back to the task). Each metric is
first reduced to one value per cluster (e.g. the mean ToM margin change over the cluster's
false-belief prompts; the belief gap is that minus the mean over its true-belief controls),
then judged by a Student t-interval over the cluster values with clusters - 1 df
(``stats.paired_interval``'s rule). Seeds of one mode at one m are replicate masks: their
interval adds the mask-to-mask variance (``stats.mean_of_masks``); a contrast against N random
or matched masks is ``stats.contrast_with_controls`` (the target minus the masks' mean, both
variance components, and the target's rank among the masks). Pools ("all", "passing families")
put the clusters of their families side by side, every cluster weighing the same.

Answer pairs: where a cluster's prompts use two answer words (irony's Yes / No; the two
objects or places of a contents or transfer task), the answer-bias shift is the change in the
mean of log P(A) - log P(B) over its prompts, A being the answer its ToM prompts expect least
("Yes" for irony), and each role's change is adjusted by its answers' lean times that shift
(0 where a role is counterbalanced within the cluster, as in contents and transfer; under
generation scoring the same on correctness). When ToM and control prompts expect opposite
answers of that pair (irony), their belief gap equals minus twice the bias shift: it cannot
tell a lost irony reading from a Yes/No bias, so such a family is marked ``gap_confounded``
and left out of pooled belief gaps; its ToM change is reported bias-adjusted
(``tom_margin_change_adj``: the cluster's change minus the bias shift in its answer's
direction).

The gate (``stats.pass_rate_gate``): per family, a cluster counts as passed only when every
one of its false-belief prompts and every one of its true-belief controls is right (correct in
more than half of the reps under generation scoring), so a shortcut that answers every probe
the same way fails its controls. The family passes when the one-sided lower confidence bound
(1 - ``gate_alpha``) of its cluster pass rate is above ``gate_floor``, and is then judged on
the clusters it passed only (``Family.judge_only``: the others' values are NaN). Whether the
passed clusters beat guessing (``stats.chance_gate``) is kept beside it, for the report.

Task-swapped masks (issue 37): each point of the mask under test is also contrasted with the
task-swapped mask of each set at its m (mode ``swapped-<name>``, one deterministic point;
contrast kind "swapped", ``swapped_pairs``), as with a single matched control; claim (f) reads
it. A task-swapped mask whose size was searched to the target's perplexity (``matched.json``
lists it among the target's controls) is contrasted the same way under kind
"swapped-matched": claim (f) at matched damage, never one of the controls of (b) and (c).

Claim (c)'s ``belief_gap_relative``: per cluster, the false-belief change over its baseline
margin minus the true-belief controls' change over theirs (bias-adjusted): a mask that shrinks
every margin by the same fraction leaves it at 0, whatever the baselines.
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from tomsparse.data.tasks.roles import CONTROL, FACT, TOM, prompt_role, role_rows
from tomsparse.errors import UserError
from tomsparse.masks import swapped_name
from tomsparse.judge.clusters import (ABOVE, METRICS, NO_TOM, NOT_ABOVE, POOL_ABOVE, POOL_ALL,
                                      Engine, clean_prompts, family_gate, paired_changes,
                                      per_cluster)
from tomsparse.stats import (contrast_with_controls, dose_response, mask_spread,
                             perplexity_ratio_interval)
from tomsparse.stats.intervals import Interval, interval_over_units
from tomsparse.sweep.folder import BASELINE_MODE, group_label

# The columns of the tables, so that a sweep holding only its baseline still writes them
# with their header (a table of no rows, not an empty file).
_INTERVAL_COLUMNS = ("value", "lo", "hi", "se", "df", "p_value", "n_clusters", "method",
                     "skewness")
POINT_COLUMNS = ("label", "mode", "seed", "m", "n_seeds", "masked", "perplexity", "ppl_change",
                 "ppl_windows", "ppl_ratio", "ppl_ratio_lo", "ppl_ratio_hi", "ppl_log_se",
                 "ppl_log_df", "family", "metric", *_INTERVAL_COLUMNS, "n_tasks", "n_prompts",
                 "note")
CONTRAST_COLUMNS = ("label", "mode", "m", "kind", "reference", "reference_mode",
                    "reference_seeds", "perplexity", "reference_perplexity",
                    "reference_perplexity_min", "reference_perplexity_max", "family", "metric",
                    *_INTERVAL_COLUMNS, "mask_se", "rank_p", "n_tasks", "n_prompts", "note")
DOSE_COLUMNS = ("mode", "reference", "family", "metric", *_INTERVAL_COLUMNS, "n_m", "m_values",
                "note")
# the metrics a dose-response is fitted on (likelihood and generation scoring)
# the dose-response slopes: claim (e) reads the ToM change of its scoring (the bias-adjusted
# margin under likelihood, the bias-adjusted accuracy under generation)
DOSE_METRICS = ("tom_margin_change_adj", "tom_accuracy_change", "tom_accuracy_change_adj")
# What ``judge.verdicts`` reads (its claims, the bias check, the effect sizes): the tables
# restricted to these (``compute_specificity(metrics=VERDICT_METRICS)``) give the same
# verdicts, bit for bit, at a fraction of the cost (the calibration suite judges thousands)
VERDICT_METRICS = ("tom_margin_change_adj", "tom_accuracy_change", "tom_accuracy_change_adj",
                   "belief_gap_relative", "belief_gap_accuracy", "bias_shift_accuracy")
CONDITION_COLUMNS = ("label", "mode", "seed", "m", "n_seeds", "family", "condition", "probe",
                     "role", "metric", "baseline", "value", "lo", "hi", "n_tasks", "n_prompts")


def compute_specificity(points: pd.DataFrame, prompts: Mapping[str, pd.DataFrame], *,
                        matched: Mapping[str, Sequence[str]] | None = None,
                        random_mode: str = "random", target_mode: str = "difference",
                        level: float = 0.95, gate_alpha: float = 0.05,
                        gate_floor: float = 0.5, method: str = "skew",
                        target_null: str = "fixed",
                        interpolated: Mapping[str, Sequence[dict]] | None = None,
                        metrics: Sequence[str] = METRICS) -> dict[str, pd.DataFrame]:
    """The specificity tables from point infos and per-prompt tables (see
    ``SweepFolder.read_sweep``).

    ``matched`` maps a target label (a point, or a seed group ``<mode>_sall_m<m>``) to the
    labels of its damage-matched control points; the controls of one mode are one reference
    set (their seeds replicate masks), compared as ``stats.contrast_with_controls`` does.
    ``interpolated`` maps a target label to the controls that could not be matched
    ({"mode", "labels": [low, high], "weight" w}): each becomes a control point
    ``<mode>_interp_<target>`` whose every per-prompt change, per-window loss and perplexity is
    (1 - w) x the low end's + w x the high end's (w puts it at the target's perplexity in log
    perplexity), and is compared like a matched control. ``metrics``: the metrics of the
    points and contrasts tables (every one by default; ``VERDICT_METRICS`` is what the
    verdicts read, and then the conditions table, which they do not read, is left empty).
    ``target_null`` (``VerdictRules.target_null``): "fixed" compares a single target mask with
    the mean of the masks of a kind; "exchangeable" as one more draw of that kind (its own
    draw's variance added, estimated by their spread: ``contrast_with_controls``,
    ``dose_response``).

    Returns ``points`` (long: label, mode, seed, m, n_seeds, masked, perplexity and its ratio
    interval, family, metric, value, lo, hi, se, df, p_value, n_clusters, n_tasks, n_prompts,
    note), ``contrasts`` (target minus reference, paired), ``baseline`` (levels and the chance
    gate), ``conditions`` (change per condition and probe), ``dose`` (the slope of the ToM
    change on log m over the single-seed ``target_mode`` points, per family and pool),
    ``roles`` and ``info``.
    """
    points = points.copy()
    for col in ("perplexity", "masked", "ppl_windows", "ppl_unit_losses"):
        if col not in points:
            points[col] = None if col == "ppl_unit_losses" else np.nan
    base_rows = points[points["mode"] == BASELINE_MODE]
    if base_rows.empty:
        raise UserError("no baseline point (mode 'none'): the changes are measured against it")
    base_label = base_rows.sort_values("seed")["label"].iloc[0]
    base = clean_prompts(prompts[base_label], base_label)
    base["role"] = [prompt_role(f, c, p, s) for f, c, p, s in
                    zip(base["family"], base["condition"], base["probe"], base["scenario"])]
    base = base[base["role"] != ""].reset_index(drop=True)
    if base.empty:
        raise UserError(f"{base_label}: no prompt of a known family and condition")
    changes = paired_changes(points, prompts, base, base_label)
    points, matched = _interpolate(points, changes, matched, interpolated)
    engine = Engine(base, level, method)
    baseline = _baseline_table(engine, base, gate_alpha, gate_floor)
    engine.pools[POOL_ABOVE] = list(baseline.loc[baseline["state"] == ABOVE, "family"])
    base_info = base_rows.sort_values("seed").iloc[0]
    units = _units(engine, points, base_label, changes)
    info = pd.DataFrame([{"label": base_label, "perplexity": float(base_info["perplexity"]),
                          "level": level, "gate_alpha": gate_alpha, "gate_floor": gate_floor,
                          "method": method,
                          "scoring": "generation" if base["margin"].isna().all()
                          else "likelihood"}])
    metrics = [m for m in METRICS if m in set(metrics)]
    return {"points": _point_table(engine, units, base_info, metrics),
            "contrasts": _contrasts(engine, units, matched, random_mode, metrics,
                                    exchangeable=target_null == "exchangeable",
                                    target_mode=target_mode),
            "baseline": baseline,
            "conditions": (_condition_table(engine, units, base, changes)
                           if len(metrics) == len(METRICS) else pd.DataFrame()),
            "dose": _dose_table(engine, units, target_mode, random_mode,
                                exchangeable=target_null == "exchangeable"),
            "roles": pd.DataFrame(role_rows()), "info": info}


def interpolated_label(mode: str, target: str, seed: int = 0) -> str:
    """The label of a control interpolated for ``target`` (not a point on disk); seeds past
    the first carry their seed."""
    return f"{mode}_interp_{target}" if seed == 0 else f"{mode}_interp_s{seed}_{target}"


def _interpolate(points: pd.DataFrame, changes: dict, matched, interpolated):
    """Add the interpolated controls (see ``compute_specificity``) as points and as matched
    controls of their targets, one per seed the bracket's ends were evaluated with (a
    seeded control keeps its mask-to-mask variance); (points, matched) updated, ``changes``
    filled in place."""
    matched = {k: list(v) for k, v in (matched or {}).items()}
    rows = []
    for target, specs in (interpolated or {}).items():
        for spec in specs:
            w = float(spec["weight"])
            pairs = spec.get("seed_labels") or [spec["labels"]]
            seeds = spec.get("seeds") or [0]
            for seed, (low, high) in zip(seeds, pairs):
                if low not in changes or high not in changes:
                    raise UserError(f"interpolated control for {target}: point {low} or "
                                    f"{high} is missing; rerun the sweep to evaluate it")
                label = interpolated_label(spec["mode"], target, int(seed))
                changes[label] = tuple((1 - w) * a + w * b
                                       for a, b in zip(changes[low], changes[high]))
                lo_row = points[points["label"] == low].iloc[0]
                hi_row = points[points["label"] == high].iloc[0]
                la, lb = (_losses(r["ppl_unit_losses"]) for r in (lo_row, hi_row))
                rows.append({"label": label, "mode": spec["mode"], "seed": int(seed),
                             "m": math.exp((1 - w) * math.log(lo_row["m"])
                                           + w * math.log(hi_row["m"])),
                             "perplexity": math.exp((1 - w) * math.log(lo_row["perplexity"])
                                                    + w * math.log(hi_row["perplexity"])),
                             "masked": (1 - w) * lo_row["masked"] + w * hi_row["masked"],
                             "ppl_windows": lo_row["ppl_windows"],
                             "ppl_unit_losses": list((1 - w) * la + w * lb)
                             if la is not None and lb is not None and la.shape == lb.shape
                             else None})
                matched.setdefault(target, []).append(label)
    if rows:
        points = pd.concat([points, pd.DataFrame(rows)], ignore_index=True)
    return points, matched


def _baseline_table(engine: Engine, base: pd.DataFrame, alpha: float,
                    floor: float) -> pd.DataFrame:
    """Per family: the baseline's false-belief accuracy and margin levels with their
    intervals over clusters, the controls it does not pass, and the gate (a family that
    passes is judged on the clusters it passes: ``Family.judge_only``)."""
    margin0, correct0 = base["margin"].to_numpy(float), base["correct"].to_numpy(float)
    rows = []
    for f, fam in engine.fams.items():
        # the "change" names hold the baseline's levels here, over every cluster
        levels = fam.cluster_values(margin0, correct0, levels=True)
        acc = engine.interval(levels["tom_accuracy_change"][None, :])
        mar = engine.interval(levels["tom_margin_change"][None, :])
        n_tasks, n_prompts = fam.count((TOM,))
        gates = family_gate(fam, correct0, alpha, floor)
        gate, chance = (gates[0], gates[1]) if gates else (None, None)
        state = NO_TOM if gate is None else (ABOVE if gate.passes else NOT_ABOVE)
        if gate is not None and gate.passes:
            fam.judge_only(gates[2])
        # Controls the baseline does not pass: a heuristic (e.g. "answer the label") can then
        # pass the false-belief prompts without any belief tracking.
        weak = []
        sub = base.loc[fam.rows]
        for cond, grp in sub[sub["role"] == CONTROL].groupby("condition", sort=False):
            if grp["correct"].mean() <= 0.5:
                weak.append(f"{cond} {grp['correct'].mean():.2f}")
        fact = sub.loc[sub["role"] == FACT, "correct"]
        rows.append({
            "family": f, "n_tasks": n_tasks, "n_prompts": n_prompts, "n_clusters": fam.n,
            # an accuracy lies in [0, 1]: the t-interval's bounds are clipped to it
            "cluster_unit": fam.unit, "tom_accuracy": acc.estimate,
            "tom_accuracy_lo": float(np.clip(acc.lo, 0, 1)) if np.isfinite(acc.lo) else acc.lo,
            "tom_accuracy_hi": float(np.clip(acc.hi, 0, 1)) if np.isfinite(acc.hi) else acc.hi, "tom_margin": mar.estimate, "tom_margin_lo": mar.lo,
            "tom_margin_hi": mar.hi,
            "control_accuracy": float(np.nanmean(levels["control_accuracy_change"]))
            if np.isfinite(levels["control_accuracy_change"]).any() else math.nan,
            "control_margin": float(np.nanmean(levels["control_margin_change"]))
            if np.isfinite(levels["control_margin_change"]).any() else math.nan,
            "fact_accuracy": float(fact.mean()) if len(fact) else math.nan,
            "weak_controls": "; ".join(weak),
            "control_margin_lo": _level_bound(engine, levels, "control_margin_change", "lo"),
            "control_margin_hi": _level_bound(engine, levels, "control_margin_change", "hi"),
            "gate_passed": gate.k if gate else 0, "gate_clusters": gate.n if gate else 0,
            "pass_rate": gate.rate if gate else math.nan,
            "pass_rate_lo": gate.lo if gate else math.nan, "gate_floor": floor,
            "judged_clusters": int(fam.judged.sum()) if gate and gate.passes else 0,
            "chance": chance.chance if chance else math.nan,
            "chance_p": chance.p_value if chance else math.nan,
            "above_chance": bool(chance.passes) if chance else False, "gate_alpha": alpha,
            "gate_reason": gate.reason if gate else NO_TOM,
            "state": state, "at_chance": state != ABOVE, "gap_confounded": fam.confounded,
            "bias_answers": (f"{fam.pair[0]} over {fam.pair[1]}" if fam.pair else
                             "per-cluster answer pairs" if fam.paired else "")})
    return pd.DataFrame(rows)


def _level_bound(engine: Engine, levels: dict, metric: str, side: str) -> float:
    """A bound of the interval over clusters of a baseline level."""
    iv = engine.interval(levels[metric][None, :])
    return float(getattr(iv, side))


def _losses(value) -> np.ndarray | None:
    if isinstance(value, (list, tuple, np.ndarray)) and len(value):
        return np.asarray(value, dtype=float)
    return None


def _units(engine: Engine, points: pd.DataFrame, base_label: str, changes: dict) -> dict:
    """Every point, plus a seed group per (mode, m) with more than one seed: {label: its
    mode, seed, m, n_seeds, masked, perplexity, ppl_windows, losses (per window, the mean
    over seeds), values (``Engine.values``) and members}."""
    units: dict[str, dict] = {}
    for row in points[points["label"] != base_label].itertuples():
        units[row.label] = dict(mode=row.mode, seed=row.seed, m=row.m, n_seeds=1,
                                ppl_windows=row.ppl_windows, masked=row.masked,
                                perplexity=row.perplexity, losses=_losses(row.ppl_unit_losses),
                                values=engine.values([changes[row.label]]),
                                members=[row.label])
    others = points[(points["label"] != base_label)]
    for (mode, m), grp in others.groupby(["mode", "m"], sort=True):
        if len(grp) < 2:
            continue
        members = list(grp.sort_values("seed")["label"])
        losses = [units[u]["losses"] for u in members]
        same = all(x is not None and x.shape == losses[0].shape for x in losses)
        units[group_label(mode, m)] = dict(
            mode=mode, seed=pd.NA, m=m, n_seeds=len(members),
            masked=float(grp["masked"].mean()), ppl_windows=grp["ppl_windows"].iloc[0],
            perplexity=float(grp["perplexity"].mean()),
            losses=np.mean(losses, axis=0) if same else None,
            values=engine.values([changes[u] for u in members]), members=members)
    return units


def _interval_fields(iv: Interval) -> dict:
    return {"value": iv.estimate, "lo": iv.lo, "hi": iv.hi, "se": iv.se, "df": iv.df,
            "p_value": iv.p_value, "n_clusters": iv.n_clusters, "method": iv.method,
            "skewness": iv.skewness}


def _paired_base_losses(u: dict, base_info) -> np.ndarray | None:
    """The baseline's per-window losses paired with a unit's: all of them, or the first k
    when the unit was evaluated on the first k windows only (random-mask points under
    ``--random-ppl-tokens``); None when the records hold no per-window losses or hold them
    for other windows."""
    base_losses = _losses(base_info.get("ppl_unit_losses"))
    if u["losses"] is None or base_losses is None or u["losses"].ndim != 1:
        return None
    k = u["losses"].size
    return base_losses[:k] if 0 < k <= base_losses.size else None


def _perplexity_fields(u: dict, base_info, level: float) -> dict:
    """The perplexity ratio to the baseline with its interval over windows, paired window by
    window (NaN when the records hold no per-window losses, or hold them for other
    windows)."""
    base_losses = _paired_base_losses(u, base_info)
    nan = dict(ppl_ratio=math.nan, ppl_ratio_lo=math.nan, ppl_ratio_hi=math.nan,
               ppl_log_se=math.nan, ppl_log_df=math.nan)
    if base_losses is None:
        return nan
    ratio = perplexity_ratio_interval(u["losses"], base_losses, level)
    return dict(ppl_ratio=ratio.ratio, ppl_ratio_lo=ratio.lo, ppl_ratio_hi=ratio.hi,
                ppl_log_se=ratio.log_interval.se, ppl_log_df=ratio.log_interval.df)


def _perplexity_change(u: dict, base_info, fields: dict) -> float:
    """The unit's perplexity change against the baseline's on the same tokens: its perplexity
    over the baseline's when both cover every window, else the paired ratio - 1 (a point on
    the first windows only is compared with the baseline on those windows)."""
    ppl0 = float(base_info["perplexity"])
    base_losses = _losses(base_info.get("ppl_unit_losses"))
    fewer = (u["losses"] is not None and base_losses is not None
             and u["losses"].size < base_losses.size)
    if fewer:
        return fields["ppl_ratio"] - 1
    return u["perplexity"] / ppl0 - 1 if ppl0 else math.nan


def _point_table(engine: Engine, units: dict, base_info,
                 metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """One row per unit, family or pool and metric: estimate, interval, counts."""
    rows = []
    for label, u in units.items():
        ppl = _perplexity_fields(u, base_info, engine.level)
        head = {"label": label, "mode": u["mode"], "seed": u["seed"], "m": u["m"],
                "n_seeds": u["n_seeds"], "masked": u["masked"], "perplexity": u["perplexity"],
                "ppl_change": _perplexity_change(u, base_info, ppl),
                "ppl_windows": u["ppl_windows"], **ppl}
        for name in engine.names:
            for metric in metrics:
                nt, npr = engine.counts(name, metric)
                rows.append({**head, "family": name, "metric": metric,
                             **_interval_fields(engine.interval(u["values"][name][metric])),
                             "n_tasks": nt, "n_prompts": npr, "note": engine.note(name, metric)})
    return pd.DataFrame(rows, columns=list(POINT_COLUMNS))


SWAPPED_MATCHED = "swapped-matched"  # contrast kind: a task-swapped mask at matched damage


def _in_group(label: str, units: dict) -> bool:
    return any(label in u["members"] and u["n_seeds"] > 1 for u in units.values())


def _contrast_pairs(units: dict, matched, random_mode: str) -> list[tuple[str, str, list]]:
    """(target, kind, references): each target against the random masks of its m, and
    against each mode of its damage-matched controls (that mode's seeds together)."""
    def reference_for(m):
        cands = [l for l, u in units.items() if u["mode"] == random_mode and np.isclose(u["m"], m)]
        grouped = [l for l in cands if units[l]["n_seeds"] > 1]
        return grouped[0] if grouped else (cands[0] if len(cands) == 1 else None)

    pairs = []
    for label, u in units.items():
        if u["mode"] in (random_mode, BASELINE_MODE) or (u["n_seeds"] == 1
                                                         and _in_group(label, units)):
            continue
        ref = reference_for(u["m"])
        if ref is not None:
            pairs.append((label, "random", [ref]))
    for target, refs in (matched or {}).items():
        unknown = [l for l in [target, *refs] if l not in units]
        if unknown:
            raise UserError(f"matched controls: unknown point label(s) {', '.join(unknown)}; "
                            f"known: {', '.join(units)}")
        by_mode: dict[str, list[str]] = {}
        for ref in refs:
            by_mode.setdefault(units[ref]["mode"], []).append(ref)
        # one contrast per kind of control: the claim must hold against each kind of damage;
        # a task-swapped mask searched to the target's damage is claim (f)'s, not (b)'s
        pairs += [(target, SWAPPED_MATCHED if swapped_name(mode) is not None else "matched",
                   group) for mode, group in by_mode.items()]
    return pairs


def swapped_pairs(units: Mapping[str, dict], target_mode: str = "difference"
                  ) -> list[tuple[str, str, list]]:
    """(target, "swapped", [reference]) for claim (f) (issue 37): each point of
    ``target_mode`` (or its seed group) against each task-swapped mask (mode
    ``swapped-<name>``, one deterministic point) at the same m, one contrast per swapped set;
    [] when the sweep has no task-swapped point."""
    refs = [(label, u) for label, u in units.items()
            if swapped_name(u["mode"]) is not None and u["n_seeds"] == 1]
    if not refs:
        return []
    pairs = []
    for label, u in units.items():
        if u["mode"] != target_mode or (u["n_seeds"] == 1 and _in_group(label, units)):
            continue
        pairs += [(label, "swapped", [ref]) for ref, r in refs if np.isclose(r["m"], u["m"])]
    return pairs


def _seed_mean(values: np.ndarray) -> np.ndarray:
    """The mean over a unit's seeds per cluster (NaN where no seed has a value)."""
    if not values.size:
        return np.zeros(values.shape[1] if values.ndim == 2 else 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # an all-NaN cluster stays NaN
        return np.nanmean(values, axis=0)


def _contrasts(engine: Engine, units: dict, matched, random_mode: str,
               metrics: Sequence[str] = METRICS, exchangeable: bool = False,
               target_mode: str = "difference") -> pd.DataFrame:
    """Target minus the mean of its reference masks, over clusters and masks (a single
    target as one more mask of the reference's kind when ``exchangeable``); the task-swapped
    contrasts of claim (f) (``swapped_pairs``, kind "swapped") last."""
    crow = []
    randoms = _random_units(units, random_mode)
    for target, kind, refs in (_contrast_pairs(units, matched, random_mode)
                               + swapped_pairs(units, target_mode)):
        t = units[target]
        # exchangeable: a single target mask is one draw too, the null "one more mask of the
        # reference's kind" (its own draw's variance estimated by the reference's spread, or,
        # against one deterministic control, by the random masks' at the target's m)
        single = exchangeable and t["n_seeds"] == 1
        spare = (next((r for k, r in randoms.items() if np.isclose(k, t["m"])), None)
                 if single else None)
        rppls = [units[r]["perplexity"] for r in refs]
        rppl = float(np.mean(rppls))
        # each seed's own perplexity: a size searched on one seed and reused for the others
        # lands each at its own damage (shown beside the claim)
        members = [units[m]["perplexity"] for r in refs for m in units[r]["members"]]
        for name in engine.names:
            for metric in metrics:
                tv = _seed_mean(t["values"][name][metric])
                rv = np.vstack([units[r]["values"][name][metric] for r in refs])
                fields = {**_interval_fields(interval_over_units(np.zeros(0), engine.level,
                                                                 what="clusters")),
                          "mask_se": math.nan, "rank_p": math.nan}
                if tv.size:
                    borrowed = None
                    if rv.shape[0] < 2 and spare is not None and spare["n_seeds"] >= 2:
                        sv = spare["values"][name][metric]
                        borrowed = mask_spread(np.where(np.isfinite(tv), sv, np.nan),
                                               np.arange(tv.size))
                    with np.errstate(invalid="ignore"):
                        cc = contrast_with_controls(tv, rv, np.arange(tv.size), engine.level,
                                                    method=engine.method,
                                                    exchangeable=single, borrowed=borrowed)
                    fields = {**_interval_fields(cc.interval), "mask_se": cc.mask_se,
                              "rank_p": cc.rank_p_value(-1)}
                nt, npr = engine.counts(name, metric)
                crow.append({"label": target, "mode": t["mode"], "m": t["m"], "kind": kind,
                             "reference": "+".join(refs),
                             "reference_mode": units[refs[0]]["mode"],
                             "reference_seeds": sum(units[r]["n_seeds"] for r in refs),
                             "perplexity": t["perplexity"], "reference_perplexity": rppl,
                             "reference_perplexity_min": float(np.min(members)),
                             "reference_perplexity_max": float(np.max(members)),
                             "family": name, "metric": metric, **fields,
                             "n_tasks": nt, "n_prompts": npr,
                             "note": engine.note(name, metric)})
    return pd.DataFrame(crow, columns=list(CONTRAST_COLUMNS))


def _condition_table(engine: Engine, units: dict, base: pd.DataFrame, changes: dict
                     ) -> pd.DataFrame:
    """Per condition and probe: the change of every unit, paired, with its interval over the
    family's clusters (and over the seeds of a seed group)."""
    margin0, correct0 = base["margin"].to_numpy(float), base["correct"].to_numpy(float)
    rows = []
    cells = base.groupby(["family", "condition", "probe", "role"], sort=False).groups
    for label, u in units.items():
        for (f, cond, probe, role), idx in cells.items():
            fam = engine.fams[f]
            idx = np.asarray(idx)
            local = np.searchsorted(fam.rows, idx)
            n_tasks = len(np.unique(fam.task[local]))
            for metric, which in (("margin_change", 0), ("accuracy_change", 1)):
                per_seed = []
                for mem in u["members"]:
                    vals = changes[mem][which][idx]
                    per_seed.append(per_cluster(vals, fam.cluster[local], fam.n))
                mat = np.vstack(per_seed)
                mat = mat[:, np.isfinite(mat).any(axis=0)]
                iv = engine.interval(mat)
                level = (margin0 if which == 0 else correct0)[idx]
                rows.append({"label": label, "mode": u["mode"], "seed": u["seed"],
                             "m": u["m"], "n_seeds": u["n_seeds"], "family": f,
                             "condition": cond, "probe": probe, "role": role,
                             "metric": metric, "baseline": float(np.nanmean(level))
                             if np.isfinite(level).any() else math.nan,
                             "value": iv.estimate, "lo": iv.lo, "hi": iv.hi,
                             "n_tasks": n_tasks, "n_prompts": int(len(idx))})
    return pd.DataFrame(rows, columns=list(CONDITION_COLUMNS))


def _random_units(units: dict, random_mode: str) -> dict:
    """{m: the unit of ``random_mode`` masks at m with the most seeds}, m > 0."""
    randoms: dict = {}
    for u in units.values():
        if u["mode"] == random_mode and u["m"] > 0:
            key = float(u["m"])
            if key not in randoms or u["n_seeds"] > randoms[key]["n_seeds"]:
                randoms[key] = u
    return randoms


def _dose_table(engine: Engine, units: dict, target_mode: str, random_mode: str,
                exchangeable: bool = False) -> pd.DataFrame:
    """Per family and pool: the mean over clusters of each cluster's least-squares slope of
    the ToM change on log m (``stats.dose_response``), over the single-seed points of
    ``target_mode`` at m > 0; one test of a sweep's trend instead of one per m. Two rows
    each: the target's own slope (``reference`` ""), and the slope of the target's change
    beyond the mean of the random masks at each m (``reference`` = ``random_mode``): any
    damaging mask grows its damage with m, so claim (e) is judged on the second, whose
    interval also carries the random masks' draws at each m (and, when ``exchangeable``, the
    target's own draw: ``dose_response``'s ``mask_spreads``)."""
    pts = sorted((u for u in units.values() if u["mode"] == target_mode and u["n_seeds"] == 1
                  and u["m"] > 0), key=lambda u: u["m"])
    randoms = _random_units(units, random_mode)
    # a comparison with masks drawn at random needs at least 2 of them at every m (one mask
    # has no mask-to-mask variance, and the slope would carry its draw as if it were signal)
    missing = [u["m"] for u in pts
               if not any(np.isclose(u["m"], r) and randoms[r]["n_seeds"] >= 2 for r in randoms)]
    rows = []
    for name in engine.names:
        for metric in DOSE_METRICS:
            for reference in ("", random_mode):
                mats = [u["values"][name][metric][0] for u in pts]
                spreads = None
                note = "slope of the change per unit of log m"
                if reference:
                    note = "slope of the change beyond the random masks' per unit of log m"
                    if missing:
                        mats = []
                        note = ("no random masks, or fewer than 2, at m = "
                                + ", ".join(f"{m:.3g}" for m in missing)
                                + " (raise --secondary-seeds)")
                    else:
                        refs = [next(r for k, r in randoms.items() if np.isclose(u["m"], k))
                                for u in pts]
                        spreads = {}
                        for t, r, u in zip(mats, refs, pts):
                            rv = r["values"][name][metric]
                            var, df = mask_spread(np.where(np.isfinite(t), rv, np.nan),
                                                  np.arange(t.size))
                            spreads[float(u["m"])] = (var, r["n_seeds"], df)
                        mats = [t - _seed_mean(r["values"][name][metric])
                                for t, r in zip(mats, refs)]
                if mats and mats[0].size:
                    n = mats[0].size
                    iv = dose_response(np.concatenate(mats), np.tile(np.arange(n), len(mats)),
                                       np.repeat([u["m"] for u in pts], n), engine.level,
                                       mask_spreads=spreads, exchangeable=exchangeable)
                else:
                    iv = interval_over_units(np.zeros(0), engine.level, what="clusters")
                rows.append({"mode": target_mode, "reference": reference, "family": name,
                             "metric": metric, **_interval_fields(iv), "n_m": len(pts),
                             "m_values": " ".join(f"{u['m']:.4g}" for u in pts),
                             "note": note if reference and missing else (iv.reason or note)})
    return pd.DataFrame(rows, columns=list(DOSE_COLUMNS))
