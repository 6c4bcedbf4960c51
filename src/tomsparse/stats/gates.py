"""The chance gate: does a model pass its own controls more often than chance would?

A scenario counts as passed only when its false-belief probe and every one of its
true-belief controls are right (the caller computes that under the scoring in use), so a
shortcut that answers every probe the same way (always the false-belief answer, say) fails
the controls and cannot pass the gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from tomsparse.errors import UserError
from tomsparse.stats.intervals import check_level


@dataclass(frozen=True)
class GateResult:
    """The chance gate of one family: ``passes`` when ``k`` of ``n`` passed scenarios beat
    ``chance`` by a one-sided exact binomial test (``p_value``) at ``alpha``; ``reason`` one
    line a reader sees."""

    passes: bool
    k: int
    n: int
    p_value: float
    chance: float
    alpha: float
    reason: str


def scenario_chance(n_probes: int, n_choices: int = 2) -> float:
    """Chance that a scenario is passed by guessing: all of ``n_probes`` independent probes
    right, each a uniform guess among ``n_choices`` answers: (1 / n_choices) ** n_probes.
    E.g. one false-belief probe plus one true-belief control, two candidates each:
    0.5 ** 2 = 0.25. When scenarios of a family have different probe counts, pass the largest
    chance (fewest probes): the test is then conservative for the others."""
    if int(n_probes) < 1 or int(n_choices) < 2:
        raise UserError(f"a scenario needs at least 1 probe with at least 2 choices "
                        f"(got {n_probes} probes, {n_choices} choices)")
    return (1.0 / int(n_choices)) ** int(n_probes)


def chance_gate(passed, chance: float, alpha: float = 0.05) -> GateResult:
    """One-sided exact binomial test of the scenario pass rate against ``chance``.

    ``passed``: one boolean per scenario (false-belief probe and all its true-belief controls
    right). Decision rule: the family passes when ``scipy.stats.binomtest(k, n, chance,
    alternative="greater").pvalue < alpha``; an at-chance model (each scenario passed
    independently with probability ``chance``) passes with probability at most ``alpha``
    (less, as the binomial is discrete). No scenarios: does not pass, p NaN.
    """
    alpha = check_level(alpha, "alpha")
    chance = float(chance)
    if not 0.0 < chance < 1.0:
        raise UserError(f"chance must lie strictly between 0 and 1 (got {chance!r}); "
                        f"e.g. scenario_chance(2) = 0.25")
    flags = np.asarray(passed, dtype=bool).ravel()
    n, k = int(flags.size), int(flags.sum())
    if n == 0:
        return GateResult(False, 0, 0, math.nan, chance, alpha,
                          "no scenarios scored: cannot test against chance")
    p_value = float(sps.binomtest(k, n, chance, alternative="greater").pvalue)
    passes = p_value < alpha
    verdict = "above chance" if passes else "not above chance"
    reason = (f"{k} of {n} clusters passed with all controls right (chance {chance:.3g}): "
              f"one-sided exact binomial p = {p_value:.3g} {'<' if passes else '>='} {alpha:g}, "
              f"{verdict}")
    return GateResult(passes, k, n, p_value, chance, alpha, reason)


@dataclass(frozen=True)
class PassRateGate:
    """The family gate: ``passes`` when the one-sided lower confidence bound ``lo`` of the
    cluster pass rate ``rate`` (``k`` of ``n`` clusters passed) lies above ``floor``; ``hi``
    is 1 (the bound is one-sided); ``confidence`` = 1 - alpha; ``reason`` one line a reader
    sees."""

    passes: bool
    rate: float
    lo: float
    hi: float
    k: int
    n: int
    floor: float
    confidence: float
    reason: str


def pass_rate_gate(passed, floor: float = 0.5, alpha: float = 0.05) -> PassRateGate:
    """Does the model pass the family's clusters more often than ``floor``?

    ``passed``: one boolean per cluster (its false-belief prompts and all its true-belief
    controls right). The lower bound is the one-sided Clopper-Pearson bound at confidence
    1 - ``alpha``: the p for which P(K >= k | n, p) = alpha, i.e. the alpha quantile of
    Beta(k, n - k + 1) (0 when k = 0), from ``scipy.stats.binomtest(k, n, alternative=
    "greater").proportion_ci``. Decision rule: the family passes when that bound is strictly
    above ``floor``, which is the exact one-sided binomial test of rate <= floor rejecting at
    ``alpha``; a model whose clusters pass independently with probability ``floor`` or less
    passes with probability at most ``alpha`` (less, the binomial being discrete: exactly
    1.6% / 1.1% / 2.1% at 6 / 10 / 20 clusters for floor 0.5 and alpha 0.05, where 6 of 6,
    9 of 10 and 15 of 20 passed clusters are the fewest that pass). No clusters: does not
    pass.
    """
    alpha = check_level(alpha, "alpha")
    floor = float(floor)
    if not 0.0 <= floor < 1.0:
        raise UserError(f"the pass-rate floor must lie in [0, 1) (got {floor!r}); e.g. 0.5")
    flags = np.asarray(passed, dtype=bool).ravel()
    n, k = int(flags.size), int(flags.sum())
    if n == 0:
        return PassRateGate(False, math.nan, math.nan, math.nan, 0, 0, floor, 1.0 - alpha,
                            "no clusters scored: no pass rate to bound")
    ci = sps.binomtest(k, n, alternative="greater").proportion_ci(1.0 - alpha, "exact")
    lo = float(ci.low)
    passes = lo > floor
    reason = (f"{k} of {n} clusters passed with all controls right ({k / n:.0%}); one-sided "
              f"{1.0 - alpha:.0%} Clopper-Pearson lower bound {lo:.3f} "
              f"{'>' if passes else '<='} {floor:g}: "
              f"{'passes' if passes else 'does not pass'}")
    return PassRateGate(passes, k / n, lo, 1.0, k, n, floor, 1.0 - alpha, reason)
