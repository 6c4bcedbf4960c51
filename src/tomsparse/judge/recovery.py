"""Recovery of a planted ground truth (issue 34): on a planted model (``plant``), how much of
each mask lies inside the planted set P, and how much of P each mask finds.

For every m > 0 of a sweep and every mask (``tom-only``: the ToM top-m; ``difference``;
``generic-only``; ``random``, one row per random seed: the sweep's own random masks), per
matrix role and over all matrices:

* ``overlap`` = |M ∩ P|, ``masked`` = |M|, ``planted`` = |P|;
* ``mask_in_planted`` = |M ∩ P| / |M| (the share of the mask inside P: precision) and
  ``planted_in_mask`` = |M ∩ P| / |P| (the share of P inside the mask: recall);
* what a uniformly random mask of the same size per matrix would give: its expected overlap
  ``expected_overlap`` = sum over matrices of |M| |P| / numel, hence
  ``random_mask_in_planted`` (about the density) and ``random_planted_in_mask`` (about the
  mask's fraction, m for the ToM top-m: together density x m of the matrix expected in both);
* ``enrichment`` = overlap / expected overlap (1: no better than chance).

The masks are those the sweep evaluates: the same rankings (``masks.build_rankings``) and
``masks.masks_for``, so the figures describe the masks behind the claims.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from tomsparse.masks import build_rankings, masks_for, mode_seeds
from tomsparse.plant.folder import PlantedModel
from tomsparse.plant.planted_set import overlap_count, role_of

RECOVERY_MODES = ("tom-only", "difference", "generic-only", "random")
ALL_ROLES = "all"
COLUMNS = ("mode", "seed", "m", "role", "matrices", "numel", "masked", "planted", "overlap",
           "mask_in_planted", "planted_in_mask", "expected_overlap", "random_mask_in_planted",
           "random_planted_in_mask", "enrichment", "density", "base_fingerprint")


def recovery_rows(masks: Mapping[str, torch.Tensor], planted: Mapping[str, torch.Tensor],
                  numels: Mapping[str, int], density: float = float("nan")) -> list[dict]:
    """One row per role and one over all matrices (``role`` "all") for one mask: counts,
    shares and what a random mask of the same size per matrix would give."""
    per_role: dict[str, dict] = {}
    for name, idx in planted.items():
        mask = masks.get(name, torch.empty(0, dtype=torch.long))
        n, k, p = int(numels[name]), int(mask.numel()), int(idx.numel())
        hit = overlap_count(mask, idx)
        for role in (role_of(name), ALL_ROLES):
            row = per_role.setdefault(role, {"matrices": 0, "numel": 0, "masked": 0,
                                             "planted": 0, "overlap": 0,
                                             "expected_overlap": 0.0})
            row["matrices"] += 1
            row["numel"] += n
            row["masked"] += k
            row["planted"] += p
            row["overlap"] += hit
            row["expected_overlap"] += k * p / n
    out = []
    roles = sorted(r for r in per_role if r != ALL_ROLES) + [ALL_ROLES]
    for role in roles:
        row = per_role[role]
        k, p, hit, e = row["masked"], row["planted"], row["overlap"], row["expected_overlap"]
        out.append({"role": role, **row,
                    "mask_in_planted": hit / k if k else np.nan,
                    "planted_in_mask": hit / p if p else np.nan,
                    "random_mask_in_planted": e / k if k else np.nan,
                    "random_planted_in_mask": e / p if p else np.nan,
                    "enrichment": hit / e if e > 0 else np.nan,
                    "density": density})
    return out


def planted_recovery(planted: PlantedModel, tom_scores, gen_scores, matrices,
                     m_values: Sequence[float], random_seeds: Sequence[int] = (0,),
                     reference_ties: bool = False) -> pd.DataFrame:
    """The recovery table (``COLUMNS``) of a sweep on a planted model: the masks of every
    m > 0 in ``m_values`` and every mode of ``RECOVERY_MODES`` (random: each seed), from the
    sweep's ToM and generic scores."""
    ms = sorted({float(m) for m in m_values if float(m) > 0})
    numels = {m.name: m.numel for m in matrices}
    if not ms:
        return pd.DataFrame(columns=list(COLUMNS))
    rankings = build_rankings(tom_scores, gen_scores, list(numels), max(ms),
                              reference_ties=reference_ties)
    rows = []
    for m in ms:
        for mode in RECOVERY_MODES:
            for seed in mode_seeds(mode, random_seeds):
                masks = masks_for(rankings, m, mode, seed=seed, reference_ties=reference_ties)
                for row in recovery_rows(masks, planted.indices, numels, planted.density):
                    rows.append({"mode": mode, "seed": seed, "m": m, **row,
                                 "base_fingerprint": planted.base_fingerprint})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def recovery_lines(table: pd.DataFrame) -> list[str]:
    """Plain-text lines of the overall rows (random masks: mean over seeds)."""
    lines = []
    overall = table[table["role"] == ALL_ROLES]
    for (m, mode), rows in overall.groupby(["m", "mode"], sort=False):
        lines.append(f"m = {m:g}, {mode}: {rows['mask_in_planted'].mean():.4f} of the mask in P "
                     f"(random {rows['random_mask_in_planted'].mean():.2g}), "
                     f"{rows['planted_in_mask'].mean():.4f} of P in the mask "
                     f"(random {rows['random_planted_in_mask'].mean():.2g}), enrichment "
                     f"x{rows['enrichment'].mean():.3g}"
                     + (f" (mean of {len(rows)} seeds)" if len(rows) > 1 else ""))
    return lines
