"""Perturbation of masked weights, in memory, undone bit for bit.

Masked entries W[mask] are replaced by ``mean + s * (W[mask] - mean)`` where ``mean`` is:

* ``mean``: the mean of the matrix's unmasked entries (what the paper describes);
* ``reference-mean``: the reference code's ``(W * not mask).mean()`` over all d entries, i.e.
  the masked positions count as zeros;
* ``zero``: 0.

``apply_perturbation`` returns the original values of only the masked entries;
``restore`` writes them back, so the model is bit-identical afterwards and no model is
written to disk per sweep point. ``perturbed(...)`` pairs the two as a context manager
(the weights are restored on leaving the block, exception or not); the sweep, the model
export and the analyses all use it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from tomsparse.errors import UserError

PERTURBATIONS = ("mean", "reference-mean", "zero")


@dataclass
class Saved:
    """Original values of the masked entries, per matrix (for an exact undo)."""

    entries: list  # (Matrix, index, original values); index is flat, or (rows, cols)
    masked: int = 0  # weights perturbed (kept after ``restore``)


def _replacement_center(original: torch.Tensor, numel: int, mode: str, total) -> float:
    """The value masked entries move towards (a Python float, computed in double precision)
    from the matrix's sum and the masked values."""
    k = original.numel()
    if mode == "zero":
        return 0.0
    masked_sum = original.sum(dtype=torch.float64).item()
    if mode == "mean":
        if numel == k:
            raise UserError("mask covers the whole matrix: the mean of the unmasked weights is "
                            "undefined; use a smaller m or --perturbation zero")
        return (total - masked_sum) / (numel - k)
    if mode == "reference-mean":
        return (total - masked_sum) / numel
    raise UserError(f"unknown perturbation {mode!r}; choose from {', '.join(PERTURBATIONS)}")


def _locate(w: torch.Tensor, idx: torch.Tensor, ncols: int):
    """How to address flat (row-major, out x in) indices in ``w``: directly through a flat
    view when ``w`` is contiguous (one gather and one scatter per matrix: a sweep point
    touches hundreds of matrices, so per-op overhead is what masking costs), else as
    (rows, cols) for transposed or strided views (GPT-2's Conv1D, fused QKV)."""
    if w.is_contiguous():
        return idx
    return idx // ncols, idx % ncols


def _target(w: torch.Tensor, where):
    return (w.view(-1), (where,)) if isinstance(where, torch.Tensor) else (w, where)


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
    saved = Saved(entries=[])
    by_name = {m.name: m for m in matrices}
    try:
        for name, idx in masks.items():
            if idx.numel() == 0:
                continue
            mat = by_name[name]
            w = mat.weight()
            where = _locate(w, idx.to(w.device), mat.shape[1])
            target, key = _target(w, where)
            original = target[key]  # advanced indexing copies
            total = None
            if mode != "zero":
                if totals is not None and name in totals:
                    total = totals[name]
                else:
                    total = w.sum(dtype=torch.float64).item()
                    if totals is not None:
                        totals[name] = total
            center = _replacement_center(original, mat.numel, mode, total)
            if scale:
                target[key] = (center + scale * (original.double() - center)).to(w.dtype)
            elif isinstance(key[0], torch.Tensor) and len(key) == 1:
                target.index_fill_(0, key[0], center)  # writes through the view to the parameter
            else:
                target[key] = center
            saved.entries.append((mat, where, original))
            saved.masked += original.numel()
    except BaseException:
        restore(saved)  # a failure part way (e.g. a mask covering a matrix) leaves no trace
        raise
    return saved


@torch.no_grad()
def restore(saved: Saved) -> None:
    for mat, where, original in reversed(saved.entries):
        target, key = _target(mat.weight(), where)
        target[key] = original
    saved.entries = []


@contextmanager
def perturbed(matrices, masks: dict, mode: str = "mean", scale: float = 0.0,
              totals: dict | None = None):
    """``with perturbed(matrices, masks, ...) as saved:`` runs the block on the perturbed
    model (``apply_perturbation``'s arguments) and restores the weights bit for bit on leaving
    it, also when the block raises. Yields the ``Saved`` record (``saved.masked``: how many
    weights were perturbed). An empty ``masks`` leaves the model as it is."""
    saved = apply_perturbation(matrices, masks, mode=mode, scale=scale, totals=totals)
    try:
        yield saved
    finally:
        restore(saved)
