"""Issue 33's statistics (tomsparse.stats): the skew-corrected interval, the comparison with
random masks under skewed mask effects, the pass-rate gate, the detectable effect and the
zero-spread answer, each checked against a simulation with a known truth or an independent
computation. Simulation sizes are small (the full tables are benchmarks/bench_stats.py); each
bound below says how likely a correct implementation is to fail it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from tomsparse.errors import UserError
from tomsparse.stats import (CANNOT_BE_MEASURED, NOT_SHOWN, SHOWN, compare_with_masks,
                             contrast_with_controls, detectable_effect,
                             detectable_effect_contrast, detectable_effect_paired,
                             equivalence_test, holm, holm_levels, masks_needed, mean_of_masks,
                             paired_interval, pass_rate_gate, t_interval, t_power)
from tomsparse.stats.intervals import hall_inverse, hall_transform

TRUE_MEAN = 0.3


def effects(kind, size, rng):
    if kind == "normal":
        return rng.standard_normal(size)
    if kind == "t3":
        return rng.standard_t(3, size)
    if kind == "exponential":
        return rng.exponential(1.0, size) - 1.0
    raise ValueError(kind)


def tail_misses(kind, n_clusters, sims, rng, method, noise=1.0):
    """(share of intervals wholly above TRUE_MEAN, share wholly below): cluster effects of
    ``kind``, 1-6 prompts per cluster, prompt noise of sd ``noise``."""
    low = high = 0
    for _ in range(sims):
        sizes = rng.integers(1, 7, size=n_clusters)
        clusters = np.repeat(np.arange(n_clusters), sizes)
        values = (TRUE_MEAN + effects(kind, n_clusters, rng)[clusters]
                  + noise * rng.standard_normal(clusters.size))
        result = paired_interval(values, clusters, method=method)
        low += result.lo > TRUE_MEAN
        high += result.hi < TRUE_MEAN
    return low / sims, high / sims


# ---- the skew-corrected interval ---------------------------------------------------------

def test_per_tail_rates_hold_for_normal_and_t3_effects():
    # Target (issue 33): at most 3.5% per tail. Measured 1.5-2.3% for "skew", 1.8-2.6% for
    # "t"; at 2000 data sets a true 2.6% exceeds 3.8% with probability < 0.1% per tail.
    sims, bound = 2000, 0.038
    rng = np.random.default_rng(33)
    table = {(kind, g, method): tail_misses(kind, g, sims, rng, method)
             for kind in ("normal", "t3") for g in (6, 20) for method in ("t", "skew")}
    worst = max(max(pair) for pair in table.values())
    assert worst <= bound, table


def test_skew_holds_exponential_effects_where_t_does_not():
    # Target: at most 5% in the long tail at 20 clusters for exponential effects. Measured
    # with prompt noise 0.5: "skew" 4.7%, "t" 7.0% (4000 data sets); at 6000 data sets a
    # true 4.7% exceeds 5.5% with probability about 0.2%, a true 7.0% falls below 6.0% with
    # about 0.1%.
    rng = np.random.default_rng(34)
    skew_low, skew_high = tail_misses("exponential", 20, 6000, rng, "skew", noise=0.5)
    t_low, t_high = tail_misses("exponential", 20, 6000, rng, "t", noise=0.5)
    assert skew_high <= 0.055 and skew_low <= 0.025
    assert t_high >= 0.060           # the simulation sees the skew the t-interval misses


def test_skew_interval_contains_the_t_interval_and_matches_its_p_value():
    rng = np.random.default_rng(1)
    for _ in range(200):
        g = int(rng.integers(3, 30))
        units = rng.exponential(1.0, g) * rng.choice([-1, 1]) + rng.normal(0, 0.3)
        for level in (0.8, 0.95, 0.99, 0.9975):
            t = paired_interval(units, np.arange(g), level)
            s = paired_interval(units, np.arange(g), level, method="skew")
            assert s.lo <= t.lo + 1e-12 and s.hi >= t.hi - 1e-12
            assert s.p_value >= t.p_value - 1e-12
            # the interval excludes 0 exactly when the two-sided p is below 1 - level
            assert (s.lo > 0 or s.hi < 0) == (s.p_value < 1 - level)
            for side in (1, -1):
                one_sided = paired_interval(units, np.arange(g), level,
                                            "greater" if side > 0 else "less", method="skew")
                assert one_sided.p_value == pytest.approx(s.one_sided_p(side))
                beyond = one_sided.lo > 0 if side > 0 else one_sided.hi < 0
                assert beyond == (s.one_sided_p(side) < 1 - level)


def test_hall_transform_is_monotone_and_inverted():
    z = np.linspace(-8, 8, 401)
    for k in (-0.9, -0.3, 0.0, 1e-12, 0.2, 0.9):
        y = hall_transform(z, k)
        assert np.all(np.diff(y) >= -1e-12)
        assert hall_inverse(y, k) == pytest.approx(z, abs=1e-7)


def test_skew_interval_rebuilt_from_its_summary():
    # The verdict engine rebuilds intervals at Holm levels from (estimate, se, df, skewness).
    rng = np.random.default_rng(2)
    units = rng.lognormal(0, 1, 12)
    raw = paired_interval(units, np.arange(12), method="skew")
    for level in (0.95, 0.99):
        again = t_interval(raw.estimate, raw.se, raw.df, raw.n_clusters, level,
                           method="skew", skewness=raw.skewness)
        direct = paired_interval(units, np.arange(12), level, method="skew")
        assert (again.lo, again.hi, again.p_value) == pytest.approx(
            (direct.lo, direct.hi, direct.p_value))
    # hand computation of Hall's bound: g = m3 / m2^1.5, k = g / sqrt(n)
    dev = units - units.mean()
    k = np.mean(dev ** 3) / np.mean(dev ** 2) ** 1.5 / math.sqrt(12)
    q = sps.t.ppf(0.975, 11)
    hall_hi = units.mean() - raw.se * 3 / k * (np.cbrt(k * (-q - k / 6) + 1) - 1)
    assert raw.skewness == pytest.approx(k)
    assert raw.hi == pytest.approx(max(hall_hi, units.mean() + q * raw.se))


def test_holm_levels_decide_as_holm_with_the_skew_method():
    rng = np.random.default_rng(5)
    for _ in range(60):
        m = int(rng.integers(2, 6))
        data = [rng.exponential(1.0, 10) - 1 + rng.choice([0.0, 1.2]) for _ in range(m)]
        raw = [paired_interval(v, np.arange(10), method="skew").p_value for v in data]
        rejected = holm(raw) <= 0.05
        for values, level, holm_says in zip(data, holm_levels(raw, 0.05), rejected):
            adjusted = paired_interval(values, np.arange(10), level=level, method="skew")
            assert (not adjusted.lo <= 0.0 <= adjusted.hi) == holm_says


def test_skew_contrast_with_equal_masks_is_the_paired_skew_interval():
    rng = np.random.default_rng(6)
    clusters = np.repeat(np.arange(9), 2)
    target = rng.exponential(1.0, 18)
    mask = rng.standard_normal(18)
    result = contrast_with_controls(target, np.vstack([mask, mask, mask]), clusters,
                                    method="skew").interval
    plain = paired_interval(target - mask, clusters, method="skew")
    assert (result.lo, result.hi, result.df, result.skewness) == pytest.approx(
        (plain.lo, plain.hi, plain.df, plain.skewness))
    single = mean_of_masks(target[None, :], clusters, method="skew")
    direct = paired_interval(target, clusters, method="skew")
    assert (single.lo, single.hi, single.skewness) == pytest.approx(
        (direct.lo, direct.hi, direct.skewness))


def test_equivalence_test_with_the_skew_method_is_its_interval_inside_the_margin():
    rng = np.random.default_rng(7)
    for _ in range(50):
        units = rng.exponential(0.3, 12) - 0.3 + rng.normal(0, 0.1)
        for margin in (0.1, 0.3, 0.6):
            inside = paired_interval(units, np.arange(12), level=0.90, method="skew")
            expected = -margin < inside.lo and inside.hi < margin
            assert equivalence_test(units, np.arange(12), margin, 0.05,
                                    method="skew").equivalent == expected


def test_unknown_method_is_refused():
    with pytest.raises(UserError, match="method"):
        paired_interval([1.0, 2.0, 3.0], [1, 2, 3], method="bootstrap")


# ---- zero spread -------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["t", "skew"])
def test_identical_cluster_means_never_give_p_zero(method):
    for n in (2, 5, 6, 12):
        result = paired_interval([0.7] * (2 * n), np.repeat(np.arange(n), 2), method=method)
        assert result.se == 0.0 and result.one_sided_p(+1) == 0.5 ** n > 0
        assert result.one_sided_p(-1) == 1.0
        assert result.p_value == min(1.0, 2 * 0.5 ** n)
        point = 0.5 ** n < 0.025
        assert (result.lo, result.hi) == ((0.7, 0.7) if point else (-math.inf, math.inf))
    at_null = paired_interval([0.0] * 10, np.arange(10), method=method)
    assert at_null.p_value == 1.0
    tost = equivalence_test([0.0] * 10, np.arange(10), margin=0.25, method=method)
    assert tost.p_value == 0.5 ** 10 and tost.equivalent


def test_identical_contrast_values_use_the_sign_flip_answer():
    clusters = np.arange(4)
    result = contrast_with_controls(np.full(4, -1.0), np.zeros((3, 4)), clusters).interval
    assert result.se == 0.0 and result.one_sided_p(-1) == 0.5 ** 4
    assert result.p_value == 2 * 0.5 ** 4 and (result.lo, result.hi) == (-math.inf, math.inf)


# ---- the comparison with random masks ----------------------------------------------------

def mask_data(n_clusters, n_masks, rng, fixed_target=None):
    """Per-prompt values of a target and N random masks whose effects are skewed: most about
    0, one in ten catastrophic (-2); the target one more random mask unless fixed."""
    sizes = rng.integers(1, 7, size=n_clusters)
    clusters = np.repeat(np.arange(n_clusters), sizes)
    levels = np.where(rng.random(n_masks + 1) < 0.1, -2.0, 0.0)
    if fixed_target is not None:
        levels[0] = fixed_target
    shared = rng.standard_normal(n_clusters)[clusters]
    values = levels[:, None] + shared + rng.standard_normal((n_masks + 1, clusters.size))
    return values[0], values[1:], clusters


def test_mask_rule_holds_its_rate_under_catastrophic_masks():
    # The target is one more random mask: its rank among the N + 1 is uniform, so the rule
    # says "shown" with probability <= 1 / 40 = 2.5% at N = 39; the Welch t-contrast alone
    # about 10%. At 1500 data sets a true 2.5% exceeds 3.7% with probability < 1%.
    rng = np.random.default_rng(8)
    shown = welch = 0
    sims = 1500
    for _ in range(sims):
        target, controls, clusters = mask_data(10, 39, rng)
        result = compare_with_masks(target, controls, clusters, -1)
        shown += result.shown
        welch += result.t_p < 0.025
    assert shown / sims <= 0.037
    assert welch / sims >= 0.06            # the simulation sees what the t-contrast misses


def test_mask_rule_with_few_masks_can_never_show_and_says_why():
    rng = np.random.default_rng(9)
    target, controls, clusters = mask_data(20, 5, rng, fixed_target=-6.0)
    result = compare_with_masks(target, controls, clusters, -1)
    assert result.contrast.interval.hi < 0              # the interval alone says "shown"
    assert result.rank_p == pytest.approx(1 / 6) and not result.shown
    outcome, reason = result.verdict()
    assert outcome == NOT_SHOWN and "39 masks" in reason and "beyond all" in reason
    assert masks_needed(0.025) == 39 and masks_needed(0.05) == 19
    enough = compare_with_masks(*mask_data(20, 39, rng, fixed_target=-6.0), -1)
    assert enough.shown and enough.verdict() == (SHOWN, "")
    assert enough.p_one_sided == pytest.approx(1 / 40)
    # at a Holm level a = 0.0125 the rank cannot reach it with 39 masks
    assert enough.verdict(level=0.975)[0] == NOT_SHOWN


@pytest.mark.parametrize("n_finite", [0, 1])
def test_fewer_than_two_masks_cannot_be_measured(n_finite):
    rng = np.random.default_rng(10)
    target, controls, clusters = mask_data(8, 3, rng)
    controls[n_finite:] = np.nan
    result = compare_with_masks(target, controls, clusters, -1)
    assert not result.measurable and not result.shown
    outcome, reason = result.verdict()
    assert outcome == CANNOT_BE_MEASURED and "at least 2" in reason
    assert f"{n_finite} random mask" in result.reason
    contrast = contrast_with_controls(target, controls, clusters, min_masks=2)
    assert not contrast.interval.measurable and "at least 2" in contrast.interval.reason
    with pytest.raises(UserError, match="at least 2"):
        compare_with_masks(target, controls, clusters, -1, min_masks=1)


# ---- the pass-rate gate ------------------------------------------------------------------

def brute_force_lower_bound(k, n, alpha=0.05):
    """The p with P(K >= k | n, p) = alpha, by bisection on a sum of exact binomial terms."""
    if k == 0:
        return 0.0
    def tail(p):
        return sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(k, n + 1))
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if tail(mid) < alpha else (lo, mid)
    return (lo + hi) / 2


def test_pass_rate_gate_is_a_clopper_pearson_lower_bound():
    for n in range(1, 26):
        for k in range(n + 1):
            gate = pass_rate_gate([True] * k + [False] * (n - k), floor=0.5)
            assert gate.lo == pytest.approx(brute_force_lower_bound(k, n), abs=1e-9)
            assert gate.rate == pytest.approx(k / n) and gate.hi == 1.0
            assert gate.passes == (gate.lo > 0.5)
            exact = sps.binomtest(k, n, 0.5, alternative="greater").pvalue
            if abs(exact - 0.05) > 1e-9:
                assert gate.passes == (exact < 0.05)
            assert f"{k} of {n}" in gate.reason


def test_pass_rate_gate_false_pass_at_the_floor_is_at_most_alpha():
    for n in range(1, 41):
        for floor in (0.3, 0.5, 0.7):
            rate = sum(sps.binom.pmf(k, n, floor) for k in range(n + 1)
                       if pass_rate_gate([True] * k + [False] * (n - k), floor).passes)
            assert rate <= 0.05 + 1e-12
    empty = pass_rate_gate([])
    assert not empty.passes and "no clusters" in empty.reason
    with pytest.raises(UserError):
        pass_rate_gate([True], floor=1.0)


# ---- the detectable effect ---------------------------------------------------------------

def test_detectable_effect_has_its_power_in_a_simulation():
    # Normal cluster means: the one-sided 2.5% t-test at the returned effect has power 0.80;
    # 3000 data sets give the rate within +-0.022 (3 binomial sd).
    rng = np.random.default_rng(11)
    g, sd, sims = 8, 1.3, 3000
    effect = detectable_effect_paired(sd, g)
    assert t_power(effect, sd / math.sqrt(g), g - 1) == pytest.approx(0.8)
    means = effect + sd * rng.standard_normal((sims, g))
    shown = [paired_interval(row, np.arange(g)).lo > 0 for row in means]
    assert np.mean(shown) == pytest.approx(0.8, abs=0.022)
    # large df: the normal approximation (z_0.975 + z_0.8) se
    assert detectable_effect(1.0, 1e6) == pytest.approx(1.959964 + 0.841621, rel=1e-4)
    assert detectable_effect(0.0, 5) == 0.0 and math.isnan(detectable_effect(1.0, 0))


def test_detectable_contrast_effect_and_the_rule_power():
    assert detectable_effect_contrast(1.0, 0.3, 10, 20) == math.inf      # N < 39
    t_only = detectable_effect_contrast(1.0, 0.3, 10, 20, rank=False)
    v_c, v_m = 1.0 / 10, 0.09 / 20
    df = (v_c + v_m) ** 2 / (v_c ** 2 / 9 + v_m ** 2 / 19)
    assert t_only == pytest.approx(detectable_effect(math.sqrt(v_c + v_m), df))
    # the rule (t-contrast and rank) with 39 normal masks (sd 0.3) and 1-6 prompts per
    # cluster: power about 0.8 at the effect returned; 800 data sets, 3.5 sd below 0.8 = 0.75
    rng = np.random.default_rng(12)
    g, n, sims = 10, 39, 800
    noise = np.mean(1.0 / np.arange(1, 7))
    effect = detectable_effect_contrast(math.sqrt(noise * (1 + 1 / n)),
                                        math.sqrt(0.09 + noise / g), g, n)
    assert effect > detectable_effect_contrast(math.sqrt(noise * (1 + 1 / n)),
                                               math.sqrt(0.09 + noise / g), g, n, rank=False)
    shown = 0
    for _ in range(sims):
        sizes = rng.integers(1, 7, size=g)
        clusters = np.repeat(np.arange(g), sizes)
        levels = 0.3 * rng.standard_normal(n + 1)
        levels[0] = -effect
        values = levels[:, None] + rng.standard_normal((n + 1, clusters.size))
        shown += compare_with_masks(values[0], values[1:], clusters, -1).shown
    assert shown / sims >= 0.75
