"""Perplexity ratio of a perturbed model to its baseline, with an interval."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tomsparse.errors import UserError
from tomsparse.stats.intervals import Interval, interval_over_units
from tomsparse.stats.outcomes import classify

# Claim (d): perplexity rises by less than 10%.
PERPLEXITY_THRESHOLD = 1.10


@dataclass(frozen=True)
class PerplexityRatio:
    """``ratio`` = exp(mean per-window NLL difference) with bounds ``lo``/``hi`` (the
    exponentiated bounds of ``log_interval``), and ``outcome`` of the claim
    "ratio < ``threshold``"."""

    ratio: float
    lo: float
    hi: float
    log_interval: Interval
    threshold: float
    outcome: str


def perplexity_ratio_interval(nll_target, nll_baseline, level: float = 0.95,
                              threshold: float = PERPLEXITY_THRESHOLD) -> PerplexityRatio:
    """Interval of the perplexity ratio target / baseline, and the outcome of "ratio < threshold".

    ``nll_target``, ``nll_baseline``: paired per-window (or per-document) mean token NLLs, in
    nats, of the same windows. Each window is treated as an independent unit (windows of one
    corpus are close to independent; adjacent windows of one document are not exactly so,
    pass per-document means where that matters). The log ratio is the mean over windows of
    the NLL differences, with the t-interval over windows (windows - 1 df); the ratio and its
    bounds are their exponentials (for windows of equal token count this is the ratio of the
    perplexities). Outcome: "shown" when the upper bound is below ``threshold``, "opposite
    direction" when the lower bound is above it, else "not shown"; "cannot be measured" below
    2 finite windows. Error rate: "shown" when the true ratio is >= threshold happens with
    probability at most (1 - level) / 2.
    """
    target = np.asarray(nll_target, dtype=float).ravel()
    baseline = np.asarray(nll_baseline, dtype=float).ravel()
    if target.shape != baseline.shape:
        raise ValueError(f"nll_target ({target.size}) and nll_baseline ({baseline.size}) "
                         f"must be paired per window")
    if not float(threshold) > 0:
        raise UserError(f"the perplexity-ratio threshold must be positive (got {threshold!r}); "
                        f"e.g. {PERPLEXITY_THRESHOLD}")
    log_threshold = math.log(float(threshold))
    log_interval = interval_over_units(target - baseline, level,
                                       what="windows with a finite NLL difference")
    outcome = classify(log_interval, -1, null=log_threshold)
    return PerplexityRatio(math.exp(log_interval.estimate), math.exp(log_interval.lo),
                           math.exp(log_interval.hi), log_interval, float(threshold), outcome)
