"""Dose-response: one test of a sweep's trend in m instead of one test per m."""

from __future__ import annotations

import numpy as np

from tomsparse.stats.intervals import Interval, interval_over_units


def cluster_slopes(changes, clusters, m_values) -> tuple[np.ndarray, np.ndarray]:
    """(cluster ids, least-squares slope of change on log(m) within each cluster).

    Rows are long format: one per prompt x m (x seed or rep), with ``changes[i]`` the change
    from baseline, ``clusters[i]`` its cluster and ``m_values[i]`` its perturbation size. Rows
    with m <= 0 (the baseline) or a non-finite change are dropped; a cluster whose remaining
    rows span fewer than 2 distinct m has no slope and is left out."""
    y = np.asarray(changes, dtype=float).ravel()
    ids = np.asarray(clusters).ravel()
    m = np.asarray(m_values, dtype=float).ravel()
    if not y.shape == ids.shape == m.shape:
        raise ValueError(f"changes ({y.size}), clusters ({ids.size}) and m_values ({m.size}) "
                         f"must have one entry per row each")
    keep = np.isfinite(y) & np.isfinite(m) & (m > 0)
    y, ids, x = y[keep], ids[keep], np.log(m[keep])
    uniq = np.unique(ids)
    slopes = np.full(uniq.size, np.nan)
    for index, cluster in enumerate(uniq):
        rows = ids == cluster
        xc, yc = x[rows] - x[rows].mean(), y[rows] - y[rows].mean()
        spread = float(np.sum(xc * xc))
        if np.unique(x[rows]).size >= 2 and spread > 0:
            slopes[index] = float(np.sum(xc * yc) / spread)
    found = np.isfinite(slopes)
    return uniq[found], slopes[found]


def dose_response(changes, clusters, m_values, level: float = 0.95,
                  alternative: str = "two-sided") -> Interval:
    """Interval for the mean per-cluster slope of the change on log(m), over m > 0.

    Each cluster gets its own least-squares slope (``cluster_slopes``); the interval is the
    t-interval with (clusters - 1) df over those slopes and ``p_value`` tests a zero mean
    slope. Decision rule: a dose-response is shown in a direction when the interval lies on
    that side of 0; for independent clusters with normal slopes its error rate is exactly
    1 - level two-sided (alpha / 2 per direction). Fewer than 2 clusters with a slope: NaN
    bounds and a ``reason``.
    """
    _, slopes = cluster_slopes(changes, clusters, m_values)
    return interval_over_units(slopes, level, alternative,
                               what="clusters with a slope (2 or more m > 0)")
