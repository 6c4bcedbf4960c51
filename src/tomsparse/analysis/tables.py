"""Analyses 2-5 as tables, from the probes of each condition.

A condition is ``(mode, seed)``, where ``mode`` is the condition's label (the mask mode, or
``"generic-only (matched, m=2.31e-04)"`` for a damage-matched control at its own m); the
unperturbed model is ``BASELINE`` = ("baseline", -1).
Every "change" is (perturbed - baseline) on the same prompts.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

BASELINE = ("baseline", -1)
MATCHED_TAG = "(matched, m="


def matched_label(mode: str, m: float, digits: int = 2) -> str:
    """``generic-only (matched, m=2.31e-04)``: a damage-matched control's label."""
    return f"{mode} {MATCHED_TAG}{m:.{digits}e})"


def is_matched(label: str) -> bool:
    return MATCHED_TAG in str(label)
GEOMETRY_METRICS = ("angle_bos", "angle_others", "norm_q", "norm_kbos", "norm_kothers")


# ------------------------------------------------------------------ 2. dominant frequencies
def top_pairs(base_norms: torch.Tensor, top_n: int) -> torch.Tensor:
    """Boolean (L, heads, P): the top_n pairs by baseline norm within each (layer, head)."""
    P = base_norms.shape[-1]
    top_n = max(0, min(top_n, P))
    flag = torch.zeros_like(base_norms, dtype=torch.bool)
    if top_n:
        flag.scatter_(-1, base_norms.topk(top_n, dim=-1).indices, True)
    return flag


def change_share(base: torch.Tensor, after: torch.Tensor, top: torch.Tensor) -> float:
    """Share of the total |norm change| that falls on the flagged pairs."""
    d = (after - base).abs()
    total = float(d.sum())
    return float(d[top].sum()) / total if total > 0 else float("nan")


def dominant_frequencies(desc, probes: dict, top_n: int):
    rope = desc.rope
    base_q, base_k = probes[BASELINE].pair_means()
    tops = {"q": top_pairs(base_q, top_n), "k": top_pairs(base_k, top_n)}
    bases = {"q": base_q, "k": base_k}
    rows, shares = [], []
    # (layer, pair): local and global layers of Gemma 3 rotate at different frequencies.
    inv_freq = np.asarray([rope.layer_inv_freq(i) for i in range(len(desc.blocks))],
                          dtype=np.float64)
    for cond, probe in probes.items():
        aq, ak = probe.pair_means()
        after = {"q": aq, "k": ak}
        for proj in ("q", "k"):
            a, b, t = after[proj].numpy(), bases[proj].numpy(), tops[proj].numpy()
            L, Hh, P = a.shape
            layer, head, pair = np.meshgrid(np.arange(L), np.arange(Hh), np.arange(P), indexing="ij")
            rows.append(pd.DataFrame({
                "mode": cond[0], "seed": cond[1], "layer": layer.ravel(), "proj": proj,
                "head": head.ravel(), "pair": pair.ravel(),
                "frequency_rad_per_token": inv_freq[layer.ravel(), pair.ravel()],
                "mean_pair_norm": a.ravel(), "baseline_norm": b.ravel(),
                "change": (a - b).ravel(), "top_pair": t.ravel()}))
        if cond == BASELINE:
            continue
        for proj in ("q", "k"):
            shares.append({"mode": cond[0], "seed": cond[1], "proj": proj,
                           "top_share": change_share(bases[proj], after[proj], tops[proj]),
                           "null_share": top_n / base_q.shape[-1],
                           "total_abs_change": float((after[proj] - bases[proj]).abs().sum())})
        both_b = torch.cat([base_q.flatten(), base_k.flatten()])
        both_a = torch.cat([aq.flatten(), ak.flatten()])
        both_t = torch.cat([tops["q"].flatten(), tops["k"].flatten()])
        shares.append({"mode": cond[0], "seed": cond[1], "proj": "q+k",
                       "top_share": change_share(both_b, both_a, both_t),
                       "null_share": top_n / base_q.shape[-1],
                       "total_abs_change": float((both_a - both_b).abs().sum())})
    return pd.concat(rows, ignore_index=True), pd.DataFrame(shares)


def dominant_pairs(freq_rows: pd.DataFrame, top_n: int) -> pd.DataFrame:
    """Pair indices ranked by baseline norm averaged over layers and heads, per q/k."""
    base = freq_rows[freq_rows["mode"] == BASELINE[0]]
    g = (base.groupby(["proj", "pair"]).agg(mean_norm=("mean_pair_norm", "mean"),
                                            frequency_rad_per_token=("frequency_rad_per_token", "first"),
                                            times_top=("top_pair", "sum"))
         .reset_index().sort_values(["proj", "mean_norm"], ascending=[True, False]))
    return g.groupby("proj").head(top_n).reset_index(drop=True)


# ------------------------------------------------------------------ 3. attention sinks
def sinks(probes: dict, threshold: float):
    base = probes[BASELINE].sink_means()
    rows, by_layer = [], []
    for cond, probe in probes.items():
        s = probe.sink_means()
        change = s - base
        moved = change.abs() > threshold
        L, H = s.shape
        for layer in range(L):
            for h in range(H):
                rows.append({"mode": cond[0], "seed": cond[1], "layer": layer, "head": h,
                             "sink_weight": float(s[layer, h]),
                             "baseline_sink_weight": float(base[layer, h]),
                             "change": float(change[layer, h]),
                             "displaced": bool(moved[layer, h])})
            by_layer.append({"mode": cond[0], "seed": cond[1], "layer": layer,
                             "displaced_share": float(moved[layer].double().mean()),
                             "mean_sink_weight": float(s[layer].mean()),
                             "baseline_mean_sink_weight": float(base[layer].mean()),
                             "mean_abs_change": float(change[layer].abs().mean())})
    return pd.DataFrame(rows), pd.DataFrame(by_layer)


# ------------------------------------------------------------------ 4. query-key geometry
def geometry(probes: dict):
    rows = []
    base = probes[BASELINE].geometry_means()
    for cond, probe in probes.items():
        g = probe.geometry_means()
        for v, rope_state in enumerate(("with RoPE", "without RoPE")):
            L, H = g["angle_bos"].shape[1:]
            for layer in range(L):
                for h in range(H):
                    row = {"mode": cond[0], "seed": cond[1], "rope": rope_state,
                           "layer": layer, "head": h}
                    for k in GEOMETRY_METRICS:
                        row[k] = float(g[k][v, layer, h])
                        row[f"{k}_change"] = float(g[k][v, layer, h] - base[k][v, layer, h])
                    rows.append(row)
    return pd.DataFrame(rows)


def geometry_table(geo: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 2 layout: one row per (RoPE state, condition), means over layers,
    heads and seeds; angles in degrees."""
    cols = list(GEOMETRY_METRICS) + [f"{k}_change" for k in GEOMETRY_METRICS]
    order = {"baseline": 0, "difference": 1}
    t = geo.groupby(["rope", "mode"], sort=False)[cols].mean().reset_index()
    t["_o"] = t["mode"].map(lambda m: order.get(m, 2))
    # the other conditions in their order of measurement (random, then the matched controls)
    return (t.sort_values(["rope", "_o"], kind="stable").drop(columns="_o")
            .reset_index(drop=True))


# ------------------------------------------------------------------ 5. massive activations
def massive(probes: dict, decode=None):
    rows = []
    for cond, probe in probes.items():
        for layer in range(probe.L):
            med = probe.median_abs(layer)
            for rank, (mag, prompt, pos, dim, tok) in enumerate(probe.massive[layer], start=1):
                rows.append({"mode": cond[0], "seed": cond[1], "layer": layer, "rank": rank,
                             "magnitude": mag, "prompt": prompt, "position": pos, "dim": dim,
                             "token_id": tok, "token": decode(tok) if decode else "",
                             "median_abs": med,
                             "ratio_to_median": mag / med if med > 0 else math.nan})
    return pd.DataFrame(rows)
