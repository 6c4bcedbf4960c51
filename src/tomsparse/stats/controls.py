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
from tomsparse.stats.intervals import (Interval, one_per_cluster, check_level, check_sign,
                                       cluster_means, interval_over_units, t_interval,
                                       unmeasurable)
from tomsparse.stats.outcomes import (CANNOT_BE_MEASURED, NOT_SHOWN, OPPOSITE, RULED_OUT,
                                      SHOWN)


# how a single target mask is compared with masks of a kind: as a fixed mask (its effect
# against their mean) or as one more draw of that kind (``exchangeable`` below)
TARGET_NULLS = ("fixed", "exchangeable")


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


def _row_cluster_means(rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """For each row (a mask's per-prompt values): the mean over clusters of its cluster means,
    finite values only (as ``cluster_means`` row by row); NaN for a row with none."""
    n_rows = rows.shape[0]
    if not rows.size:
        return np.full(n_rows, math.nan)
    if one_per_cluster(ids):
        inverse = np.arange(ids.size)
    else:
        _, inverse = np.unique(ids, return_inverse=True)
    n_ids = int(inverse.max()) + 1
    cells = (np.arange(n_rows)[:, None] * n_ids + inverse[None, :]).ravel()
    finite = np.isfinite(rows).ravel()
    sums = np.bincount(cells[finite], weights=rows.ravel()[finite], minlength=n_rows * n_ids)
    counts = np.bincount(cells[finite], minlength=n_rows * n_ids)
    sums, counts = sums.reshape(n_rows, n_ids), counts.reshape(n_rows, n_ids)
    present = counts > 0
    means = np.where(present, sums / np.maximum(counts, 1), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(present.any(axis=1), means.sum(axis=1) / present.sum(axis=1), math.nan)


def mask_spread(controls, clusters) -> tuple[float, float]:
    """(s^2, df): the variance (ddof 1) of N masks' cluster-weighted means over the clusters
    and its N - 1 df; ``controls`` (N masks x prompts), ``clusters`` (prompts,). (NaN, 0)
    with fewer than 2 masks with a finite mean. The per-mask variance that
    ``contrast_with_controls`` takes as ``borrowed`` and ``dose_response`` as a mask spread."""
    rows = np.asarray(controls, dtype=float)
    rows = rows.reshape(1, -1) if rows.ndim == 1 else rows
    ids = np.asarray(clusters).ravel()
    means = _row_cluster_means(rows, ids)
    means = means[np.isfinite(means)]
    if means.size < 2:
        return math.nan, 0.0
    return float(np.var(means, ddof=1)), float(means.size - 1)


def _moment(values: np.ndarray, power: int) -> float:
    """The central moment of order ``power`` with divisor n (0 for no values)."""
    if not values.size:
        return 0.0
    return float(np.mean((values - values.mean()) ** power))


def contrast_with_controls(target, controls, clusters, level: float = 0.95,
                           alternative: str = "two-sided", *, method: str = "t",
                           min_masks: int = 1, exchangeable: bool = False,
                           borrowed: tuple[float, float] | None = None) -> ControlContrast:
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

    ``exchangeable`` False treats the target as fixed: the interval answers "does this target
    differ from the random masks' mean effect". ``exchangeable`` True answers "is the target
    unlike one more mask of the reference's kind": the target is one draw of a mask too, so
    its own mask effect is a second variance component, estimated (under that null) by the
    reference masks' spread: v_m = s^2 x (1 + 1 / N), the prediction interval for one more
    mask (N - 1 df). Under the null "the target is one more random mask" with normal mask
    effects its error rate is 1 - level up to the Welch-Satterthwaite approximation; the fixed
    interval's is not (a target whose own draw lies far from the masks' mean is "shown").
    ``borrowed`` (s^2, df): the per-mask variance to use when the reference has fewer than 2
    masks (one deterministic control): v_m = s^2 x (1 / N + [exchangeable]) with ``df`` df,
    for instance the random masks' spread at the target's count (the only estimate of
    mask-to-mask spread a sweep has). Skewed mask effects: see ``compare_with_masks``. ``method="skew"``: the bounds widened to
    Hall's skewness-corrected ones as in ``paired_interval``, the estimate's skewness being
    (m3(d) / G^2 - m3(mask means) / N^2) / (m2(d) / G + m2(mask means) / N)^1.5 (central
    moments with divisor n; the masks' mean enters the estimate with a minus sign); with
    equal mask means it is ``paired_interval(d, clusters, method="skew")``. ``min_masks``:
    with fewer random masks with a finite value than this, the interval is NaN with the
    reason (1, the default, keeps the N = 1 interval above; ``compare_with_masks`` asks for 2).
    """
    tgt, ctl, ids = _aligned(target, controls, clusters)
    with np.errstate(invalid="ignore"):
        mean_control = np.nanmean(ctl, axis=0) if tgt.size else np.zeros(0)
    _, d_means = cluster_means(tgt - mean_control, ids)
    _, target_means = cluster_means(tgt, ids)
    mask_means = _row_cluster_means(ctl, ids)
    n_masks = ctl.shape[0]
    base = interval_over_units(d_means, level, alternative, method=method)
    target_mean = float(np.mean(target_means)) if target_means.size else math.nan
    finite_masks = mask_means[np.isfinite(mask_means)]
    common = dict(n_masks=n_masks, cluster_se=base.se, target_mean=target_mean,
                  mask_means=tuple(float(m) for m in mask_means))
    if finite_masks.size < int(min_masks):
        reason = (f"{finite_masks.size} random mask(s) with a finite value; a comparison with "
                  f"random masks needs at least {int(min_masks)} (one mask cannot tell the "
                  f"mask-to-mask spread)")
        empty = unmeasurable(base.estimate, base.n_clusters, level, reason, alternative,
                             method=method)
        return ControlContrast(empty, mask_se=math.nan, mask_variance_estimable=False,
                               note=reason, **common)
    n_clusters = base.n_clusters
    own = 1.0 if exchangeable else 0.0
    if finite_masks.size >= 2:
        per_mask, mask_df = float(np.var(finite_masks, ddof=1)), float(finite_masks.size - 1)
    elif borrowed is not None and math.isfinite(borrowed[0]) and borrowed[1] >= 1:
        per_mask, mask_df = float(borrowed[0]), float(borrowed[1])
    else:
        per_mask, mask_df = math.nan, math.nan
    if not math.isfinite(per_mask) or not base.measurable:
        note = (f"{finite_masks.size} random mask(s) with a finite value: mask-to-mask variance "
                f"is not estimable; the interval covers cluster-to-cluster variation only"
                if finite_masks.size < 2 and base.measurable else base.reason)
        return ControlContrast(base, mask_se=math.nan, mask_variance_estimable=False,
                               note=note, **common)
    n_finite = finite_masks.size
    mask_var = per_mask * (1.0 / n_finite + own)
    cluster_var = base.se ** 2
    df = welch_satterthwaite_df([cluster_var, mask_var], [n_clusters - 1, mask_df])
    if not math.isfinite(df):      # both components zero: a point interval
        df = float(n_clusters - 1)
    skewness = 0.0
    if method == "skew" and n_finite >= 2:
        # the masks' mean enters with a minus sign, the target's own draw with a plus sign
        m2, m3 = _moment(finite_masks, 2), _moment(finite_masks, 3)
        spread = _moment(d_means, 2) / n_clusters + m2 * (1.0 / n_finite + own)
        third = _moment(d_means, 3) / n_clusters ** 2 + m3 * (own - 1.0 / n_finite ** 2)
        skewness = third / spread ** 1.5 if spread > 0 else 0.0
    combined = t_interval(base.estimate, math.sqrt(cluster_var + mask_var), df,
                          n_clusters, level, alternative, method=method, skewness=skewness)
    return ControlContrast(combined, mask_se=math.sqrt(mask_var), mask_variance_estimable=True,
                           **common)


@dataclass(frozen=True)
class MaskComparison:
    """The rule "the target's effect lies beyond that of random masks", on the claimed side.

    ``contrast`` the target-minus-masks interval (``contrast_with_controls``, two-sided at
    ``level``); ``t_p`` its one-sided p-value on the claimed side; ``rank_p`` the target's
    rank p-value among the N masks on that side (1 / (N + 1) when it lies beyond all of
    them); ``p_one_sided`` = max(t_p, rank_p), the rule's p-value; ``p_value`` the two-sided
    one, min(1, 2 x the smaller of the two sides' rule p-values), for Holm; ``shown`` the
    decision at ``level``; ``min_masks_to_show`` the fewest masks with which the rank can
    reach the tail level (1 - level) / 2; ``reason`` why it cannot be measured or why an
    interval beyond 0 is still not "shown" ("" otherwise).
    """

    contrast: ControlContrast
    claimed_sign: int
    level: float
    t_p: float
    rank_p: float
    p_one_sided: float
    p_value: float
    shown: bool
    min_masks_to_show: int
    reason: str = ""

    @property
    def measurable(self) -> bool:
        """False when there were too few masks or clusters for the contrast."""
        return self.contrast.interval.measurable

    @property
    def n_masks(self) -> int:
        """The number of random masks with a finite value."""
        return int(np.isfinite(np.asarray(self.contrast.mask_means, dtype=float)).sum())

    def side_p(self, sign: int) -> float:
        """max(t-contrast p, rank p) on the ``sign`` side: the rule's one-sided p-value."""
        sign = check_sign(sign)
        return max(self.contrast.interval.one_sided_p(sign), self.contrast.rank_p_value(sign))

    def _rank_reason(self, side: int, rank_p: float, tail: float) -> str:
        """Why an interval beyond 0 on ``side`` is not enough."""
        where = "on the claimed side" if side == self.claimed_sign else "on the other side"
        beyond = ("beyond all of them" if rank_p * (self.n_masks + 1) <= 1.0 + 1e-9
                  else "not beyond all of them")
        need = masks_needed(tail)
        more = (f"; at least {need} masks are needed for the rank to reach {tail:.3g}"
                if self.n_masks < need else "")
        return (f"the interval lies {where} of 0, but the target, compared with "
                f"{self.n_masks} random masks, is {beyond}: rank p {rank_p:.3g} > "
                f"{tail:.3g}{more}")

    def verdict(self, level: float | None = None, equivalence_p: float = math.nan,
                alpha: float = 0.05) -> tuple[str, str]:
        """(outcome, reason) at ``level`` (default the comparison's own; pass a Holm level):
        "cannot be measured" (too few masks or clusters); "shown" when the one-sided t-contrast
        p is below the tail a = (1 - level) / 2 and the rank p is at most a; "opposite
        direction" by the same rule on the other side; "ruled out" when ``equivalence_p`` (a
        TOST p of the contrast, e.g. ``equivalence_from_interval``) is below ``alpha``; else
        "not shown", with the reason when the interval alone would have said more."""
        if not self.measurable:
            return CANNOT_BE_MEASURED, self.contrast.interval.reason or self.contrast.note
        tail = (1.0 - check_level(self.level if level is None else level)) / 2.0
        sign = self.claimed_sign
        for side, outcome in ((sign, SHOWN), (-sign, OPPOSITE)):
            t_p = self.contrast.interval.one_sided_p(side)
            rank_p = self.contrast.rank_p_value(side)
            if t_p < tail and rank_p <= tail:
                return outcome, ""
            if t_p < tail:
                if math.isfinite(equivalence_p) and equivalence_p < alpha:
                    return RULED_OUT, ""
                return NOT_SHOWN, self._rank_reason(side, rank_p, tail)
        if math.isfinite(equivalence_p) and equivalence_p < alpha:
            return RULED_OUT, ""
        return NOT_SHOWN, ""


def masks_needed(tail: float) -> int:
    """The fewest random masks N with which the target's rank p-value 1 / (N + 1) can reach
    ``tail``: ceil(1 / tail) - 1 (39 at 0.025, 19 at 0.05)."""
    return max(1, math.ceil(1.0 / float(tail) - 1e-9) - 1)


def compare_with_masks(target, controls, clusters, claimed_sign: int, level: float = 0.95, *,
                       method: str = "t", min_masks: int = 2) -> MaskComparison:
    """Does the target mask's effect lie beyond that of N random masks on the claimed side?

    ``target`` (prompts,), ``controls`` (N masks x prompts), ``clusters`` (prompts,) as in
    ``contrast_with_controls``; ``claimed_sign`` -1 when the claim is "the target lowers the
    value more" (ToM hurt more), +1 for "raises it more".

    Null hypothesis: the target is one more random mask (exchangeable with the N masks). The
    Welch t-contrast alone does not hold its level under it: it treats the target's effect as
    fixed, so a target that is a random mask far from the rest (skewed mask effects, but
    also normal ones) is "shown" far more often than 2.5% (measured 5.7-20% at N = 5-39
    masks, 6-20 clusters; ``benchmarks/bench_stats.py``), and adding "the target beyond all
    N masks" still leaves 3.0-4.9% at N = 20, 5.0-9.1% at N = 10 and 5.5-14% at N = 5 (its
    bound is 1 / (N + 1)). Decision rule: "shown" at ``level`` when both
    (i) the t-contrast's one-sided p-value on the claimed side is below a = (1 - level) / 2
    (its interval lies strictly on that side of 0) and (ii) the target's rank p-value
    (1 + #masks at least as extreme) / (N + 1) is at most a. Under the null the target's rank
    among the N + 1 masks is uniform whatever the masks' distribution, so (ii) alone has
    error rate at most a, and requiring (i) as well can only lower it: false "shown" <= a for
    any mask distribution, skewed or catastrophic, at every cluster count (measured 1.7-2.7%
    at N = 39, 10000 data sets a cell, binomial se 0.16 points). Power: 80% at the effect
    ``detectable_effect_contrast`` gives (measured 79-82% for normal mask effects). The
    price: "shown" needs N >= ``masks_needed(a)`` masks (39 at a = 0.025, the
    default level; more at a Holm-adjusted level); with fewer it is never "shown" and the
    reason says how many are needed. With fewer than ``min_masks`` (at least 2) masks with a
    finite value: "cannot be measured", with the reason. ``method`` is the t-contrast's
    (``contrast_with_controls``).
    """
    sign = check_sign(claimed_sign)
    level = check_level(level)
    if int(min_masks) < 2:
        raise UserError(f"min_masks must be at least 2 (got {min_masks!r}): one random mask "
                        f"cannot tell the mask-to-mask spread")
    contrast = contrast_with_controls(target, controls, clusters, level, method=method,
                                      min_masks=int(min_masks))
    tail = (1.0 - level) / 2.0
    need = masks_needed(tail)
    interval = contrast.interval
    if not interval.measurable:
        return MaskComparison(contrast, sign, level, math.nan, math.nan, math.nan, math.nan,
                              False, need, interval.reason or contrast.note)
    sides = {s: (interval.one_sided_p(s), contrast.rank_p_value(s)) for s in (1, -1)}
    t_p, rank_p = sides[sign]
    p_one = max(t_p, rank_p)
    p_two = min(1.0, 2.0 * min(max(sides[1]), max(sides[-1])))
    shown = t_p < tail and rank_p <= tail
    partial = MaskComparison(contrast, sign, level, t_p, rank_p, p_one, p_two, shown, need)
    _, reason = partial.verdict()
    return MaskComparison(contrast, sign, level, t_p, rank_p, p_one, p_two, shown, need, reason)


def mean_of_masks(values, clusters, level: float = 0.95, *, method: str = "t") -> Interval:
    """Interval for the mean effect of N seeded masks (e.g. N random masks of one count), over
    clusters and masks: the same two variance components as ``contrast_with_controls`` (the
    spread of the clusters' means over masks, and the spread of the N masks' means), with
    Welch-Satterthwaite df. ``values``: (N masks x prompts); ``clusters``: (prompts,). With
    N = 1 it is ``paired_interval`` of that one mask. Decision rule as there: the mean differs
    from 0 when the interval excludes 0; ``method`` "t" or "skew" as there."""
    rows = np.asarray(values, dtype=float)
    rows = rows.reshape(1, -1) if rows.ndim == 1 else rows
    flipped = contrast_with_controls(np.zeros(rows.shape[1]), rows, clusters, level,
                                     method=method).interval
    # 0 - mean of the masks, flipped back: the same se, df and p, the bounds and skew negated
    return Interval(-flipped.estimate, -flipped.hi, -flipped.lo, flipped.se, flipped.df,
                    flipped.p_value, flipped.level, flipped.n_clusters, flipped.alternative,
                    flipped.null, flipped.reason, flipped.method, -flipped.skewness)
