"""Damage-matched controls (issue 15, part 2): the size at which a control mask damages
language modelling as much as the mask under test.

Random masks of the difference mask's count leave perplexity where it was, so they cannot
tell "ToM-specific" from "damaging in general". A damage-matched control is a mask of
another kind (``generic-only``: top for generic text, not for ToM; ``random-fraction``:
uniformly random) whose size is searched until its perplexity change matches the target's:

    |change(control) - change(target)| <= tolerance * |change(target)|  (or <= FLOOR)

where change = perplexity / baseline - 1. The search works on log(size) against
log(perplexity): it widens a bracket by ``GROWTH`` until the target lies inside, then
interpolates between the bracket's ends (regula falsi with the Illinois halving, so an end
that keeps being kept does not stall it). Each step costs one perplexity evaluation, no ToM
evaluation; only the final size is evaluated in full. Sizes are rounded to three significant
digits, so a point's label (``<mode>_s0_m<m:.4e>``) names it exactly.

A sweep with task-swapped stores (issue 37) searches each swapped mask (``swapped-<name>``)
the same way, so that claim (f) can also be judged at matched damage; those are listed in
``matched.json`` beside the controls but the judge never counts them as controls of (b), (c).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tomsparse.config import MATCHABLE
from tomsparse.files import read_json_object, write_json
from tomsparse.masks import swapped_mode, swapped_name
from tomsparse.sweep.folder import BASELINE_LABEL, point_label

FLOOR = 0.005  # a perplexity change of half a percent is as close as any match needs to be
GROWTH = 4.0
SEEDED_MATCHABLE = ("random-fraction",)  # drawn at random: evaluated with several seeds
# a task-swapped mask (issue 37) is built like the difference mask, so its search starts at
# the target's m and may grow, like generic-only's, to 5% of every matrix
SWAPPED_SEARCH = (1.0, 0.05)


def search_range(mode: str) -> tuple[float, float]:
    """(start as a multiple of the target's m, the largest size) of ``mode``'s search."""
    return SWAPPED_SEARCH if swapped_name(mode) is not None else MATCHABLE[mode]


def round_size(x: float) -> float:
    return float(f"{x:.3g}")


def within(change: float, target: float, tolerance: float) -> bool:
    return abs(change - target) <= max(tolerance * abs(target), FLOOR)


@dataclass
class SearchResult:
    size: float  # the closest size found (matched or not)
    perplexity: float
    change: float  # perplexity / baseline - 1
    matched: bool
    trace: list = field(default_factory=list)  # (size, perplexity) in the order measured


def search_size(measure: Callable[[float], float], *, baseline: float, target: float,
                start: float, low: float, high: float, tolerance: float = 0.10,
                steps: int = 8) -> SearchResult:
    """The size in [low, high] whose perplexity change (``measure(size) / baseline - 1``)
    matches ``target`` (see the module's docstring), in at most ``steps`` measurements.
    A size measured twice is measured once (the results are cached here)."""
    seen: dict[float, float] = {}
    trace: list[tuple[float, float]] = []

    def at(size: float) -> float:
        size = round_size(min(max(size, low), high))
        if size not in seen:
            seen[size] = float(measure(size))
            trace.append((size, seen[size]))
        return size

    def change(size: float) -> float:
        return seen[size] / baseline - 1.0

    def goal(size: float) -> float:  # > 0 above the target, in log-perplexity
        return math.log(max(seen[size], 1e-300)) - math.log(baseline * (1.0 + target))

    def result() -> SearchResult:
        best = min(seen, key=lambda s: abs(change(s) - target))
        return SearchResult(size=best, perplexity=seen[best], change=change(best),
                            matched=within(change(best), target, tolerance), trace=trace)

    s = at(start)
    if within(change(s), target, tolerance):
        return result()
    # Widen until the target lies between two measured sizes.
    below = above = None
    if goal(s) < 0:
        below = s
    else:
        above = s
    while (below is None or above is None) and len(trace) < steps:
        if above is None:
            if below >= high:
                break  # the largest size allowed is still below the target
            nxt = at(below * GROWTH)
        else:
            if above <= low:
                break
            nxt = at(above / GROWTH)
        if nxt in (below, above):
            break
        if within(change(nxt), target, tolerance):
            return result()
        if goal(nxt) < 0:
            below = nxt
        else:
            above = nxt
    if below is None or above is None:
        return result()
    # Interpolate in (log size, log perplexity), Illinois variant of regula falsi.
    fb, fa = goal(below), goal(above)
    side = 0
    while len(trace) < steps:
        xb, xa = math.log(below), math.log(above)
        x = xb - fb * (xa - xb) / (fa - fb) if fa != fb else (xa + xb) / 2
        s = at(math.exp(x))
        if s in (below, above):
            s = at(math.exp((xa + xb) / 2))
            if s in (below, above):
                break  # the rounding leaves no size strictly between them
        if within(change(s), target, tolerance):
            break
        fs = goal(s)
        if fs < 0:
            below, fb = s, fs
            if side == -1:
                fa /= 2
            side = -1
        else:
            above, fa = s, fs
            if side == 1:
                fb /= 2
            side = 1
    return result()


# ----------------------------------------------------------------------------- in a sweep
# ``sweep`` below is the runner's shared state (``sweep.runner``): its folder, config, log,
# claims, ``masks(mode, seed, m)``, ``perplexity(masks)`` and ``point(mode, seed, m, extra)``.

def match_controls(sweep, targets: list[dict]) -> dict:
    """For every target point (a difference point's record), each control of
    ``cfg.matched_controls`` searched and, when matched, evaluated, then each task-swapped
    mask of the sweep (``swapped-<name>``, issue 37: claim (f) at matched damage, never a
    control of claims (b) and (c)) the same way; written to the folder's
    ``SweepFolder.matched`` and returned."""
    cfg, found = sweep.cfg, {}
    modes = list(cfg.matched_controls) + [swapped_mode(name) for name in sorted(sweep.swapped)]
    for target in targets:
        found[point_label("difference", 0, target["m"])] = {
            "mode": "difference", "m": target["m"], "seed": 0,
            "perplexity": target["perplexity"],
            "controls": [matched_control(sweep, target, mode) for mode in modes]}
    data = {"tolerance": cfg.match_tolerance, "floor": FLOOR, "targets": found}
    sweep.folder.write_matched(data)  # with its integrity record
    return data


def matched_control(sweep, target: dict, mode: str) -> dict:
    """Search the size of ``mode`` whose perplexity change matches ``target``'s, evaluate it
    in full when matched; the control's entry (kept in ``search/``, so a resumed or shared
    sweep searches once)."""
    tlabel = point_label(target["mode"], target["seed"], target["m"])
    done = sweep.folder.search_result(tlabel, mode)
    entry = sweep.locks.compute_once(f"search_{tlabel}_{mode}", done,
                                      lambda: _search(sweep, target, mode, done))
    entry = dict(entry)
    if entry["matched"]:
        # a seeded control is evaluated at the matched size with several seeds, so that its
        # mask-to-mask variance enters the claims (stats.contrast_with_controls)
        seeds = match_seeds(mode, sweep.cfg.match_seeds)
        for seed in seeds:
            sweep.point(mode, seed, entry["m"], extra={"matched_to": tlabel})
        entry["seeds"] = seeds
        entry["labels"] = [point_label(mode, seed, entry["m"]) for seed in seeds]
    else:
        bracket = search_bracket(entry)
        if bracket is None:
            sweep.log(f"[tomsparse] damage-matched {mode} for {tlabel}: no searched sizes "
                      "bracket the target's perplexity; not evaluated")
        else:
            # no size lands within the tolerance (the perplexity jumps between two sizes):
            # both ends are evaluated in full, with every seed of a seeded control, and the
            # control is their interpolation at the target's perplexity, seed by seed
            # (judge.specificity does it prompt by prompt), so its mask-to-mask variance
            # stays in the claims
            seeds = match_seeds(mode, sweep.cfg.match_seeds)
            sweep.log(f"[tomsparse] damage-matched {mode} for {tlabel}: interpolated between "
                      f"m = {bracket['low']:.3g} and {bracket['high']:.3g} (weight "
                      f"{bracket['weight']:.2f} on the larger), both evaluated in full"
                      + (f" with {len(seeds)} seeds" if len(seeds) > 1 else ""))
            for seed in seeds:
                for end in ("low", "high"):
                    sweep.point(mode, seed, bracket[end], extra={"matched_to": tlabel,
                                                                "bracket": end})
            pairs = [[point_label(mode, seed, bracket["low"]),
                      point_label(mode, seed, bracket["high"])] for seed in seeds]
            entry["interpolation"] = dict(bracket, labels=pairs[0], seeds=seeds,
                                          seed_labels=pairs)
    return entry


def search_bracket(entry: dict) -> dict | None:
    """The two searched sizes whose perplexities lie on either side of the target's (on the
    search's split), closest to it, and the weight w of the high end in log perplexity:
    log ppl(target) = (1 - w) log ppl(low) + w log ppl(high). None without such a pair."""
    goal = entry.get("search_target_perplexity")
    trace = entry.get("search") or []
    if goal is None or len(trace) < 2:
        return None
    below = [(m, p) for m, p in trace if p < goal]
    above = [(m, p) for m, p in trace if p > goal]
    if not below or not above:
        return None
    low = max(below, key=lambda x: x[1])
    high = min(above, key=lambda x: x[1])
    weight = (math.log(goal) - math.log(low[1])) / (math.log(high[1]) - math.log(low[1]))
    return {"low": float(low[0]), "high": float(high[0]), "weight": float(weight)}


def match_seeds(mode: str, n: int) -> list[int]:
    """The seeds a matched control is evaluated with: 0 .. n-1 for a seeded mask
    (random-fraction), 0 alone for a deterministic one (generic-only)."""
    return list(range(n)) if mode in SEEDED_MATCHABLE else [0]


def _search(sweep, target: dict, mode: str, done: Path) -> dict:
    """The size search of one control for one target, on the held-apart search split of the
    perplexity text (``SweepConfig.match_search_tokens``): the baseline's and the target's
    perplexity on that split are measured once (and kept in ``search/``), the control's at
    each step; the points' reported perplexities never enter the search."""
    cfg, folder = sweep.cfg, sweep.folder
    held_apart = sweep.search_ids is not sweep.ppl_ids
    start, high = search_range(mode)
    tlabel = point_label(target["mode"], target["seed"], target["m"])
    folder.search_dir.mkdir(exist_ok=True)

    def measure_mode(kind: str, size: float) -> float:
        path = folder.search_point(kind, size)
        if path.exists():
            return read_json_object(path)["perplexity"]
        masks = sweep.masks(kind, 0, size) if size > 0 else {}
        ppl = sweep.perplexity(masks, split="search").perplexity
        write_json(path, {"mode": kind, "seed": 0, "m": size, "perplexity": ppl,
                          "split": "search" if held_apart else "report"})
        return ppl

    if held_apart:
        ppl0, ppl_target = measure_mode("none", 0.0), measure_mode(target["mode"], target["m"])
    else:   # searched on the reported tokens (--match-search-tokens 0)
        ppl0 = read_json_object(folder.point_record(BASELINE_LABEL))["perplexity"]
        ppl_target = target["perplexity"]

    def measure(size: float) -> float:
        return measure_mode(mode, size)

    res = search_size(measure, baseline=ppl0, target=ppl_target / ppl0 - 1,
                      start=target["m"] * start, low=target["m"] / 100, high=high,
                      tolerance=cfg.match_tolerance, steps=cfg.match_steps)
    entry = {"mode": mode, "m": res.size, "seed": 0, "label": point_label(mode, 0, res.size),
             "perplexity": res.perplexity, "ppl_change": res.change,
             "matched": res.matched, "search": [list(t) for t in res.trace],
             "search_split": "held apart" if held_apart else "reported tokens",
             "search_baseline_perplexity": ppl0, "search_target_perplexity": ppl_target}
    sweep.log(f"[tomsparse] damage-matched {mode} for {tlabel} "
              f"({ppl_target / ppl0 - 1:+.0%} perplexity on the "
              f"{'held-apart search tokens' if held_apart else 'reported tokens'}): "
              f"m = {res.size:.3g} "
              f"gives {res.change:+.0%} after {len(res.trace)} perplexity evaluation(s)"
              + ("" if res.matched else " - not within the tolerance"))
    write_json(done, entry)
    return entry
