"""Perturbation of masked weights, in memory, undone bit for bit.

Masked entries W[mask] are replaced by ``mean + s * (W[mask] - mean)`` where ``mean`` is:

* ``mean``: the mean of the matrix's unmasked entries (what the paper describes);
* ``reference-mean``: the reference code's ``(W * not mask).mean()`` over all d entries, i.e.
  the masked positions count as zeros;
* ``zero``: 0.

``apply_perturbation`` returns the original values of only the masked entries;
``restore`` writes them back, so the model is bit-identical afterwards and no model is
written to disk per sweep point.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UserError

PERTURBATIONS = ("mean", "reference-mean", "zero")


@dataclass
class Saved:
    """Original values of the masked entries, per matrix (for an exact undo)."""

    entries: list  # (Matrix, rows, cols, original values)


def _replacement_center(w: torch.Tensor, rows, cols, mode: str, total=None) -> torch.Tensor:
    d = w.numel()
    k = rows.numel()
    if mode == "zero":
        return torch.zeros((), dtype=torch.float32, device=w.device)
    if total is None:
        total = w.float().sum()
    masked_sum = w[rows, cols].float().sum()
    if mode == "mean":
        if d == k:
            raise UserError("mask covers the whole matrix: the mean of the unmasked weights is "
                            "undefined; use a smaller m or --perturbation zero")
        return (total - masked_sum) / (d - k)
    if mode == "reference-mean":
        return (total - masked_sum) / d
    raise UserError(f"unknown perturbation {mode!r}; choose from {', '.join(PERTURBATIONS)}")


@torch.no_grad()
def apply_perturbation(matrices, masks: dict, mode: str = "mean", scale: float = 0.0,
                       totals: dict | None = None) -> Saved:
    """Perturb each matrix's masked entries in place; returns what ``restore`` needs.

    ``totals`` (name -> sum of the unperturbed matrix) is filled on first use and reused:
    a sweep restores the weights after every point, so the sums never change, and summing
    100M weights per point would dominate the cost of masking.
    """
    if mode not in PERTURBATIONS:
        raise UserError(f"unknown perturbation {mode!r}; choose from {', '.join(PERTURBATIONS)}")
    saved = []
    by_name = {m.name: m for m in matrices}
    for name, idx in masks.items():
        if idx.numel() == 0:
            continue
        mat = by_name[name]
        w = mat.weight()
        idx = idx.to(w.device)
        rows, cols = idx // mat.shape[1], idx % mat.shape[1]
        original = w[rows, cols].clone()
        total = None
        if totals is not None and mode != "zero":
            if name not in totals:
                totals[name] = w.float().sum()
            total = totals[name]
        center = _replacement_center(w, rows, cols, mode, total)
        new = center + scale * (original.float() - center)
        w[rows, cols] = new.to(w.dtype)  # index_put_ on a view writes through to the parameter
        saved.append((mat, rows, cols, original))
    return Saved(entries=saved)


@torch.no_grad()
def restore(saved: Saved) -> None:
    for mat, rows, cols, original in reversed(saved.entries):
        mat.weight()[rows, cols] = original
    saved.entries = []
