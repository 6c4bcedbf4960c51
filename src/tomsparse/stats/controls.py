"""A target mask against N random masks on the same prompts.

The estimate is the target's effect minus the mean effect of the N random masks. Two
sources of uncertainty are combined: which clusters (tasks/scenarios) were drawn, and which
random masks were drawn. See ``contrast_with_controls``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tomsparse.errors import UserError
from tomsparse.stats.intervals import (Interval, check_sign, cluster_means, interval_over_units,
                                       t_interval)


@dataclass(frozen=True)
class ControlContrast:
    """The target minus the mean of N random masks.

    ``interval`` the combined interval (its ``estimate`` the contrast); ``cluster_se`` the
    standard error from cluster-to-cluster variation of the paired differences; ``mask_se``
    the one from mask-to-mask variation (sd of the N mask means / sqrt(N); NaN for N = 1);
    ``target_mean`` and ``mask_means`` the cluster-weighted means of the target and of each
    mask over the same clusters (for ``rank_p_value``); ``mask_variance_estimable`` False when
    N = 1, with ``note`` saying so.
    """

    interval: Interval
    n_masks: int
    cluster_se: float
    mask_se: float
    target_mean: float
    mask_means: tuple[float, ...]
    mask_variance_estimable: bool
    note: str = ""

    def rank_p_value(self, claimed_sign: int) -> float:
        """Permutation p-value of the target among the random masks in the claimed direction:
        (1 + #{masks at least as extreme as the target}) / (N + 1), where "extreme" is
        ``claimed_sign * mean`` >= the target's. Decision rule: the target is more extreme
        than random masks when this is <= a; if the target is exchangeable with the random
        masks (it is one more random mask), that happens with probability <= a. Its smallest
        value is 1 / (N + 1), so N >= 19 masks are needed for it to reach 0.05."""
        sign = check_sign(claimed_sign)
        if not math.isfinite(self.target_mean) or not self.mask_means:
            return math.nan
        masks = np.asarray(self.mask_means, dtype=float)
        masks = masks[np.isfinite(masks)]
        as_extreme = int(np.sum(sign * masks >= sign * self.target_mean))
        return (1 + as_extreme) / (masks.size + 1)


def welch_satterthwaite_df(variances, dfs) -> float:
    """Welch-Satterthwaite df of a sum of independent variance estimates:
    (sum v_i)^2 / sum(v_i^2 / df_i). NaN when every component is zero."""
    v = np.asarray(variances, dtype=float)
    d = np.asarray(dfs, dtype=float)
    denominator = float(np.sum(v ** 2 / d))
    return float(np.sum(v)) ** 2 / denominator if denominator > 0 else math.nan


def _aligned(target, controls, clusters) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """target (P,), controls (N, P), clusters (P,) as arrays, prompts without a finite target
    or without any finite control dropped."""
    tgt = np.asarray(target, dtype=float).ravel()
    ctl = np.asarray(controls, dtype=float)
    ctl = ctl.reshape(1, -1) if ctl.ndim == 1 else ctl
    ids = np.asarray(clusters).ravel()
    if ctl.ndim != 2 or ctl.shape[1] != tgt.size or ids.size != tgt.size:
        raise ValueError(f"target ({tgt.size}), controls {ctl.shape} and clusters ({ids.size}) "
                         f"must be (prompts,), (masks, prompts) and (prompts,)")
    if ctl.shape[0] == 0:
        raise UserError("contrast_with_controls needs at least one random mask (got 0); "
                        "run the sweep with --random-masks 1 or more")
    keep = np.isfinite(tgt) & np.isfinite(ctl).any(axis=0)
    return tgt[keep], ctl[:, keep], ids[keep]


def contrast_with_controls(target, controls, clusters, level: float = 0.95,
                           alternative: str = "two-sided") -> ControlContrast:
    """Interval for (target effect) - (mean effect of N random masks), over clusters.

    ``target``: per-prompt values of the target mask (e.g. ToM change under the difference
    mask); ``controls``: (N masks x prompts) values of N random masks on the same prompts;
    ``clusters``: each prompt's cluster id. Per prompt d = target - mean of the masks; the
    estimate is the mean over clusters of the cluster means of d.

    Variance: v_c = (variance of the cluster means of d) / G with G - 1 df, plus
    v_m = (variance of the N masks' cluster-weighted means) / N with N - 1 df; the interval is
    estimate +- t quantile x sqrt(v_c + v_m) with Welch-Satterthwaite df
    (v_c + v_m)^2 / (v_c^2 / (G - 1) + v_m^2 / (N - 1)). The mask-by-cluster interaction
    enters both components, so the interval is conservative (wider than needed) rather than
    too narrow. Decision rule: the target differs from random masks when the interval excludes
    0, error rate at most 1 - level up to that approximation. N = 1: no mask variance is
    estimable; the interval uses v_c alone (G - 1 df), ``mask_variance_estimable`` is False
    and ``note`` says so: that interval ignores which mask was drawn.
    """
    tgt, ctl, ids = _aligned(target, controls, clusters)
    with np.errstate(invalid="ignore"):
        mean_control = np.nanmean(ctl, axis=0) if tgt.size else np.zeros(0)
    _, d_means = cluster_means(tgt - mean_control, ids)
    _, target_means = cluster_means(tgt, ids)
    mask_means = np.array([np.mean(cluster_means(row, ids)[1]) if np.isfinite(row).any()
                           else math.nan for row in ctl])
    n_masks = ctl.shape[0]
    base = interval_over_units(d_means, level, alternative)
    target_mean = float(np.mean(target_means)) if target_means.size else math.nan
    finite_masks = mask_means[np.isfinite(mask_means)]
    common = dict(n_masks=n_masks, cluster_se=base.se, target_mean=target_mean,
                  mask_means=tuple(float(m) for m in mask_means))
    if finite_masks.size < 2 or not base.measurable:
        note = (f"{finite_masks.size} random mask(s) with a finite value: mask-to-mask variance "
                f"is not estimable; the interval covers cluster-to-cluster variation only"
                if finite_masks.size < 2 and base.measurable else base.reason)
        return ControlContrast(base, mask_se=math.nan, mask_variance_estimable=False,
                               note=note, **common)
    mask_var = float(np.var(finite_masks, ddof=1) / finite_masks.size)
    cluster_var = base.se ** 2
    df = welch_satterthwaite_df([cluster_var, mask_var],
                                [base.n_clusters - 1, finite_masks.size - 1])
    if not math.isfinite(df):      # both components zero: a point interval
        df = float(base.n_clusters - 1)
    combined = t_interval(base.estimate, math.sqrt(cluster_var + mask_var), df,
                          base.n_clusters, level, alternative)
    return ControlContrast(combined, mask_se=math.sqrt(mask_var), mask_variance_estimable=True,
                           **common)


def mean_of_masks(values, clusters, level: float = 0.95) -> Interval:
    """Interval for the mean effect of N seeded masks (e.g. N random masks of one count), over
    clusters and masks: the same two variance components as ``contrast_with_controls`` (the
    spread of the clusters' means over masks, and the spread of the N masks' means), with
    Welch-Satterthwaite df. ``values``: (N masks x prompts); ``clusters``: (prompts,). With
    N = 1 it is ``paired_interval`` of that one mask. Decision rule as there: the mean differs
    from 0 when the interval excludes 0."""
    rows = np.asarray(values, dtype=float)
    rows = rows.reshape(1, -1) if rows.ndim == 1 else rows
    flipped = contrast_with_controls(np.zeros(rows.shape[1]), rows, clusters, level).interval
    # 0 - mean of the masks, flipped back: the same se, df and p, the bounds negated
    return Interval(-flipped.estimate, -flipped.hi, -flipped.lo, flipped.se, flipped.df,
                    flipped.p_value, flipped.level, flipped.n_clusters, flipped.alternative,
                    flipped.null, flipped.reason)
