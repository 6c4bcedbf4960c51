"""Paired intervals over clusters: the one t-interval every claim of tomsparse is judged on.

The unit of resampling is the cluster (a task for unexpected contents, transfer and ToMi; a
scenario for irony), never the prompt: prompts of one cluster share a story, so they are not
independent. Each function reduces per-prompt values to one mean per cluster and then treats
the cluster means as independent draws.

Why a t-interval and not a bootstrap or a sign-flip interval: over the cluster means, a
Student t-interval with (clusters - 1) degrees of freedom covered a true mean 94.9-95.9% of
the time at a nominal 95% with 6, 10 and 20 clusters, for normal and for heavy-tailed (t, 3
df) cluster effects, with 1-6 prompts per cluster and within-cluster noise (4000-5000 data
sets per cell), while the 2.5/97.5 percentile cluster bootstrap it replaces covered 85-92%
(``benchmarks/bench_stats.py`` prints the table; ``tests/unit/test_stats.py`` checks the 94%
floor). An exact sign-flip interval over 6 clusters has only 2**6 = 64 sign patterns, so its
attainable levels are coarse (a two-sided 95% interval is barely attainable), and it too
assumes symmetric cluster effects. Not measured here: strongly skewed cluster effects, under
which a t-interval over 6 clusters can undercover in one tail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from tomsparse.errors import UserError

ALTERNATIVES = ("two-sided", "greater", "less")


@dataclass(frozen=True)
class Interval:
    """A t-interval for a mean, and the t-test of ``mean == null``.

    ``estimate`` the mean of the unit values; ``se`` its standard error; ``df`` the degrees of
    freedom of the t distribution used (may be fractional: Welch-Satterthwaite); ``lo``/``hi``
    the bounds at ``level`` (one of them infinite for a one-sided ``alternative``);
    ``p_value`` the p-value of ``mean == null`` against ``alternative``; ``n_clusters`` the
    number of units the interval is over. When it cannot be computed (fewer than 2 units),
    ``lo``, ``hi``, ``se``, ``p_value`` are NaN and ``reason`` says why; else ``reason`` is "".
    """

    estimate: float
    lo: float
    hi: float
    se: float
    df: float
    p_value: float
    level: float
    n_clusters: int
    alternative: str = "two-sided"
    null: float = 0.0
    reason: str = ""

    @property
    def measurable(self) -> bool:
        """True when both bounds are numbers (an infinite one-sided bound counts)."""
        return not (math.isnan(self.lo) or math.isnan(self.hi))

    def one_sided_p(self, claimed_sign: int) -> float:
        """p-value of ``mean == null`` against ``mean > null`` (``claimed_sign`` +1) or
        ``mean < null`` (-1): a one-sided t-test that rejects at level a with error rate a
        when the mean equals ``null``. NaN when the interval is not measurable."""
        sign = check_sign(claimed_sign)
        return one_sided_t_p(self.estimate, self.se, self.df, sign, self.null)


def check_level(level: float, name: str = "level") -> float:
    """``level`` as a float in (0, 1), else a UserError naming it."""
    value = float(level)
    if not 0.0 < value < 1.0:
        example = "0.05" if name == "alpha" else "0.95"
        raise UserError(f"{name} must lie strictly between 0 and 1 (got {level!r}); "
                        f"pass e.g. {example}")
    return value


def check_sign(claimed_sign: int) -> int:
    """``claimed_sign`` as +1 or -1, else a UserError."""
    if claimed_sign not in (1, -1):
        raise UserError(f"claimed_sign must be +1 or -1 (got {claimed_sign!r})")
    return int(claimed_sign)


def one_sided_t_p(estimate: float, se: float, df: float, sign: int, null: float = 0.0) -> float:
    """P(T >= t) for t = sign * (estimate - null) / se with T ~ t(df): the one-sided p-value
    in the direction ``sign``. A zero ``se`` gives 0 when the estimate lies strictly on the
    claimed side of ``null``, else 1 (a point mass is its own certainty)."""
    if not (np.isfinite(estimate) and np.isfinite(se) and df > 0):
        return math.nan
    shift = sign * (estimate - null)
    if se == 0.0:
        return 0.0 if shift > 0 else 1.0
    # scipy.special.stdtr is the t CDF that scipy.stats.t wraps, without its per-call overhead
    # (the coverage test calls this tens of thousands of times).
    return float(special.stdtr(df, -shift / se))


def t_interval(estimate: float, se: float, df: float, n_clusters: int, level: float = 0.95,
               alternative: str = "two-sided", null: float = 0.0) -> Interval:
    """The t-interval ``estimate +- t_(df) quantile x se`` and its p-value against ``null``.

    Decision rule: the two-sided interval at ``level`` excludes ``null`` exactly when the
    two-sided p-value is below 1 - level; when ``estimate`` is the mean of n independent
    normal units and df = n - 1 both have error rate exactly 1 - level. ``alternative``
    "greater" gives ``[lo, inf)`` and a one-sided p of ``mean > null``; "less" gives
    ``(-inf, hi]``. A zero ``se`` gives the point interval ``[estimate, estimate]``.
    """
    level = check_level(level)
    if alternative not in ALTERNATIVES:
        raise UserError(f"alternative must be one of {', '.join(ALTERNATIVES)} "
                        f"(got {alternative!r})")
    tail = 1.0 - level if alternative != "two-sided" else (1.0 - level) / 2.0
    half = 0.0 if se == 0.0 else -float(special.stdtrit(df, tail)) * se
    lo, hi = estimate - half, estimate + half
    if alternative == "two-sided":
        upper, lower = (one_sided_t_p(estimate, se, df, s, null) for s in (1, -1))
        p_value = min(1.0, 2.0 * min(upper, lower))
    elif alternative == "greater":
        hi, p_value = math.inf, one_sided_t_p(estimate, se, df, 1, null)
    else:
        lo, p_value = -math.inf, one_sided_t_p(estimate, se, df, -1, null)
    return Interval(float(estimate), float(lo), float(hi), float(se), float(df), p_value,
                    level, int(n_clusters), alternative, float(null))


def unmeasurable(estimate: float, n_clusters: int, level: float, reason: str,
                 alternative: str = "two-sided", null: float = 0.0) -> Interval:
    """An Interval whose bounds are NaN, with the ``reason`` a reader sees."""
    return Interval(float(estimate), math.nan, math.nan, math.nan, math.nan, math.nan,
                    check_level(level), int(n_clusters), alternative, float(null), reason)


def interval_over_units(units: np.ndarray, level: float = 0.95, alternative: str = "two-sided",
                        null: float = 0.0, what: str = "clusters with a finite value") -> Interval:
    """The t-interval for the mean of independent unit values (NaNs dropped), with
    ``units - 1`` df. Fewer than 2 finite units: NaN bounds and a ``reason`` naming ``what``."""
    finite = np.asarray(units, dtype=float)
    finite = finite[np.isfinite(finite)]
    n = finite.size
    estimate = float(finite.mean()) if n else math.nan
    if n < 2:
        return unmeasurable(estimate, n, level, f"{n} {what}; an interval needs at least 2",
                            alternative, null)
    se = float(finite.std(ddof=1) / math.sqrt(n))
    return t_interval(estimate, se, n - 1, n, level, alternative, null)


def cluster_means(values, clusters) -> tuple[np.ndarray, np.ndarray]:
    """(cluster ids, mean of the finite values of each cluster), sorted by id.

    NaN (and infinite) values are dropped first, so a cluster with no finite value does not
    appear. ``values`` and ``clusters`` are per-prompt and of equal length."""
    vals = np.asarray(values, dtype=float).ravel()
    ids = np.asarray(clusters).ravel()
    if vals.shape != ids.shape:
        raise ValueError(f"values ({vals.size}) and clusters ({ids.size}) must have one entry "
                         f"per prompt each")
    keep = np.isfinite(vals)
    uniq, inverse = np.unique(ids[keep], return_inverse=True)
    sums = np.bincount(inverse, weights=vals[keep], minlength=uniq.size)
    counts = np.bincount(inverse, minlength=uniq.size)
    return uniq, sums / np.maximum(counts, 1)


def paired_interval(values, clusters, level: float = 0.95,
                    alternative: str = "two-sided") -> Interval:
    """Interval for the mean paired difference, over cluster means.

    ``values``: per-prompt paired differences (e.g. ToM margin after minus before);
    ``clusters``: each prompt's cluster id. Each cluster is reduced to the mean of its finite
    values and every cluster weighs the same; the interval is the Student t-interval with
    (clusters - 1) df over those means, and ``p_value`` tests a zero mean against
    ``alternative`` (``Interval.one_sided_p`` gives either direction afterwards).

    Decision rule and error rate: "the mean differs from 0" when the two-sided interval
    excludes 0, equivalently ``p_value < 1 - level``; exact for normal cluster means, and at
    least 94% coverage (94.9-95.9% measured) at 6, 10, 20 clusters for normal and t(3) cluster
    effects with unequal cluster sizes. Fewer than 2 clusters with a finite value: NaN bounds
    and a ``reason``, never an exception.
    """
    _, means = cluster_means(values, clusters)
    return interval_over_units(means, level, alternative)
