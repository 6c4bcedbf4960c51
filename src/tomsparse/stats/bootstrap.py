"""The cluster bootstrap the specificity tables and the report's level intervals use: the one
place tomsparse resamples tasks or seeds (``sweep.specificity`` and ``report.plots`` call
it). Draws are weights: row ``d`` of ``task_weights`` says how often each task (or seed) was
drawn in resample ``d``, so a resampled statistic that is a ratio of sums is
``(w @ numerators) / (w @ denominators)``.

Draw order, restated so a test can repeat it: the families' weights come from one
``numpy.random.default_rng(seed)``, family after family, each
``rng.integers(0, n_tasks, size=(draws, n_tasks))``; the seeds of a seed group from a fresh
``numpy.random.default_rng([seed, 1])``. Intervals are the 2.5 / 97.5 percentiles.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np


def task_weights(n_tasks: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """[draws x n_tasks] counts of each task in ``draws`` resamples with replacement."""
    idx = rng.integers(0, n_tasks, size=(draws, n_tasks))
    w = np.zeros((draws, n_tasks))
    np.add.at(w, (np.arange(draws)[:, None], idx), 1.0)
    return w


def family_weights(n_tasks: Mapping[str, int], draws: int, seed: int) -> dict[str, np.ndarray]:
    """The task weights of every family (in the mapping's order) from one generator, so that
    every point of a sweep shares the same draws and differences between points are paired."""
    rng = np.random.default_rng(seed)
    return {name: task_weights(n, draws, rng) for name, n in n_tasks.items()}


def seed_weights(n_seeds: int, draws: int, seed: int) -> np.ndarray:
    """The weights that resample the seeds of a seed group (replicates of one mode at one m);
    the same for every group of the same size."""
    return task_weights(n_seeds, draws, np.random.default_rng([seed, 1]))


def percentile_interval(values: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of resampled values (NaNs ignored); NaNs when none is
    finite."""
    values = np.asarray(values, dtype=float)
    if not np.isfinite(values).any():
        return math.nan, math.nan
    lo, hi = np.nanpercentile(values, [2.5, 97.5])
    return float(lo), float(hi)
