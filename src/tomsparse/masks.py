"""Masks: which entries of each weight matrix to perturb, for a fraction m.

Per matrix with d entries, k = int(d * m); T = the k entries with the largest ToM score,
G = the k with the largest generic score. Modes:

* ``difference``: T and not G (the paper's);
* ``tom-only``: T;
* ``generic-only``: G and not T;
* ``random``: as many entries as ``difference`` selects, uniformly at random (seeded);
* ``random-fraction``: k entries (as many as ``tom-only``) uniformly at random (seeded): the
  control whose count can grow until its damage matches another mask's;
* ``swapped-<name>`` (issue 37): built exactly as ``difference``, from the rankings of a
  task-swapped score store named ``<name>`` (``tomsparse sweep --scores-swapped``: top m by
  that store's score and not top m by the generic score); ``masks_for`` is handed that store's
  rankings (``swapped_mode``, ``swapped_name``).

Random masks (``random_indices``) are the first ``count`` entries of one fixed, uniformly random
ordering of the matrix per (seed, matrix name), so a smaller count's mask is a prefix of a larger
one's (nested across m), drawn on the host with numpy whatever the model's device, in O(count)
expected time for count <= numel/4 (see ``random_indices``).

Variants (issue 15, the mask family), written ``<mode>[-p<factor>][-x<n>]``:

* ``-p<factor>``: the generic set is the top ``factor * m`` (p >= q, Wei et al. 2024's set
  difference "top-q by ToM and not top-p by generic"): ``difference-p4`` excludes every entry in
  the top 4m by generic score. Only ``difference`` and ``generic-only`` read it.
* ``-x<n>``: leave out every entry that reads or writes one of the model's ``n`` massive-
  activation channels of the residual stream (``channels`` given to ``masks_for``): columns of
  the matrices that read the residual stream (q, k, v, gate, up), rows of those that write it
  (o, down). The mask shrinks by what it had there; nothing is put in its place.

Top-k sets are exact by a deterministic tie-break (higher score first, then lower flat
index), so the top-k set of a smaller m is a prefix of that of a larger one: one ranking per
matrix serves a whole sweep. ``reference_ties=True`` reproduces the reference code instead:
the k-th largest value is a threshold and only entries strictly above it are kept (ties at
the threshold dropped; an all-zero score selects nothing).

A mask is a 1-D int64 tensor of flat indices into the (out_features, in_features) matrix.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from tomsparse.errors import UserError

MODES = ("difference", "tom-only", "generic-only", "random", "random-fraction")
# The task-swapped difference masks (issue 37): ``swapped-<name>``, <name> lowercase words
# joined by hyphens (a store's dataset name such as format-control), so that point labels and
# ``parse_mode`` read them like any other mode.
SWAPPED_PREFIX = "swapped-"
_SWAPPED_NAME_RE = re.compile(r"^[a-z]+(?:-[a-z]+)*$")
# Roles whose input features are the residual stream (columns = channels), and roles whose
# output features are (rows = channels).
READS_RESIDUAL = ("q", "k", "v", "gate", "up")
WRITES_RESIDUAL = ("o", "down")


@dataclass(frozen=True)
class MaskSpec:
    """A parsed mask mode: base mode, generic factor p/q, massive channels left out."""

    base: str
    generic_factor: float = 1.0
    exclude_channels: int = 0

    @property
    def name(self) -> str:
        out = self.base
        if self.generic_factor != 1.0:
            out += f"-p{self.generic_factor:g}"
        if self.exclude_channels:
            out += f"-x{self.exclude_channels}"
        return out


# Base modes drawn at random: run once per random seed (every other mode ignores the seed and
# runs with seed 0). ``mode_seeds`` is the one place a mode is expanded into its seeds.
SEEDED_MODES = ("random", "random-fraction")
DEFAULT_RANDOM_SEEDS = (0, 1, 2, 3, 4)


def mode_seeds(mode: str, random_seeds) -> list[int]:
    """The seeds ``mode`` is run with: every one of ``random_seeds`` for a random mask, else
    [0]."""
    return [int(s) for s in random_seeds] if parse_mode(mode).base in SEEDED_MODES else [0]


_VARIANT_RE = re.compile(r"^(?P<base>[a-z]+(?:-[a-z]+)*?)(?:-p(?P<p>[0-9.]+(?:e[-+]?[0-9]+)?))?"
                         r"(?:-x(?P<x>[0-9]+))?$")


def check_swapped_name(name: str) -> str:
    """A task-swapped set's name as a mask mode can carry it: lowercase words joined by single
    hyphens (format-control, tom-nobelief); a one-line UserError otherwise."""
    if not isinstance(name, str) or not _SWAPPED_NAME_RE.match(name):
        raise UserError(f"task-swapped set name {name!r}: use lowercase letters in words "
                        "joined by single hyphens, e.g. format-control (it names the mask "
                        "mode swapped-<name> and its points)")
    return name


def swapped_mode(name: str) -> str:
    """The mask mode of the task-swapped set ``name``: ``swapped-<name>``."""
    return SWAPPED_PREFIX + check_swapped_name(name)


def swapped_name(mode: str) -> str | None:
    """The task-swapped set a mode's masks come from (``swapped-format-control`` ->
    ``format-control``), None for every other mode (and for the baseline, "none")."""
    base = str(mode).strip()
    match = _VARIANT_RE.match(base)
    if match:
        base = match["base"]
    if base.startswith(SWAPPED_PREFIX) and _SWAPPED_NAME_RE.match(base[len(SWAPPED_PREFIX):]):
        return base[len(SWAPPED_PREFIX):]
    return None


def parse_mode(text: str) -> MaskSpec:
    """``difference-p4-x3`` -> MaskSpec("difference", 4.0, 3); a clear error otherwise.
    ``swapped-<name>`` (a task-swapped difference mask) is a base mode of its own."""
    match = _VARIANT_RE.match(str(text).strip())
    base = match["base"] if match else ""
    if not match or (base not in MODES and swapped_name(base) is None):
        raise UserError(f"unknown mask mode {text!r}; choose from {', '.join(MODES)}, "
                        "optionally with -p<factor> (generic set = top factor*m, factor >= 1) "
                        "and -x<n> (leave out n massive-activation channels), e.g. "
                        "difference-p4-x3")
    factor = float(match["p"]) if match["p"] else 1.0
    if not factor >= 1.0 or factor != factor:
        raise UserError(f"mask mode {text!r}: the generic factor p/q must be >= 1")
    if match["p"] and base not in ("difference", "generic-only") and swapped_name(base) is None:
        raise UserError(f"mask mode {text!r}: -p applies to difference, swapped-<name> and "
                        "generic-only only")
    return MaskSpec(base, factor, int(match["x"] or 0))


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


def strictly_above_kth(order: torch.Tensor, values: torch.Tensor, k: int) -> torch.Tensor:
    """``reference_top`` from a ranking (``top_order`` and its scores) instead of the full
    scores: every entry above the k-th largest value is among the first k of the order, so
    these are the first k whose score exceeds the k-th's, in ascending index order as the
    reference's nonzero gives them."""
    if k <= 0:
        return torch.empty(0, dtype=torch.long)
    head = order[:k]
    return torch.sort(head[values[:k] > values[k - 1]]).values


def random_generators(seed: int, name: str) -> tuple[np.random.Generator, np.random.Generator]:
    """Two independent numpy generators (PCG64) for matrix ``name`` under ``seed``: the draw
    stream and the permutation of the rest. They depend on (seed, name) only: not on the order
    matrices are visited in, nor on any device."""
    entropy = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest(), "little")
    return tuple(np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy,
                                                                           spawn_key=(i,))))
                 for i in (0, 1))


def first_distinct(gen: np.random.Generator, numel: int, count: int,
                    words_per_read: int | None = None) -> np.ndarray:
    """The first ``count`` distinct values, in order of first appearance, of an endless stream
    of independent uniform draws from [0, numel). The stream is fixed by ``gen``'s state and not
    by how it is read: each value is the top ``bits`` bits of one raw 64-bit word of the
    generator, words that give a value >= numel skipped (exact rejection sampling, acceptance
    >= 1/2), so reading it in chunks of any size (``words_per_read``; by default about as many
    as the count needs) gives the same values and a smaller count's result is a prefix of a
    larger one's."""
    bits = max(1, (numel - 1).bit_length())
    shift = np.uint64(64 - bits)
    picked = np.empty(0, dtype=np.int64)
    while picked.size < count:
        seen, need = picked.size, count - picked.size
        # Expected draws for ``need`` more distinct values (coupon collector), over the
        # acceptance rate, with a margin so that one chunk usually does.
        expect = numel * -math.log1p(-min(need / (numel - seen), 0.9)) * (2 ** bits / numel)
        words = gen.bit_generator.random_raw(words_per_read or int(expect * 1.1) + 64)
        draws = (words >> shift).astype(np.int64)
        draws = draws[draws < numel]
        new = draws[_first_occurrences(draws, numel)]
        if seen:
            new = new[~np.isin(new, picked, assume_unique=True)]
        picked = np.concatenate([picked, new])
    return picked[:count]


def _first_occurrences(values: np.ndarray, bound: int) -> np.ndarray:
    """Positions, ascending, of the first occurrence of each distinct value (all < ``bound``):
    one plain sort of value * len + position (several times faster than np.unique's stable
    argsort), or np.unique where that key could overflow int64."""
    n = values.size
    if n == 0:
        return np.empty(0, dtype=np.int64)
    if bound * n >= 2 ** 62:
        return np.sort(np.unique(values, return_index=True)[1])
    key = values * n + np.arange(n, dtype=np.int64)
    key.sort()
    head = np.ones(n, dtype=bool)
    head[1:] = key[1:] // n != key[:-1] // n
    return np.sort(key[head] % n)


def random_indices(numel: int, count: int, seed: int, name: str) -> torch.Tensor:
    """``count`` distinct flat indices of a ``numel``-entry matrix, uniformly at random without
    replacement, seeded by (``seed``, ``name``): a 1-D int64 CPU tensor.

    The result is the first ``count`` entries of one ordering of all ``numel`` indices, fixed
    per (seed, name, numel): its first J = numel // 4 entries are the first J distinct values of
    a stream of uniform draws (``first_distinct``), the rest a seeded uniform permutation of
    the indices not among them. The first-appearance order of an i.i.d. uniform stream is a
    uniformly random ordering (each new value is uniform over the ones not yet seen), and the
    rest, permuted independently, completes it to a uniform random permutation: every prefix is
    a uniform ``count``-subset, and a smaller count's indices are a prefix of a larger one's
    (nested across m, across the switch at J too). Work: O(count) expected for count <= J (at
    most numel * ln(4/3) draws), O(numel) beyond, where count is comparable to numel anyway.
    The draws are made on the host (numpy), so the mask is the same whatever the device."""
    count = min(max(int(count), 0), numel)
    if count == 0:
        return torch.empty(0, dtype=torch.long)
    stream, rest = random_generators(seed, name)
    head = numel // 4
    if count <= head:
        return torch.from_numpy(first_distinct(stream, numel, count))
    first = first_distinct(stream, numel, head)
    taken = np.zeros(numel, dtype=bool)
    taken[first] = True
    others = np.flatnonzero(~taken).astype(np.int64, copy=False)
    rest.shuffle(others)  # one full seeded permutation: its prefixes are nested
    return torch.from_numpy(np.concatenate([first, others[:count - head]]))


@dataclass
class MatrixRanking:
    """One matrix's rankings, for every m up to ``k_max``: flat indices and their scores, on
    the host (a few thousand entries per matrix; the full scores are not kept)."""

    name: str
    numel: int
    tom_order: torch.Tensor  # top k_max by ToM score, best first
    gen_order: torch.Tensor  # top k_max (times the largest generic factor) by generic score
    shape: tuple[int, int] | None = None  # (out_features, in_features)
    tom_values: torch.Tensor | None = None  # the scores of tom_order (reference-ties mode)
    gen_values: torch.Tensor | None = None

    def _rank_in(self, order: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Position of each idx in ``order`` (numel if absent)."""
        pos = torch.full((idx.numel(),), self.numel, dtype=torch.long)
        if order.numel() and idx.numel():
            sorted_order, perm = torch.sort(order)
            loc = torch.searchsorted(sorted_order, idx).clamp(max=order.numel() - 1)
            hit = sorted_order[loc] == idx
            pos[hit] = perm[loc[hit]]
        return pos

    def mask(self, m: float, mode: str, seed: int = 0, reference_ties: bool = False,
             generic_factor: float = 1.0) -> torch.Tensor:
        k = k_for(self.numel, m)
        if mode not in MODES:
            raise UserError(f"unknown mask mode {mode!r}; choose from {', '.join(MODES)}")
        if k == 0:
            return torch.empty(0, dtype=torch.long)
        if mode == "random-fraction":
            return self._random(k, seed)
        if reference_ties:
            if generic_factor != 1.0:
                raise UserError("--reference-ties reproduces the reference's masks, which have "
                                "no generic factor; drop -p from the mask mode")
            t = strictly_above_kth(self.tom_order, self.tom_values, k)
            g = strictly_above_kth(self.gen_order, self.gen_values, k)
            if mode == "tom-only":
                return t
            if mode in ("difference", "random"):
                diff = t[~torch.isin(t, g)]
                return diff if mode == "difference" else self._random(diff.numel(), seed)
            return g[~torch.isin(g, t)]
        kg = k_for(self.numel, min(1.0, m * generic_factor)) if generic_factor != 1.0 else k
        if k > self.tom_order.numel() or kg > self.gen_order.numel():
            raise ValueError(f"{self.name}: ranking built for fewer entries than m={m} needs")
        t, g = self.tom_order[:k], self.gen_order[:kg]
        if mode == "tom-only":
            return t
        if mode == "generic-only":
            return g[self._rank_in(self.tom_order, g) >= k]
        diff = t[self._rank_in(self.gen_order, t) >= kg]
        return diff if mode == "difference" else self._random(diff.numel(), seed)

    def _random(self, count: int, seed: int) -> torch.Tensor:
        # A prefix of one seeded ordering per matrix: nested across m (random_indices).
        return random_indices(self.numel, count, seed, self.name)


def build_rankings(tom_scores, gen_scores, names, m_max: float,
                   reference_ties: bool = False,
                   generic_factor: float = 1.0) -> dict[str, MatrixRanking]:
    """Rankings deep enough for every m <= ``m_max`` (and generic sets up to
    ``generic_factor * m_max``). The scores are any mapping of matrix name to tensor (a dict,
    or a store read one matrix at a time, ``scores.store.open_scores``); each matrix is ranked
    where its scores are (on the GPU for scores computed there) and only its ranking, moved to
    the host, is kept, so at most one matrix's two score tensors are held at a time."""
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
        gs = gs.to(ts.device)
        k_max = k_for(ts.numel(), m_max)
        kg_max = k_for(ts.numel(), min(1.0, m_max * max(generic_factor, 1.0)))
        tom_order, gen_order = top_order(ts, k_max), top_order(gs, kg_max)
        tom_flat, gen_flat = ts.reshape(-1), gs.reshape(-1)
        out[name] = MatrixRanking(
            name=name, numel=ts.numel(), tom_order=tom_order.cpu(), gen_order=gen_order.cpu(),
            shape=tuple(ts.shape),
            tom_values=tom_flat[tom_order].cpu() if reference_ties else None,
            gen_values=gen_flat[gen_order].cpu() if reference_ties else None)
        del ts, gs, tom_flat, gen_flat
    return out


def masks_for(rankings: dict[str, MatrixRanking], m: float, mode: str, seed: int = 0,
              reference_ties: bool = False,
              channels: list[int] | None = None) -> dict[str, torch.Tensor]:
    """One condition's masks: {matrix name: flat indices} for every ranked matrix, in the
    rankings' order. ``mode`` "none" (the unperturbed model) gives no masks; a variant
    (``difference-p4-x3``, see ``parse_mode``) needs ``channels`` (the massive-activation
    channels, most massive first) when it leaves some out. A task-swapped mode
    (``swapped-<name>``) is the difference mask of ``rankings``: hand it the rankings of that
    set's store against the generic one."""
    if mode == "none":
        return {}
    spec = parse_mode(mode)
    base = "difference" if swapped_name(spec.base) is not None else spec.base
    if spec.exclude_channels and (channels is None
                                  or len(channels) < spec.exclude_channels):
        raise UserError(f"mask mode {mode!r} leaves out {spec.exclude_channels} massive-"
                        f"activation channel(s) but {len(channels or [])} were found")
    left_out = list(channels or [])[:spec.exclude_channels]
    out = {}
    for name, r in rankings.items():
        idx = r.mask(m, base, seed=seed, reference_ties=reference_ties,
                     generic_factor=spec.generic_factor)
        if left_out:
            idx = idx[~on_channels(idx, name, r.shape, left_out)]
        out[name] = idx
    return out


def on_channels(idx: torch.Tensor, name: str, shape, channels: list[int]) -> torch.Tensor:
    """Which flat indices of matrix ``name`` read or write one of the residual ``channels``."""
    role = name.rsplit(".", 1)[-1]
    if shape is None:
        raise ValueError(f"{name}: the ranking has no shape")
    ch = torch.as_tensor(channels, dtype=torch.long)
    if role in READS_RESIDUAL:
        return torch.isin(idx % shape[1], ch)
    if role in WRITES_RESIDUAL:
        return torch.isin(idx // shape[1], ch)
    return torch.zeros(idx.numel(), dtype=torch.bool)


def mask_stats(masks: dict[str, torch.Tensor], rankings: dict[str, MatrixRanking], m: float,
               generic_factor: float = 1.0):
    """Rows (matrix, layer, role, numel, k, masked, tom_generic_overlap) for one m; the
    overlap is |top-q by ToM and top-p by generic| with p = ``generic_factor`` * q."""
    rows = []
    for name, idx in masks.items():
        r = rankings[name]
        k = k_for(r.numel, m)
        kg = k_for(r.numel, min(1.0, m * generic_factor))
        overlap = int(torch.isin(r.tom_order[:k], r.gen_order[:kg]).sum()) if k else 0
        _, layer, role = name.split(".")
        rows.append({"matrix": name, "layer": int(layer), "role": role, "numel": r.numel,
                     "k": k, "masked": int(idx.numel()), "tom_generic_overlap": overlap})
    return rows
