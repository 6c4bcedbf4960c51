"""Equivalence tests and the five outcomes a claim can have.

A claim is "shown", "ruled out", "opposite direction", "not shown" or "cannot be measured";
an interval that covers zero is not a refutation unless an equivalence test says the effect
is smaller than a stated margin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tomsparse.errors import UserError
from tomsparse.stats.intervals import (Interval, check_level, check_sign, cluster_means,
                                       interval_over_units)

SHOWN = "shown"
RULED_OUT = "ruled out"
OPPOSITE = "opposite direction"
NOT_SHOWN = "not shown"
CANNOT_BE_MEASURED = "cannot be measured"
OUTCOMES = (SHOWN, RULED_OUT, OPPOSITE, NOT_SHOWN, CANNOT_BE_MEASURED)

# Default equivalence margins: effects smaller than these are negligible.
MARGIN_NATS = 0.25       # likelihood margins, in nats
MARGIN_ACCURACY = 0.05   # accuracy, as a fraction (5 points)


@dataclass(frozen=True)
class Equivalence:
    """TOST of |mean| < ``margin`` over cluster means: ``p_value`` = max(``p_lower``,
    ``p_upper``); ``equivalent`` when ``p_value < alpha``; NaN p and a ``reason`` when fewer
    than 2 clusters have a finite value."""

    p_value: float
    p_lower: float
    p_upper: float
    equivalent: bool
    margin: float
    alpha: float
    estimate: float
    se: float
    df: float
    n_clusters: int
    reason: str = ""


def equivalence_test(values, clusters, margin: float, alpha: float = 0.05,
                     method: str = "t") -> Equivalence:
    """Two one-sided t-tests (TOST) of equivalence within +-``margin``, over cluster means.

    H0: |mean| >= margin against H1: |mean| < margin. ``p_lower`` tests mean <= -margin
    against mean > -margin, ``p_upper`` mean >= margin against mean < margin, each a
    one-sided t-test with (clusters - 1) df; ``p_value`` is their maximum. Decision rule:
    equivalence ("ruled out") when ``p_value < alpha``, equivalently when the (1 - 2 alpha)
    two-sided t-interval lies inside (-margin, margin); the chance of declaring equivalence
    when |mean| >= margin is at most ``alpha``. ``method="skew"``: each one-sided test is the
    skewness-corrected one of ``paired_interval`` (t and Hall's test must both reject).
    All cluster means equal: the exact sign-flip p-values (2**-n when all lie inside the
    margin), never 0.
    """
    alpha = check_level(alpha, "alpha")
    margin = float(margin)
    if not margin > 0:
        raise UserError(f"the equivalence margin must be positive (got {margin!r}); "
                        f"defaults are {MARGIN_NATS} nats and {MARGIN_ACCURACY} accuracy")
    _, means = cluster_means(values, clusters)
    interval = interval_over_units(means, method=method)
    n = interval.n_clusters
    if not interval.measurable:
        return Equivalence(math.nan, math.nan, math.nan, False, margin, alpha,
                           interval.estimate, math.nan, math.nan, n,
                           f"{n} clusters with a finite value; an equivalence test needs at "
                           f"least 2")
    p_lower = interval.one_sided_p(+1, -margin)
    p_upper = interval.one_sided_p(-1, margin)
    p_value = max(p_lower, p_upper)
    return Equivalence(p_value, p_lower, p_upper, p_value < alpha, margin, alpha,
                       interval.estimate, interval.se, interval.df, n)


def classify(interval: Interval, claimed_sign: int, equivalence_p: float = math.nan,
             alpha: float = 0.05, null: float = 0.0) -> str:
    """The outcome of a claim that the mean lies on the ``claimed_sign`` side of ``null``.

    Rules, first that applies: "cannot be measured" when a bound is NaN; "shown" when the
    interval lies wholly on the claimed side (strictly); "opposite direction" when it lies
    wholly on the other side; "ruled out" when ``equivalence_p < alpha`` (TOST: the effect
    is within the margin); else "not shown". A direction outcome takes precedence over
    equivalence: a small effect that is surely there is "shown", however small (the effect
    size beside the verdict says how small). Error rates: with an interval at level
    1 - alpha (Holm-adjusted for a family), "shown" is wrong with probability at most
    alpha / 2 (two-sided interval) when the true mean is on the other side or at ``null``;
    "ruled out" is wrong with probability at most ``alpha`` when |mean| >= margin.
    """
    sign = check_sign(claimed_sign)
    check_level(alpha, "alpha")
    if not interval.measurable:
        return CANNOT_BE_MEASURED
    lo, hi = interval.lo - null, interval.hi - null
    above, below = lo > 0, hi < 0
    if (above and sign > 0) or (below and sign < 0):
        return SHOWN
    if above or below:
        return OPPOSITE
    if math.isfinite(equivalence_p) and equivalence_p < alpha:
        return RULED_OUT
    return NOT_SHOWN


def equivalence_from_interval(interval: Interval, margin: float) -> float:
    """The TOST p-value of |mean| < ``margin`` from an interval's estimate, standard error and
    degrees of freedom (so that it carries every variance component the interval carries,
    e.g. the mask-to-mask one of ``contrast_with_controls``): the larger of the one-sided
    tests (by the interval's method) of mean <= -margin and mean >= margin. NaN when the interval is not measurable.
    Decision rule as ``equivalence_test``: equivalence when the p-value is below alpha."""
    margin = float(margin)
    if not margin > 0:
        raise UserError(f"the equivalence margin must be positive (got {margin!r}); "
                        f"defaults are {MARGIN_NATS} nats and {MARGIN_ACCURACY} accuracy")
    if not interval.measurable or not math.isfinite(interval.se):
        return math.nan
    return max(interval.one_sided_p(+1, -margin), interval.one_sided_p(-1, margin))
