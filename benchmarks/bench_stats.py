"""Calibration of the statistics engine (prints its figures; not a test).

1. Coverage of a nominal 95% interval for a mean paired difference at 6, 10 and 20 clusters,
   cluster effects normal or t(3), 1-6 prompts per cluster, unit within-cluster noise:
   ``tomsparse.stats.paired_interval`` (t over cluster means) beside the 2.5/97.5 percentile
   cluster bootstrap the engine replaces (``tomsparse.stats.bootstrap`` when present, else
   the same bootstrap written here).
2. False-pass rate of the chance gate for an at-chance model: each scenario passed with
   probability 0.25 (a false-belief probe and one control, two choices each), exactly (sum
   of binomial pmf over the k the gate passes) and simulated; beside it the old gate (the
   lower bound of a bootstrap interval of false-belief accuracy, 2 prompts per task, above
   0.5).

    python benchmarks/bench_stats.py --sims 4000
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy import stats as sps

from tomsparse.stats import chance_gate, paired_interval, scenario_chance

try:
    from tomsparse.stats import bootstrap as old_bootstrap
except ImportError:          # before the bootstrap moved into tomsparse.stats
    old_bootstrap = None

CLUSTER_COUNTS = (6, 10, 20)
TRUE_MEAN = 0.3


def bootstrap_interval(sums, counts, draws, rng) -> tuple[float, float]:
    """2.5/97.5 percentile interval of sum/count, resampling clusters with replacement."""
    if old_bootstrap is not None:
        weights = old_bootstrap.task_weights(sums.size, draws, rng)
        with np.errstate(invalid="ignore", divide="ignore"):
            return old_bootstrap.percentile_interval((weights @ sums) / (weights @ counts))
    picks = rng.integers(0, sums.size, size=(draws, sums.size))
    resampled = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    lo, hi = np.percentile(resampled, [2.5, 97.5])
    return float(lo), float(hi)


def coverage(n_clusters, heavy, sims, draws, rng) -> tuple[float, float]:
    """(t-interval coverage, bootstrap coverage) of TRUE_MEAN over ``sims`` data sets."""
    t_hits = boot_hits = 0
    for _ in range(sims):
        sizes = rng.integers(1, 7, size=n_clusters)
        effects = rng.standard_t(3, n_clusters) if heavy else rng.standard_normal(n_clusters)
        clusters = np.repeat(np.arange(n_clusters), sizes)
        values = TRUE_MEAN + effects[clusters] + rng.standard_normal(clusters.size)
        result = paired_interval(values, clusters)
        t_hits += result.lo <= TRUE_MEAN <= result.hi
        sums = np.bincount(clusters, weights=values)
        lo, hi = bootstrap_interval(sums, sizes.astype(float), draws, rng)
        boot_hits += lo <= TRUE_MEAN <= hi
    return t_hits / sims, boot_hits / sims


def exact_false_pass(n, chance, alpha=0.05) -> float:
    """P(gate passes) when k ~ Binomial(n, chance): the sum of the pmf over passing k."""
    return float(sum(sps.binom.pmf(k, n, chance) for k in range(n + 1)
                     if chance_gate([True] * k + [False] * (n - k), chance, alpha).passes))


def old_gate_false_pass(n_tasks, sims, draws, rng) -> float:
    """Share of at-chance models (each of 2 false-belief prompts per task right with
    probability 0.5) whose bootstrap accuracy interval lies above 0.5."""
    passes = 0
    for _ in range(sims):
        right = rng.random((n_tasks, 2)) < 0.5
        lo, _ = bootstrap_interval(right.sum(axis=1).astype(float), np.full(n_tasks, 2.0),
                                   draws, rng)
        passes += lo > 0.5
    return passes / sims


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=4000, help="data sets per cell")
    parser.add_argument("--draws", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    source = "tomsparse.stats.bootstrap" if old_bootstrap is not None else "written here"
    se = math.sqrt(0.95 * 0.05 / args.sims)
    print(f"Coverage of a nominal 95% interval, {args.sims} data sets per cell "
          f"(binomial se at 95%: {se:.4f}); bootstrap: {source}, {args.draws} draws")
    print(f"{'clusters':>8}  {'effects':<8}  {'t over clusters':>15}  {'percentile bootstrap':>20}")
    start = time.time()
    for n_clusters in CLUSTER_COUNTS:
        for heavy in (False, True):
            t_cov, boot_cov = coverage(n_clusters, heavy, args.sims, args.draws, rng)
            print(f"{n_clusters:>8}  {'t(3)' if heavy else 'normal':<8}  {t_cov:>15.4f}  "
                  f"{boot_cov:>20.4f}")
    chance = scenario_chance(2)
    print(f"\nChance gate false-pass rate, at-chance model (scenario chance {chance}), "
          f"alpha 0.05; old gate: bootstrap lower bound of FB accuracy > 0.5")
    print(f"{'clusters':>8}  {'new, exact':>10}  {'new, simulated':>14}  {'old, simulated':>14}")
    for n in CLUSTER_COUNTS:
        simulated = np.mean([chance_gate(rng.random(n) < chance, chance).passes
                             for _ in range(args.sims)])
        old = old_gate_false_pass(n, args.sims, args.draws, rng)
        print(f"{n:>8}  {exact_false_pass(n, chance):>10.4f}  {simulated:>14.4f}  {old:>14.4f}")
    print(f"\n({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
