"""The smallest effect a claim could have shown: the effect a one-sided level-alpha t-test
detects with a given power (80% by default), from the noncentral t distribution
(``scipy.stats.nct``). A claim that is "not shown" with a detectable effect larger than the
effects that matter says little; one with a small detectable effect says more.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize
from scipy import special
from scipy import stats as sps

from tomsparse.errors import UserError
from tomsparse.stats.controls import masks_needed, welch_satterthwaite_df
from tomsparse.stats.intervals import check_level

ALPHA_ONE_SIDED = 0.025     # the tail of a two-sided 95% interval
POWER = 0.8


def t_power(effect: float, se: float, df: float, alpha: float = ALPHA_ONE_SIDED) -> float:
    """Power of the one-sided level-``alpha`` t-test (t = estimate / se, ``df`` degrees of
    freedom) when the true effect is ``effect`` on the tested side: P(T' > t_(1 - alpha, df))
    with T' noncentral t with noncentrality |effect| / se; exact for a mean of independent
    normal units."""
    alpha = check_level(alpha, "alpha")
    critical = -float(special.stdtrit(df, alpha))
    return float(sps.nct.sf(critical, df, abs(effect) / se))


def detectable_effect(se: float, df: float, alpha: float = ALPHA_ONE_SIDED,
                      power: float = POWER) -> float:
    """The smallest |effect| that the one-sided level-``alpha`` t-test with standard error
    ``se`` and ``df`` degrees of freedom detects with probability ``power``: the root in
    effect of ``t_power(effect, se, df, alpha) = power`` (3.51 se at 6 clusters, 3.15 se at
    10, 2.95 se at 20 for alpha 0.025 and power 0.8; 2.80 se as df grows). NaN when ``se`` or ``df`` is not a
    positive number; 0 when ``se`` is 0. ``se`` and ``df`` may be an Interval's, giving the
    effect detectable at the spread the data showed."""
    alpha = check_level(alpha, "alpha")
    power = check_level(power, "power")
    if not (math.isfinite(se) and math.isfinite(df) and se >= 0 and df > 0):
        return math.nan
    if se == 0:
        return 0.0
    if power <= alpha:
        return 0.0
    critical = -float(special.stdtrit(df, alpha))

    def shortfall(nc: float) -> float:
        return float(sps.nct.sf(critical, df, nc)) - power

    upper = critical + 2.0 * abs(float(special.ndtri(power))) + 10.0
    while shortfall(upper) < 0:
        upper *= 2.0
    return float(optimize.brentq(shortfall, 0.0, upper, xtol=1e-10)) * se


def detectable_effect_paired(sd: float, n_clusters: int, alpha: float = ALPHA_ONE_SIDED,
                             power: float = POWER) -> float:
    """The detectable effect of ``paired_interval`` (method "t"): ``sd`` the standard
    deviation of the cluster means, ``n_clusters`` their number; se = sd / sqrt(G), G - 1 df.
    Exact for normal cluster means (checked by simulation in the tests). Method "skew" needs a
    larger effect under symmetric cluster effects (its power at this effect is measured in
    ``benchmarks/bench_stats.py``)."""
    n = int(n_clusters)
    if n < 2:
        return math.nan
    return detectable_effect(float(sd) / math.sqrt(n), n - 1, alpha, power)


def beyond_all_probability(effect: float, mask_sd: float, n_masks: int,
                           target_sd: float = 0.0) -> float:
    """P(a fixed target lies beyond all N masks) when the masks' means are normal with sd
    ``mask_sd`` around a value |``effect``| short of the target and the target's own mean
    carries normal noise of sd ``target_sd``: E over that noise of
    Phi((|effect| - noise) / mask_sd)^N (Gauss-Hermite quadrature, 40 nodes)."""
    n = int(n_masks)
    if mask_sd <= 0:
        return 1.0 if abs(effect) > 0 else 0.0
    nodes, weights = special.roots_hermitenorm(40)
    inner = special.ndtr((abs(effect) - float(target_sd) * nodes) / float(mask_sd)) ** n
    return float(np.sum(weights * inner) / math.sqrt(2.0 * math.pi))


def detectable_effect_contrast(cluster_sd: float, mask_sd: float, n_clusters: int,
                               n_masks: int, alpha: float = ALPHA_ONE_SIDED,
                               power: float = POWER, rank: bool = True) -> float:
    """The detectable |target - mean of the masks| for the comparison with N random masks.

    ``cluster_sd``: sd of the cluster means of d = target - mean of the masks; ``mask_sd``: sd
    of the N masks' means; se^2 = cluster_sd^2 / G + mask_sd^2 / N with Welch-Satterthwaite
    df, as in ``contrast_with_controls``. ``rank=False``: the effect the t-contrast alone
    detects with ``power`` (noncentral t at the Welch df, an approximation). ``rank=True`` (the
    rule of ``compare_with_masks``): the target must also lie beyond every one of the N masks,
    which for normal mask means and a fixed target whose prompt noise is like a mask's (its
    mean's sd then cluster_sd / sqrt(G (1 + 1 / N))) has probability
    ``beyond_all_probability``; the effect returned is the smallest with
    P(t-contrast rejects) x P(beyond all) >= ``power``, and infinite when N is below
    ``masks_needed(alpha)`` (the rule can then never say "shown"). The product treats the two
    conditions as independent; both favour a target noise on the claimed side and a small
    mask spread, so the rule's power at that effect is at least about ``power`` (measured
    in ``benchmarks/bench_stats.py``). The rank part needs the target about 2.5 mask sds
    beyond the masks' mean at N = 39, whatever the number of clusters.
    """
    alpha = check_level(alpha, "alpha")
    power = check_level(power, "power")
    g, n = int(n_clusters), int(n_masks)
    if g < 2 or n < 2:
        return math.nan
    if rank and n < masks_needed(alpha):
        return math.inf
    v_c, v_m = float(cluster_sd) ** 2 / g, float(mask_sd) ** 2 / n
    if not (math.isfinite(v_c) and math.isfinite(v_m)):
        return math.nan
    df = welch_satterthwaite_df([v_c, v_m], [g - 1, n - 1])
    if not math.isfinite(df):
        return 0.0
    se = math.sqrt(v_c + v_m)
    t_only = detectable_effect(se, df, alpha, power)
    if not rank or mask_sd == 0:
        return t_only
    target_sd = float(cluster_sd) / math.sqrt(g * (1.0 + 1.0 / n))

    def shortfall(effect: float) -> float:
        return (t_power(effect, se, df, alpha)
                * beyond_all_probability(effect, mask_sd, n, target_sd)) - power

    upper = max(t_only, mask_sd) * 2.0
    while shortfall(upper) < 0:
        upper *= 2.0
    return float(optimize.brentq(shortfall, t_only, upper, xtol=1e-10 * upper))
