"""Per-cluster values of a finished sweep: the prompts of each family in the baseline's order,
their roles, clusters and answer pairs (``Family``), every metric reduced to one value per
cluster, the pools of families (``Engine``), the paired changes of every point against the
baseline, and the family gate. ``judge.specificity`` builds its tables from these."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from tomsparse.data.tasks import FAMILIES, cluster_of, first_word
from tomsparse.data.tasks.roles import CONTROL, FACT, TOM, natural_key
from tomsparse.errors import UserError
from tomsparse.stats import chance_gate, mean_of_masks, pass_rate_gate, scenario_chance
from tomsparse.stats.intervals import Interval, cluster_means, interval_over_units
from tomsparse.sweep.folder import PROMPT_KEY, PROMPT_NUMBERS

METRICS = ("tom_margin_change", "control_margin_change", "fact_margin_change",
           "belief_gap_margin", "tom_accuracy_change", "control_accuracy_change",
           "belief_gap_accuracy", "bias_shift", "tom_margin_change_adj",
           "tom_accuracy_change_adj", "belief_gap_relative", "bias_shift_accuracy")
# Which roles stand behind each metric (for n_tasks / n_prompts).
METRIC_ROLES = {"tom_margin_change": (TOM,), "control_margin_change": (CONTROL,),
                 "fact_margin_change": (FACT,), "belief_gap_margin": (TOM, CONTROL),
                 "tom_accuracy_change": (TOM,), "control_accuracy_change": (CONTROL,),
                 "belief_gap_accuracy": (TOM, CONTROL), "bias_shift": (TOM, CONTROL, FACT),
                 "tom_margin_change_adj": (TOM,), "tom_accuracy_change_adj": (TOM,),
                 "belief_gap_relative": (TOM, CONTROL),
                 "bias_shift_accuracy": (TOM, CONTROL, FACT)}
BIAS_METRICS = ("bias_shift", "bias_shift_accuracy")
GAP_METRICS = ("belief_gap_margin", "belief_gap_accuracy", "belief_gap_relative")
# A family is judged when it passes its controls (the pass-rate gate); the pool of the
# families that do is "passing families". (The names ABOVE / POOL_ABOVE are kept from the
# chance gate this replaced.)
POOL_ALL, POOL_ABOVE = "all", "passing families"
ABOVE, NOT_ABOVE, NO_TOM = ("passes its controls", "does not pass its controls",
                            "no false-belief prompts")

def clean_prompts(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """One row per prompt (reps averaged), key columns as strings, numbers as floats, and the
    prompt's cluster ("" where the table has no ``cluster`` column)."""
    missing = [c for c in (*PROMPT_KEY, "expected", "alternative", "correct") if c not in frame]
    if missing:
        raise UserError(f"{where}: missing column(s) {', '.join(missing)}")
    frame = frame.copy()
    if "cluster" not in frame:
        frame["cluster"] = ""
    for col in (*PROMPT_KEY, "expected", "alternative", "cluster"):
        frame[col] = frame[col].fillna("").astype(str)
    for col in PROMPT_NUMBERS:
        frame[col] = pd.to_numeric(frame[col], errors="coerce") if col in frame else np.nan
    if "margin" in frame and frame["margin"].isna().all():
        frame["margin"] = frame["logprob_expected"] - frame["logprob_alternative"]
    corr = frame["correct"]
    if corr.dtype == object or str(corr.dtype).startswith(("str", "string")):
        corr = corr.astype(str).str.strip().str.lower().map({"true": 1.0, "false": 0.0,
                                                             "1": 1.0, "0": 0.0})
    frame["correct"] = pd.to_numeric(corr, errors="coerce").astype(float)
    keys = list(PROMPT_KEY) + ["expected", "alternative", "cluster"]
    one_rep = "rep" not in frame or frame["rep"].nunique(dropna=False) <= 1
    if one_rep and not frame.duplicated(list(PROMPT_KEY)).any():
        return frame[keys + ["margin", "correct"]].reset_index(drop=True)  # one row a prompt
    # reps (generation scoring), or a prompt listed twice: their mean
    out = (frame.groupby(keys, sort=False, dropna=False)[["margin", "correct"]].mean()
           .reset_index())
    if out.duplicated(list(PROMPT_KEY)).any():
        dup = out[out.duplicated(list(PROMPT_KEY), keep=False)].iloc[0]
        raise UserError(f"{where}: prompt {dict(dup[list(PROMPT_KEY)])} appears with two different "
                        f"expected answers")
    return out


def per_cluster(values: np.ndarray, index: np.ndarray, n: int) -> np.ndarray:
    """``stats.cluster_means`` laid out by cluster index (length ``n``; NaN where a cluster
    has no finite value)."""
    ids, means = cluster_means(values, index)
    out = np.full(n, np.nan)
    out[ids] = means
    return out


class Family:
    """The prompts of one family in the baseline's order, their roles and clusters."""

    def __init__(self, name: str, base: pd.DataFrame):
        self.name = name
        self.rows = base.index[base["family"] == name].to_numpy()
        sub = base.loc[self.rows]
        cluster = np.array([cluster_of(t, c) for t, c in zip(sub["task_id"], sub["cluster"])])
        self.clusters = sorted(set(cluster), key=natural_key)
        pos = {c: i for i, c in enumerate(self.clusters)}
        self.cluster = np.array([pos[c] for c in cluster], dtype=int)
        self.n = len(self.clusters)
        self.task = sub["task_id"].to_numpy()
        self.role = sub["role"].to_numpy()
        self.by_task = bool((sub["cluster"] == "").all()
                            or all(c == cluster_of(t) for t, c in zip(sub["task_id"], cluster)))
        exp = sub["expected"].map(first_word).to_numpy()
        alt = sub["alternative"].map(first_word).to_numpy()
        self.sign, pairs = self._answer_signs(exp, alt)
        # the family's answer pair when every cluster has the same one (irony: Yes / No)
        self.pair = pairs.pop() if len(pairs) == 1 else None
        self.paired = bool(np.any(self.sign != 0))
        # ToM and control prompts whose expected words lean differently within a cluster: a
        # pure answer bias moves their margins apart (in a balanced design, the gap is then
        # -2 x the bias shift and cannot tell a lost reading from a bias)
        lean_tom = self._role_sign(TOM)
        lean_control = self._role_sign(CONTROL)
        both = np.isfinite(lean_tom) & np.isfinite(lean_control)
        self.confounded = bool(both.any() and np.abs(lean_tom - lean_control)[both].max() > 1e-9)
        # the baseline's margin level per cluster and role (for relative changes)
        margin0 = sub["margin"].to_numpy(float) if "margin" in sub else np.full(len(sub), np.nan)
        self.level = {role: self.mean(margin0, self.role == role) for role in (TOM, CONTROL)}
        # the clusters every claim is judged on (``judge_only``): all until the gate says
        self.judged = np.ones(self.n, dtype=bool)

    def _answer_signs(self, exp: np.ndarray, alt: np.ndarray) -> tuple[np.ndarray, set]:
        """Per prompt +1 / -1: whether it expects word A or B of its cluster's answer pair
        (A: the word the cluster's ToM prompts expect least, so a shift toward A reads as
        ToM damage); 0 in a cluster whose prompts use more than two words. Also the set of
        (A, B) pairs seen."""
        sign = np.zeros(len(exp))
        pairs = set()
        for c in range(self.n):
            rows = np.flatnonzero(self.cluster == c)
            words = sorted(set(exp[rows]) | set(alt[rows]))
            if len(words) != 2:
                continue
            tom_alt = alt[rows][self.role[rows] == TOM]
            if len(tom_alt):
                values, counts = np.unique(tom_alt, return_counts=True)
                a = values[np.argmax(counts)] if counts.max() * 2 > len(tom_alt) else words[1]
            else:
                a = words[1]
            b = words[0] if a == words[1] else words[1]
            pairs.add((a, b))
            sign[rows] = np.where(exp[rows] == a, 1.0, -1.0)
        return sign, pairs

    def _role_sign(self, role: str) -> np.ndarray:
        """Per cluster, the mean answer sign of the role's prompts (NaN where it has none or
        its cluster has no answer pair)."""
        sel = (self.role == role) & (self.sign != 0)
        return self.mean(self.sign, sel)

    def judge_only(self, passed: np.ndarray) -> None:
        """Judge only these clusters (those the model passes at baseline): every value of the
        others becomes NaN, so no interval, contrast or pool counts them."""
        self.judged = np.asarray(passed, dtype=bool)

    @property
    def unit(self) -> str:
        return "task" if self.by_task else "scenario"

    def count(self, roles: Sequence[str]) -> tuple[int, int]:
        """(tasks, prompts) with the given roles."""
        sel = np.isin(self.role, list(roles))
        return int(len(np.unique(self.task[sel]))), int(sel.sum())

    def mean(self, values: np.ndarray, sel: np.ndarray) -> np.ndarray:
        """Per-cluster mean of ``values`` over the selected prompts of the family."""
        return per_cluster(np.where(sel, values, np.nan), self.cluster, self.n)

    def cluster_values(self, margin: np.ndarray, correct: np.ndarray,
                       levels: bool = False) -> dict[str, np.ndarray]:
        """Every metric as one value per cluster (NaN where a cluster lacks its prompts, and
        in the clusters not judged). ``levels``: the values are the baseline's own levels,
        not changes (no relative gap; every cluster kept)."""
        m, c = margin[self.rows], correct[self.rows]
        out = {}
        for role in (TOM, CONTROL, FACT):
            out[f"{role}_margin_change"] = self.mean(m, self.role == role)
            out[f"{role}_accuracy_change"] = self.mean(c, self.role == role)
        del out["fact_accuracy_change"]
        out["belief_gap_margin"] = out["tom_margin_change"] - out["control_margin_change"]
        out["belief_gap_accuracy"] = out["tom_accuracy_change"] - out["control_accuracy_change"]
        # The answer-bias shift: the change of log P(A) - log P(B) over the cluster's prompts
        # (A, B its answer pair); each role's change less its answers' lean times that shift.
        # Where a role's answers are counterbalanced within the cluster (contents, transfer)
        # the lean is 0 and nothing changes.
        used = np.isin(self.role, [TOM, CONTROL, FACT]) & (self.sign != 0)
        lean_tom, lean_control = self._role_sign(TOM), self._role_sign(CONTROL)
        if self.paired:
            out["bias_shift"] = self.mean(self.sign * m, used)
            accuracy_shift = self.mean(self.sign * c, used)
            tom_adj = out["tom_margin_change"] - np.nan_to_num(lean_tom) * out["bias_shift"]
            control_adj = (out["control_margin_change"]
                           - np.nan_to_num(lean_control) * out["bias_shift"])
            out["tom_accuracy_change_adj"] = (out["tom_accuracy_change"]
                                              - np.nan_to_num(lean_tom) * accuracy_shift)
            # the same shift in accuracy: under generation scoring no margin is recorded, and
            # accuracy is not additive (a prompt at ceiling cannot gain what another loses),
            # so a moved bias is refused there (judge.verdicts), not subtracted
            out["bias_shift_accuracy"] = accuracy_shift
        else:
            out["bias_shift"] = np.full(self.n, np.nan)
            out["bias_shift_accuracy"] = np.full(self.n, np.nan)
            tom_adj, control_adj = out["tom_margin_change"], out["control_margin_change"]
            out["tom_accuracy_change_adj"] = out["tom_accuracy_change"]
        out["tom_margin_change_adj"] = tom_adj
        # The belief gap relative to each role's own baseline margin (cluster means): the
        # same proportional shrink of every margin leaves it at 0, whatever the baselines.
        with np.errstate(invalid="ignore", divide="ignore"):
            tom_level, control_level = self.level[TOM], self.level[CONTROL]
            ok = (tom_level > 0) & (control_level > 0)
            out["belief_gap_relative"] = np.where(
                ok, tom_adj / np.where(ok, tom_level, 1) - control_adj / np.where(ok, control_level, 1),
                np.nan)
        if levels:
            out["belief_gap_relative"] = np.full(self.n, np.nan)
            return out
        if not self.judged.all():
            out = {k: np.where(self.judged, v, np.nan) for k, v in out.items()}
        return out


def family_order(names) -> list[str]:
    names = set(names)
    return [f for f in FAMILIES if f in names] + sorted(names - set(FAMILIES))


class Engine:
    """What every statistic of one sweep shares: the families of the baseline's prompts and
    the pools (which families' clusters a pooled row puts side by side)."""

    def __init__(self, base: pd.DataFrame, level: float, method: str = "skew"):
        self.fams = {f: Family(f, base) for f in family_order(base["family"].unique())}
        self.level = level
        self.method = method
        self.pools: dict[str, list[str]] = {POOL_ALL: list(self.fams), POOL_ABOVE: []}

    @property
    def names(self) -> list[str]:
        """Every family, then every pool: the rows of a unit in the tables."""
        return list(self.fams) + list(self.pools)

    def members(self, name: str, metric: str) -> list[str]:
        """The families behind ``metric`` in a family or pool row (a pool leaves out the bias
        shift, and the belief gaps of confounded families)."""
        if name not in self.pools:
            return [name]
        if metric in BIAS_METRICS:
            return []
        return [f for f in self.pools[name]
                if not (metric in GAP_METRICS and self.fams[f].confounded)]

    def values(self, rows: list[tuple[np.ndarray, np.ndarray]]) -> dict:
        """{family or pool: {metric: (masks x clusters) array}} for the paired changes of one
        point (one row) or of the seeds of a seed group (one row per seed)."""
        per = [{f: fam.cluster_values(dm, dc) for f, fam in self.fams.items()} for dm, dc in rows]
        out = {}
        for name in self.names:
            out[name] = {}
            for metric in METRICS:
                fams = self.members(name, metric)
                out[name][metric] = np.array([np.concatenate([p[f][metric] for f in fams])
                                              if fams else np.zeros(0) for p in per])
        return out

    def interval(self, values: np.ndarray) -> Interval:
        """The interval of a unit's (masks x clusters) values."""
        if values.shape[1] == 0:
            return interval_over_units(np.zeros(0), self.level, what="clusters")
        return mean_of_masks(values, np.arange(values.shape[1]), self.level,
                             method=self.method)

    def counts(self, name: str, metric: str) -> tuple[int, int]:
        """(tasks, prompts) behind ``metric`` in a family or pool (the same for every point;
        kept once computed, until the pools change)."""
        key = (name, metric, tuple(self.pools.get(name, ())))
        cache = self.__dict__.setdefault("_counts", {})
        if key not in cache:
            cache[key] = self._counts_of(name, metric)
        return cache[key]

    def _counts_of(self, name: str, metric: str) -> tuple[int, int]:
        nt = npr = 0
        for f in self.members(name, metric):
            if metric in BIAS_METRICS and not self.fams[f].paired:
                continue
            t, p = self.fams[f].count(METRIC_ROLES[metric])
            nt, npr = nt + t, npr + p
        return nt, npr

    def note(self, name: str, metric: str) -> str:
        """What stands behind a row: a pool's families, a family's clusters or answer pair."""
        if name in self.pools:
            use = self.members(name, metric)
            return "families: " + (", ".join(use) if use else "none")
        fam = self.fams[name]
        if metric == "bias_shift_accuracy" and fam.paired:
            return (f"accuracy toward {fam.pair[0]} over {fam.pair[1]}" if fam.pair else
                    "accuracy toward A over B, A and B each cluster's answer pair")
        if metric in BIAS_METRICS and fam.paired:
            return (f"log P({fam.pair[0]}) - log P({fam.pair[1]})" if fam.pair else
                    "log P(A) - log P(B), A and B each cluster's answer pair")
        if metric in GAP_METRICS and fam.confounded:
            return "confounded with the answer bias (= -2 x bias_shift in a balanced design)"
        return f"clusters: {fam.unit}s"


def paired_changes(points: pd.DataFrame, prompts: Mapping[str, pd.DataFrame],
                    base: pd.DataFrame, base_label: str
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{label: (margin change, correct change)} of every point, prompt by prompt against the
    baseline (in the baseline's row order); a point whose prompts differ is refused."""
    keys = list(PROMPT_KEY)
    margin0, correct0 = base["margin"].to_numpy(float), base["correct"].to_numpy(float)
    changes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for label in points["label"]:
        if label == base_label:
            continue
        if label not in prompts:
            raise UserError(f"{label}: no per-prompt table")
        cur = clean_prompts(prompts[label], label)
        if len(cur) == len(base) and all(
                np.array_equal(cur[k].to_numpy(), base[k].to_numpy())
                for k in (*keys, "expected")):
            # the same prompts in the same order (every point a sweep writes): no join needed
            changes[label] = (cur["margin"].to_numpy(float) - margin0,
                              cur["correct"].to_numpy(float) - correct0)
            continue
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
    return changes


def family_gate(fam: Family, correct0: np.ndarray, alpha: float, floor: float):
    """The gate of one family: its clusters with a false-belief prompt, each passed when all
    its false-belief and true-belief control prompts are right. The family passes when the
    one-sided lower confidence bound of the pass rate is above ``floor``
    (``stats.pass_rate_gate``); the chance gate (``stats.chance_gate``: better than guessing,
    chance from the fewest prompts in a cluster) is kept beside it for the report. Returns
    (pass-rate gate, chance gate, passed per cluster) or None without false-belief prompts."""
    right = correct0[fam.rows] > 0.5
    judged = np.isin(fam.role, [TOM, CONTROL])
    has_tom = np.bincount(fam.cluster[fam.role == TOM], minlength=fam.n) > 0
    probes = np.bincount(fam.cluster[judged], minlength=fam.n)
    wrong = np.bincount(fam.cluster[judged & ~right], minlength=fam.n)
    if not has_tom.any():
        return None
    passed = (wrong == 0) & has_tom
    chance = scenario_chance(int(probes[has_tom].min()), 2)
    return (pass_rate_gate(passed[has_tom], floor, alpha),
            chance_gate(passed[has_tom], chance, alpha), passed)
