"""PNG plots of the five analyses (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tomsparse.analysis.tables import is_matched
from tomsparse.report.style import GUIDE_COLOR, MODE_COLORS, pyplot, save_figure
from tomsparse.report.sweep_report import bars_per_layer_and_role

# Conditions drawn in this order; the others (mask variants, damage-matched controls) follow
# in the order they were measured.
ORDER = ("baseline", "difference", "random", "tom-only", "generic-only", "random-fraction")
# Colours of the conditions without one in MODE_COLORS (variants, matched controls).
EXTRA_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
                "#393b79", "#ad494a", "#637939", "#7b4173")


def legend_below(ax) -> None:
    """The legend under the axes, outside the data (bars and lines stay readable)."""
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2,
              frameon=False)


def condition_order(labels, baseline: bool = False) -> list[str]:
    present = list(dict.fromkeys(str(x) for x in labels))
    out = [m for m in ORDER if m in present] + [m for m in present if m not in ORDER]
    return out if baseline else [m for m in out if m != "baseline"]


def condition_colors(labels) -> dict[str, str]:
    """One colour per condition: the mode's own colour, else the next of EXTRA_COLORS."""
    out, extra = {}, 0
    for label in condition_order(labels, baseline=True):
        if label in MODE_COLORS and not is_matched(label):
            out[label] = MODE_COLORS[label]
        else:
            out[label] = EXTRA_COLORS[extra % len(EXTRA_COLORS)]
            extra += 1
    return out


def _colors(frame: pd.DataFrame, colors: dict | None) -> dict:
    colors = dict(colors or {})
    missing = [m for m in condition_order(frame["mode"], baseline=True) if m not in colors]
    if missing:
        fill = condition_colors(missing)
        colors.update({m: fill[m] for m in missing})
    return colors


def _style(mode: str) -> str:
    return "--o" if is_matched(mode) else "-o"


def _label(mode: str, seeds) -> str:
    if len(seeds) > 1:
        return f"{mode} (mean of {len(seeds)} seeds)"
    return mode


def plot_anatomy(mats: pd.DataFrame, qk: pd.DataFrame, rope, path: Path,
                 colors: dict | None = None) -> Path:
    plt = pyplot()
    colors = _colors(mats, colors)
    ncols = 2 if rope is not None and not qk.empty else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.2 * ncols, 4.0), dpi=110, squeeze=False)
    ax = axes[0][0]
    bars_per_layer_and_role(ax, mats[mats["mode"] == "difference"],
                            "Difference mask: masked weights per layer and role")
    if ncols == 2:
        ax = axes[0][1]
        modes = condition_order(mats["mode"])
        width = 0.8 / max(1, len(modes))
        for i, mode in enumerate(modes):
            sub = qk[(qk["mode"] == mode) & (qk["pair"] >= 0)]
            if sub.empty:
                continue
            n_seeds = max(1, mats[mats["mode"] == mode]["seed"].nunique())
            per = sub.groupby("pair")["masked"].sum() / n_seeds
            ax.bar(per.index + (i - (len(modes) - 1) / 2) * width, per.values, width=width,
                   color=colors[mode], hatch="//" if is_matched(mode) else None,
                   label=f"{_label(mode, range(n_seeds))} (q and k)")
        ax.set_xlabel("rotary pair j (low j = high frequency)")
        ax.set_ylabel("masked weights in W_Q and W_K (count)")
        ax.set_title("Masked q/k entries per rotary pair")
        legend_below(ax)
    return save_figure(fig, path)


def plot_frequencies(freq: pd.DataFrame, path: Path, colors: dict | None = None) -> Path:
    plt = pyplot()
    colors = _colors(freq, colors)
    fig, axes = plt.subplots(1, 2, figsize=(12.4, 4.0), dpi=110)
    base = freq[freq["mode"] == "baseline"]
    ax = axes[0]
    for proj, style in (("q", "-o"), ("k", "-s")):
        g = base[base["proj"] == proj].groupby("pair")["mean_pair_norm"].mean()
        ax.plot(g.index, g.values, style, ms=3, label=f"{proj.upper()} (baseline)")
    ax.set_xlabel("rotary pair j (low j = high frequency)")
    ax.set_ylabel("mean pair norm (activation units)")
    ax.set_title("Q/K norm per rotary pair, mean over layers and heads")
    legend_below(ax)
    ax = axes[1]
    for mode in condition_order(freq["mode"]):
        sub = freq[freq["mode"] == mode]
        n_seeds = sub["seed"].nunique()
        g = sub.assign(abs_change=sub["change"].abs()).groupby("pair")["abs_change"].sum() / n_seeds
        ax.plot(g.index, g.values, _style(mode), ms=3, color=colors[mode],
                label=_label(mode, range(n_seeds)))
    ax.set_xlabel("rotary pair j (low j = high frequency)")
    ax.set_ylabel("sum over layers/heads/Q,K of |norm change|")
    ax.set_title("Where the perturbation changes Q/K norms")
    legend_below(ax)
    return save_figure(fig, path)


def plot_sinks(by_layer: pd.DataFrame, threshold: float, path: Path,
               colors: dict | None = None) -> Path:
    plt = pyplot()
    colors = _colors(by_layer, colors)
    fig, axes = plt.subplots(1, 2, figsize=(12.4, 4.0), dpi=110)
    modes = condition_order(by_layer["mode"])
    ax = axes[0]
    width = 0.8 / max(1, len(modes))
    for i, mode in enumerate(modes):
        sub = by_layer[by_layer["mode"] == mode]
        g = sub.groupby("layer")["displaced_share"].mean()
        ax.bar(g.index + (i - (len(modes) - 1) / 2) * width, 100 * g.values, width=width,
               color=colors[mode], hatch="//" if is_matched(mode) else None,
               label=_label(mode, sub["seed"].unique()))
    ax.set_xlabel("decoder layer")
    ax.set_ylabel(f"heads whose sink moved by > {threshold:g} (%)")
    ax.set_title("Displaced attention sinks per layer")
    legend_below(ax)
    ax = axes[1]
    base = by_layer[by_layer["mode"] == "baseline"].groupby("layer")["mean_sink_weight"].mean()
    ax.plot(base.index, base.values, "-o", ms=3, color=colors["baseline"], label="baseline")
    for mode in modes:
        g = by_layer[by_layer["mode"] == mode].groupby("layer")["mean_sink_weight"].mean()
        ax.plot(g.index, g.values, _style(mode), ms=3, color=colors[mode], label=mode)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("attention weight on the first token (0-1)")
    ax.set_title("Mean attention on the first token, over heads")
    legend_below(ax)
    return save_figure(fig, path)


def plot_geometry(geo: pd.DataFrame, path: Path, colors: dict | None = None) -> Path:
    plt = pyplot()
    colors = _colors(geo, colors)
    fig, axes = plt.subplots(1, 2, figsize=(12.4, 4.0), dpi=110)
    sub = geo[geo["rope"] == "with RoPE"]
    for ax, metric, title in ((axes[0], "angle_bos", "angle(q, k of first token)"),
                              (axes[1], "angle_others", "mean angle(q, other keys)")):
        for mode in condition_order(sub["mode"], baseline=True):
            g = sub[sub["mode"] == mode].groupby("layer")[metric].mean()
            ax.plot(g.index, g.values, _style(mode), ms=3, color=colors[mode], label=mode)
        ax.axhline(90, color=GUIDE_COLOR, lw=0.8, ls=":")
        ax.set_xlabel("decoder layer")
        ax.set_ylabel("angle (degrees), mean over heads and queries")
        ax.set_title(f"Post-RoPE {title}")
        legend_below(ax)
    return save_figure(fig, path)


def plot_massive(mass: pd.DataFrame, path: Path, colors: dict | None = None) -> Path:
    plt = pyplot()
    colors = _colors(mass, colors)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    top = mass[mass["rank"] == 1]
    for mode in condition_order(top["mode"], baseline=True):
        g = top[top["mode"] == mode].groupby("layer")["magnitude"].mean()
        ax.plot(g.index, g.values, _style(mode), ms=3, color=colors[mode], label=mode)
    med = mass[mass["mode"] == "baseline"].groupby("layer")["median_abs"].first()
    ax.plot(med.index, med.values, ":", color=GUIDE_COLOR, label="baseline median |h|")
    ax.set_yscale("log")
    ax.set_xlabel("decoder layer (output hidden state)")
    ax.set_ylabel("largest |hidden state| (activation units, log)")
    ax.set_title("Massive activations per layer")
    legend_below(ax)
    return save_figure(fig, path)
