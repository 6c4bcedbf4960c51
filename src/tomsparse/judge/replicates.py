"""Score replicates (issue 23, part 1): how stable is the difference mask, and the verdict,
when the score samples are drawn again?

A run with ``--score-replicates N`` computes N independent score sets (replicate r draws its
samples with seed + r - 1). Two things are measured from them:

* the **mask overlap**: per m, the Jaccard index |A & B| / |A | B| between the difference
  masks of replicate 1 and of replicate r, over every weight and per role (q, k, v, o, gate,
  up, down);
* the **primary verdict under each replicate**: replicate r's difference mask is evaluated at
  the primary m (the largest) into its own small sweep folder, and the verdicts of the main
  sweep are judged again with that point in place of replicate 1's difference point (the
  baseline, the random masks and the damage-matched controls are the main sweep's: they do not
  depend on the scores, except that the controls were matched to replicate 1's perplexity).
  The verdict is called stable only when every replicate gives the same outcome.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tomsparse.data.tasks.model import FAMILY_TITLES
from tomsparse.masks import build_rankings, masks_for, swapped_name
from tomsparse.sweep.folder import SweepFolder, point_label
from tomsparse.judge.specificity import POOL_ABOVE, compute_specificity
from tomsparse.judge.tables import matched_controls, verdict_rules
from tomsparse.judge.verdicts import AT_MATCHED_DAMAGE, verdicts

POOLED = "pooled over the families that pass their controls"

OVERLAP_COLUMNS = ("replicate", "m", "role", "jaccard", "masked_1", "masked_r", "shared")
# ``reference``: the task-swapped mask of a claim (f) row (methods only), else empty
VERDICT_COLUMNS = ("replicate", "m", "claim", "reference", "family", "status", "value", "lo",
                   "hi", "n_clusters", "stable")


def _jaccard(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int, int]:
    """(|a|, |b|, |a & b|) of two sets of flat indices."""
    shared = int(torch.isin(a, b).sum()) if a.numel() and b.numel() else 0
    return int(a.numel()), int(b.numel()), shared


def overlap_counts(first: dict, other: dict, roles: dict[str, str]
                   ) -> dict[str, list[int]]:
    """{"all" and each role: [|A|, |B|, |A & B|]} of two masks ({matrix name: flat indices},
    the same matrices), summed over the matrices of each role (``roles``: matrix -> role)."""
    totals: dict[str, list[int]] = {}
    for name in first:
        counts = _jaccard(first[name].cpu(), other[name].cpu())
        for key in ("all", roles[name]):
            acc = totals.setdefault(key, [0, 0, 0])
            for i, c in enumerate(counts):
                acc[i] += c
    return totals


def mask_overlap(lm, scores: list[tuple], m_values: list[float]) -> pd.DataFrame:
    """The Jaccard overlap of the difference masks of replicate 1 and each other replicate,
    per m > 0, overall and per role. ``scores``: [(ToM scores, generic scores)] per replicate
    (mappings of matrix name to tensor, e.g. streamed stores)."""
    names = [m.name for m in lm.description.matrices]
    role = {m.name: m.role for m in lm.description.matrices}
    positive = sorted(m for m in m_values if m > 0)
    if not positive or len(scores) < 2:
        return pd.DataFrame(columns=list(OVERLAP_COLUMNS))
    rankings = [build_rankings(tom, gen, names, m_max=max(positive)) for tom, gen in scores]
    rows = []
    for r, ranking in enumerate(rankings[1:], start=2):
        for m in positive:
            first, other = masks_for(rankings[0], m, "difference"), masks_for(ranking, m,
                                                                               "difference")
            totals = overlap_counts(first, other, role)
            for key, (n1, nr, both) in totals.items():
                union = n1 + nr - both
                rows.append({"replicate": r, "m": m, "role": key,
                             "jaccard": both / union if union else math.nan,
                             "masked_1": n1, "masked_r": nr, "shared": both})
    return pd.DataFrame(rows, columns=list(OVERLAP_COLUMNS))


def replicate_verdicts(main: str | Path, replicates: dict[int, str | Path], m: float
                       ) -> pd.DataFrame:
    """Claims (a)-(c) at ``m`` in every judged scope, under replicate 1 (the main sweep) and
    under each replicate's difference point (``replicates``: {r: its sweep folder}), with
    ``stable`` True on a row when every replicate gives that claim and scope the same outcome.
    Judged by the main folder's verdict rules."""
    return verdicts_with_other_masks(main, replicates, m, first=1, key="replicate")


def verdicts_with_other_masks(main: str | Path, others: dict, m: float, *, first,
                              key: str, claims: tuple[str, ...] = ("a", "b", "c")
                              ) -> pd.DataFrame:
    """Claims ``claims`` at ``m`` with the main sweep's difference point (labelled ``first``)
    and with each other difference point in its place (``others``: {label: a small sweep
    folder holding a difference point at ``m``, e.g. a score replicate's or another
    attribution score's}); the column ``key`` holds the label; ``stable`` True on a row when
    every label gives that claim and scope the same outcome. The baseline, the random masks
    and the damage-matched controls are the main sweep's; judged by its verdict rules.
    A task-swapped point the other folder holds at ``m`` replaces the main sweep's too (its
    own method's swapped mask), so claim (f), when asked for, is judged at the same m against
    the swapped mask of the same score (column ``reference``); (f) at matched damage is not
    (its searches are the main sweep's)."""
    folder = SweepFolder(main)
    points, prompts = folder.read_sweep()
    mapping, searches, interpolated = matched_controls(folder.read_matched())
    rules = verdict_rules(folder, None)
    label = point_label("difference", 0, m)
    runs = {first: (points, prompts)}
    for name, path in others.items():
        other_points, other_prompts = SweepFolder(path).read_sweep()
        if not (other_points["label"] == label).any():
            continue
        at_m = other_points[[np.isclose(x, m) and (mode == "difference"
                                                   or swapped_name(mode) is not None)
                             for x, mode in zip(other_points["m"], other_points["mode"])]]
        kept = points[~points["label"].isin(at_m["label"])]
        runs[name] = (pd.concat([kept, at_m], ignore_index=True),
                      {**prompts, **{x: other_prompts[x] for x in at_m["label"]}})
    swapped = folder.swapped_sets() if "f" in claims else []
    # the swapped masks searched to the main difference mask's damage are not matched to
    # another one's: judged with the main point only
    plain = ({t: [x for x in refs if swapped_name(x.split("_")[0]) is None]
              for t, refs in mapping.items()},
             {t: [x for x in specs if swapped_name(x["mode"]) is None]
              for t, specs in interpolated.items()},
             searches[searches["mode"].map(swapped_name).isna()] if len(searches) else searches)
    rows = []
    for name, (pts, prm) in runs.items():
        own_mapping, own_interpolated, own_searches = ((mapping, interpolated, searches)
                                                       if name == first else plain)
        tables = compute_specificity(pts, prm, matched=own_mapping,
                                     interpolated=own_interpolated)
        tables["matched"] = own_searches
        for v in verdicts(tables, rules=rules, swapped=swapped):
            if (v["claim"] in claims and math.isclose(v["m"], m)
                    and not str(v["reference"]).endswith(AT_MATCHED_DAMAGE)):
                rows.append({key: name, "m": m, "claim": v["claim"],
                             "reference": (str(v["reference"]).split(",")[0]
                                           if v["claim"] == "f" else ""),
                             "family": v["family"], "status": v["status"],
                             "value": v["value"], "lo": v["lo"], "hi": v["hi"],
                             "n_clusters": v["n_clusters"]})
    columns = [key, *VERDICT_COLUMNS[1:]]
    out = pd.DataFrame(rows, columns=[c for c in columns if c != "stable"])
    if out.empty:
        return pd.DataFrame(columns=columns)
    groups = out.groupby(["claim", "reference", "family"])
    same = groups["status"].transform("nunique") == 1
    full = groups[key].transform("nunique") == len(runs)
    return out.assign(stable=same & full & (len(runs) > 1))


def replicate_section(overlap: pd.DataFrame, table: pd.DataFrame) -> str:
    """The report's section: the mask overlap per m and role, and the verdicts per replicate
    in the primary scope."""
    if overlap.empty and table.empty:
        return ""
    parts = []
    if not overlap.empty:
        wide = overlap.pivot_table(index=["replicate", "m"], columns="role", values="jaccard",
                                   sort=False)
        wide.columns.name = None
        counts = overlap[overlap["role"] == "all"].set_index(["replicate", "m"])
        wide.insert(0, "weights: replicate 1 / r / both", [
            f"{int(counts.loc[k, 'masked_1']):,} / {int(counts.loc[k, 'masked_r']):,} / "
            f"{int(counts.loc[k, 'shared']):,}" if k in counts.index else "" for k in wide.index])
        wide = wide.reset_index()
        wide["m"] = wide["m"].map(lambda m: f"{m:g}")  # 3e-05, not 0.000
        parts.append("<p>Jaccard overlap |A &amp; B| / |A | B| of the difference masks of score "
                     "replicate 1 and replicate r (independent draws of the score samples), "
                     "over every weight and per role; 1 = the same weights.</p>"
                     + wide.to_html(index=False, float_format=lambda x: f"{x:.3f}", na_rep=""))
    if not table.empty:
        named = table.assign(family=table["family"].map(
            lambda f: POOLED if f == POOL_ABOVE else FAMILY_TITLES.get(f, f)))
        wide = named.pivot_table(index=["claim", "family"], columns="replicate",
                                 values="status", aggfunc="first", sort=False)
        wide.columns = [f"replicate {c}" for c in wide.columns]
        stable = named.groupby(["claim", "family"], sort=False)["stable"].all()
        wide["stable"] = stable.map({True: "yes", False: "no"})
        parts.append(f"<p>Claims (a)-(c) at m = {table['m'].iloc[0]:g} with each replicate's "
                     "difference mask (the other points are shared), per family and "
                     f"{POOLED} (the primary verdict): a verdict is stable only when every "
                     "replicate gives it.</p>"
                     + wide.reset_index().to_html(index=False, na_rep="", escape=True))
    return "\n".join(parts)
