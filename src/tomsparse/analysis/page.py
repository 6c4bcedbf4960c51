"""The analyses' outputs: CSVs, ``headline.json``, plots, ``analysis.html`` and the sections
the run's sweep report embeds (``RunFolder.REPORT_SECTIONS``)."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from tomsparse.analysis import plots as P
from tomsparse.files import write_csv, write_json
from tomsparse.report.html import embed_png, write_page
from tomsparse.analysis.folder import AnalysisFolder


NOT_APPLICABLE = ("does not apply: the model has no rotary position embedding (absolute or "
                  "learned positions), so there are no rotary pairs and no with/without-RoPE "
                  "comparison")


def seeds_note(h: dict, label: str) -> str:
    """`` (5 seeds)`` after a condition measured with several seeds (means over them)."""
    n = len(h.get("conditions", {}).get(label, {}).get("seeds", []))
    return f" ({n} seeds)" if n > 1 else ""


def matched_line(h: dict) -> str | None:
    """The damage-matched controls, each at its own m; None when there are none."""
    matched = {k: v for k, v in h.get("conditions", {}).items() if v.get("matched")}
    if not matched:
        return None
    return ("damage-matched controls (perplexity change matched to the difference mask's at "
            f"m = {h['m']:g}; each at its own m): " + ", ".join(
                f"{v['mask']} m={v['m']:.3g}" + (f" seeds {', '.join(str(s) for s in v['seeds'])}"
                                                 if len(v["seeds"]) > 1 else f" seed {v['seeds'][0]}")
                for v in matched.values()))


# The headline effects a damage-matched control can reproduce, and what they measure.
MATCHED_EFFECTS = (("displaced_sink_share", "the displaced-sink share"),
                   ("abs_angle_q_kbos_change_deg", "the mean |q-k_first angle change|"),
                   ("total_abs_norm_change", "the total Q/K pair-norm change"))
# A matched control at or above this share of the difference mask's effect reproduces it.
REPRODUCES = 0.8


def matched_readings(h: dict) -> list[str]:
    """One sentence per headline effect: whether a damage-matched control (a mask that hurts
    perplexity as much) reproduces the difference mask's effect (at least ``REPRODUCES`` of
    it), so that the effect cannot be read as ToM-specific. One mask each, no interval."""
    matched = [k for k, v in h.get("conditions", {}).items() if v.get("matched")]
    out = []
    for key, what in MATCHED_EFFECTS:
        values = h.get(key) or {}
        diff = values.get("difference")
        if diff is None or not matched or not diff:
            continue
        found = {k: values[k] for k in matched if k in values}
        if not found:
            continue
        best = max(found, key=lambda k: found[k])
        ratio = found[best] / diff
        if ratio >= REPRODUCES:
            out.append(f"{what}: the damage-matched control {best} reaches {ratio:.0%} of the "
                       f"difference mask's ({found[best]:.3g} vs {diff:.3g}), so damage of that "
                       f"size does as much: not evidence of a ToM-specific mechanism")
        else:
            out.append(f"{what}: no damage-matched control reaches {REPRODUCES:.0%} of the "
                       f"difference mask's (best {best}: {ratio:.0%}; one mask each, no "
                       f"interval)")
    return out


def headline_lines(h: dict) -> list[str]:
    def fmt(d, f="{:.3f}"):
        return ", ".join(f"{k} {f.format(v)}" for k, v in d.items())

    lines = [f"m = {h['m']:g}; masked weights: {fmt(h['masked_total'], '{:,.0f}')}"]
    if matched_line(h):
        lines.append(matched_line(h))
    lines += [f"displaced-sink share (|change| > {h['sink_threshold']:g}, all layers x heads): "
             + ", ".join(f"{k} {100 * v:.1f}%{seeds_note(h, k)}"
                         for k, v in h["displaced_sink_share"].items()),
             "layers with >= 50% of heads displaced: " + ", ".join(
                 f"{k} {v}/{h['num_layers']}" for k, v in h["layers_half_displaced"].items())
             + "; first layer with the most: " + ", ".join(
                 f"{k} L{v['layer']} {100 * v['share']:.0f}%"
                 for k, v in h["max_layer_displaced_share"].items())]
    if h.get("rope"):
        lines += [f"q-k_first angle change (post-RoPE, mean over layers/heads; baseline "
                  f"{h['baseline_angle_q_kbos_deg']:.1f} deg): "
                  + fmt(h["angle_q_kbos_change_deg"], "{:+.2f} deg")
                  + "; mean |change|: " + fmt(h["abs_angle_q_kbos_change_deg"], "{:.2f} deg"),
                  "q-k_others angle change: " + fmt(h["angle_q_kothers_change_deg"], "{:+.2f} deg"),
                  f"share of the Q/K pair-norm change on the top pairs (null "
                  f"{100 * h['top_pair_null_share']:.1f}%): "
                  + fmt({k: 100 * v for k, v in h["top_pair_share_of_norm_change"].items()}, "{:.1f}%")
                  + "; total |change| (sum over layers, heads, pairs of Q and K): "
                  + fmt(h["total_abs_norm_change"], "{:.1f}")]
    else:
        lines.append("dominant frequencies and q-k geometry: " + NOT_APPLICABLE)
    lines.append("largest hidden-state magnitude: " + ", ".join(
        f"{k} {v['magnitude']:.1f} (L{v['layer']} pos {v['position']} dim {v['dim']})"
        for k, v in h["massive_top"].items()))
    lines.append("residual channels most hit by the mask (share of masked weights reading or "
                 "writing them): " + "; ".join(
                     f"{m}: " + " ".join(f"{c['channel']} ({100 * c['share']:.1f}%)" for c in v)
                     for m, v in h["top_channels"].items()))
    lines.append("mean mask rank per role: " + "; ".join(
        f"{m}: " + " ".join(f"{r} {v:g}" for r, v in d.items())
        for m, d in h["mask_rank_by_role"].items()))
    return lines + matched_readings(h)


def _table_html(frame: pd.DataFrame, max_rows: int = 40) -> str:
    return frame.head(max_rows).to_html(index=False, float_format=lambda x: f"{x:.4g}")


def write_outputs(out: Path, tables: dict, headline: dict, desc, cfg) -> tuple[list, list]:

    out.mkdir(parents=True, exist_ok=True)
    folder = AnalysisFolder(out)
    files = []
    for name, frame in tables.items():
        files.append(write_csv(folder.table(name), frame))
    files.append(write_json(folder.headline, headline))
    # one colour per condition, the same in every plot
    colors = P.condition_colors(tables["attention_sinks_by_layer"]["mode"])
    sections = (_structure_sections(out, tables, headline, desc, cfg, colors, files)
                + _activation_sections(out, tables, headline, desc, cfg, colors, files))
    esc = html.escape
    body = "\n".join(f"<h2>{esc(t)}</h2>\n{x}" for t, x in sections)
    lines = "".join(f"<li>{esc(x)}</li>" for x in headline_lines(headline))
    files.append(write_page(folder.page, "tomsparse analysis",
                            f"<h1>tomsparse mechanistic analyses</h1><h2>Headline</h2>"
                            f"<ul>{lines}</ul>\n{body}"))
    sections = [("Mechanistic analyses: headline", f"<ul>{lines}</ul>")] + sections
    # The run's report shows these whenever it is re-rendered (RunFolder.read_report_sections
    # hands them to report.write_report).
    files.append(write_json(folder.report_sections, [list(x) for x in sections]))
    return files, sections


def _structure_sections(out: Path, tables: dict, h: dict, desc, cfg, colors, files: list
                        ) -> list[tuple[str, str]]:
    """Analyses 1 and 2 (where the mask lands, the dominant rotary frequencies); their plots
    are appended to ``files``."""
    esc = html.escape
    sections = []
    img = P.plot_anatomy(tables["mask_anatomy_matrices"], tables["mask_anatomy_qk_pairs"],
                         desc.rope, AnalysisFolder(out).plot("mask_anatomy"), colors)
    files.append(img)
    matched = matched_line(h)
    matched_html = ("" if matched is None else
                    f"<p>{esc(matched[0].upper() + matched[1:])}. A control that damages "
                    "language modelling as much as the difference mask tells a ToM-specific "
                    "effect from a generally damaging one; its rows carry its own m.</p>")
    sections.append(("Analysis 1: mask anatomy", matched_html + (
        f"<p>m = {cfg.m:g}. Masked weights: "
        + esc(", ".join(f"{k} {v:,.0f}" for k, v in h["masked_total"].items()))
        + ". Residual-stream channels most hit (columns of q k v gate up, rows of o down; "
        "share of the masked weights): "
        + esc("; ".join(f"{m}: " + ", ".join(f"{c['channel']} ({100 * c['share']:.1f}%)" for c in v)
                        for m, v in h["top_channels"].items()))
        + ". Mean numerical rank of "
        "each matrix's 0/1 mask, per role, and the magnitude of the masked weights (mean |w| and "
        "their mean percentile within the matrix):</p>"
        + _table_html(tables["mask_rank_by_role"]) + embed_png(img))))

    if desc.rope is not None:
        img = P.plot_frequencies(tables["dominant_frequencies"], AnalysisFolder(out).plot("dominant_frequencies"),
                                 colors)
        files.append(img)
        sh = tables["dominant_frequencies_share"]
        sections.append(("Analysis 2: dominant rotary frequencies", (
            f"<p>Mean norm of Q and K per rotary pair (layer, head), before and after. The top "
            f"{cfg.top_pairs} pairs by baseline norm in each (layer, head) are the dominant ones; "
            f"pairs with the highest norm, averaged over layers and heads: "
            + esc("; ".join(f"{p.upper()} pairs {', '.join(str(j) for j in v)}"
                            for p, v in h["dominant_pairs"].items()))
            + f". Share of the total |norm change| on them (a "
            f"perturbation blind to frequency would put about {100 * h['top_pair_null_share']:.1f}% "
            "there):</p>" + _table_html(sh) + embed_png(img)
            + "<p>Dominant pairs (baseline norm averaged over layers and heads; times_top = "
            "number of (layer, head) in which the pair is among the top):</p>"
            + _table_html(tables["dominant_pairs"]))))
    else:
        sections.append(("Analysis 2: dominant rotary frequencies", f"<p>{esc(NOT_APPLICABLE)}.</p>"))
    return sections


def _activation_sections(out: Path, tables: dict, h: dict, desc, cfg, colors, files: list
                         ) -> list[tuple[str, str]]:
    """Analyses 3 to 5 (attention sinks, query-key geometry, massive activations); their
    plots are appended to ``files``."""
    esc = html.escape
    sections = []
    img = P.plot_sinks(tables["attention_sinks_by_layer"], cfg.sink_threshold,
                       AnalysisFolder(out).plot("attention_sinks"), colors)
    files.append(img)
    disp = tables["attention_sinks_by_layer"]
    disp = disp[disp["mode"] != "baseline"].groupby(["mode", "layer"])["displaced_share"].mean().unstack(0)
    sections.append(("Analysis 3: attention sinks", (
        f"<p>Attention weight on the first token (position 0), mean over queries at positions "
        f"&ge; 1, per (layer, head); a sink is displaced when it moves by more than "
        f"{cfg.sink_threshold:g}. Displaced share over all layers and heads: "
        + esc(", ".join(f"{k} {100 * v:.1f}%{seeds_note(h, k)}"
                        for k, v in h["displaced_sink_share"].items()))
        + ".</p>" + embed_png(img) + "<p>Displaced share per layer:</p>"
        + disp.reset_index().to_html(index=False, float_format=lambda x: f"{x:.3f}"))))

    if desc.rope is not None:
        img = P.plot_geometry(tables["qk_geometry"], AnalysisFolder(out).plot("qk_geometry"), colors)
        files.append(img)
        sections.append(("Analysis 4: query-key geometry", (
            "<p>Angles (degrees) between each query and the key of the first token, and the mean "
            "angle to the other keys it can see (positions 1..t), with the norms; means over "
            "layers, heads and queries at positions &ge; 1 (the paper's Table 2 layout). "
            "&quot;without RoPE&quot; rotates the captured q and k back with the model's own "
            "cos/sin.</p>" + _table_html(tables["qk_geometry_table"]) + embed_png(img))))
    else:
        sections.append(("Analysis 4: query-key geometry", f"<p>{esc(NOT_APPLICABLE)}.</p>"))

    img = P.plot_massive(tables["massive_activations"], AnalysisFolder(out).plot("massive_activations"), colors)
    files.append(img)
    mass = tables["massive_activations"]
    top = mass[mass["rank"] == 1].sort_values("magnitude", ascending=False).groupby(["mode", "seed"]).head(3)
    sections.append(("Analysis 5: massive activations", (
        "<p>Largest |hidden state| after each decoder layer and where it sits (prompt, token "
        "position, residual dimension), before and after; the three largest per condition:</p>"
        + _table_html(top[[c for c in ("mode", "seed", "m", "layer", "magnitude", "position",
                                       "dim", "token", "median_abs", "ratio_to_median")
                           if c in top.columns]]) + embed_png(img))))
    return sections
