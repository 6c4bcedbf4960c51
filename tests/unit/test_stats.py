"""The statistics engine (tomsparse.stats), each function checked against an independent
computation: direct formulas, scipy.stats' own tests, brute-force enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from tomsparse.errors import UserError
from tomsparse.stats import (CANNOT_BE_MEASURED, NOT_SHOWN, Interval, OPPOSITE, RULED_OUT, SHOWN,
                             chance_gate, classify, cluster_slopes, contrast_with_controls,
                             dose_response, equivalence_test, holm, holm_levels, mask_spread,
                             paired_interval, perplexity_ratio_interval, scenario_chance,
                             slope_weights)


def by_cluster(values, clusters) -> list[float]:
    """Cluster means by a plain dict loop (the independent restatement)."""
    groups: dict = {}
    for value, cluster in zip(values, clusters):
        if math.isfinite(value):
            groups.setdefault(cluster, []).append(value)
    return [sum(v) / len(v) for _, v in sorted(groups.items())]


def direct_t(units, level=0.95):
    n = len(units)
    mean = sum(units) / n
    sd = math.sqrt(sum((u - mean) ** 2 for u in units) / (n - 1))
    half = sps.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


@pytest.fixture
def sample():
    rng = np.random.default_rng(7)
    clusters = np.repeat(["t%02d" % i for i in range(8)], rng.integers(1, 5, size=8))
    values = 0.4 + rng.standard_normal(clusters.size)
    return values, clusters


# ---- paired_interval ------------------------------------------------------------------------

def test_paired_interval_matches_direct_formula_and_scipy(sample):
    values, clusters = sample
    result = paired_interval(values, clusters, level=0.9)
    units = by_cluster(values, clusters)
    mean, lo, hi = direct_t(units, 0.9)
    assert result.n_clusters == len(units) == 8 and result.df == 7
    assert result.estimate == pytest.approx(mean) and result.lo == pytest.approx(lo)
    assert result.hi == pytest.approx(hi)
    reference = sps.ttest_1samp(units, 0.0)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    assert result.se == pytest.approx(np.std(units, ddof=1) / math.sqrt(8))


def test_paired_interval_one_sided_matches_scipy(sample):
    values, clusters = sample
    units = by_cluster(values, clusters)
    for alternative in ("greater", "less"):
        result = paired_interval(values, clusters, alternative=alternative)
        reference = sps.ttest_1samp(units, 0.0, alternative=alternative)
        ci = reference.confidence_interval(0.95)
        assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9)
        assert (result.lo, result.hi) == pytest.approx((ci.low, ci.high))
    two_sided = paired_interval(values, clusters)
    upper = sps.ttest_1samp(units, 0.0, alternative="greater").pvalue
    assert two_sided.one_sided_p(+1) == pytest.approx(upper)
    assert two_sided.one_sided_p(-1) == pytest.approx(1 - upper)


def test_paired_interval_drops_nan_values_and_empty_clusters():
    values = [1.0, np.nan, 2.0, 4.0, np.nan, np.nan, 0.5, 1.5]
    clusters = ["a", "a", "b", "b", "c", "c", "d", "d"]
    result = paired_interval(values, clusters)
    assert result.n_clusters == 3                       # c has no finite value
    assert result.estimate == pytest.approx((1.0 + 3.0 + 1.0) / 3)


@pytest.mark.parametrize("values,clusters", [([1.0, 2.0], ["a", "a"]), ([], []),
                                             ([np.nan, 1.0], ["a", "b"])])
def test_fewer_than_two_clusters_is_nan_with_reason(values, clusters):
    result = paired_interval(values, clusters)
    assert math.isnan(result.lo) and math.isnan(result.hi) and math.isnan(result.p_value)
    assert not result.measurable and "at least 2" in result.reason
    assert result.n_clusters == len(set(c for v, c in zip(values, clusters) if v == v))


def test_zero_spread_gives_the_exact_sign_flip_answer_never_p_zero():
    # All cluster means equal: no t-statistic; the sign-flip test's p is 2**-n on the side
    # the values lie (issue 33: a zero standard error used to give p = 0).
    result = paired_interval([0.0, 0.0, 0.0], [1, 2, 3])
    assert result.p_value == 1.0 and (result.lo, result.hi) == (-math.inf, math.inf)
    moved = paired_interval([0.5, 0.5], [1, 2])
    assert moved.p_value == 0.5 and (moved.lo, moved.hi) == (-math.inf, math.inf)
    many = paired_interval([0.5] * 8, range(8))          # 2**-8 < 0.025: the point
    assert (many.lo, many.hi) == (0.5, 0.5)
    assert many.one_sided_p(+1) == 2.0 ** -8 and many.one_sided_p(-1) == 1.0
    assert many.p_value == 2.0 ** -7


def test_bad_level_and_shape_are_refused():
    with pytest.raises(UserError, match="level"):
        paired_interval([1, 2], [1, 2], level=95)
    with pytest.raises(ValueError, match="one entry per prompt"):
        paired_interval([1, 2, 3], [1, 2])


def simulated_coverage(n_clusters, heavy, n_sims, rng, mu=0.3):
    """Share of nominal-95% intervals covering mu: cluster effects normal or t(3), 1-6
    prompts per cluster, unit within-cluster noise."""
    covered = 0
    for _ in range(n_sims):
        sizes = rng.integers(1, 7, size=n_clusters)
        effects = rng.standard_t(3, n_clusters) if heavy else rng.standard_normal(n_clusters)
        clusters = np.repeat(np.arange(n_clusters), sizes)
        values = mu + effects[clusters] + rng.standard_normal(clusters.size)
        result = paired_interval(values, clusters)
        covered += result.lo <= mu <= result.hi
    return covered / n_sims


def test_coverage_of_a_nominal_95_interval_is_at_least_94_percent():
    n_sims, floor, cells = 5000, 0.94, 6
    # A true 95% interval fails this test (any cell below 94%) with probability < 1%.
    false_failure = 1 - sps.binom.sf(math.ceil(floor * n_sims) - 1, n_sims, 0.95) ** cells
    assert false_failure < 0.01
    rng = np.random.default_rng(20261203)
    table = {(g, heavy): simulated_coverage(g, heavy, n_sims, rng)
             for g in (6, 10, 20) for heavy in (False, True)}
    assert min(table.values()) >= floor, table


# ---- contrast_with_controls ------------------------------------------------------------------

def test_contrast_with_controls_matches_a_direct_computation():
    rng = np.random.default_rng(3)
    clusters = np.repeat(np.arange(7), 3)
    target = -0.8 + rng.standard_normal(21)
    controls = -0.1 + 0.3 * rng.standard_normal((5, 21))
    result = contrast_with_controls(target, controls, clusters, level=0.95)
    d_units = by_cluster(target - controls.mean(axis=0), clusters)
    mask_means = [np.mean(by_cluster(row, clusters)) for row in controls]
    v_c = np.var(d_units, ddof=1) / 7
    v_m = np.var(mask_means, ddof=1) / 5
    df = (v_c + v_m) ** 2 / (v_c ** 2 / 6 + v_m ** 2 / 4)
    half = sps.t.ppf(0.975, df) * math.sqrt(v_c + v_m)
    est = np.mean(d_units)
    assert result.interval.estimate == pytest.approx(est)
    assert result.interval.df == pytest.approx(df)
    assert (result.interval.lo, result.interval.hi) == pytest.approx((est - half, est + half))
    assert result.mask_se == pytest.approx(math.sqrt(v_m))
    assert result.mask_variance_estimable and result.n_masks == 5
    target_mean = np.mean(by_cluster(target, clusters))
    for sign in (1, -1):
        extreme = sum(sign * m >= sign * target_mean for m in mask_means)
        assert result.rank_p_value(sign) == pytest.approx((1 + extreme) / 6)
    assert result.rank_p_value(-1) == pytest.approx(1 / 6)   # target lowest of all


def test_exchangeable_contrast_is_the_prediction_interval_for_one_more_mask():
    """The target as one more mask: the masks' spread counted (1 + 1 / N) times, N - 1 df,
    against a direct computation; a borrowed spread stands in for one deterministic mask."""
    rng = np.random.default_rng(13)
    clusters = np.repeat(np.arange(8), 2)
    target = -0.5 + rng.standard_normal(16)
    controls = 0.4 * rng.standard_normal((4, 1)) + rng.standard_normal((4, 16))
    result = contrast_with_controls(target, controls, clusters, exchangeable=True)
    d_units = by_cluster(target - controls.mean(axis=0), clusters)
    mask_means = [np.mean(by_cluster(row, clusters)) for row in controls]
    v_c = np.var(d_units, ddof=1) / 8
    v_m = np.var(mask_means, ddof=1) * (1 + 1 / 4)
    df = (v_c + v_m) ** 2 / (v_c ** 2 / 7 + v_m ** 2 / 3)
    half = sps.t.ppf(0.975, df) * math.sqrt(v_c + v_m)
    est = np.mean(d_units)
    assert (result.interval.lo, result.interval.hi) == pytest.approx((est - half, est + half))
    assert result.interval.df == pytest.approx(df)
    assert mask_spread(controls, clusters) == pytest.approx((np.var(mask_means, ddof=1), 3))
    # one deterministic control with a borrowed spread (s^2 = 0.2 with 9 df): both the
    # control (1 / 1) and, exchangeable, the target (1) carry one draw's variance
    one = contrast_with_controls(target, controls[:1], clusters, exchangeable=True,
                                 borrowed=(0.2, 9.0))
    d1 = by_cluster(target - controls[0], clusters)
    v1 = np.var(d1, ddof=1) / 8
    df1 = (v1 + 0.4) ** 2 / (v1 ** 2 / 7 + 0.4 ** 2 / 9)
    half1 = sps.t.ppf(0.975, df1) * math.sqrt(v1 + 0.4)
    assert (one.interval.lo, one.interval.hi) == pytest.approx((np.mean(d1) - half1,
                                                                np.mean(d1) + half1))
    fixed_one = contrast_with_controls(target, controls[:1], clusters, borrowed=(0.2, 9.0))
    assert fixed_one.mask_se == pytest.approx(math.sqrt(0.2))


def test_exchangeable_contrast_holds_its_rate_where_the_fixed_one_does_not():
    """Simulation with a known truth: the target is one more random mask (normal mask
    effects, sd 0.3; cluster noise sd 0.5, 20 clusters, 10 masks). The fixed contrast's
    interval excludes 0 far more than 5% of the time; the exchangeable one about 5%."""
    rng = np.random.default_rng(21)
    clusters = np.arange(20)
    runs, fixed_miss, exch_miss = 600, 0, 0
    for _ in range(runs):
        effects = 0.3 * rng.standard_normal(11)
        values = effects[:, None] + 0.5 * rng.standard_normal((11, 20))
        fixed = contrast_with_controls(values[0], values[1:], clusters, method="t").interval
        exch = contrast_with_controls(values[0], values[1:], clusters, method="t",
                                      exchangeable=True).interval
        fixed_miss += not (fixed.lo <= 0 <= fixed.hi)
        exch_miss += not (exch.lo <= 0 <= exch.hi)
    assert fixed_miss / runs > 0.15
    # Binomial(600, 0.05): 99.9% of runs below 0.08
    assert 0.02 < exch_miss / runs < 0.08


def test_contrast_with_one_mask_says_mask_variance_is_not_estimable():
    rng = np.random.default_rng(4)
    clusters = np.repeat(np.arange(6), 2)
    target, control = rng.standard_normal(12), rng.standard_normal(12)
    result = contrast_with_controls(target, control[None, :], clusters)
    plain = paired_interval(target - control, clusters)
    assert not result.mask_variance_estimable and "not estimable" in result.note
    assert math.isnan(result.mask_se)
    assert (result.interval.lo, result.interval.hi) == pytest.approx((plain.lo, plain.hi))
    assert result.rank_p_value(1) in (0.5, 1.0)


# ---- chance gate -----------------------------------------------------------------------------

def test_chance_gate_matches_a_sum_of_binomial_pmf():
    passed = [True] * 6 + [False] * 4
    result = chance_gate(passed, chance=0.25)
    tail = sum(math.comb(10, j) * 0.25 ** j * 0.75 ** (10 - j) for j in range(6, 11))
    assert (result.k, result.n) == (6, 10)
    assert result.p_value == pytest.approx(tail) and result.passes == (tail < 0.05)
    assert "6 of 10" in result.reason


def test_a_shortcut_that_fails_its_controls_cannot_pass():
    # Always the false-belief answer: every false-belief probe right, every control wrong.
    false_belief_right = np.ones(12, dtype=bool)
    controls_right = np.zeros(12, dtype=bool)
    result = chance_gate(false_belief_right & controls_right, scenario_chance(2))
    assert not result.passes and result.k == 0


def test_scenario_chance_and_gate_edges():
    assert scenario_chance(3) == 0.125 and scenario_chance(1, n_choices=4) == 0.25
    empty = chance_gate([], 0.25)
    assert not empty.passes and math.isnan(empty.p_value)
    with pytest.raises(UserError):
        chance_gate([True], chance=1.5)


# ---- equivalence and outcomes ----------------------------------------------------------------

def test_equivalence_test_is_two_one_sided_scipy_t_tests(sample):
    values, clusters = sample
    units = by_cluster(values, clusters)
    result = equivalence_test(values, clusters, margin=1.0, alpha=0.05)
    lower = sps.ttest_1samp(units, -1.0, alternative="greater").pvalue
    upper = sps.ttest_1samp(units, 1.0, alternative="less").pvalue
    assert (result.p_lower, result.p_upper) == pytest.approx((lower, upper))
    assert result.p_value == pytest.approx(max(lower, upper))
    for margin in (0.2, 0.6, 1.0, 1.5):      # TOST at a == the (1 - 2a) interval inside
        inside = paired_interval(values, clusters, level=0.90)
        expected = -margin < inside.lo and inside.hi < margin
        assert equivalence_test(values, clusters, margin, 0.05).equivalent == expected


def test_classify_gives_each_outcome():
    def iv(lo, hi):
        return Interval((lo + hi) / 2, lo, hi, 0.1, 3.0, 0.5, 0.95, 4)
    assert classify(iv(0.1, 0.5), +1) == SHOWN
    assert classify(iv(-0.5, -0.1), +1) == OPPOSITE
    assert classify(iv(-0.5, -0.1), -1) == SHOWN
    assert classify(iv(-0.1, 0.1), +1, equivalence_p=0.01) == RULED_OUT
    assert classify(iv(-0.1, 0.1), +1, equivalence_p=0.2) == NOT_SHOWN
    assert classify(iv(0.0, 0.3), +1) == NOT_SHOWN             # touching zero is not shown
    assert classify(paired_interval([1.0], [1]), +1) == CANNOT_BE_MEASURED


# ---- Holm ------------------------------------------------------------------------------------

def holm_restated(p):
    """Adjusted p by the textbook loop."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    m, running, out = len(p), 0.0, [0.0] * len(p)
    for step, i in enumerate(order):
        running = max(running, min(1.0, (m - step) * p[i]))
        out[i] = running
    return out


def holm_step_down(p, alpha):
    """Rejected set of Holm's procedure, by walking the sorted p-values."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    rejected = set()
    for step, i in enumerate(order):
        if p[i] > alpha / (len(p) - step):
            break
        rejected.add(i)
    return rejected


def test_holm_matches_restatement_and_brute_force_step_down():
    rng = np.random.default_rng(11)
    for _ in range(200):
        m = int(rng.integers(1, 9))
        p = list(np.where(rng.random(m) < 0.5, rng.random(m) * 0.02, rng.random(m)))
        adjusted = holm(p)
        assert adjusted == pytest.approx(holm_restated(p))
        for alpha in (0.01, 0.05, 0.1):
            assert {i for i in range(m) if adjusted[i] <= alpha} == holm_step_down(p, alpha)


def test_holm_keeps_nan_out_of_the_family():
    adjusted = holm([0.01, np.nan, 0.04])
    assert math.isnan(adjusted[1])
    assert list(adjusted[[0, 2]]) == pytest.approx([0.02, 0.04])


def test_holm_levels_give_the_holm_decision():
    rng = np.random.default_rng(5)
    for _ in range(100):
        m = int(rng.integers(2, 8))
        data = [(rng.normal(rng.choice([0.0, 0.8]), 1.0, size=10), np.arange(10))
                for _ in range(m)]
        raw = [paired_interval(v, c).p_value for v, c in data]
        rejected = holm(raw) <= 0.05
        levels = holm_levels(raw, 0.05)
        for (values, clusters), level, holm_says in zip(data, levels, rejected):
            adjusted = paired_interval(values, clusters, level=level)
            assert (not adjusted.lo <= 0.0 <= adjusted.hi) == holm_says
    # The case a plain rank-by-rank level gets wrong: Holm stops at the first p.
    assert list(holm_levels([0.03, 0.04], 0.05)) == pytest.approx([0.975, 0.975])
    assert list(holm_levels([0.001, 0.04], 0.05)) == pytest.approx([0.975, 0.95])


# ---- dose-response and perplexity -------------------------------------------------------------

def test_dose_response_is_the_t_interval_over_per_cluster_polyfit_slopes():
    rng = np.random.default_rng(8)
    m_grid = np.array([0.0, 1e-5, 3e-5, 1e-4, 3e-4])
    rows = [(c, m, (-0.2 * math.log(m) if m > 0 else 0.0) + rng.standard_normal())
            for c in range(6) for m in m_grid for _ in range(2)]
    rows.append((6, 1e-4, 0.3))                      # a cluster with one m has no slope
    clusters, m_values, changes = map(np.array, zip(*rows))
    result = dose_response(changes, clusters, m_values)
    slopes = []
    for c in range(6):
        pick = (clusters == c) & (m_values > 0)
        slopes.append(np.polyfit(np.log(m_values[pick]), changes[pick], 1)[0])
    ids, found = cluster_slopes(changes, clusters, m_values)
    assert list(ids) == list(range(6)) and found == pytest.approx(slopes)
    ci = sps.ttest_1samp(slopes, 0.0).confidence_interval(0.95)
    assert result.n_clusters == 6
    assert (result.lo, result.hi) == pytest.approx((ci.low, ci.high))


def test_dose_response_beyond_masks_adds_the_masks_draws():
    """With mask spreads, the slope's variance gains sum_m w_m^2 s_m^2 (1 / N_m [+ 1]) with
    Welch-Satterthwaite df (a direct computation), and the simulated slope of a target at the
    masks' mean beyond 2 random masks at one m and 10 at another keeps its rate."""
    rng = np.random.default_rng(17)
    ms = np.array([3e-5, 1e-4])
    n_cl = 12
    changes = rng.standard_normal((2, n_cl))
    ids = np.tile(np.arange(n_cl), 2)
    mvals = np.repeat(ms, n_cl)
    plain = dose_response(changes.ravel(), ids, mvals)
    spreads = {3e-5: (0.3, 2, 1.0), 1e-4: (0.1, 10, 9.0)}
    w = slope_weights(ms)
    assert w == pytest.approx(np.array([-1, 1]) / math.log(1e-4 / 3e-5))
    for exch, own in ((False, 0.0), (True, 1.0)):
        got = dose_response(changes.ravel(), ids, mvals, mask_spreads=spreads,
                            exchangeable=exch)
        parts = [plain.se ** 2, w[0] ** 2 * 0.3 * (1 / 2 + own),
                 w[1] ** 2 * 0.1 * (1 / 10 + own)]
        df = sum(parts) ** 2 / (parts[0] ** 2 / (n_cl - 1) + parts[1] ** 2 / 1
                                + parts[2] ** 2 / 9)
        half = sps.t.ppf(0.975, df) * math.sqrt(sum(parts))
        assert got.estimate == pytest.approx(plain.estimate)
        assert (got.lo, got.hi) == pytest.approx((plain.estimate - half, plain.estimate + half))
    missing = dose_response(changes.ravel(), ids, mvals,
                            mask_spreads={3e-5: (math.nan, 1, 0.0), 1e-4: (0.1, 10, 9.0)})
    assert not missing.measurable and "fewer than 2 random masks" in missing.reason
    # known truth: masks' effects normal (sd 0.4 per mask), the target at their mean
    runs, plain_miss, miss = 500, 0, 0
    for _ in range(runs):
        diffs = []
        var = {}
        for m, n in ((3e-5, 2), (1e-4, 10)):
            masks = 0.4 * rng.standard_normal((n, 1)) + 0.3 * rng.standard_normal((n, n_cl))
            target = 0.3 * rng.standard_normal(n_cl)
            diffs.append(target - masks.mean(axis=0))
            s2, df = mask_spread(masks, np.arange(n_cl))
            var[m] = (s2, n, df)
        y = np.concatenate(diffs)
        iv0 = dose_response(y, ids, mvals)
        iv = dose_response(y, ids, mvals, mask_spreads=var)
        plain_miss += not (iv0.lo <= 0 <= iv0.hi)
        miss += not (iv.lo <= 0 <= iv.hi)
    assert plain_miss / runs > 0.15           # the masks' draws read as a slope
    assert miss / runs < 0.08


def test_perplexity_ratio_interval_and_outcomes():
    rng = np.random.default_rng(9)
    base = 3.0 + rng.random(40)
    small = base + 0.02 + 0.01 * rng.standard_normal(40)
    result = perplexity_ratio_interval(small, base)
    _, lo, hi = direct_t(list(small - base))
    assert result.ratio == pytest.approx(math.exp(np.mean(small - base)))
    assert (result.lo, result.hi) == pytest.approx((math.exp(lo), math.exp(hi)))
    assert result.outcome == SHOWN and result.hi < 1.10
    assert perplexity_ratio_interval(base + 0.3, base).outcome == OPPOSITE
    noisy = base + 0.09 + 0.3 * rng.standard_normal(40)
    assert perplexity_ratio_interval(noisy, base).outcome == NOT_SHOWN
    assert perplexity_ratio_interval([3.1], [3.0]).outcome == CANNOT_BE_MEASURED


def test_sign_combinations_of_one_sided_p_sum_to_one():
    # Independent of scipy: with 3999 df the one-sided p is the normal tail (z about 2).
    values = list(itertools.chain.from_iterable([[x, x] for x in np.linspace(-1, 1.04, 4000)]))
    result = paired_interval(values, np.repeat(np.arange(4000), 2))
    z = result.estimate / result.se
    assert result.one_sided_p(+1) == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), rel=1e-2)
    assert result.one_sided_p(+1) + result.one_sided_p(-1) == pytest.approx(1.0)
