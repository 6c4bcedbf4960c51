"""Calibration of the statistics engine (prints its figures; not a test).

1. Per-tail error rates of a nominal 95% interval for a mean paired difference at 6, 10 and 20
   clusters, 1-6 prompts per cluster, cluster effects normal, t(3), exponential or lognormal
   (the skewed two with mean 0 and sd 1; lognormal of log-sd 1, skewness 6.2), prompt noise
   of sd 1 (and 0.5 for the skewed effects, leaving the cluster means more skewed):
   ``tomsparse.stats.paired_interval`` with ``method="t"`` and
   ``method="skew"``. "low" is the share of intervals lying wholly above the true mean (a
   false "shown" upwards), "high" the share wholly below it; each should be 2.5%. Beside them
   the power of each method for normal effects at the effect ``detectable_effect_paired``
   gives 80% power (t-test, one-sided 2.5%); and the per-tail rates of the target-minus-masks
   contrast (``contrast_with_controls``, both methods) when the target's cluster effects are
   exponential.
2. False "shown" of "the target mask hurt more than N random masks" when the target is one
   more random mask (exchangeable with the N), for normal and skewed mask effects (most masks
   about 0 and now and then a catastrophic one; exponential; lognormal), N = 5, 10, 20, 39
   masks and 6, 10, 20 clusters: the Welch t-contrast alone (``contrast_with_controls``), the
   t-contrast and the target beyond all N masks, and ``compare_with_masks`` (t-contrast and
   rank p <= 2.5%). Nominal: 2.5% one-sided. Then the rule's power at the effect
   ``detectable_effect_contrast`` gives 80% power.
3. Gates: false-pass rate of the chance gate for an at-chance model (each scenario passed with
   probability 0.25), and of the pass-rate gate (lower Clopper-Pearson bound above 0.5) for a
   model passing each cluster with probability 0.5, exactly (sum of binomial pmf over the k
   that pass) and simulated; the pass-rate gate's power at pass rates 0.8 and 0.9.
4. With ``--candidates``: the rejected interval candidates at ``--candidate-sims`` data sets
   per cell: scipy's BCa bootstrap, a studentized bootstrap (bootstrap-t) over cluster means,
   the 2.5/97.5 percentile cluster bootstrap the engine once used.

    python benchmarks/bench_stats.py --sims 4000 --mask-sims 10000 --candidates
    (about 5 minutes on 2 shared cores; without --candidates and at --mask-sims 4000 about 2)
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy import stats as sps

from tomsparse.stats import (chance_gate, compare_with_masks, contrast_with_controls,
                             detectable_effect_contrast, detectable_effect_paired,
                             paired_interval, pass_rate_gate, scenario_chance)

CLUSTER_COUNTS = (6, 10, 20)
MASK_COUNTS = (5, 10, 20, 39)
# (cluster effects, sd of the prompt noise): less noise leaves the cluster means more skewed
EFFECTS = (("normal", 1.0), ("t(3)", 1.0), ("exponential", 1.0), ("exponential", 0.5),
           ("lognormal", 1.0), ("lognormal", 0.5))
MASK_MODELS = ("normal", "catastrophic", "exponential", "lognormal")
METHODS = ("t", "skew")
TRUE_MEAN = 0.3
# sd of a cluster mean: unit effect sd plus unit prompt noise over 1-6 prompts
CLUSTER_MEAN_SD = math.sqrt(1.0 + np.mean(1.0 / np.arange(1, 7)))


def cluster_effects(kind: str, size, rng) -> np.ndarray:
    """Cluster effects of mean 0: normal and the skewed ones of sd 1, t(3) as it comes."""
    if kind == "normal":
        return rng.standard_normal(size)
    if kind == "t(3)":
        return rng.standard_t(3, size)
    if kind == "exponential":
        return rng.exponential(1.0, size) - 1.0
    if kind == "lognormal":
        return (np.exp(rng.standard_normal(size)) - math.exp(0.5)) / math.sqrt(
            (math.e - 1.0) * math.e)
    raise ValueError(kind)


def paired_data(kind, n_clusters, rng, mean=TRUE_MEAN, noise=1.0):
    """Per-prompt values and cluster ids: mean + cluster effect + prompt noise of sd
    ``noise``."""
    sizes = rng.integers(1, 7, size=n_clusters)
    clusters = np.repeat(np.arange(n_clusters), sizes)
    effects = cluster_effects(kind, n_clusters, rng)
    return mean + effects[clusters] + noise * rng.standard_normal(clusters.size), clusters


def tail_rates(kind, noise, n_clusters, sims, rng) -> dict[str, tuple[float, float]]:
    """Per method: (share of intervals wholly above TRUE_MEAN, share wholly below)."""
    misses = {m: [0, 0] for m in METHODS}
    for _ in range(sims):
        values, clusters = paired_data(kind, n_clusters, rng, noise=noise)
        for method in METHODS:
            result = paired_interval(values, clusters, method=method)
            misses[method][0] += result.lo > TRUE_MEAN
            misses[method][1] += result.hi < TRUE_MEAN
    return {m: (low / sims, high / sims) for m, (low, high) in misses.items()}


def power_at_detectable(n_clusters, sims, rng) -> tuple[float, dict[str, float]]:
    """(effect, per method the share of one-sided 2.5% "shown above 0") for normal effects
    at the effect detectable_effect_paired gives 80% power."""
    effect = detectable_effect_paired(CLUSTER_MEAN_SD, n_clusters)
    shown = {m: 0 for m in METHODS}
    for _ in range(sims):
        values, clusters = paired_data("normal", n_clusters, rng, mean=effect)
        for method in METHODS:
            shown[method] += paired_interval(values, clusters, method=method).lo > 0
    return effect, {m: k / sims for m, k in shown.items()}


def contrast_tail_rates(n_clusters, n_masks, sims, rng) -> dict[str, tuple[float, float]]:
    """Per method: per-tail miss rates of contrast_with_controls when the target's cluster
    effects are exponential (mean 0, sd 1) and its true effect equals the masks' mean (0):
    N masks of normal effects (sd 0.3), prompt noise of sd 0.5 everywhere."""
    misses = {m: [0, 0] for m in METHODS}
    for _ in range(sims):
        sizes = rng.integers(1, 7, size=n_clusters)
        clusters = np.repeat(np.arange(n_clusters), sizes)
        target = (cluster_effects("exponential", n_clusters, rng)[clusters]
                  + 0.5 * rng.standard_normal(clusters.size))
        masks = (0.3 * rng.standard_normal((n_masks, 1))
                 + 0.5 * rng.standard_normal((n_masks, clusters.size)))
        for method in METHODS:
            result = contrast_with_controls(target, masks, clusters, method=method).interval
            misses[method][0] += result.lo > 0
            misses[method][1] += result.hi < 0
    return {m: (low / sims, high / sims) for m, (low, high) in misses.items()}


def mask_effects(model: str, size, rng) -> np.ndarray:
    """Mask-level effects (negative = damage) of seeded random masks."""
    if model == "normal":
        return 0.3 * rng.standard_normal(size)
    if model == "catastrophic":      # most masks about 0, one in ten costs 2 nats
        return np.where(rng.random(size) < 0.1, -2.0, 0.0) + 0.05 * rng.standard_normal(size)
    if model == "exponential":
        return -0.5 * rng.exponential(1.0, size)
    if model == "lognormal":
        return -0.3 * np.exp(rng.standard_normal(size))
    raise ValueError(model)


def mask_data(model, n_clusters, n_masks, rng, fixed_target=None):
    """target (prompts,), controls (masks, prompts), clusters: each mask's effect plus a
    cluster effect shared by all masks plus unit prompt noise; the target is one more random
    mask, or a mask of effect ``fixed_target``."""
    sizes = rng.integers(1, 7, size=n_clusters)
    clusters = np.repeat(np.arange(n_clusters), sizes)
    shared = rng.standard_normal(n_clusters)[clusters]
    levels = mask_effects(model, n_masks + 1, rng)
    if fixed_target is not None:
        levels[0] = fixed_target
    values = levels[:, None] + shared[None, :] + rng.standard_normal((n_masks + 1, clusters.size))
    return values[0], values[1:], clusters


def mask_rule_rates(model, n_clusters, n_masks, sims, rng) -> tuple[float, float, float]:
    """False "hurt more" (claimed sign -1) rates: Welch t alone, t and beyond all masks,
    compare_with_masks."""
    welch = beyond = rule = 0
    for _ in range(sims):
        target, controls, clusters = mask_data(model, n_clusters, n_masks, rng)
        result = compare_with_masks(target, controls, clusters, -1)
        t_says = result.t_p < 0.025
        welch += t_says
        beyond += t_says and result.rank_p * (n_masks + 1) <= 1.0 + 1e-9
        rule += result.shown
    return welch / sims, beyond / sims, rule / sims


def mask_rule_power(n_clusters, n_masks, sims, rng) -> tuple[float, float]:
    """(effect, share "shown") of compare_with_masks for normal mask effects (sd 0.3) and a
    fixed target beyond their mean by the effect detectable_effect_contrast gives 80% power.
    The sds it is given: of the cluster means of d (prompt noise of the target and of the
    masks' mean), and of the masks' means (mask sd and their prompt noise over the clusters)."""
    noise = np.mean(1.0 / np.arange(1, 7))
    cluster_sd = math.sqrt(noise * (1.0 + 1.0 / n_masks))
    mask_sd = math.sqrt(0.3 ** 2 + noise / n_clusters)
    effect = detectable_effect_contrast(cluster_sd, mask_sd, n_clusters, n_masks)
    shown = 0
    for _ in range(sims):
        target, controls, clusters = mask_data("normal", n_clusters, n_masks, rng, -effect)
        shown += compare_with_masks(target, controls, clusters, -1).shown
    return effect, shown / sims


def exact_pass_rate(n, rate, passes) -> float:
    """P(gate passes) when k ~ Binomial(n, rate): the sum of the pmf over the passing k."""
    return float(sum(sps.binom.pmf(k, n, rate) for k in range(n + 1)
                     if passes([True] * k + [False] * (n - k))))


def bootstrap_t_bounds(means, draws, rng) -> tuple[float, float]:
    """Studentized bootstrap (bootstrap-t) 95% interval of the mean of cluster means."""
    n = means.size
    sample = means[rng.integers(0, n, size=(draws, n))]
    se = means.std(ddof=1) / math.sqrt(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_star = (sample.mean(axis=1) - means.mean()) / (sample.std(axis=1, ddof=1) / math.sqrt(n))
    t_star = np.sort(np.nan_to_num(t_star, nan=0.0))
    k = int(0.025 * (draws + 1)) - 1
    return means.mean() - t_star[draws - 1 - k] * se, means.mean() - t_star[k] * se


def candidates(sims, draws, rng) -> None:
    """Per-tail rates of the interval candidates tomsparse does not use."""
    print(f"\nRejected candidates, {sims} data sets per cell, {draws} resamples: per-tail miss "
          f"(low / high, %)")
    print(f"{'effects':<12} {'noise':>5} {'clusters':>8}  {'BCa (scipy)':>13}  "
          f"{'bootstrap-t':>13}  {'percentile':>13}")
    for kind, noise in EFFECTS:
        for n_clusters in CLUSTER_COUNTS:
            tally = np.zeros((3, 2))
            for _ in range(sims):
                values, clusters = paired_data(kind, n_clusters, rng, noise=noise)
                means = np.bincount(clusters, weights=values) / np.bincount(clusters)
                bca = sps.bootstrap((means,), np.mean, n_resamples=draws, method="BCa",
                                    random_state=rng).confidence_interval
                boot_t = bootstrap_t_bounds(means, draws, rng)
                picks = means[rng.integers(0, n_clusters, size=(draws, n_clusters))].mean(axis=1)
                pct = np.percentile(picks, [2.5, 97.5])
                for row, (lo, hi) in enumerate(((bca.low, bca.high), boot_t, pct)):
                    tally[row] += (lo > TRUE_MEAN, hi < TRUE_MEAN)
            cells = "  ".join(f"{100 * a / sims:6.2f}/{100 * b / sims:<6.2f}" for a, b in tally)
            print(f"{kind:<12} {noise:>5.1f} {n_clusters:>8}  {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=4000, help="data sets per cell")
    parser.add_argument("--mask-sims", type=int, default=4000,
                        help="data sets per cell of the random-mask table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidates", action="store_true",
                        help="also the rejected interval candidates (slow)")
    parser.add_argument("--candidate-sims", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=999, help="bootstrap resamples")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    start = time.time()

    se = math.sqrt(0.025 * 0.975 / args.sims)
    print(f"1. Per-tail miss rate (%) of a nominal 95% interval (2.5% per tail), {args.sims} "
          f"data sets per cell (binomial se at 2.5%: {100 * se:.2f} points); 1-6 prompts per "
          f"cluster, unit prompt noise")
    print(f"{'effects':<12} {'noise':>5} {'clusters':>8}  {'t: low':>7} {'high':>6}  "
          f"{'skew: low':>9} {'high':>6}")
    for kind, noise in EFFECTS:
        for n_clusters in CLUSTER_COUNTS:
            rates = tail_rates(kind, noise, n_clusters, args.sims, rng)
            (t_lo, t_hi), (s_lo, s_hi) = rates["t"], rates["skew"]
            print(f"{kind:<12} {noise:>5.1f} {n_clusters:>8}  {100 * t_lo:>7.2f} "
                  f"{100 * t_hi:>6.2f}  {100 * s_lo:>9.2f} {100 * s_hi:>6.2f}")
    print(f"\nPower (%), normal effects, one-sided 2.5%, at the effect detectable_effect_paired "
          f"gives 80% (cluster-mean sd {CLUSTER_MEAN_SD:.3f})")
    print(f"{'clusters':>8}  {'effect':>7}  {'t':>6}  {'skew':>6}")
    for n_clusters in CLUSTER_COUNTS:
        effect, shown = power_at_detectable(n_clusters, args.sims, rng)
        print(f"{n_clusters:>8}  {effect:>7.3f}  {100 * shown['t']:>6.1f}  "
              f"{100 * shown['skew']:>6.1f}")
    print(f"\nTarget minus N random masks (contrast_with_controls), exponential cluster effects "
          f"of the target, prompt noise 0.5: per-tail miss (%)")
    print(f"{'clusters':>8} {'N':>3}  {'t: low':>7} {'high':>6}  {'skew: low':>9} {'high':>6}")
    for n_clusters in (6, 20):
        for n_masks in (5, 20):
            rates = contrast_tail_rates(n_clusters, n_masks, args.sims, rng)
            (t_lo, t_hi), (s_lo, s_hi) = rates["t"], rates["skew"]
            print(f"{n_clusters:>8} {n_masks:>3}  {100 * t_lo:>7.2f} {100 * t_hi:>6.2f}  "
                  f"{100 * s_lo:>9.2f} {100 * s_hi:>6.2f}")
    print(f"({time.time() - start:.0f} s)")

    mask_se = math.sqrt(0.025 * 0.975 / args.mask_sims)
    print(f"\n2. False 'hurt more than random masks' (%), target one more random mask, "
          f"nominal 2.5%, {args.mask_sims} data sets per cell (binomial se at 2.5%: "
          f"{100 * mask_se:.2f} points): Welch t alone / t and beyond all N masks / "
          f"compare_with_masks (t and rank p <= 2.5%)")
    print(f"{'mask effects':<13} {'N':>3}  " + "  ".join(f"{f'{g} clusters':>17}"
                                                     for g in CLUSTER_COUNTS))
    for model in MASK_MODELS:
        for n_masks in MASK_COUNTS:
            cells = []
            for n_clusters in CLUSTER_COUNTS:
                rates = mask_rule_rates(model, n_clusters, n_masks, args.mask_sims, rng)
                cells.append("/".join(f"{100 * r:.1f}" for r in rates))
            print(f"{model:<13} {n_masks:>3}  " + "  ".join(f"{c:>17}" for c in cells))
    print(f"\ncompare_with_masks power (%), normal mask effects (sd 0.3), N = 39, target beyond "
          f"their mean by the effect detectable_effect_contrast gives 80%")
    for n_clusters in CLUSTER_COUNTS:
        effect, shown = mask_rule_power(n_clusters, 39, args.mask_sims, rng)
        print(f"{n_clusters:>8} clusters: effect {effect:.3f}, shown {100 * shown:.1f}")
    print(f"({time.time() - start:.0f} s)")

    chance = scenario_chance(2)
    print(f"\n3. Gates. Chance gate (one-sided exact binomial at 5% against chance {chance}): "
          f"false pass of an at-chance model. Pass-rate gate (one-sided 95% Clopper-Pearson "
          f"lower bound > 0.5): false pass at rate 0.5, power at 0.8 and 0.9")
    print(f"{'clusters':>8}  {'chance: exact':>13} {'simulated':>9}  {'rate 0.5: exact':>15} "
          f"{'simulated':>9}  {'power 0.8':>9} {'power 0.9':>9}")
    for n in CLUSTER_COUNTS:
        chance_exact = exact_pass_rate(n, chance, lambda f: chance_gate(f, chance).passes)
        chance_sim = np.mean([chance_gate(rng.random(n) < chance, chance).passes
                              for _ in range(args.sims)])
        floor_exact = exact_pass_rate(n, 0.5, lambda f: pass_rate_gate(f).passes)
        floor_sim = np.mean([pass_rate_gate(rng.random(n) < 0.5).passes
                             for _ in range(args.sims)])
        powers = [exact_pass_rate(n, r, lambda f: pass_rate_gate(f).passes) for r in (0.8, 0.9)]
        print(f"{n:>8}  {chance_exact:>13.4f} {chance_sim:>9.4f}  {floor_exact:>15.4f} "
              f"{floor_sim:>9.4f}  {powers[0]:>9.3f} {powers[1]:>9.3f}")
    if args.candidates:
        candidates(args.candidate_sims, args.draws, rng)
    print(f"\n({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
