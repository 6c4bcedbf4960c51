"""Dose-response: one test of a sweep's trend in m instead of one test per m."""

from __future__ import annotations

import math

import numpy as np

from tomsparse.stats.controls import welch_satterthwaite_df
from tomsparse.stats.intervals import Interval, interval_over_units, t_interval, unmeasurable


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


def slope_weights(m_values) -> np.ndarray:
    """Least-squares weights of a slope on log(m) over the given m: (x - mean x) / sum of
    (x - mean x)^2, x = log m; the slope of values y_m is sum w_m y_m."""
    x = np.log(np.asarray(m_values, dtype=float))
    xc = x - x.mean()
    spread = float(np.sum(xc * xc))
    return xc / spread if spread > 0 else np.full(x.size, np.nan)


def dose_response(changes, clusters, m_values, level: float = 0.95,
                  alternative: str = "two-sided", *, mask_spreads=None,
                  exchangeable: bool = False) -> Interval:
    """Interval for the mean per-cluster slope of the change on log(m), over m > 0.

    Each cluster gets its own least-squares slope (``cluster_slopes``); the interval is the
    t-interval with (clusters - 1) df over those slopes and ``p_value`` tests a zero mean
    slope. Decision rule: a dose-response is shown in a direction when the interval lies on
    that side of 0; for independent clusters with normal slopes its error rate is exactly
    1 - level two-sided (alpha / 2 per direction). Fewer than 2 clusters with a slope: NaN
    bounds and a ``reason``.

    ``mask_spreads`` ({m: (s^2, N, df)}, every m of the sweep): ``changes`` are a single
    target mask's change minus the mean of N_m random masks at each m, and the slope also
    carries the masks' draws, which the clusters do not see (a mask's effect is shared by
    all clusters): the variance sum_m w_m^2 s_m^2 (1 / N_m + e) is added (w the
    ``slope_weights``; 1 / N_m for the masks' mean; e = 1 when ``exchangeable``, for the
    target's own draw, the null being "the target is one more random mask", else 0; s_m^2 the variance of one mask's mean over
    the clusters, ``controls.mask_spread``), with Welch-Satterthwaite df over the cluster
    component (clusters - 1) and each m's (N_m - 1). Without it, two random masks at one m
    move the slope by their draw as if it were signal (issue 33: 71% false outcomes under
    skewed mask effects). A spread with fewer than 2 masks: NaN bounds and the reason.
    """
    _, slopes = cluster_slopes(changes, clusters, m_values)
    iv = interval_over_units(slopes, level, alternative,
                             what="clusters with a slope (2 or more m > 0)")
    if mask_spreads is None or not iv.measurable:
        return iv
    ms = sorted(mask_spreads)
    weights = slope_weights(ms)
    variances, dfs = [iv.se ** 2], [iv.df]
    for w, m in zip(weights, ms):
        var, n, df = mask_spreads[m]
        if not (math.isfinite(var) and df >= 1):
            return unmeasurable(iv.estimate, iv.n_clusters, level,
                                f"fewer than 2 random masks with a value at m = {m:.3g}",
                                alternative)
        variances.append(w * w * var * (1.0 / n + (1.0 if exchangeable else 0.0)))
        dfs.append(df)
    total = float(np.sum(variances))
    df = welch_satterthwaite_df(variances, dfs)
    return t_interval(iv.estimate, math.sqrt(total), df if math.isfinite(df) else iv.df,
                      iv.n_clusters, level, alternative)
