"""The mask family's trade-off (issue 15, part 4): ToM-specific damage against perplexity.

Members are the difference mask's variants ``difference[-p<factor>][-x<n>]`` at the sweep's
m values (q = m; the generic set is the top p = factor * q; n massive-activation channels left
out; see ``tomsparse.masks``). Each member is read from the specificity tables of its sweep:

* ``ppl_change`` = perplexity / baseline - 1;
* ``belief_gap`` = the change in false-belief margin minus the change in its true-belief
  controls (paired, t-interval over clusters), pooled over the families whose baseline
  passes its controls (over all families when none does). Negative = false belief hurt more: the
  ToM-specific damage the paper's claim predicts.

A member is on the Pareto front when no other member has both a lower (or equal) perplexity
change and a lower (or equal) belief gap, one of them strictly. The goal the issue sets is a
member whose belief gap is at most half the plain difference mask's (at the largest q, when
that gap is negative) with perplexity at most +5%: ``goal`` says whether one exists, and if
not, why not.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd

from tomsparse.masks import parse_mode
from tomsparse.judge.specificity import ABOVE, POOL_ABOVE, POOL_ALL

COLUMNS = ["label", "mode", "q", "p_factor", "p", "left_out_channels", "masked",
           "perplexity", "ppl_change", "belief_gap", "belief_gap_lo", "belief_gap_hi",
           "tom_change", "tom_change_lo", "tom_change_hi", "n_tasks", "pool", "on_front"]


def pool_of(tables: Mapping[str, pd.DataFrame]) -> str:
    base = tables["baseline"]
    return POOL_ABOVE if (base["state"] == ABOVE).any() else POOL_ALL


def family_table(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per member of the mask family found in the tables (see the docstring)."""
    pts = tables["points"]
    pool = pool_of(tables)
    rows = []
    for label, grp in pts[pts["family"] == pool].groupby("label", sort=False):
        mode = grp["mode"].iloc[0]
        try:
            spec = parse_mode(mode)
        except Exception:  # a mode this version does not know: not a family member
            continue
        if spec.base != "difference" or int(grp["n_seeds"].iloc[0]) != 1:
            continue
        gap = grp[grp["metric"] == "belief_gap_margin"].iloc[0]
        tom = grp[grp["metric"] == "tom_margin_change_adj"].iloc[0]
        q = float(grp["m"].iloc[0])
        rows.append({"label": label, "mode": mode, "q": q, "p_factor": spec.generic_factor,
                     "p": min(1.0, q * spec.generic_factor),
                     "left_out_channels": spec.exclude_channels, "masked": gap["masked"],
                     "perplexity": gap["perplexity"], "ppl_change": gap["ppl_change"],
                     "belief_gap": gap["value"], "belief_gap_lo": gap["lo"],
                     "belief_gap_hi": gap["hi"], "tom_change": tom["value"],
                     "tom_change_lo": tom["lo"], "tom_change_hi": tom["hi"],
                     "n_tasks": int(gap["n_tasks"]), "pool": pool})
    frame = pd.DataFrame(rows, columns=COLUMNS[:-1])
    frame["on_front"] = pareto_mask(frame["ppl_change"].to_numpy(float),
                                     frame["belief_gap"].to_numpy(float))
    return frame.sort_values(["q", "p_factor", "left_out_channels"]).reset_index(drop=True)


def pareto_mask(cost: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """True where no other point is at least as good in both (lower cost, lower gap) and
    strictly better in one. NaN points are never on the front."""
    ok = np.isfinite(cost) & np.isfinite(gap)
    out = np.zeros(len(cost), dtype=bool)
    for i in np.flatnonzero(ok):
        dominated = ok & (cost <= cost[i]) & (gap <= gap[i]) & ((cost < cost[i]) | (gap < gap[i]))
        out[i] = not dominated.any()
    return out


def goal(frame: pd.DataFrame, ppl_limit: float = 0.05, share: float = 0.5) -> dict:
    """Is there a member with belief gap <= ``share`` x the plain difference mask's (largest
    q), whose interval excludes 0, at perplexity change <= ``ppl_limit``? A dict with
    ``found`` (bool or None when the question cannot be asked), ``sentence`` and the rows."""
    plain = frame[(frame["p_factor"] == 1.0) & (frame["left_out_channels"] == 0)]
    if frame.empty or plain.empty:
        return {"found": None, "reference": None, "sentence":
                "the sweep has no plain difference mask to measure the family against"}
    ref = plain.sort_values("q").iloc[-1]
    where = (f"plain difference mask at q = {ref.q:.3g}: belief gap {ref.belief_gap:+.2f} "
             f"[{ref.belief_gap_lo:+.2f}, {ref.belief_gap_hi:+.2f}], perplexity "
             f"{ref.ppl_change:+.0%}")
    cheap = frame[frame["ppl_change"] <= ppl_limit]
    if not (ref.belief_gap_hi < 0):
        best = cheap.sort_values("belief_gap").head(1)
        extra = ""
        if not best.empty:
            b = best.iloc[0]
            extra = (f"; the most ToM-specific member at perplexity <= {ppl_limit:+.0%} is "
                     f"{b['mode']} q={b.q:.3g} with belief gap {b.belief_gap:+.2f} "
                     f"[{b.belief_gap_lo:+.2f}, {b.belief_gap_hi:+.2f}]")
        return {"found": None, "reference": ref.label, "sentence":
                f"the goal cannot be set: the {where} shows no ToM-specific damage (its "
                f"interval does not lie below 0){extra}"}
    aim = share * ref.belief_gap
    hits = cheap[(cheap["belief_gap"] <= aim) & (cheap["belief_gap_hi"] < 0)]
    if hits.empty:
        return {"found": False, "reference": ref.label, "sentence":
                f"no member reaches a belief gap <= {aim:+.2f} (half the {where}) with "
                f"perplexity <= {ppl_limit:+.0%}: {len(cheap)} of {len(frame)} members stay "
                f"under that perplexity, and none of them damages false belief that much"}
    best = hits.sort_values(["ppl_change", "belief_gap"]).iloc[0]
    return {"found": True, "reference": ref.label, "sentence":
            f"{best['mode']} at q = {best.q:.3g} reaches a belief gap of {best.belief_gap:+.2f} "
            f"[{best.belief_gap_lo:+.2f}, {best.belief_gap_hi:+.2f}] (goal: <= {aim:+.2f}, half "
            f"the {where}) with perplexity {best.ppl_change:+.1%}"}


def format_front(frame: pd.DataFrame) -> str:
    """The family as plain text, front members marked with '*'."""
    if frame.empty:
        return "(no member of the difference mask family in this sweep)"
    lines = [f"{'':1} {'mode':<20} {'q':>8} {'p':>8} {'masked':>8} {'ppl':>8} "
             f"{'belief gap [95%]':>24} {'ToM change [95%]':>24}"]
    for r in frame.itertuples():
        lines.append(
            f"{'*' if r.on_front else ' '} {r.mode:<20} {r.q:>8.3g} {r.p:>8.3g} "
            f"{int(r.masked) if r.masked == r.masked else 0:>8d} {r.ppl_change:>+8.1%} "
            f"{_ci(r.belief_gap, r.belief_gap_lo, r.belief_gap_hi):>24} "
            f"{_ci(r.tom_change, r.tom_change_lo, r.tom_change_hi):>24}")
    pool = frame["pool"].iloc[0]
    lines.append(f"(* = on the Pareto front of perplexity change and belief gap; belief gap and "
                 f"ToM change pooled over families: {pool}, {int(frame['n_tasks'].max())} tasks)")
    return "\n".join(lines)


def _ci(value: float, lo: float, hi: float) -> str:
    if not all(math.isfinite(x) for x in (value, lo, hi)):
        return "n/a"
    return f"{value:+.2f} [{lo:+.2f}, {hi:+.2f}]"
