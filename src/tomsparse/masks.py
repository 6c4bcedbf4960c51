"""Masks: which entries of each weight matrix to perturb, for a fraction m.

Per matrix with d entries, k = int(d * m); T = the k entries with the largest ToM score,
G = the k with the largest generic score. Modes:

* ``difference``: T and not G (the paper's);
* ``tom-only``: T;
* ``generic-only``: G and not T;
* ``random``: as many entries as ``difference`` selects, uniformly at random (seeded).

Top-k sets are exact by a deterministic tie-break (higher score first, then lower flat
index), so the top-k set of a smaller m is a prefix of that of a larger one: one ranking per
matrix serves a whole sweep. ``reference_ties=True`` reproduces the reference code instead:
the k-th largest value is a threshold and only entries strictly above it are kept (ties at
the threshold dropped; an all-zero score selects nothing).

A mask is a 1-D int64 tensor of flat indices into the (out_features, in_features) matrix.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from tomsparse.errors import UserError

MODES = ("difference", "tom-only", "generic-only", "random")


def k_for(numel: int, m: float) -> int:
    return int(numel * m)


def check_m_values(ms) -> list[float]:
    ms = [float(m) for m in ms]
    if not ms:
        raise UserError("the m list is empty; give --m_list or --m_start/--m_end/--m_step")
    bad = [m for m in ms if not 0.0 <= m <= 1.0 or m != m]
    if bad:
        raise UserError(f"m must lie in [0, 1] (a fraction of each matrix); got {bad}")
    return ms


def top_order(score: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the k largest entries, ordered by (score desc, index asc)."""
    flat = score.reshape(-1)
    k = min(k, flat.numel())
    if k <= 0:
        return torch.empty(0, dtype=torch.long)
    # Candidates: everything >= the k-th largest value (ties at the boundary included), then a
    # stable descending sort keeps equal scores in index order. Sorting only the candidates
    # keeps this cheap on 58M-entry matrices.
    kth = torch.topk(flat, k, sorted=False).values.min()
    cand = torch.nonzero(flat >= kth, as_tuple=False).reshape(-1)
    order = torch.sort(flat[cand], descending=True, stable=True).indices
    return cand[order][:k]


def reference_top(score: torch.Tensor, k: int) -> torch.Tensor:
    """The reference's selection: entries strictly greater than the k-th largest value."""
    flat = score.reshape(-1)
    if k <= 0:
        return torch.empty(0, dtype=torch.long)
    kth = torch.topk(flat, min(k, flat.numel())).values[-1]
    return torch.nonzero(flat > kth, as_tuple=False).reshape(-1)


def _seed_for(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & (2**63 - 1)


@dataclass
class MatrixRanking:
    """One matrix's rankings, for every m up to ``k_max``."""

    name: str
    numel: int
    tom_order: torch.Tensor  # top k_max by ToM score, best first
    gen_order: torch.Tensor  # top k_max by generic score
    tom_score: torch.Tensor | None = None  # kept only for reference-ties mode
    gen_score: torch.Tensor | None = None

    def _rank_in(self, order: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Position of each idx in ``order`` (numel if absent)."""
        pos = torch.full((idx.numel(),), self.numel, dtype=torch.long)
        if order.numel() and idx.numel():
            sorted_order, perm = torch.sort(order)
            loc = torch.searchsorted(sorted_order, idx).clamp(max=order.numel() - 1)
            hit = sorted_order[loc] == idx
            pos[hit] = perm[loc[hit]]
        return pos

    def mask(self, m: float, mode: str, seed: int = 0, reference_ties: bool = False) -> torch.Tensor:
        k = k_for(self.numel, m)
        if mode not in MODES:
            raise UserError(f"unknown mask mode {mode!r}; choose from {', '.join(MODES)}")
        if k == 0:
            return torch.empty(0, dtype=torch.long)
        if reference_ties:
            t = reference_top(self.tom_score, k)
            g = reference_top(self.gen_score, k)
            if mode == "tom-only":
                return t
            if mode in ("difference", "random"):
                diff = t[~torch.isin(t, g)]
                return diff if mode == "difference" else self._random(diff.numel(), seed)
            return g[~torch.isin(g, t)]
        if k > self.tom_order.numel():
            raise ValueError(f"{self.name}: ranking built for fewer entries than m={m} needs")
        t, g = self.tom_order[:k], self.gen_order[:k]
        if mode == "tom-only":
            return t
        if mode == "generic-only":
            return g[self._rank_in(self.tom_order, g) >= k]
        diff = t[self._rank_in(self.gen_order, t) >= k]
        return diff if mode == "difference" else self._random(diff.numel(), seed)

    def _random(self, count: int, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(_seed_for(seed, self.name))
        # randperm's prefix: masks of a smaller count are subsets of larger ones (nested sweep).
        return torch.randperm(self.numel, generator=gen)[:count]


def build_rankings(tom_scores: dict, gen_scores: dict, names, m_max: float,
                   reference_ties: bool = False) -> dict[str, MatrixRanking]:
    out = {}
    for name in names:
        if name not in tom_scores:
            raise UserError(f"matrix {name} is missing from the ToM score file; recompute the "
                            "scores for this model and these roles")
        if name not in gen_scores:
            raise UserError(f"matrix {name} is missing from the generic score file; recompute "
                            "the scores for this model and these roles")
        ts, gs = tom_scores[name].float(), gen_scores[name].float()
        if ts.shape != gs.shape:
            raise UserError(f"matrix {name}: ToM scores have shape {tuple(ts.shape)} but generic "
                            f"scores {tuple(gs.shape)}; they were computed for different models")
        k_max = k_for(ts.numel(), m_max)
        out[name] = MatrixRanking(name=name, numel=ts.numel(), tom_order=top_order(ts, k_max),
                                  gen_order=top_order(gs, k_max),
                                  tom_score=ts if reference_ties else None,
                                  gen_score=gs if reference_ties else None)
    return out


def masks_for(rankings: dict[str, MatrixRanking], m: float, mode: str, seed: int = 0,
              reference_ties: bool = False) -> dict[str, torch.Tensor]:
    """One condition's masks: {matrix name: flat indices} for every ranked matrix, in the
    rankings' order. ``mode`` "none" (the unperturbed model) gives no masks."""
    if mode == "none":
        return {}
    return {name: r.mask(m, mode, seed=seed, reference_ties=reference_ties)
            for name, r in rankings.items()}


def mask_stats(masks: dict[str, torch.Tensor], rankings: dict[str, MatrixRanking], m: float):
    """Rows (matrix, layer, role, numel, k, masked, tom_generic_overlap) for one m."""
    rows = []
    for name, idx in masks.items():
        r = rankings[name]
        k = k_for(r.numel, m)
        overlap = int(torch.isin(r.tom_order[:k], r.gen_order[:k]).sum()) if k else 0
        _, layer, role = name.split(".")
        rows.append({"matrix": name, "layer": int(layer), "role": role, "numel": r.numel,
                     "k": k, "masked": int(idx.numel()), "tom_generic_overlap": overlap})
    return rows
