"""Analysis 1, mask anatomy: where the masked entries sit, how structured and how large.

* per matrix (layer, role): masked count, the numerical rank of the 0/1 mask pattern, and
  the magnitude of the masked weights against the matrix's others;
* for q and k: per head and per rotary pair. Row r of W_Q belongs to query head
  r // head_dim and head dimension r % head_dim; of W_K to KV head r // head_dim (shared by
  query heads kv*group .. kv*group + group - 1). The dimension maps to its rotary pair by the
  model's layout (``Rope.pair_dims``: j and j + d/2 for Hugging Face's rotate_half, 2j and
  2j + 1 for interleaved); dimensions beyond the rotary size get pair -1.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from tomsparse.masks import READS_RESIDUAL, WRITES_RESIDUAL


def mask_rank(idx: torch.Tensor, shape: tuple[int, int]) -> int:
    """Numerical rank of the 0/1 matrix with ones at the flat indices ``idx``.

    Only rows and columns holding a one can contribute, so the rank is taken of that
    (at most k x k) sub-matrix: exact, and cheap even for 4096 x 14336 matrices.
    """
    if idx.numel() == 0:
        return 0
    rows, cols = idx // shape[1], idx % shape[1]
    ur, ri = torch.unique(rows, return_inverse=True)
    uc, ci = torch.unique(cols, return_inverse=True)
    sub = torch.zeros(ur.numel(), uc.numel(), dtype=torch.float64)
    sub[ri, ci] = 1.0
    return int(torch.linalg.matrix_rank(sub))


def _pair_of_dim(rope) -> dict[int, int]:
    out = {}
    if rope is not None:
        for j in range(rope.num_pairs):
            a, b = rope.pair_dims(j)
            out[a] = j
            out[b] = j
    return out


def abs_percentiles(a: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """For each value v: 100 * share of the entries of ``a`` that are <= v.

    Counts by bucketing ``a`` between the (few) sorted values instead of sorting ``a``:
    O(numel log k) rather than a full sort of a 58M-entry matrix.
    """
    sv, order = torch.sort(values)
    bucket = torch.bucketize(a, sv, right=False)      # s[i-1] < a <= s[i] -> bucket i
    counts = torch.bincount(bucket, minlength=sv.numel() + 1)
    le = torch.cumsum(counts, 0)[: sv.numel()].double()
    out = torch.empty_like(le)
    out[order] = 100.0 * le / a.numel()
    return out


@torch.no_grad()
def matrix_rows(desc, masks: dict[str, torch.Tensor], mode: str, seed: int,
                cache: dict | None = None) -> list[dict]:
    """One row per matrix: counts, rank and magnitudes. ``cache`` keeps each matrix's
    sum of |w| between conditions (the weights are the same: every perturbation is undone)."""
    cache = {} if cache is None else cache
    rows = []
    for mat in desc.matrices:
        idx = masks.get(mat.name, torch.empty(0, dtype=torch.long)).cpu()
        a = mat.weight().detach().reshape(-1).abs().float().cpu()
        if mat.name not in cache:
            cache[mat.name] = float(a.double().sum())
        total = cache[mat.name]
        row = {"mode": mode, "seed": seed, "matrix": mat.name, "layer": mat.layer,
               "role": mat.role, "numel": mat.numel, "masked": int(idx.numel()),
               "mask_rank": mask_rank(idx, mat.shape),
               "masked_rows": int(torch.unique(idx // mat.shape[1]).numel()),
               "masked_cols": int(torch.unique(idx % mat.shape[1]).numel()),
               "mean_abs_all": total / mat.numel,
               "mean_abs_masked": float("nan"), "mean_abs_unmasked": float("nan"),
               "abs_percentile_masked": float("nan")}
        if idx.numel():
            vals = a[idx]
            row["mean_abs_masked"] = float(vals.double().mean())
            if idx.numel() < mat.numel:
                row["mean_abs_unmasked"] = (total - float(vals.double().sum())) / (mat.numel - idx.numel())
            # Mean percentile of the masked |w| within the whole matrix (50 = typical).
            row["abs_percentile_masked"] = float(abs_percentiles(a, vals).mean())
        rows.append(row)
    return rows


def qk_rows(desc, masks: dict[str, torch.Tensor], mode: str, seed: int) -> list[dict]:
    """Masked counts per (layer, q/k, head, rotary pair); only non-empty cells."""
    g, rope = desc.geometry, desc.rope
    pair_of = _pair_of_dim(rope)
    out = []
    for mat in desc.matrices:
        if mat.role not in ("q", "k"):
            continue
        idx = masks.get(mat.name, torch.empty(0, dtype=torch.long)).cpu()
        if idx.numel() == 0:
            continue
        r = idx // mat.shape[1]
        head, dim = (r // g.head_dim).tolist(), (r % g.head_dim).tolist()
        counts: dict[tuple, int] = {}
        for h, d in zip(head, dim):
            key = (h, pair_of.get(d, -1))
            counts[key] = counts.get(key, 0) + 1
        for (h, j), n in sorted(counts.items()):
            freq = rope.layer_inv_freq(mat.layer)[j] if rope is not None and j >= 0 else float("nan")
            dims = rope.pair_dims(j) if rope is not None and j >= 0 else (-1, -1)
            row = {"mode": mode, "seed": seed, "layer": mat.layer, "role": mat.role,
                   "head": h,
                   "kv_head": h // g.group_size if mat.role == "q" else h,
                   "query_heads": (str(h) if mat.role == "q" else
                                   " ".join(str(x) for x in range(h * g.group_size,
                                                                  (h + 1) * g.group_size))),
                   "pair": j, "dim_a": dims[0], "dim_b": dims[1],
                   "frequency_rad_per_token": freq,
                   "period_tokens": 2 * math.pi / freq if freq == freq and freq > 0 else float("nan"),
                   "masked": n}
            out.append(row)
    return out




def channel_rows(desc, masks: dict[str, torch.Tensor], mode: str, seed: int) -> list[dict]:
    """Masked entries per residual-stream channel: the column of a matrix that reads the
    residual stream (q k v gate up), the row of one that writes it (o down)."""
    hidden = desc.geometry.hidden_size
    reads = torch.zeros(hidden, dtype=torch.long)
    writes = torch.zeros(hidden, dtype=torch.long)
    for mat in desc.matrices:
        idx = masks.get(mat.name, torch.empty(0, dtype=torch.long)).cpu()
        if idx.numel() == 0:
            continue
        if mat.role in READS_RESIDUAL and mat.shape[1] == hidden:
            reads += torch.bincount(idx % mat.shape[1], minlength=hidden)
        elif mat.role in WRITES_RESIDUAL and mat.shape[0] == hidden:
            writes += torch.bincount(idx // mat.shape[1], minlength=hidden)
    total = reads + writes
    return [{"mode": mode, "seed": seed, "channel": c, "masked_reading": int(reads[c]),
             "masked_writing": int(writes[c]), "masked": int(total[c])}
            for c in torch.nonzero(total).reshape(-1).tolist()]


def mask_anatomy(desc, masks_by_condition: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``masks_by_condition``: (mode, seed) -> masks. Returns (per-matrix, per-head/pair);
    per-channel counts come from ``channel_table``."""
    mats, qk, cache = [], [], {}
    for (mode, seed), masks in masks_by_condition.items():
        mats += matrix_rows(desc, masks, mode, seed, cache)
        qk += qk_rows(desc, masks, mode, seed)
    cols = ["mode", "seed", "layer", "role", "head", "kv_head", "query_heads", "pair", "dim_a",
            "dim_b", "frequency_rad_per_token", "period_tokens", "masked"]
    return pd.DataFrame(mats), pd.DataFrame(qk, columns=cols)


def rank_by_role(mats: pd.DataFrame) -> pd.DataFrame:
    """Per (mode, role): mean mask rank and masked count per matrix, masked weights per model
    (averaged over seeds) and the magnitudes of the masked weights."""
    per_seed = (mats.groupby(["mode", "seed", "role"], sort=False)
                .agg(mean_mask_rank=("mask_rank", "mean"), mean_masked=("masked", "mean"),
                     total_masked=("masked", "sum"),
                     mean_abs_masked=("mean_abs_masked", "mean"),
                     mean_abs_all=("mean_abs_all", "mean"),
                     abs_percentile_masked=("abs_percentile_masked", "mean"))
                .reset_index())
    return per_seed.drop(columns="seed").groupby(["mode", "role"], sort=False).mean().reset_index()


def channel_table(desc, masks_by_condition: dict) -> pd.DataFrame:
    rows = []
    for (mode, seed), masks in masks_by_condition.items():
        rows += channel_rows(desc, masks, mode, seed)
    return pd.DataFrame(rows, columns=["mode", "seed", "channel", "masked_reading",
                                       "masked_writing", "masked"])
