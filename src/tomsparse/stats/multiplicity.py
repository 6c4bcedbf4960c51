"""Holm's step-down correction over a family of tests, and intervals that agree with it.

Holm controls the family-wise error rate (the chance of one or more false rejections among
all the family's tests) at alpha under any dependence between the tests. scipy has no Holm,
so it is written here, in a few lines.
"""

from __future__ import annotations

import numpy as np

from tomsparse.stats.intervals import check_level


def holm(p_values) -> np.ndarray:
    """Holm-adjusted p-values, in the input order.

    With the m finite p-values sorted ascending, p_(1) <= ... <= p_(m), the adjusted value of
    the i-th is max over j <= i of min(1, (m - j + 1) p_(j)). Decision rule: reject every
    hypothesis whose adjusted p is <= alpha; this is Holm's step-down procedure (reject
    H_(1), H_(2), ... while p_(i) <= alpha / (m - i + 1), stop at the first that fails), and
    its family-wise error rate is at most alpha. NaN p-values (claims that cannot be
    measured) stay NaN and do not count in m.
    """
    p = np.asarray(p_values, dtype=float).ravel()
    adjusted = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m == 0:
        return adjusted
    order = finite[np.argsort(p[finite], kind="stable")]
    multipliers = m - np.arange(m)                     # m, m - 1, ..., 1
    stepped = np.maximum.accumulate(np.minimum(1.0, multipliers * p[order]))
    adjusted[order] = stepped
    return adjusted


def holm_levels(p_values, alpha: float = 0.05) -> np.ndarray:
    """Confidence levels, one per hypothesis, whose two-sided intervals decide as Holm does.

    With the finite p-values ranked ascending (rank 1 the smallest) and r the first rank at
    which Holm stops (p_(r) > alpha / (m - r + 1); r = m + 1 when all are rejected):
    a hypothesis of rank i < r gets level 1 - alpha / (m - i + 1), Holm's own threshold at its
    step; every hypothesis of rank >= r gets the level of the stopping step,
    1 - alpha / (m - r + 1). So the interval at its level excludes the null value exactly when
    Holm rejects it (p_(i) <= its step's threshold for the ones before r; p_(i) >= p_(r) above
    the threshold for the rest), provided each p-value is the two-sided p of that same
    interval (``Interval.p_value``). Ties at a threshold are measure-zero and decided by Holm's
    "<=". These are decision-consistent intervals, each with coverage at least
    1 - alpha; they are not simultaneous intervals. NaN p-values get NaN levels.
    """
    alpha = check_level(alpha, "alpha")
    p = np.asarray(p_values, dtype=float).ravel()
    levels = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m == 0:
        return levels
    order = finite[np.argsort(p[finite], kind="stable")]
    thresholds = alpha / (m - np.arange(m))            # alpha/m, alpha/(m-1), ..., alpha
    failed = np.flatnonzero(p[order] > thresholds)
    stop = int(failed[0]) if failed.size else m        # 0-based rank where Holm stops
    step_levels = 1.0 - thresholds
    if stop < m:                                       # the rest share the stopping level
        step_levels[stop:] = step_levels[stop]
    levels[order] = step_levels
    return levels
