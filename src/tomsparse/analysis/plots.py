"""PNG plots of the five analyses (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tomsparse.report.style import GUIDE_COLOR, MODE_COLORS, pyplot, save_figure
from tomsparse.report.sweep_report import bars_per_layer_and_role


def _label(mode: str, seeds) -> str:
    if mode == "random" and len(seeds) > 1:
        return f"random (mean of {len(seeds)} seeds)"
    return mode


def plot_anatomy(mats: pd.DataFrame, qk: pd.DataFrame, rope, path: Path) -> Path:
    plt = pyplot()
    ncols = 2 if rope is not None and not qk.empty else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.2 * ncols, 4.0), dpi=110, squeeze=False)
    ax = axes[0][0]
    bars_per_layer_and_role(ax, mats[mats["mode"] == "difference"],
                            "Difference mask: masked weights per layer and role")
    if ncols == 2:
        ax = axes[0][1]
        width = 0.4
        for i, mode in enumerate(["difference", "random"]):
            sub = qk[(qk["mode"] == mode) & (qk["pair"] >= 0)]
            if sub.empty:
                continue
            n_seeds = max(1, sub["seed"].nunique())
            per = sub.groupby("pair")["masked"].sum() / n_seeds
            ax.bar(per.index + (i - 0.5) * width, per.values, width=width,
                   color=MODE_COLORS[mode], label=f"{mode} (q and k)")
        ax.set_xlabel("rotary pair j (low j = high frequency)")
        ax.set_ylabel("masked weights in W_Q and W_K (count)")
        ax.set_title("Masked q/k entries per rotary pair")
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_frequencies(freq: pd.DataFrame, path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12.4, 4.0), dpi=110)
    base = freq[freq["mode"] == "baseline"]
    ax = axes[0]
    for proj, style in (("q", "-o"), ("k", "-s")):
        g = base[base["proj"] == proj].groupby("pair")["mean_pair_norm"].mean()
        ax.plot(g.index, g.values, style, ms=3, label=f"{proj.upper()} (baseline)")
    ax.set_xlabel("rotary pair j (low j = high frequency)")
    ax.set_ylabel("mean pair norm (activation units)")
    ax.set_title("Q/K norm per rotary pair, mean over layers and heads")
    ax.legend(fontsize=8)
    ax = axes[1]
    for mode in [m for m in ("difference", "random", "tom-only", "generic-only") if m in set(freq["mode"])]:
        sub = freq[freq["mode"] == mode]
        n_seeds = sub["seed"].nunique()
        g = sub.assign(abs_change=sub["change"].abs()).groupby("pair")["abs_change"].sum() / n_seeds
        ax.plot(g.index, g.values, "-o", ms=3, color=MODE_COLORS.get(mode), label=_label(mode, range(n_seeds)))
    ax.set_xlabel("rotary pair j (low j = high frequency)")
    ax.set_ylabel("sum over layers/heads/Q,K of |norm change|")
    ax.set_title("Where the perturbation changes Q/K norms")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_sinks(by_layer: pd.DataFrame, threshold: float, path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12.4, 4.0), dpi=110)
    modes = [m for m in ("difference", "random", "tom-only", "generic-only") if m in set(by_layer["mode"])]
    ax = axes[0]
    width = 0.8 / max(1, len(modes))
    for i, mode in enumerate(modes):
        sub = by_layer[by_layer["mode"] == mode]
        g = sub.groupby("layer")["displaced_share"].mean()
        ax.bar(g.index + (i - (len(modes) - 1) / 2) * width, 100 * g.values, width=width,
               color=MODE_COLORS.get(mode), label=_label(mode, sub["seed"].unique()))
    ax.set_xlabel("decoder layer")
    ax.set_ylabel(f"heads whose sink moved by > {threshold:g} (%)")
    ax.set_title("Displaced attention sinks per layer")
    ax.legend(fontsize=8)
    ax = axes[1]
    base = by_layer[by_layer["mode"] == "baseline"].groupby("layer")["mean_sink_weight"].mean()
    ax.plot(base.index, base.values, "-o", ms=3, color=MODE_COLORS["baseline"], label="baseline")
    for mode in modes:
        g = by_layer[by_layer["mode"] == mode].groupby("layer")["mean_sink_weight"].mean()
        ax.plot(g.index, g.values, "-o", ms=3, color=MODE_COLORS.get(mode), label=mode)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("attention weight on the first token (0-1)")
    ax.set_title("Mean attention on the first token, over heads")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_geometry(geo: pd.DataFrame, path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12.4, 4.0), dpi=110)
    sub = geo[geo["rope"] == "with RoPE"]
    for ax, metric, title in ((axes[0], "angle_bos", "angle(q, k of first token)"),
                              (axes[1], "angle_others", "mean angle(q, other keys)")):
        for mode in [m for m in ("baseline", "difference", "random", "tom-only", "generic-only")
                     if m in set(sub["mode"])]:
            g = sub[sub["mode"] == mode].groupby("layer")[metric].mean()
            ax.plot(g.index, g.values, "-o", ms=3, color=MODE_COLORS.get(mode), label=mode)
        ax.axhline(90, color=GUIDE_COLOR, lw=0.8, ls=":")
        ax.set_xlabel("decoder layer")
        ax.set_ylabel("angle (degrees), mean over heads and queries")
        ax.set_title(f"Post-RoPE {title}")
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_massive(mass: pd.DataFrame, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    top = mass[mass["rank"] == 1]
    for mode in [m for m in ("baseline", "difference", "random", "tom-only", "generic-only")
                 if m in set(top["mode"])]:
        g = top[top["mode"] == mode].groupby("layer")["magnitude"].mean()
        ax.plot(g.index, g.values, "-o", ms=3, color=MODE_COLORS.get(mode), label=mode)
    med = mass[mass["mode"] == "baseline"].groupby("layer")["median_abs"].first()
    ax.plot(med.index, med.values, ":", color=GUIDE_COLOR, label="baseline median |h|")
    ax.set_yscale("log")
    ax.set_xlabel("decoder layer (output hidden state)")
    ax.set_ylabel("largest |hidden state| (activation units, log)")
    ax.set_title("Massive activations per layer")
    ax.legend(fontsize=8)
    return save_figure(fig, path)
