"""Attribution methods side by side (issue 37, item 3): does the answer depend on the score?

A run with ``--methods`` computes, beside its own score sets (``--score``, Fisher by default),
the ToM and generic score sets of every other method named (``scores_<dataset>_<method>``),
and measures two things, as ``judge.replicates`` does for score replicates:

* the **mask agreement**: per m > 0, the Jaccard index of the difference masks of every pair
  of methods, over every weight and per role, beside what two random masks of the same counts
  would share (``judge.agreement``);
* the **primary verdict under each method**: each other method's difference mask is evaluated
  at the primary m into its own small sweep folder (``sweep_<method>``), and claims (a)-(c)
  are judged again with that point in place of the run's difference point (the baseline, the
  random masks and the damage-matched controls are the main sweep's; the controls were matched
  to the run's own difference mask's perplexity, which the table's perplexity column lets a
  reader compare);
* with task-swapped sets, **claim (f) per method**: each task-swapped set is scored by every
  method too (``scores_<set>_<method>``), its swapped mask built from that method's scores and
  evaluated at the primary m beside the method's difference mask, and (f) judged with both in
  place of the run's: the method's difference mask against the same method's swapped mask.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tomsparse.data.tasks.model import FAMILY_TITLES
from tomsparse.judge.agreement import difference_agreement
from tomsparse.judge.replicates import POOLED, verdicts_with_other_masks
from tomsparse.judge.specificity import POOL_ABOVE
from tomsparse.stats import CANNOT_BE_MEASURED


def method_agreement(matrices, sets: dict, m_values) -> pd.DataFrame:
    """The agreement table (``judge.agreement.AGREEMENT_COLUMNS``) of the difference masks of
    ``sets`` ({method: (ToM scores, generic scores)}, the run's own method first), every
    pair, per m > 0 and role."""
    return difference_agreement(matrices, sets, m_values)


def method_verdicts(main: str | Path, others: dict[str, str | Path], m: float,
                    first: str) -> pd.DataFrame:
    """Claims (a)-(c), and (f) against each task-swapped mask at the same m, at ``m`` under
    the run's own method ``first`` (the main sweep) and under each other method's difference
    point (``others``: {method: its sweep folder, holding that method's own swapped points
    when the run has task-swapped sets}); column ``method``, ``stable`` as for score
    replicates."""
    return verdicts_with_other_masks(main, others, m, first=first, key="method",
                                     claims=("a", "b", "c", "f"))


def method_section(agreement: pd.DataFrame, table: pd.DataFrame) -> str:
    """The report's section: the methods' mask agreement per m (over every weight, beside
    random masks') and the verdicts per method in every judged scope."""
    if (agreement is None or agreement.empty) and (table is None or table.empty):
        return ""
    parts = []
    if agreement is not None and not agreement.empty:
        rows = agreement[agreement["role"] == "all"].copy()
        show = pd.DataFrame({
            "methods": rows["first"] + " vs " + rows["second"],
            "m": rows["m"].map(lambda m: f"{m:g}"),
            "weights: first / second / both": [
                f"{int(r.masked_first):,} / {int(r.masked_second):,} / {int(r.shared):,}"
                for r in rows.itertuples()],
            "Jaccard": rows["jaccard"], "two random masks": rows["random_jaccard"],
            "ratio": rows["ratio"]})
        parts.append("<p>Jaccard overlap |A &amp; B| / |A | B| of the difference masks (top m "
                     "by the method's ToM scores, not top m by its generic scores) of each "
                     "pair of attribution methods, over every weight, beside two random masks "
                     "of the same counts (ratio 1: no more agreement than chance; per role in "
                     "the run's method agreement table).</p>"
                     + show.to_html(index=False, float_format=lambda x: f"{x:.3g}",
                                    na_rep=""))
    if table is not None and not table.empty:
        named = table.assign(
            family=table["family"].map(
                lambda f: POOLED if f == POOL_ABOVE else FAMILY_TITLES.get(f, f)),
            claim=[f"{c} vs {r}" if isinstance(r, str) and r else c
                   for c, r in zip(table["claim"], table.get("reference",
                                                             [""] * len(table)))])
        wide = named.pivot_table(index=["claim", "family"], columns="method",
                                 values="status", aggfunc="first", sort=False)
        wide.columns.name = None
        groups = named.groupby(["claim", "family"], sort=False)
        stable = groups["stable"].all()
        # a claim no method could measure agrees trivially: say so rather than "yes"
        unmeasured = groups["status"].agg(lambda s: bool((s == CANNOT_BE_MEASURED).all()))
        wide["same under every method"] = [
            "nothing measured" if unmeasured[key] else ("yes" if stable[key] else "no")
            for key in wide.index]
        parts.append(f"<p>Claims (a)-(c) at m = {table['m'].iloc[0]:g} with each method's "
                     "difference mask in place of the run's (the baseline, random masks and "
                     "damage-matched controls shared), and claim (f) against each "
                     "task-swapped mask built by the same method at the same m, per family "
                     "and pooled: the localisation does not depend on the method only where "
                     "every method gives the same verdict.</p>"
                     + wide.reset_index().to_html(index=False, na_rep="", escape=True))
    return "\n".join(parts)
