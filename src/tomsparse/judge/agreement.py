"""Mask agreement (issue 37): do two difference masks pick the same weights?

Two masks are compared as ``judge.replicates`` compares the difference masks of two score
replicates (``overlap_counts``): the Jaccard index J = |A & B| / |A | B| over every weight
and per role, at each m. Beside it, what two masks of the same counts drawn independently and
uniformly at random would share, per matrix of n entries with k1 and k2 of them picked:

* ``random_shared`` = sum over matrices of k1 k2 / n: the expected size of the intersection,
  exact (the mean of the hypergeometric distribution of |A & B| for independent uniform
  subsets of sizes k1 and k2 of n, summed over the independent matrices);
* ``random_jaccard`` = random_shared / (K1 + K2 - random_shared), K the masks' total sizes:
  the Jaccard index at the expected intersection, a ratio of expectations (not the
  expectation of the ratio; the two differ by O(1 / K), below 1% of the value at the sizes of
  a sweep's masks; tests/unit/test_swapped_controls.py checks it against simulated random
  masks);
* ``ratio`` = jaccard / random_jaccard (1 = no more agreement than chance).

``difference_agreement`` builds the masks from score stores, each set a (ToM-side scores,
generic scores) pair, so it compares the difference mask with each task-swapped mask of a
sweep (``pipeline.record_agreement``), or the difference masks of two attribution scores
(fisher vs snip stores) alike.
"""

from __future__ import annotations

import itertools
import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from tomsparse.masks import build_rankings, masks_for
from tomsparse.judge.replicates import overlap_counts

AGREEMENT_COLUMNS = ("first", "second", "m", "role", "numel", "masked_first",
                     "masked_second", "shared", "jaccard", "random_shared", "random_jaccard",
                     "ratio")


def random_overlap(k1, k2, n) -> tuple[float, float]:
    """(expected |A & B|, Jaccard at that expectation) of independent uniform random subsets,
    matrix by matrix: ``k1``, ``k2`` the subset sizes and ``n`` the matrix sizes (arrays of
    one entry per matrix, or numbers). The expected intersection sum(k1 k2 / n) is exact (the
    hypergeometric mean); the Jaccard is the ratio of expectations E|A & B| / (K1 + K2 -
    E|A & B|) (NaN when both masks are empty)."""
    k1, k2, n = (np.atleast_1d(np.asarray(x, dtype=float)) for x in (k1, k2, n))
    with np.errstate(invalid="ignore", divide="ignore"):
        shared = float(np.sum(np.where(n > 0, k1 * k2 / n, 0.0)))
    union = float(k1.sum() + k2.sum()) - shared
    return shared, shared / union if union > 0 else math.nan


def mask_agreement(first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor],
                   numels: Mapping[str, int], roles: Mapping[str, str]) -> list[dict]:
    """Rows (role "all" first, then each role in order of appearance: numel, masked_first,
    masked_second, shared, jaccard, random_shared, random_jaccard, ratio) of two masks
    ({matrix name: flat indices}) over the same matrices (``numels``: entries per matrix,
    ``roles``: matrix -> role)."""
    names = list(first)
    missing = [n for n in names if n not in second]
    if missing:
        raise ValueError(f"the second mask lacks matrix {missing[0]}")
    totals = overlap_counts({n: first[n] for n in names}, {n: second[n] for n in names},
                            dict(roles))
    rows = []
    for key, (n1, n2, both) in totals.items():
        members = [n for n in names if key == "all" or roles[n] == key]
        k1 = [int(first[n].numel()) for n in members]
        k2 = [int(second[n].numel()) for n in members]
        size = [int(numels[n]) for n in members]
        rshared, rjac = random_overlap(k1, k2, size)
        union = n1 + n2 - both
        jac = both / union if union else math.nan
        rows.append({"role": key, "numel": int(sum(size)), "masked_first": n1,
                     "masked_second": n2, "shared": both, "jaccard": jac,
                     "random_shared": rshared, "random_jaccard": rjac,
                     "ratio": jac / rjac if rjac and np.isfinite(rjac) else math.nan})
    return rows


def difference_agreement(matrices, sets: Mapping[str, tuple], m_values: Sequence[float],
                         pairs: Sequence[tuple[str, str]] | None = None,
                         reference_ties: bool = False) -> pd.DataFrame:
    """The agreement (``AGREEMENT_COLUMNS``) of the difference masks of score sets, per m > 0
    and role. ``matrices``: the model's target matrices (``lm.description.matrices``: name and
    role); ``sets``: {label: (ToM-side scores, generic scores)} (mappings of matrix name to
    tensor, e.g. streamed stores), each set's difference mask being top m by its first and not
    top m by its second (a task-swapped set's first is the swapped store: its mask is the
    sweep's ``swapped-<name>`` mask); ``pairs``: which labels to compare (default: every pair,
    in the order of ``sets``)."""
    names = [m.name for m in matrices]
    roles = {m.name: m.role for m in matrices}
    positive = sorted(float(m) for m in m_values if m > 0)
    labels = list(sets)
    pairs = list(pairs) if pairs is not None else list(itertools.combinations(labels, 2))
    if not positive or not pairs:
        return pd.DataFrame(columns=list(AGREEMENT_COLUMNS))
    wanted = list(dict.fromkeys(x for pair in pairs for x in pair))
    unknown = [x for x in wanted if x not in sets]
    if unknown:
        raise ValueError(f"unknown score set(s) {', '.join(unknown)}; known: "
                         f"{', '.join(labels)}")
    rankings = {x: build_rankings(sets[x][0], sets[x][1], names, m_max=max(positive),
                                  reference_ties=reference_ties) for x in wanted}
    rows = []
    for m in positive:
        masks = {x: masks_for(rankings[x], m, "difference", reference_ties=reference_ties)
                 for x in wanted}
        for a, b in pairs:
            numels = {n: rankings[a][n].numel for n in names}
            for row in mask_agreement(masks[a], masks[b], numels, roles):
                rows.append({"first": a, "second": b, "m": m, **row})
    return pd.DataFrame(rows, columns=list(AGREEMENT_COLUMNS))


def agreement_lines(table: pd.DataFrame) -> list[str]:
    """One line per pair and m (over every weight): the Jaccard index beside random masks'."""
    lines = []
    if table is None or table.empty:
        return lines
    for r in table[table["role"] == "all"].itertuples():
        lines.append(f"{r.first} vs {r.second}, m = {r.m:g}: Jaccard {r.jaccard:.3f} "
                     f"({int(r.shared):,} of {int(r.masked_first):,} / "
                     f"{int(r.masked_second):,} weights shared); two random masks of these "
                     f"counts: {r.random_jaccard:.2g} ({r.random_shared:.3g} shared)")
    return lines
