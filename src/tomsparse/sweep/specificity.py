"""Is the effect on ToM specific? Paired statistics of a finished sweep (issue 15, parts 1, 3, 6).

Works only from the per-prompt tables a sweep writes (``points/<label>.json`` and
``points/<label>_prompts.csv``); it never loads a model.

Roles (which prompts measure ToM and which are their controls), from the task definitions in
``tomsparse.data.tasks.model`` and ``tomsparse.data.tasks.tomi``:

* unexpected contents: probe b ("XNAM calls a friend to tell them ... full of") asks for the
  protagonist's belief; under *false belief* it expects the label's word (o2), so
  (false belief, b) is the ToM prompt. Probe b under *correct label*, *informed protagonist*
  and *open container* expects the true contents (belief = reality): those are its true-belief
  controls (same probe sentence, only the belief state differs). Probe a ("opens the CX and
  ... can clearly see that it is full of") asks for reality in every condition: role "fact",
  reported but neither ToM nor control.
* unexpected transfer: probe b is ``q2`` (where the protagonist will look), probe a ``q1``
  (where the object is). (false belief, b) expects the old location: ToM. Probe b under
  *no transfer*, *informed protagonist*, *present protagonist*: controls. Probe a: fact.
* irony: ``irony`` (remark contradicted by its context, answer "No") is ToM; ``irony
  reversed`` (the literal twin, answer "Yes") is its control.
* ToMi: first- and second-order belief questions whose answer is not the object's current
  place (scenario "... (false belief)") are ToM; the same question forms with a true belief
  are the controls (the matched control); reality and memory questions are "fact".

Every number is PAIRED: a prompt at a point is compared with the same prompt at the baseline
(mode ``none``). A drop in margin (log P(expected) - log P(alternative)) is damage, so
negative changes are losses, and a negative belief gap means the false-belief prompts lost
more than their controls.

Resampling: the clusters are tasks (prompts sharing ``task_id`` within a family). One set of
draws is made up front and shared by every point, so differences between points are paired
too. Draw order, restated so a test can repeat it: ``rng = numpy.random.default_rng(seed)``;
for each family in the order of ``FAMILIES`` (then any other, sorted), ``rng.integers(0,
n_tasks, size=(draws, n_tasks))`` are the resampled task indices. A statistic is a ratio of
sums over the resampled tasks (e.g. mean change over the ToM prompts they contain), the
interval its 2.5 / 97.5 percentiles. Seeds of one mode at one m are replicates: each draw
also resamples the seeds with ``numpy.random.default_rng([seed, 1]).integers(0, k, size=(draws,
k))`` and averages the per-seed statistics over the drawn seeds. Pooled families ("all",
"above chance") are the unweighted mean of the family statistics of the same draw.

Two-answer families (one fixed answer pair, e.g. irony's Yes / No): the answer-bias shift is
the change in the mean of log P(A) - log P(B) over all the family's prompts, A being the
answer the ToM prompts do not expect ("Yes" for irony). When ToM and control prompts expect
opposite answers of that pair (irony), their belief gap equals minus twice the bias shift: it
cannot tell a lost irony reading from a Yes/No bias, so such a family is marked
``gap_confounded`` and left out of pooled belief gaps; its ToM change is reported
bias-adjusted (``tom_margin_change_adj``: each prompt's change minus the bias shift in its
answer's direction).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from tomsparse.data.tasks import FAMILIES, first_word
from tomsparse.data.tasks.model import (
    CONTENTS_CONDITIONS,
    IRONY_CONDITIONS,
    TRANSFER_CONDITIONS,
)
from tomsparse.data.tasks.tomi import TOMI_CONDITIONS
from tomsparse.errors import UserError
from tomsparse.manifest import write_csv

TOM, CONTROL, FACT = "tom", "control", "fact"
BASELINE_MODE = "none"
KEY = ("family", "task_id", "task_index", "condition", "reversed", "scenario", "probe", "cell")

# (family, condition, probe) -> role; ToMi is decided by question type and belief (below).
ROLE: dict[tuple[str, str, str], str] = {}
for _c in CONTENTS_CONDITIONS:
    ROLE[("unexpected", _c, "b")] = TOM if _c == "false belief" else CONTROL
    ROLE[("unexpected", _c, "a")] = FACT
for _c in TRANSFER_CONDITIONS:
    ROLE[("transfer", _c, "b")] = TOM if _c == "false belief" else CONTROL
    ROLE[("transfer", _c, "a")] = FACT
ROLE[("irony", IRONY_CONDITIONS[0], "")] = TOM
ROLE[("irony", IRONY_CONDITIONS[1], "")] = CONTROL

ROLE_REASONS = {
    ("unexpected", TOM): "probe b (tells a friend) under false belief expects the label's word",
    ("unexpected", CONTROL): "probe b where belief = true contents (correct label, informed, "
                             "open container)",
    ("unexpected", FACT): "probe a (looks inside) asks for the true contents",
    ("transfer", TOM): "probe b (q2, where they will look) under false belief expects the "
                       "old place",
    ("transfer", CONTROL): "probe b where belief = reality (no transfer, informed, present)",
    ("transfer", FACT): "probe a (q1) asks where the object is",
    ("irony", TOM): "ironic remark contradicted by its context (No)",
    ("irony", CONTROL): "literal twin: context agrees with the remark (Yes)",
    ("tomi", TOM): "first/second-order belief question, false belief",
    ("tomi", CONTROL): "first/second-order belief question, true belief",
    ("tomi", FACT): "reality and memory questions",
}

METRICS = ("tom_margin_change", "control_margin_change", "fact_margin_change",
           "belief_gap_margin", "tom_accuracy_change", "control_accuracy_change",
           "belief_gap_accuracy", "bias_shift", "tom_margin_change_adj")
# Which roles stand behind each metric (for n_tasks / n_prompts).
_METRIC_ROLES = {"tom_margin_change": (TOM,), "control_margin_change": (CONTROL,),
                 "fact_margin_change": (FACT,), "belief_gap_margin": (TOM, CONTROL),
                 "tom_accuracy_change": (TOM,), "control_accuracy_change": (CONTROL,),
                 "belief_gap_accuracy": (TOM, CONTROL), "bias_shift": (TOM, CONTROL, FACT),
                 "tom_margin_change_adj": (TOM,)}
_GAP_METRICS = ("belief_gap_margin", "belief_gap_accuracy")
POOL_ALL, POOL_ABOVE = "all", "above chance"


def prompt_role(family: str, condition: str, probe: str, scenario: str = "") -> str:
    """``tom``, ``control``, ``fact`` or ``""`` (not used) for one prompt."""
    if family == "tomi":
        if condition in TOMI_CONDITIONS[:2]:
            if "(false belief)" in scenario:
                return TOM
            if "(true belief)" in scenario:
                return CONTROL
            return ""
        return FACT if condition in TOMI_CONDITIONS[2:] else ""
    return ROLE.get((family, condition, probe or ""), "")


def roles_table() -> pd.DataFrame:
    """The classification as a table (family, condition, probe, role, why)."""
    rows = [{"family": f, "condition": c, "probe": p, "role": r,
             "why": ROLE_REASONS[(f, r)]} for (f, c, p), r in ROLE.items()]
    for c in TOMI_CONDITIONS:
        if c in TOMI_CONDITIONS[:2]:
            for belief, role in (("false belief", TOM), ("true belief", CONTROL)):
                rows.append({"family": "tomi", "condition": f"{c} ({belief})", "probe": "",
                             "role": role, "why": ROLE_REASONS[("tomi", role)]})
        else:
            rows.append({"family": "tomi", "condition": c, "probe": "", "role": FACT,
                         "why": ROLE_REASONS[("tomi", FACT)]})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- reading

_NUMERIC = ("logprob_expected", "logprob_alternative", "margin")


def _clean_prompts(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """One row per prompt (reps averaged), key columns as strings, numbers as floats."""
    missing = [c for c in (*KEY, "expected", "alternative", "correct") if c not in frame]
    if missing:
        raise UserError(f"{where}: missing column(s) {', '.join(missing)}")
    frame = frame.copy()
    for col in (*KEY, "expected", "alternative"):
        frame[col] = frame[col].fillna("").astype(str)
    for col in _NUMERIC:
        frame[col] = pd.to_numeric(frame[col], errors="coerce") if col in frame else np.nan
    if "margin" in frame and frame["margin"].isna().all():
        frame["margin"] = frame["logprob_expected"] - frame["logprob_alternative"]
    corr = frame["correct"]
    if corr.dtype == object or str(corr.dtype).startswith(("str", "string")):
        corr = corr.astype(str).str.strip().str.lower().map({"true": 1.0, "false": 0.0,
                                                             "1": 1.0, "0": 0.0})
    frame["correct"] = pd.to_numeric(corr, errors="coerce").astype(float)
    out = (frame.groupby(list(KEY) + ["expected", "alternative"], sort=False, dropna=False)
           [["margin", "correct"]].mean().reset_index())
    if out.duplicated(list(KEY)).any():
        dup = out[out.duplicated(list(KEY), keep=False)].iloc[0]
        raise UserError(f"{where}: prompt {dict(dup[list(KEY)])} appears with two different "
                        f"expected answers")
    return out


_LABEL_RE = re.compile(r"^(?P<mode>.+)_s(?P<seed>-?\d+)_m(?P<m>[-+.0-9eE]+)$")


def read_sweep(sweep_dir: str | Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Points (label, mode, seed, m, perplexity, masked, ppl_windows) and the per-prompt
    table of every point, keyed by label (the file stem ``<mode>_s<seed>_m<m>``)."""
    points_dir = Path(sweep_dir) / "points"
    if not points_dir.is_dir():
        raise UserError(f"{sweep_dir}: no points/ folder; is this a sweep folder?")
    infos, prompts = [], {}
    for path in sorted(points_dir.glob("*.json")):
        if not _LABEL_RE.match(path.stem):
            continue
        csv = path.with_name(path.stem + "_prompts.csv")
        if not csv.is_file():
            raise UserError(f"{csv}: missing (every finished point needs its per-prompt table)")
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: cannot read ({exc})") from None
        infos.append({"label": path.stem, "mode": str(info["mode"]), "seed": int(info["seed"]),
                      "m": float(info["m"]), "perplexity": float(info.get("perplexity", np.nan)),
                      "masked": info.get("masked"), "ppl_windows": info.get("ppl_windows")})
        prompts[path.stem] = pd.read_csv(csv, dtype={k: str for k in KEY},
                                         keep_default_na=False, na_values={c: [""] for c in
                                                                           _NUMERIC})
    if not infos:
        raise UserError(f"{points_dir}: no finished sweep points")
    return pd.DataFrame(infos), prompts


# ----------------------------------------------------------------------------- engine

class _Family:
    """The prompts of one family in the baseline's order, their roles and task clusters."""

    def __init__(self, name: str, base: pd.DataFrame):
        self.name = name
        self.rows = base.index[base["family"] == name].to_numpy()
        sub = base.loc[self.rows]
        self.tasks = sorted(sub["task_id"].unique(), key=natural_key)
        pos = {t: i for i, t in enumerate(self.tasks)}
        self.task = sub["task_id"].map(pos).to_numpy()
        self.role = sub["role"].to_numpy()
        self.n_tasks = len(self.tasks)
        exp = sub["expected"].map(first_word).to_numpy()
        alt = sub["alternative"].map(first_word).to_numpy()
        words = sorted(set(exp) | set(alt))
        self.pair = None
        self.sign = np.zeros(len(sub))
        self.confounded = False
        if len(words) == 2:
            tom_alt = alt[self.role == TOM]
            if len(tom_alt):
                values, counts = np.unique(tom_alt, return_counts=True)
                a = values[np.argmax(counts)] if counts.max() * 2 > len(tom_alt) else words[1]
            else:
                a = words[1]
            b = words[0] if a == words[1] else words[1]
            self.pair = (a, b)
            self.sign = np.where(exp == a, 1.0, -1.0)
            st = self.sign[self.role == TOM]
            sc = self.sign[self.role == CONTROL]
            self.confounded = bool(len(st) and len(sc) and abs(st.mean() - sc.mean()) > 1e-9)

    def count(self, roles: Sequence[str]) -> tuple[int, int]:
        """(tasks, prompts) with the given roles."""
        sel = np.isin(self.role, list(roles))
        return int(len(np.unique(self.task[sel]))), int(sel.sum())

    def sums(self, margin: np.ndarray, correct: np.ndarray) -> dict[str, np.ndarray]:
        """Per-task sums (length n_tasks) of the quantities the statistics need."""
        m, c = margin[self.rows], correct[self.rows]

        def tot(values, sel):
            return np.bincount(self.task[sel], weights=values[sel], minlength=self.n_tasks)

        out = {}
        for role in (TOM, CONTROL, FACT):
            sel = self.role == role
            out[f"{role}_m"] = tot(m, sel)
            out[f"{role}_a"] = tot(c, sel)
            out[f"{role}_n"] = tot(np.ones_like(m), sel)
        used = np.isin(self.role, [TOM, CONTROL, FACT])
        out["bias"] = tot(self.sign * m, used)
        out["all_n"] = tot(np.ones_like(m), used)
        out["tom_s"] = tot(self.sign, self.role == TOM)
        return out

    def stats(self, s: dict[str, np.ndarray], w: np.ndarray) -> dict[str, np.ndarray]:
        """Every metric for task weights ``w`` ([draws x n_tasks]; a row of ones = estimate)."""
        def r(num, den):
            with np.errstate(invalid="ignore", divide="ignore"):
                return (w @ s[num]) / (w @ s[den])

        out = {"tom_margin_change": r("tom_m", "tom_n"),
               "control_margin_change": r("control_m", "control_n"),
               "fact_margin_change": r("fact_m", "fact_n"),
               "tom_accuracy_change": r("tom_a", "tom_n"),
               "control_accuracy_change": r("control_a", "control_n")}
        out["belief_gap_margin"] = out["tom_margin_change"] - out["control_margin_change"]
        out["belief_gap_accuracy"] = out["tom_accuracy_change"] - out["control_accuracy_change"]
        if self.pair is not None:
            out["bias_shift"] = r("bias", "all_n")
            out["tom_margin_change_adj"] = (out["tom_margin_change"]
                                            - r("tom_s", "tom_n") * out["bias_shift"])
        else:
            out["bias_shift"] = np.full(w.shape[0], np.nan)
            out["tom_margin_change_adj"] = out["tom_margin_change"]
        return out


def natural_key(text: str):
    """Sort key putting "task2" before "task10" (task ids are numbered text)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


def task_weights(n_tasks: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """[draws x n_tasks] counts of each task in ``draws`` resamples with replacement."""
    idx = rng.integers(0, n_tasks, size=(draws, n_tasks))
    w = np.zeros((draws, n_tasks))
    np.add.at(w, (np.arange(draws)[:, None], idx), 1.0)
    return w


def _interval(values: np.ndarray) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    if not np.isfinite(values).any():
        return math.nan, math.nan
    lo, hi = np.nanpercentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def _family_order(names) -> list[str]:
    names = set(names)
    return [f for f in FAMILIES if f in names] + sorted(names - set(FAMILIES))


def compute_specificity(points: pd.DataFrame, prompts: Mapping[str, pd.DataFrame], *,
                        matched: Mapping[str, Sequence[str]] | None = None,
                        random_mode: str = "random", draws: int = 2000, seed: int = 0,
                        chance: float = 0.5) -> dict[str, pd.DataFrame]:
    """The specificity tables from point infos and per-prompt tables (see ``read_sweep``).

    ``matched`` maps a target label (a point, or a seed group ``<mode>_sall_m<m>``) to the
    labels of its damage-matched control points; their mean is the comparison.

    Returns ``points`` (long: label, mode, seed, m, n_seeds, masked, perplexity, ppl_change,
    family, metric, value, lo, hi, n_tasks, n_prompts, note), ``contrasts`` (target minus
    reference, paired), ``baseline`` (chance check), ``conditions`` (change per condition and
    probe) and ``roles``.
    """
    points = points.copy()
    for col in ("perplexity", "masked", "ppl_windows"):
        if col not in points:
            points[col] = np.nan
    base_rows = points[points["mode"] == BASELINE_MODE]
    if base_rows.empty:
        raise UserError("no baseline point (mode 'none'): the changes are measured against it")
    base_label = base_rows.sort_values("seed")["label"].iloc[0]
    base = _clean_prompts(prompts[base_label], base_label)
    base["role"] = [prompt_role(f, c, p, s) for f, c, p, s in
                    zip(base["family"], base["condition"], base["probe"], base["scenario"])]
    base = base[base["role"] != ""].reset_index(drop=True)
    if base.empty:
        raise UserError(f"{base_label}: no prompt of a known family and condition")
    keys = list(KEY)
    margin0, correct0 = base["margin"].to_numpy(float), base["correct"].to_numpy(float)

    changes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for label in points["label"]:
        if label == base_label:
            continue
        if label not in prompts:
            raise UserError(f"{label}: no per-prompt table")
        cur = _clean_prompts(prompts[label], label)
        joined = base[keys + ["expected"]].merge(
            cur[keys + ["expected", "margin", "correct"]], on=keys, how="left",
            suffixes=("", "_pt"), validate="one_to_one")
        lost = joined["margin"].isna() & joined["correct"].isna()
        if lost.any() or (joined["expected"] != joined["expected_pt"]).any():
            bad = joined[lost | (joined["expected"] != joined["expected_pt"])].iloc[0]
            raise UserError(f"{label}: prompt {dict(bad[keys])} is missing or has another "
                            f"expected answer than at the baseline; the points are not paired")
        changes[label] = (joined["margin"].to_numpy(float) - margin0,
                          joined["correct"].to_numpy(float) - correct0)

    fams = {f: _Family(f, base) for f in _family_order(base["family"].unique())}
    rng = np.random.default_rng(seed)
    weights = {f: task_weights(fam.n_tasks, draws, rng) for f, fam in fams.items()}
    ones = {f: np.ones((1, fam.n_tasks)) for f, fam in fams.items()}

    # Baseline chance check.
    base_rows_out, above = [], []
    for f, fam in fams.items():
        s = fam.sums(margin0, correct0)
        est, dr = fam.stats(s, ones[f]), fam.stats(s, weights[f])
        n_tasks, n_prompts = fam.count((TOM,))
        # the stats' "change" names hold levels here
        acc, acc_ci = est["tom_accuracy_change"][0], _interval(dr["tom_accuracy_change"])
        mar, mar_ci = est["tom_margin_change"][0], _interval(dr["tom_margin_change"])
        if not np.isfinite(acc):
            state = "no false-belief prompts"
        elif acc_ci[0] > chance:
            state = "above chance"
        elif acc_ci[1] < chance:
            state = "below chance"
        else:
            state = "at chance"
        if state == "above chance":
            above.append(f)
        # Controls the baseline does not pass: a heuristic (e.g. "answer the label") can then
        # pass the false-belief prompts without any belief tracking.
        weak = []
        sub = base.loc[fam.rows]
        for cond, grp in sub[sub["role"] == CONTROL].groupby("condition", sort=False):
            if grp["correct"].mean() <= chance:
                weak.append(f"{cond} {grp['correct'].mean():.2f}")
        base_rows_out.append({"weak_controls": "; ".join(weak),
            "family": f, "n_tasks": n_tasks, "n_prompts": n_prompts, "chance": chance,
            "tom_accuracy": acc, "tom_accuracy_lo": acc_ci[0], "tom_accuracy_hi": acc_ci[1],
            "tom_margin": mar, "tom_margin_lo": mar_ci[0], "tom_margin_hi": mar_ci[1],
            "control_accuracy": est["control_accuracy_change"][0],
            "control_margin": est["control_margin_change"][0],
            "fact_accuracy": float(np.nansum(s["fact_a"]) / max(np.nansum(s["fact_n"]), 1))
            if s["fact_n"].sum() else math.nan,
            "state": state, "at_chance": state != "above chance",
            "gap_confounded": fam.confounded,
            "bias_answers": f"{fam.pair[0]} over {fam.pair[1]}" if fam.pair else ""})
    baseline = pd.DataFrame(base_rows_out)

    pools = {POOL_ALL: list(fams), POOL_ABOVE: above}

    def unit_stats(label):
        dm, dc = changes[label]
        est, dr = {}, {}
        for f, fam in fams.items():
            s = fam.sums(dm, dc)
            est[f] = {k: v[0] for k, v in fam.stats(s, ones[f]).items()}
            dr[f] = fam.stats(s, weights[f])
        return est, dr

    def add_pools(est, dr):
        for pool, members in pools.items():
            est[pool], dr[pool] = {}, {}
            for metric in METRICS:
                use = [f for f in members if metric != "bias_shift"
                       and not (metric in _GAP_METRICS and fams[f].confounded)]
                if not use:
                    est[pool][metric] = math.nan
                    dr[pool][metric] = np.full(draws, np.nan)
                    continue
                with np.errstate(invalid="ignore"), _quiet():
                    est[pool][metric] = float(np.nanmean([est[f][metric] for f in use]))
                    dr[pool][metric] = np.nanmean(np.vstack([dr[f][metric] for f in use]),
                                                  axis=0)

    # Units: every point, plus a seed group per (mode, m) with more than one seed.
    units: dict[str, dict] = {}
    ppl0 = float(base_rows["perplexity"].iloc[0])
    for row in points[points["label"] != base_label].itertuples():
        est, dr = unit_stats(row.label)
        add_pools(est, dr)
        units[row.label] = dict(mode=row.mode, seed=row.seed, m=row.m, n_seeds=1,
                                ppl_windows=row.ppl_windows,
                                masked=row.masked, perplexity=row.perplexity, est=est, dr=dr)
    others = points[(points["label"] != base_label)]
    for (mode, m), grp in others.groupby(["mode", "m"], sort=True):
        if len(grp) < 2:
            continue
        members = list(grp.sort_values("seed")["label"])
        k = len(members)
        vrng = np.random.default_rng([seed, 1])
        v = task_weights(k, draws, vrng)
        est, dr = {}, {}
        for fam_name in list(fams) + list(pools):
            est[fam_name], dr[fam_name] = {}, {}
            for metric in METRICS:
                vals = np.array([units[u]["est"][fam_name][metric] for u in members])
                mat = np.vstack([units[u]["dr"][fam_name][metric] for u in members]).T
                with np.errstate(invalid="ignore"), _quiet():
                    est[fam_name][metric] = float(np.nanmean(vals))
                    dr[fam_name][metric] = np.nansum(mat * v, axis=1) / v.sum(axis=1)
                    dr[fam_name][metric][np.isnan(mat).all(axis=1)] = np.nan
        units[group_label(mode, m)] = dict(
            mode=mode, seed=pd.NA, m=m, n_seeds=k, masked=float(grp["masked"].mean()),
            ppl_windows=grp["ppl_windows"].iloc[0],
            perplexity=float(grp["perplexity"].mean()), est=est, dr=dr, members=members)

    def n_for(fam_name, metric):
        members = pools.get(fam_name, [fam_name])
        roles = _METRIC_ROLES[metric]
        nt = npr = 0
        for f in members:
            if metric == "bias_shift" and fam_name in pools:
                continue
            if metric in _GAP_METRICS and fams[f].confounded and fam_name in pools:
                continue
            if metric == "bias_shift" and fams[f].pair is None:
                continue
            t, p = fams[f].count(roles)
            nt, npr = nt + t, npr + p
        return nt, npr

    def note(fam_name, metric):
        if fam_name in pools:
            use = [f for f in pools[fam_name]
                   if not (metric in _GAP_METRICS and fams[f].confounded)]
            return "families: " + (", ".join(use) if use else "none")
        fam = fams[fam_name]
        if metric == "bias_shift" and fam.pair:
            return f"log P({fam.pair[0]}) - log P({fam.pair[1]})"
        if metric in _GAP_METRICS and fam.confounded:
            return "confounded with the answer bias (= -2 x bias_shift in a balanced design)"
        return ""

    rows = []
    for label, u in units.items():
        ppl_change = u["perplexity"] / ppl0 - 1 if ppl0 else math.nan
        for fam_name in list(fams) + list(pools):
            for metric in METRICS:
                lo, hi = _interval(u["dr"][fam_name][metric])
                nt, npr = n_for(fam_name, metric)
                rows.append({"label": label, "mode": u["mode"], "seed": u["seed"], "m": u["m"],
                             "n_seeds": u["n_seeds"], "masked": u["masked"],
                             "perplexity": u["perplexity"], "ppl_change": ppl_change,
                             "ppl_windows": u["ppl_windows"],
                             "family": fam_name, "metric": metric,
                             "value": u["est"][fam_name][metric], "lo": lo, "hi": hi,
                             "n_tasks": nt, "n_prompts": npr, "note": note(fam_name, metric)})
    table = pd.DataFrame(rows)

    # Contrasts: target minus the random masks of the same m, and minus matched controls.
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
        # one contrast per control: the claim must hold against each kind of damage
        pairs += [(target, "matched", [ref]) for ref in refs]
    crow = []
    for target, kind, refs in pairs:
        t = units[target]
        rppl = float(np.mean([units[r]["perplexity"] for r in refs]))
        for fam_name in list(fams) + list(pools):
            for metric in METRICS:
                with np.errstate(invalid="ignore"), _quiet():
                    ref_est = float(np.nanmean([units[r]["est"][fam_name][metric] for r in refs]))
                    ref_dr = np.nanmean(np.vstack([units[r]["dr"][fam_name][metric]
                                                   for r in refs]), axis=0)
                lo, hi = _interval(t["dr"][fam_name][metric] - ref_dr)
                nt, npr = n_for(fam_name, metric)
                crow.append({"label": target, "mode": t["mode"], "m": t["m"], "kind": kind,
                             "reference": "+".join(refs),
                             "reference_seeds": sum(units[r]["n_seeds"] for r in refs),
                             "perplexity": t["perplexity"], "reference_perplexity": rppl,
                             "family": fam_name, "metric": metric,
                             "value": t["est"][fam_name][metric] - ref_est, "lo": lo, "hi": hi,
                             "n_tasks": nt, "n_prompts": npr, "note": note(fam_name, metric)})
    contrasts = pd.DataFrame(crow, columns=[
        "label", "mode", "m", "kind", "reference", "reference_seeds", "perplexity",
        "reference_perplexity", "family", "metric", "value", "lo", "hi", "n_tasks",
        "n_prompts", "note"])

    # Per condition and probe: the table, paired, with intervals.
    cond_rows = []
    cells = base.groupby(["family", "condition", "probe", "role"], sort=False).groups
    for label, u in units.items():
        members = u.get("members", [label])
        vrng = np.random.default_rng([seed, 1])
        v = task_weights(len(members), draws, vrng) if len(members) > 1 else None
        for (f, cond, probe, role), idx in cells.items():
            fam = fams[f]
            local = np.searchsorted(fam.rows, np.asarray(idx))
            n_tasks = len(np.unique(fam.task[local]))
            cnt = np.bincount(fam.task[local], minlength=fam.n_tasks).astype(float)
            for metric, which in (("margin_change", 0), ("accuracy_change", 1)):
                ests, drs = [], []
                for mem in members:
                    vals = changes[mem][which][fam.rows][local]
                    tot = np.bincount(fam.task[local], weights=vals, minlength=fam.n_tasks)
                    with np.errstate(invalid="ignore", divide="ignore"):
                        ests.append(tot.sum() / cnt.sum())
                        drs.append((weights[f] @ tot) / (weights[f] @ cnt))
                if v is None:
                    est, dr = ests[0], drs[0]
                else:
                    est = float(np.mean(ests))
                    dr = (np.vstack(drs).T * v).sum(axis=1) / v.sum(axis=1)
                lo, hi = _interval(dr)
                level = (margin0 if which == 0 else correct0)[np.asarray(idx)]
                cond_rows.append({"label": label, "mode": u["mode"], "seed": u["seed"],
                                  "m": u["m"], "n_seeds": u["n_seeds"], "family": f,
                                  "condition": cond, "probe": probe, "role": role,
                                  "metric": metric, "baseline": float(np.mean(level)),
                                  "value": est, "lo": lo, "hi": hi, "n_tasks": n_tasks,
                                  "n_prompts": int(len(idx))})
    conditions = pd.DataFrame(cond_rows)

    info = pd.DataFrame([{"label": base_label, "perplexity": ppl0, "draws": draws,
                          "seed": seed, "chance": chance}])
    return {"points": table, "contrasts": contrasts, "baseline": baseline,
            "conditions": conditions, "roles": roles_table(), "info": info}


class _quiet:
    """Silence numpy's 'mean of empty slice' warnings inside a block."""

    def __enter__(self):
        import warnings
        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("ignore", category=RuntimeWarning)

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def m_tag(m: float) -> str:
    """m in file and label names: 5 significant digits when that is m exactly (the names of
    earlier sweeps), else its full repr, so that the reference grid's 9.999999999999999e-06
    and 1e-05 never share a name."""
    short = f"{m:.4e}"
    return short if float(short) == m else repr(float(m))


def point_label(mode: str, seed: int, m: float) -> str:
    """Label of one point, the stem of its files under ``points/``."""
    return f"{mode}_s{seed}_m{m_tag(m)}"


def group_label(mode: str, m: float) -> str:
    """Label of the seed group of ``mode`` at ``m`` (all seeds as replicates)."""
    return f"{mode}_sall_m{m_tag(m)}"


def _in_group(label: str, units: dict) -> bool:
    return any(label in u.get("members", ()) for u in units.values())


def read_matched(sweep_dir: str | Path) -> tuple[dict[str, list[str]], pd.DataFrame]:
    """From ``matched.json`` (written by the sweep's damage-matched search): {target label:
    [labels of its matched, evaluated controls]} and a table of every search (matched or
    not). Both empty when the sweep had no damage-matched controls."""
    path = Path(sweep_dir) / "matched.json"
    cols = ["target", "target_m", "target_perplexity", "mode", "m", "perplexity",
            "ppl_change", "matched", "evaluations", "label"]
    if not path.exists():
        return {}, pd.DataFrame(columns=cols)
    try:
        data = json.loads(path.read_text())
        mapping, rows = {}, []
        for target, t in data["targets"].items():
            for c in t["controls"]:
                rows.append({"target": target, "target_m": t["m"],
                             "target_perplexity": t["perplexity"], "mode": c["mode"],
                             "m": c["m"], "perplexity": c["perplexity"],
                             "ppl_change": c["ppl_change"], "matched": bool(c["matched"]),
                             "evaluations": len(c.get("search", [])), "label": c["label"]})
                if c["matched"]:
                    mapping.setdefault(target, []).append(c["label"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: unreadable ({exc!r}); delete it and run the sweep again to "
                        "redo the damage-matched search") from None
    return mapping, pd.DataFrame(rows, columns=cols)


def specificity_tables(sweep_dir: str | Path, **options) -> dict[str, pd.DataFrame]:
    """``compute_specificity`` on a finished sweep folder (with its damage-matched controls,
    when ``matched.json`` lists some, unless ``matched`` is given)."""
    points, prompts = read_sweep(sweep_dir)
    mapping, searches = read_matched(sweep_dir)
    options.setdefault("matched", mapping)
    tables = compute_specificity(points, prompts, **options)
    tables["matched"] = searches
    return tables


# ----------------------------------------------------------------------------- verdicts

HOLDS, FAILS, CANNOT = "holds", "does not hold", "cannot be measured on this model"


def _fmt(x: float) -> str:
    return "nan" if x is None or not np.isfinite(x) else f"{x:+.2f}"


def _pick(frame: pd.DataFrame, **eq) -> pd.Series | None:
    sel = frame
    for k, v in eq.items():
        sel = sel[sel[k] == v]
    return None if sel.empty else sel.iloc[0]


def verdicts(tables: Mapping[str, pd.DataFrame], *, target_mode: str = "difference",
             ppl_threshold: float = 0.10) -> list[dict]:
    """For every point (or seed group) of ``target_mode``, one verdict per claim:

    (a) ToM hurt more than random masks of the same count; (b) more than damage-matched
    controls; (c) false belief hurt more than its true-belief controls; (d) perplexity nearly
    unchanged (rise at most ``ppl_threshold``). Each dict: claim, label, m, status (holds /
    does not hold / cannot be measured on this model), value, lo, hi, n_tasks, n_prompts,
    sentence. "ToM change" is the bias-adjusted margin change of the false-belief prompts,
    averaged over the families whose baseline is above chance; a negative number is damage.
    """
    pts, con, base = tables["points"], tables["contrasts"], tables["baseline"]
    if pts.empty or "mode" not in pts:  # the baseline alone: nothing to judge
        return []
    info = tables["info"].iloc[0]
    above = list(base.loc[base["state"] == "above chance", "family"])
    chance_note = ("baseline above chance on the false-belief prompts of: "
                   + ", ".join(above)) if above else (
        "baseline at chance on the false-belief prompts of every family, so no loss of ToM "
        "can be measured")
    weak = [f"{r.family} ({r.weak_controls})" for r in base.itertuples()
            if r.family in above and r.weak_controls]
    if weak:
        chance_note += ("; but the baseline fails true-belief controls of "
                        + ", ".join(weak) + ", so a heuristic may pass its false-belief prompts")
    pool = POOL_ABOVE if above else POOL_ALL
    targets = pts[pts["mode"] == target_mode][["label", "m", "n_seeds", "perplexity",
                                                "ppl_change", "ppl_windows"]
                                               ].drop_duplicates("label")
    # a seed group replaces its members
    grouped_ms = set(targets.loc[targets["n_seeds"] > 1, "m"])
    targets = targets[(targets["n_seeds"] > 1) | ~targets["m"].isin(grouped_ms)]
    out = []

    def entry(claim, row_label, m, status, value, lo, hi, nt, npr, text):
        out.append({"claim": claim, "label": row_label, "m": m, "status": status,
                    "value": value, "lo": lo, "hi": hi, "n_tasks": nt, "n_prompts": npr,
                    "sentence": text})

    searches = tables.get("matched")
    for t in targets.sort_values("m").itertuples():
        where = f"{target_mode} m={t.m:.3g}"
        row = _pick(con, label=t.label, kind="random", family=pool,
                    metric="tom_margin_change_adj")
        what = "ToM hurt more than random masks of the same count"
        if row is None:
            entry("a", t.label, t.m, CANNOT, math.nan, math.nan, math.nan, 0, 0,
                  f"(a) {what} ({where}): no random-mask points at this m: {CANNOT}.")
        else:
            status = CANNOT if not above else (HOLDS if row["hi"] < 0 else FAILS)
            entry("a", t.label, t.m, status, row["value"], row["lo"], row["hi"],
                  int(row["n_tasks"]), int(row["n_prompts"]),
                  f"(a) {what} ({where}): ToM margin change minus {row['reference']}'s "
                  f"= {_fmt(row['value'])} [95% {_fmt(row['lo'])}, {_fmt(row['hi'])}] "
                  f"({row['note']}; {int(row['n_tasks'])} tasks, {int(row['n_prompts'])} "
                  f"false-belief prompts, {int(row['reference_seeds'])} reference seed(s); "
                  f"{chance_note}): {status}.")
        _matched_verdict(con, searches, t, where, pool, above, chance_note, entry)
        row = _pick(pts, label=t.label, family=pool, metric="belief_gap_margin")
        what = "false belief hurt more than its true-belief controls"
        if row is None or not np.isfinite(row["value"]):
            entry("c", t.label, t.m, CANNOT, math.nan, math.nan, math.nan, 0, 0,
                  f"(c) {what} ({where}): no family with an unconfounded belief gap: {CANNOT}.")
        else:
            status = CANNOT if not above else (HOLDS if row["hi"] < 0 else FAILS)
            bias = pts[(pts["label"] == t.label) & (pts["metric"] == "bias_shift")
                       & pts["value"].notna()]
            extra = "".join(f"; {b.family} answer-bias shift {_fmt(b.value)} "
                            f"[{_fmt(b.lo)}, {_fmt(b.hi)}] ({b.note})"
                            for b in bias.itertuples())
            # The reality questions share each task's answer words: if they move as much as
            # the controls, the gap is a shift between the two words, not belief tracking.
            parts = {metric: _pick(pts, label=t.label, family=pool, metric=metric)
                     for metric in ("tom_margin_change", "control_margin_change",
                                    "fact_margin_change")}
            moved = [f"{name} {_fmt(r['value'])} [{_fmt(r['lo'])}, {_fmt(r['hi'])}]"
                     for name, r in zip(("false belief", "true-belief controls",
                                         "reality questions"), parts.values())
                     if r is not None and np.isfinite(r["value"])]
            if moved:
                extra = "; margin changes: " + ", ".join(moved) + extra
            entry("c", t.label, t.m, status, row["value"], row["lo"], row["hi"],
                  int(row["n_tasks"]), int(row["n_prompts"]),
                  f"(c) {what} ({where}): belief gap (ToM minus control margin change) "
                  f"= {_fmt(row['value'])} [95% {_fmt(row['lo'])}, {_fmt(row['hi'])}] "
                  f"({row['note']}; {int(row['n_tasks'])} tasks, {int(row['n_prompts'])} "
                  f"prompts{extra}; {chance_note}): {status}.")
        change = t.ppl_change
        status = CANNOT if not np.isfinite(change) else (
            HOLDS if change <= ppl_threshold else FAILS)
        windows = int(t.ppl_windows) if pd.notna(t.ppl_windows) else 0
        entry("d", t.label, t.m, status, change, math.nan, math.nan, 0, windows,
              f"(d) perplexity nearly unchanged ({where}): {t.perplexity:.2f} vs "
              f"{info['perplexity']:.2f} at baseline, {change * 100:+.0f}% (threshold "
              f"+{ppl_threshold * 100:.0f}%; no interval: one perplexity per point, "
              f"{windows} windows): {status}.")
    return out


def _matched_verdict(con, searches, t, where, pool, above, chance_note, entry) -> None:
    """Claim (b): the target's ToM change minus each damage-matched control's; it holds
    only when it holds against every control that was matched."""
    what = "ToM hurt more than damage-matched controls"
    rows = con[(con["label"] == t.label) & (con["kind"] == "matched") & (con["family"] == pool)
               & (con["metric"] == "tom_margin_change_adj")] if not con.empty else con
    unmatched = []
    if searches is not None and not searches.empty:
        for s in searches[(searches["target"] == t.label) & ~searches["matched"]].itertuples():
            unmatched.append(f"{s.mode} not matched (closest: m={s.m:.3g}, perplexity "
                             f"{s.ppl_change:+.0%} after {s.evaluations} evaluations)")
    if rows.empty:
        why = ("; ".join(unmatched) if unmatched else
               "the sweep had no damage-matched controls (--matched-controls)")
        entry("b", t.label, t.m, CANNOT, math.nan, math.nan, math.nan, 0, 0,
              f"(b) {what} ({where}): {why}: {CANNOT}.")
        return
    parts, states = [], []
    for r in rows.itertuples():
        states.append(HOLDS if r.hi < 0 else FAILS)
        parts.append(f"minus {r.reference} (perplexity {r.reference_perplexity:.1f} vs "
                     f"{r.perplexity:.1f}) = {_fmt(r.value)} [95% {_fmt(r.lo)}, {_fmt(r.hi)}]")
    status = CANNOT if not above else (HOLDS if all(x == HOLDS for x in states) else FAILS)
    worst = rows.loc[rows["hi"].idxmax()]
    entry("b", t.label, t.m, status, worst["value"], worst["lo"], worst["hi"],
          int(worst["n_tasks"]), int(worst["n_prompts"]),
          f"(b) {what} ({where}): ToM margin change " + "; ".join(parts)
          + f" ({worst['note']}; {int(worst['n_tasks'])} tasks, {int(worst['n_prompts'])} "
          f"false-belief prompts"
          + ("; " + "; ".join(unmatched) if unmatched else "")
          + f"; {chance_note}): {status}.")


def write_specificity(sweep_dir: str | Path, **options) -> dict[str, Path]:
    """Write specificity.csv (per point, family and metric), specificity_contrasts.csv,
    specificity_baseline.csv, specificity_conditions.csv, specificity_roles.csv and
    specificity_verdicts.csv into the sweep folder. ``ppl_threshold`` and ``target_mode``
    go to ``verdicts``; the other options to ``compute_specificity``."""
    vopts = {k: options.pop(k) for k in ("ppl_threshold", "target_mode") if k in options}
    tables = specificity_tables(sweep_dir, **options)
    sweep_dir = Path(sweep_dir)
    paths = {
        "points": write_csv(sweep_dir / "specificity.csv", tables["points"]),
        "contrasts": write_csv(sweep_dir / "specificity_contrasts.csv", tables["contrasts"]),
        "baseline": write_csv(sweep_dir / "specificity_baseline.csv", tables["baseline"]),
        "conditions": write_csv(sweep_dir / "specificity_conditions.csv", tables["conditions"]),
        "roles": write_csv(sweep_dir / "specificity_roles.csv", tables["roles"]),
    }
    paths["matched"] = write_csv(sweep_dir / "specificity_matched.csv", tables["matched"])
    paths["verdicts"] = write_csv(sweep_dir / "specificity_verdicts.csv",
                                  pd.DataFrame(verdicts(tables, **vopts)))
    return paths
