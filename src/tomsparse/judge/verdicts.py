"""The verdicts on a sweep's specificity tables (``judge.specificity``) and their wording.

For every point (or seed group) of the mask under test, claims (a)-(d) (and (f) per
task-swapped set, when the sweep has one: ``--scores-swapped``), and one dose-response claim
(e) per family, each judged in every family that passes its own controls and pooled
over them. A claim gets one of the outcomes of ``tomsparse.stats.classify``: "shown",
"ruled out", "opposite direction", "not shown", or "cannot be measured" (with the reason: a
family that fails its gate, no control of the kind the claim needs, no interval).

Decision rules (``config.VerdictRules.describe`` says them in plain words, and the report prints
that): every claim with a p-value is one hypothesis of one family of tests, the whole run;
Holm's procedure over that family sets each claim's confidence level (``stats.holm_levels``),
so the family-wise error rate of the "shown" and "opposite direction" outcomes is at most
``alpha``; "ruled out" uses two one-sided tests within the equivalence margin, their p-values
Holm-adjusted over the same claims. The CSV holds the raw and the adjusted interval and p.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from tomsparse.config import VerdictRules
from tomsparse.stats import (CANNOT_BE_MEASURED, NOT_SHOWN, classify, detectable_effect,
                             equivalence_from_interval, holm, holm_levels, t_interval)
from tomsparse.stats.intervals import Interval
from tomsparse.judge.specificity import ABOVE, POOL_ABOVE, SWAPPED_MATCHED
from tomsparse.masks import swapped_mode, swapped_name

CANNOT = CANNOT_BE_MEASURED
CLAIMS = (("a", "ToM hurt more than by random masks of the same count"),
          ("b", "ToM hurt more than by damage-matched controls"),
          ("c", "false belief hurt more than its true-belief controls, each relative to its "
                "baseline margin, beyond what damage-matched controls do to that gap"),
          ("d", "perplexity nearly unchanged"),
          ("e", "ToM damage beyond the random masks' grows with m (dose-response)"),
          ("f", "ToM hurt more than by the task-swapped mask (top m by a no-belief or "
                "non-ToM task's scores and not top m by generic) of the same m, and of the "
                "same damage where the sweep matches controls"))
CLAIM_TEXT = dict(CLAIMS)
# the tail of a claim (f) reference against the swapped mask searched to the target's damage
AT_MATCHED_DAMAGE = " at matched damage"
NO_PERTURBED_POINT = "no perturbed point"
# A comparison with masks drawn at random carries their mask-to-mask variance only when there
# are at least this many of a kind (one mask has no variance to estimate).
MIN_MASKS = 2
SEEDED_CONTROLS = ("random", "random-fraction")
FAILS_GATE = "it does not pass its own controls"
VERDICT_COLUMNS = ("claim", "label", "m", "family", "metric", "status", "value", "lo", "hi",
                   "lo_raw", "hi_raw", "p_raw", "p_holm", "tost_p", "tost_p_holm", "level",
                   "n_clusters", "n_tasks", "n_prompts", "reference", "rank_p",
                   "tom_margin_removed", "tom_accuracy_change_pp", "detectable", "reason",
                   "sentence")


def too_few_masks(n: int, what: str, option: str) -> str:
    """Why a claim against fewer than ``MIN_MASKS`` masks of a kind is not judged."""
    return (f"{n} of the {what}: a comparison with masks drawn at random needs at least "
            f"{MIN_MASKS} to carry their mask-to-mask variance (raise {option})")


def _fmt(x: float, digits: int = 2) -> str:
    return "nan" if x is None or not np.isfinite(x) else f"{x:+.{digits}f}"


@dataclass
class _Candidate:
    """One claim in one scope, before the Holm step."""

    claim: str
    label: str
    m: float
    family: str
    metric: str
    interval: Interval | None       # raw, two-sided, at the sweep's level
    null: float = 0.0
    margin: float = math.nan        # equivalence margin (NaN: no "ruled out")
    reason: str = ""                # why it cannot be measured
    reference: str = ""
    rank_p: float = math.nan
    n_tasks: int = 0
    n_prompts: int = 0
    detail: str = ""

    @property
    def p(self) -> float:
        iv = self.interval
        return iv.p_value if iv is not None and iv.measurable else math.nan


def _as_interval(row, level: float, null: float = 0.0) -> Interval | None:
    """The two-sided interval of a table row (value, se, df, n_clusters, and its method and
    skewness where the table has them) around ``null``."""
    if row is None or not np.isfinite(row["se"]) or not np.isfinite(row["df"]):
        return None
    return t_interval(float(row["value"]), float(row["se"]), float(row["df"]),
                      int(row["n_clusters"]), level, null=null, **_shape(row))


def _shape(row) -> dict:
    """The interval method of a table row and its skewness (tables written before they were
    recorded: the t-interval)."""
    method = row.get("method") if hasattr(row, "get") else None
    if not isinstance(method, str) or method not in ("t", "skew"):
        return {}
    skew = float(row.get("skewness", 0.0))
    return {"method": method, "skewness": skew if np.isfinite(skew) else 0.0}


def _pick(frame: pd.DataFrame, **eq) -> pd.Series | None:
    """The first row whose columns equal ``eq`` (None when none does)."""
    keep = np.ones(len(frame), dtype=bool)
    for k, v in eq.items():
        keep &= frame[k].to_numpy() == v
    hits = np.flatnonzero(keep)
    return frame.iloc[hits[0]] if hits.size else None


def verdicts(tables: Mapping[str, pd.DataFrame], *, target_mode: str = "difference",
             rules: VerdictRules | None = None, swapped: Sequence[str] = ()) -> list[dict]:
    """Every verdict of a sweep (columns ``VERDICT_COLUMNS``), Holm-corrected together.

    "ToM change" is the bias-adjusted margin change of the false-belief prompts under
    likelihood scoring, the bias-adjusted accuracy change under generation scoring; negative
    is damage. A sweep holding only its baseline gets every claim as "cannot be measured: no
    perturbed point". Claim (f) is judged per task-swapped set: those named in ``swapped``
    (the sweep's ``--scores-swapped`` stores, ``SweepFolder.swapped_sets``) and those with a
    point in the tables; a sweep with neither has no claim (f), and its verdicts are those
    it had before claim (f) existed."""
    rules = rules or VerdictRules()
    pts = tables["points"]
    sets = _swapped_sets(pts, swapped)
    if pts.empty or "mode" not in pts:  # the baseline alone: nothing to judge
        return _baseline_only_verdicts(tables, sets)
    info = tables["info"].iloc[0]
    ctx = _Context(tables, rules, target_mode)
    cands: list[_Candidate] = []
    for t in ctx.targets.itertuples():
        for scope in ctx.scopes:
            cands += [_random_claim(ctx, t, scope), _matched_claim(ctx, t, scope, "b"),
                      _matched_claim(ctx, t, scope, "c")]
            cands += [_swapped_claim(ctx, t, scope, name) for name in sets]
            cands += [_swapped_claim(ctx, t, scope, name, matched=True)
                      for name in _matched_swapped_sets(ctx, t.label)
                      if not _matched_at_same_m(ctx, t, name)]
        cands.append(_perplexity_claim(ctx, t, float(info["perplexity"])))
    cands += [_dose_claim(ctx, scope) for scope in ctx.scopes]
    return _decide(ctx, cands)


def _swapped_sets(pts: pd.DataFrame, given: Sequence[str]) -> list[str]:
    """The task-swapped sets to judge claim (f) for: ``given`` and every one with a point."""
    found = ([swapped_name(m) for m in pd.unique(pts["mode"])]
             if not pts.empty and "mode" in pts else [])
    return sorted(set(given) | {x for x in found if x is not None})


def _matched_swapped_sets(ctx, label: str) -> list[str]:
    """The task-swapped sets whose size was searched to the damage of target ``label``
    (``matched.json``: claim (f) at matched damage is judged for them)."""
    if ctx.searches is None or ctx.searches.empty:
        return []
    modes = ctx.searches.loc[ctx.searches["target"] == label, "mode"]
    return sorted({n for n in map(swapped_name, modes) if n is not None})


def _matched_at_same_m(ctx, t, name: str) -> bool:
    """Whether the swapped mask ``name`` searched to target ``t``'s damage is its point at
    t's own m (the search matched at its first size): then the same-m claim (f) is already
    the one at matched damage, and is not tested twice."""
    if ctx.con.empty or "kind" not in ctx.con:
        return False
    mine = ctx.con[(ctx.con["label"] == t.label)
                   & (ctx.con["reference_mode"] == swapped_mode(name))]
    matched = set(mine.loc[mine["kind"] == SWAPPED_MATCHED, "reference"])
    return bool(matched) and matched == set(mine.loc[mine["kind"] == "swapped", "reference"])


class _Context:
    """What every claim of one sweep shares: tables, rules, metric, scopes and targets."""

    def __init__(self, tables, rules: VerdictRules, target_mode: str):
        self.pts, self.con, self.base = tables["points"], tables["contrasts"], tables["baseline"]
        self.dose = tables.get("dose")
        self.searches = tables.get("matched")
        info = tables["info"].iloc[0]
        self.level = float(info.get("level", 0.95))
        self.rules, self.target_mode = rules, target_mode
        generation = str(info.get("scoring", "likelihood")) == "generation"
        self.generation = generation
        self.metric = "tom_accuracy_change_adj" if generation else "tom_margin_change_adj"
        # (c): under likelihood scoring the gap of changes relative to each role's baseline
        # margin (a proportional shrink of every margin leaves it at 0); under generation the
        # gap of accuracy changes (the judged clusters start at accuracy 1 in both roles)
        self.gap_metric = "belief_gap_accuracy" if generation else "belief_gap_relative"
        self.margin = rules.margin_accuracy if generation else rules.margin_nats
        self.unit = "accuracy" if generation else "nats"
        self.passing = list(self.base.loc[self.base["state"] == ABOVE, "family"])
        self.gate = {r.family: r for r in self.base.itertuples()}
        # every family, and the pool of the passing ones when two or more pass
        self.scopes = list(self.base["family"]) + ([POOL_ABOVE] if len(self.passing) > 1
                                                   or not self.passing else [])
        targets = self.pts[self.pts["mode"] == target_mode][
            ["label", "m", "n_seeds"]].drop_duplicates("label")
        grouped_ms = set(targets.loc[targets["n_seeds"] > 1, "m"])   # a group replaces its seeds
        self.targets = targets[(targets["n_seeds"] > 1) | ~targets["m"].isin(grouped_ms)
                               ].sort_values("m")

    def unjudged(self, scope: str) -> str:
        """Why a scope is not judged ("" when it is)."""
        if scope == POOL_ABOVE:
            return "" if len(self.passing) > 1 else "no family passes its own controls"
        if scope in self.passing:
            return ""
        gate = self.gate[scope]
        return f"{FAILS_GATE} ({gate.gate_reason})"

    def scope_text(self, scope: str) -> str:
        """A family's name, or the pool's families in words."""
        if scope != POOL_ABOVE:
            return scope
        return ("pooled over " + ", ".join(self.passing) if self.passing
                else "pooled over the families that pass their controls (none)")

    def where(self, t, scope: str) -> str:
        return f"{self.target_mode} m={t.m:.3g}, {self.scope_text(scope)}"


def _bias_moved(ctx: _Context, label: str, scope: str) -> str:
    """Under generation scoring, why a target's ToM accuracy change in ``scope`` cannot be
    judged ("" when it can): the target moved the family's answer bias (the interval of its
    accuracy shift toward one word of the answer pair excludes 0). Accuracy is not additive,
    so such a shift cannot be subtracted the way a margin's is (a counterbalanced family
    loses accuracy under it too: prompts at ceiling cannot gain what the others lose); under
    likelihood scoring the margin adjustment is exact and nothing is refused."""
    if not ctx.generation:
        return ""
    families = ctx.passing if scope == POOL_ABOVE else [scope]
    moved = []
    for family in families:
        row = _pick(ctx.pts, label=label, family=family, metric="bias_shift_accuracy")
        if row is None or not (np.isfinite(row["lo"]) and np.isfinite(row["hi"])):
            continue
        if row["lo"] > 0 or row["hi"] < 0:
            moved.append(f"{family} {_fmt(row['value'])} [{_fmt(row['lo'])}, "
                         f"{_fmt(row['hi'])}]")
    if not moved:
        return ""
    return ("the mask moved the Yes/No answer bias (accuracy shift toward one answer: "
            + "; ".join(moved) + "), which accuracy under generation scoring cannot be "
            "corrected for; --scoring likelihood can (its margins are adjusted exactly)")


def _random_claim(ctx: _Context, t, scope: str) -> _Candidate:
    """Claim (a): the target's ToM change minus the mean of the random masks of its count."""
    cand = _Candidate("a", t.label, t.m, scope, ctx.metric, None, margin=ctx.margin)
    cand.reason = ctx.unjudged(scope) or _bias_moved(ctx, t.label, scope)
    row = _pick(ctx.con, label=t.label, kind="random", family=scope, metric=ctx.metric)
    if row is None:
        cand.reason = cand.reason or "no random-mask points at this m"
        return cand
    seeds = int(row["reference_seeds"])
    cand.reference = f"random masks, same count, {seeds} seed(s)"
    cand.n_tasks, cand.n_prompts = int(row["n_tasks"]), int(row["n_prompts"])
    if seeds < MIN_MASKS:
        cand.reason = cand.reason or too_few_masks(seeds, "random masks", "--random-seeds / "
                                                   "--secondary-seeds")
        return cand
    cand.interval = _as_interval(row, ctx.level)
    cand.rank_p = float(row["rank_p"])
    if cand.interval is None and not cand.reason:
        cand.reason = f"no interval ({int(row['n_clusters'])} clusters with a value)"
    return cand


def _swapped_claim(ctx: _Context, t, scope: str, name: str, matched: bool = False
                   ) -> _Candidate:
    """Claim (f): the target's ToM change minus that of the task-swapped mask ``name`` at the
    same m (contrast kind "swapped": ``contrast_with_controls`` with that one deterministic
    mask as the reference, the interval over clusters), judged as claim (a) is (one-sided
    toward damage, Holm over the run, the same equivalence margin). ``matched``: against
    that mask at the size whose perplexity matched the target's instead (kind
    "swapped-matched"; a reference interpolated between two sizes where none matched)."""
    mode = swapped_mode(name)
    cand = _Candidate("f", t.label, t.m, scope, ctx.metric, None, margin=ctx.margin,
                      reference=mode + AT_MATCHED_DAMAGE if matched else f"{mode}, same m")
    cand.reason = ctx.unjudged(scope) or _bias_moved(ctx, t.label, scope)
    row = None
    if not ctx.con.empty and "kind" in ctx.con:
        row = _pick(ctx.con, label=t.label, kind=SWAPPED_MATCHED if matched else "swapped",
                    reference_mode=mode, family=scope, metric=ctx.metric)
    if row is None and matched:
        found = ctx.searches[(ctx.searches["target"] == t.label)
                             & (ctx.searches["mode"] == mode)]
        why = (f"{mode} not matched (closest: m={s.m:.3g}, perplexity {s.ppl_change:+.0%} "
               f"after {s.evaluations} evaluations, and no two searched sizes bracket the "
               f"target's)" for s in found.itertuples())
        cand.reason = cand.reason or next(why, f"no {mode} search for {t.label}")
        return cand
    if row is None:
        cand.reason = cand.reason or (f"no {mode} point at m={t.m:.3g} (the task-swapped mask "
                                      f"was not evaluated there: run the sweep with "
                                      f"--scores-swapped {name}=DIR)")
        return cand
    cand.n_tasks, cand.n_prompts = int(row["n_tasks"]), int(row["n_prompts"])
    target = _pick(ctx.pts, label=t.label)
    ref = _pick(ctx.pts, label=str(row["reference"]))
    if target is not None and ref is not None and np.isfinite(float(target["masked"])) \
            and np.isfinite(float(ref["masked"])):
        cand.detail = (f"{int(target['masked']):,} weights against the swapped mask's "
                       f"{int(ref['masked']):,}")
        if not matched and _matched_at_same_m(ctx, t, name):
            cand.reference = f"{mode}, same m and matched damage"
        if matched or _matched_at_same_m(ctx, t, name):
            cand.detail += (f", perplexity {float(target['perplexity']):.3g} against its "
                            f"{float(ref['perplexity']):.3g}"
                            + (", interpolated between the two sizes its search bracketed"
                               if "_interp_" in str(row["reference"]) else ""))
    cand.interval = _as_interval(row, ctx.level)
    if cand.interval is None and not cand.reason:
        cand.reason = f"no interval ({int(row['n_clusters'])} clusters with a value)"
    return cand


def _matched_claim(ctx: _Context, t, scope: str, claim: str) -> _Candidate:
    """Claims (b) and (c) against each kind of damage-matched control (an intersection-union
    test: the claim is judged on the least favourable kind, the one with the largest one-sided
    p-value in the claimed direction)."""
    metric = ctx.metric if claim == "b" else ctx.gap_metric
    margin = (ctx.rules.margin_relative if metric == "belief_gap_relative" else ctx.margin)
    cand = _Candidate(claim, t.label, t.m, scope, metric, None, margin=margin)
    cand.reason = ctx.unjudged(scope) or (_bias_moved(ctx, t.label, scope) if claim == "b"
                                          else "")
    if claim == "c" and scope != POOL_ABOVE and bool(ctx.gate[scope].gap_confounded):
        cand.reason = cand.reason or ("its belief gap is confounded with the Yes/No answer "
                                      "bias (ToM and control prompts expect opposite answers)")
    rows = ctx.con[(ctx.con["label"] == t.label) & (ctx.con["kind"] == "matched")
                   & (ctx.con["family"] == scope) & (ctx.con["metric"] == metric)] \
        if not ctx.con.empty else ctx.con
    if rows.empty:
        unmatched = []
        if ctx.searches is not None and not ctx.searches.empty:
            for s in ctx.searches[(ctx.searches["target"] == t.label)
                                  & ~ctx.searches["matched"].astype(bool)
                                  & ctx.searches["mode"].map(swapped_name).isna()
                                  ].itertuples():
                unmatched.append(f"{s.mode} not matched (closest: m={s.m:.3g}, perplexity "
                                 f"{s.ppl_change:+.0%} after {s.evaluations} evaluations)")
        need = ("a belief gap alone is confounded by the baseline margins, so it is judged "
                "only against damage-matched controls; " if claim == "c" else "")
        cand.reason = cand.reason or (need + ("; ".join(unmatched) if unmatched else
                                              "the sweep had no damage-matched controls "
                                              "(--matched-controls)"))
        return cand
    judged = []
    for _, r in rows.iterrows():
        seeds = int(r["reference_seeds"])
        if r["reference_mode"] in SEEDED_CONTROLS and seeds < MIN_MASKS:
            cand.reason = cand.reason or too_few_masks(
                seeds, f"{r['reference_mode']} masks", "--match-seeds")
            return cand
        iv = _as_interval(r, ctx.level)
        if iv is None:
            cand.reason = cand.reason or f"no interval against {r['reference']}"
            return cand
        judged.append((iv.one_sided_p(-1), iv, r))
    _, cand.interval, worst = max(judged, key=lambda x: (np.nan_to_num(x[0], nan=2.0)))
    spread = ""
    lo_p, hi_p = (worst.get("reference_perplexity_min", math.nan),
                  worst.get("reference_perplexity_max", math.nan))
    if int(worst["reference_seeds"]) > 1 and np.isfinite(lo_p) and np.isfinite(hi_p):
        spread = (f", its seeds at perplexity {lo_p:.3g}-{hi_p:.3g} against the target's "
                  f"{float(worst['perplexity']):.3g}")
    cand.reference = (f"{worst['reference_mode']}, interpolated to the target's perplexity "
                      f"between the two sizes its search bracketed"
                      if "_interp_" in str(worst["reference"]) else
                      f"{worst['reference_mode']} ({int(worst['reference_seeds'])} seed(s)"
                      f"{spread})")
    cand.n_tasks, cand.n_prompts = int(worst["n_tasks"]), int(worst["n_prompts"])
    if len(judged) > 1:
        cand.detail = "least favourable of: " + ", ".join(
            f"{r['reference_mode']} {_fmt(iv.estimate)} [{_fmt(iv.lo)}, {_fmt(iv.hi)}]"
            for _, iv, r in judged)
    return cand


def _perplexity_claim(ctx: _Context, t, ppl0: float) -> _Candidate:
    """Claim (d): the perplexity ratio to the baseline stays below the threshold (tested on
    the log ratio, per window)."""
    row = _pick(ctx.pts, label=t.label)
    null = math.log(ctx.rules.ppl_threshold)
    cand = _Candidate("d", t.label, t.m, "", "log perplexity ratio", None, null=null)
    windows = int(row["ppl_windows"]) if row is not None and pd.notna(row["ppl_windows"]) else 0
    if row is not None and 0 < windows < 2:
        cand.reason = (f"{windows} perplexity window: an interval needs at least 2 (raise "
                       f"--ppl-max-tokens)")
        return cand
    if row is None or not np.isfinite(row.get("ppl_log_se", math.nan)):
        cand.reason = ("no per-window perplexity losses in the point records (points written "
                       "before they were recorded: recompute them), so no interval")
        return cand
    cand.interval = t_interval(math.log(float(row["ppl_ratio"])), float(row["ppl_log_se"]),
                               float(row["ppl_log_df"]), int(row["ppl_log_df"]) + 1,
                               ctx.level, null=null)
    cand.n_prompts = int(row["ppl_windows"]) if pd.notna(row["ppl_windows"]) else 0
    cand.detail = (f"perplexity {float(row['perplexity']):.2f} vs {ppl0:.2f} at baseline, "
                   f"ratio {ratio_text(float(row['ppl_ratio']))}")
    return cand


def _dose_claim(ctx: _Context, scope: str) -> _Candidate:
    """Claim (e): the mean per-cluster slope on log m of the ToM change beyond the random
    masks' is negative (a raw slope grows for any damaging mask)."""
    cand = _Candidate("e", "", math.nan, scope, ctx.metric, None)
    cand.reason = ctx.unjudged(scope) or next(
        (why for why in (_bias_moved(ctx, t.label, scope) for t in ctx.targets.itertuples())
         if why), "")
    row = None
    if ctx.dose is not None and not ctx.dose.empty:
        dose = ctx.dose
        if "reference" in dose:
            dose = dose[dose["reference"].fillna("").astype(str) != ""]
        row = _pick(dose, mode=ctx.target_mode, family=scope, metric=ctx.metric)
    if row is None or not np.isfinite(row["se"]):
        n_m = int(row["n_m"]) if row is not None else 0
        why = (str(row["note"]) if row is not None and str(row["note"]).startswith("no random")
               else f"{n_m} value(s) of m > 0 for {ctx.target_mode}: a slope needs 2 or more")
        cand.reason = cand.reason or why
        return cand
    cand.reference = "beyond the random masks at each m"
    cand.interval = _as_interval(row, ctx.level)
    cand.detail = f"m = {row['m_values']}"
    return cand


def ratio_text(r: float, digits: int = 0) -> str:
    """A perplexity ratio as a reader takes it in: +8% below doubling, x3.1 above ("" for
    NaN)."""
    if not np.isfinite(r):
        return ""
    return f"{(r - 1) * 100:+.{digits}f}%" if r < 2 else f"x{r:.3g}"


def _decide(ctx: _Context, cands: list[_Candidate]) -> list[dict]:
    """Holm over every claim with a p-value; outcomes from the adjusted intervals."""
    for c in cands:
        if c.reason:
            c.interval = None
    p = np.array([c.p if not c.reason else math.nan for c in cands])
    tost = np.array([equivalence_from_interval(c.interval, c.margin)
                     if c.interval is not None and np.isfinite(c.margin) else math.nan
                     for c in cands])
    # One Holm family over both kinds of decision, the directional tests ("shown",
    # "opposite direction") and the equivalence tests ("ruled out"): the chance that any
    # decision of the run is wrong is at most alpha (two families at alpha each would allow
    # up to 2 alpha).
    both = np.concatenate([p, tost])
    levels = holm_levels(both, ctx.rules.alpha)[:len(cands)]
    adjusted = holm(both)
    p_holm, tost_holm = adjusted[:len(cands)], adjusted[len(cands):]
    out = []
    for i, c in enumerate(cands):
        adj = None
        if c.interval is not None and c.interval.measurable and np.isfinite(levels[i]):
            iv = c.interval
            adj = t_interval(iv.estimate, iv.se, iv.df, iv.n_clusters, float(levels[i]),
                             null=c.null, method=iv.method, skewness=iv.skewness)
        status = (classify(adj, -1, tost_holm[i], ctx.rules.alpha, null=c.null)
                  if adj is not None else CANNOT)
        reason = c.reason or ("" if adj is not None else
                              (c.interval.reason if c.interval is not None else "no interval"))
        row = _row(ctx, c, adj, status, reason, p_holm[i], tost[i], tost_holm[i], levels[i])
        out.append(row)
    return out


def _effects(ctx: _Context, c: _Candidate) -> tuple[float, float]:
    """(share of the baseline ToM margin the target removed, ToM accuracy change in points)
    of the target point in the claim's scope."""
    if not c.label or not c.family:
        return math.nan, math.nan
    change = _pick(ctx.pts, label=c.label, family=c.family, metric="tom_margin_change_adj")
    acc = _pick(ctx.pts, label=c.label, family=c.family, metric="tom_accuracy_change")
    fams = ctx.passing if c.family == POOL_ABOVE else [c.family]
    base = ctx.base[ctx.base["family"].isin(fams)]
    level = (float(np.average(base["tom_margin"], weights=base["n_clusters"]))
             if len(base) and np.isfinite(base["tom_margin"]).all() else math.nan)
    removed = (-float(change["value"]) / level if change is not None and level > 0
               else math.nan)
    return removed, float(acc["value"]) * 100 if acc is not None else math.nan


def _row(ctx, c: _Candidate, adj, status, reason, p_holm, tost, tost_holm, level) -> dict:
    raw = c.interval
    removed, acc_pp = _effects(ctx, c)
    est = raw.estimate if raw is not None else math.nan
    row = {"claim": c.claim, "label": c.label, "m": c.m, "family": c.family,
           "metric": c.metric, "status": status, "value": est,
           "lo": adj.lo if adj is not None else math.nan,
           "hi": adj.hi if adj is not None else math.nan,
           "lo_raw": raw.lo if raw is not None else math.nan,
           "hi_raw": raw.hi if raw is not None else math.nan, "p_raw": c.p if raw else math.nan,
           "p_holm": p_holm, "tost_p": tost, "tost_p_holm": tost_holm, "level": level,
           "n_clusters": raw.n_clusters if raw is not None else 0, "n_tasks": c.n_tasks,
           "n_prompts": c.n_prompts, "reference": c.reference, "rank_p": c.rank_p,
           "tom_margin_removed": removed, "tom_accuracy_change_pp": acc_pp,
           "detectable": _detectable(raw, level), "reason": reason}
    row["sentence"] = _sentence(ctx, c, row)
    return row


def _detectable(raw: Interval | None, level: float) -> float:
    """The smallest effect (distance from the claim's null, in its units) that the claim's
    test, at the Holm-adjusted level it was decided at, would have shown with 80% power given
    the spread its clusters and masks showed (``stats.detectable_effect``); NaN when not
    judged."""
    if raw is None or not raw.measurable or not np.isfinite(level):
        return math.nan
    return detectable_effect(raw.se, raw.df, alpha=(1.0 - float(level)) / 2.0)


def _sentence(ctx: _Context, c: _Candidate, row: dict) -> str:
    """One sentence: the claim, where, the estimate with its adjusted interval, the outcome."""
    if c.claim == "e":
        where = f"{ctx.target_mode}, {ctx.scope_text(c.family)}"
    elif c.claim == "d":
        where = f"{ctx.target_mode} m={c.m:.3g}"
    else:
        where = ctx.where(c, c.family)
    if c.claim == "f":
        where += f", against {c.reference.split(',')[0]}"
    head = f"({c.claim}) {CLAIM_TEXT[c.claim]} ({where})"
    if row["status"] == CANNOT:
        return f"{head}: {CANNOT}: {row['reason']}."
    if c.claim == "d":
        num = (f"{c.detail}; log ratio {_fmt(row['value'], 3)} against log "
               f"{ctx.rules.ppl_threshold:g} = {c.null:+.3f} [Holm-adjusted "
               f"{row['level']:.1%}: {_fmt(row['lo'], 3)}, {_fmt(row['hi'], 3)}], "
               f"{row['n_prompts']} windows")
    else:
        what = {"a": "ToM change minus the random masks'", "f": "ToM change minus the "
                "task-swapped mask's", "b": "ToM change minus the "
                "control's", "c": ("relative belief gap (false-belief change / its baseline margin minus the "
                      "controls' change / theirs) minus the control's"
                      if c.metric == "belief_gap_relative" else "belief gap minus the control's"), "e": "slope per unit log m of the ToM change beyond the random masks'"}
        unit = (f"{ctx.unit} per log m" if c.claim == "e" else
                "of each role's baseline margin" if c.metric == "belief_gap_relative"
                else ctx.unit)
        num = (f"{what[c.claim]} ({c.reference or c.detail}) = {_fmt(row['value'])} {unit} "
               f"[Holm-adjusted {row['level']:.1%}: {_fmt(row['lo'])}, {_fmt(row['hi'])}; raw "
               f"95%: {_fmt(row['lo_raw'])}, {_fmt(row['hi_raw'])}], {row['n_clusters']} "
               f"clusters")
        if c.claim == "a" and np.isfinite(c.rank_p):
            num += f", rank p among the random masks {c.rank_p:.2g}"
        if c.detail and c.claim in "bcf":
            num += f" ({c.detail})"
        if c.claim in "abf" and np.isfinite(row["tom_margin_removed"]):
            num += (f"; the mask removed {row['tom_margin_removed']:.0%} of the baseline ToM "
                    f"margin, accuracy {row['tom_accuracy_change_pp']:+.0f} points")
    if row["status"] == NOT_SHOWN and np.isfinite(row["detectable"]):
        digits = 3 if c.claim == "d" else 2
        num += (f"; the smallest effect it could have shown (80% power) is "
                f"{row['detectable']:.{digits}f} {unit if c.claim != 'd' else 'in log ratio'}")
    return f"{head}: {num}: {row['status']}."


def _baseline_only_verdicts(tables: Mapping[str, pd.DataFrame], swapped: Sequence[str] = ()
                            ) -> list[dict]:
    """A sweep holding only its m = 0 point: every claim, said to be unmeasurable (claim (f)
    only with task-swapped sets, once per set)."""
    info = tables["info"]
    label = str(info["label"].iloc[0]) if not info.empty else ""
    reason = (f"{NO_PERTURBED_POINT} (the sweep holds only its m = 0 baseline {label}; add "
              f"values m > 0 to --m_list)")
    return [{**{k: math.nan for k in VERDICT_COLUMNS}, "claim": claim, "label": label,
             "m": 0.0, "family": "", "metric": "", "status": CANNOT, "n_clusters": 0,
             "n_tasks": 0, "n_prompts": 0,
             "reference": swapped_mode(name) if name else "", "reason": reason,
             "sentence": f"({claim}) {what}"
                         + (f" ({swapped_mode(name)})" if name else "")
                         + f": {CANNOT}: {reason}."}
            for claim, what in CLAIMS
            for name in ([""] if claim != "f" else swapped)]
