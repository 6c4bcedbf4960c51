"""Damage-matched controls: the size search, the mask family's variants (p >= q, massive
channels left out) checked against brute-force selection, and a matched sweep on a tiny model."""

import json
import math

import pytest
import torch

from tomsparse.analysis.run import AnalysisConfig, analyze
from tomsparse.errors import UserError
from tomsparse.lm import adapter
from tomsparse.lm.activations import channel_scores, massive_channels
from tomsparse.masks import build_rankings, masks_for, parse_mode
from tomsparse.sweep.matched import round_size, search_size, within
from tomsparse.config import SweepConfig
from tomsparse.pipeline import run_sweep
from tomsparse.judge.tables import specificity_tables
from tomsparse.judge.verdicts import verdicts
from tomsparse.testing import random_scores, tiny_corpus, tiny_loaded_model, tiny_model

# ------------------------------------------------------------------ the search


def _power_law(calls):
    """perplexity = 10 * (1 + (size / 1e-3) ** 1.5): monotone, like a real control."""
    def measure(size):
        calls.append(size)
        return 10.0 * (1.0 + (size / 1e-3) ** 1.5)
    return measure


@pytest.mark.parametrize("target,start", [(0.71, 1e-5), (2.08, 1e-2), (0.05, 1e-4)])
def test_search_finds_the_size_within_tolerance(target, start):
    calls = []
    res = search_size(_power_law(calls), baseline=10.0, target=target, start=start,
                      low=1e-7, high=0.5, tolerance=0.10, steps=8)
    exact = 1e-3 * target ** (1 / 1.5)
    assert res.matched and within(res.change, target, 0.10)
    assert abs(math.log(res.size / exact)) < math.log(1.25)
    assert len(calls) == len(res.trace) <= 8 and len(set(calls)) == len(calls)
    assert all(round_size(s) == s for s in calls)  # labels name sizes exactly


def test_search_reports_failure_when_the_bound_cannot_reach_the_target():
    res = search_size(lambda s: 10.0 * (1 + s), baseline=10.0, target=5.0, start=1e-3,
                      low=1e-5, high=0.5, tolerance=0.1, steps=8)
    assert not res.matched and res.size == 0.5  # the closest it could get, said so


def test_search_gives_up_after_the_step_budget():
    # a flat function: never matched, never more than the budget
    res = search_size(lambda s: 10.0, baseline=10.0, target=1.0, start=1e-3, low=1e-6,
                      high=0.5, tolerance=0.1, steps=3)
    assert not res.matched and len(res.trace) <= 3


# ------------------------------------------------------------------ the mask family


def _brute(tom, gen, m, factor):
    """Top-q by ToM and not top-(factor*q) by generic, by full sort (scores are distinct)."""
    k = int(tom.numel() * m)
    kg = int(tom.numel() * min(1.0, m * factor))
    t = set(torch.argsort(tom.reshape(-1), descending=True)[:k].tolist())
    g = set(torch.argsort(gen.reshape(-1), descending=True)[:kg].tolist())
    return t - g


def test_generic_factor_matches_brute_force():
    gen_ = torch.Generator().manual_seed(3)
    tom = {"layers.0.q": torch.rand(24, 16, generator=gen_)}
    gen = {"layers.0.q": torch.rand(24, 16, generator=gen_)}
    rankings = build_rankings(tom, gen, ["layers.0.q"], m_max=0.2, generic_factor=4.0)
    for factor in (1.0, 2.0, 4.0):
        for m in (0.05, 0.1, 0.2):
            mode = "difference" if factor == 1 else f"difference-p{factor:g}"
            got = set(masks_for(rankings, m, mode)["layers.0.q"].tolist())
            assert got == _brute(tom["layers.0.q"], gen["layers.0.q"], m, factor)
    # excluding more of what generic text needs can only shrink the mask
    sizes = [masks_for(rankings, 0.2, f"difference-p{f}")["layers.0.q"].numel() for f in (1, 2, 4)]
    assert sizes == sorted(sizes, reverse=True)


def test_massive_channels_left_out_by_role():
    gen_ = torch.Generator().manual_seed(4)
    shapes = {"layers.0.q": (8, 6), "layers.0.o": (6, 8), "layers.0.down": (6, 10)}
    tom = {n: torch.rand(s, generator=gen_) for n, s in shapes.items()}
    gen = {n: torch.rand(s, generator=gen_) for n, s in shapes.items()}
    rankings = build_rankings(tom, gen, list(shapes), m_max=0.5)
    full = masks_for(rankings, 0.5, "tom-only")
    cut = masks_for(rankings, 0.5, "tom-only-x2", channels=[1, 4, 5])
    for name, (rows, cols) in shapes.items():
        kept = set()
        for i in full[name].tolist():
            r, c = divmod(i, cols)
            channel = c if name.endswith(".q") else r  # q reads the stream; o, down write it
            if channel not in (1, 4):
                kept.add(i)
        assert set(cut[name].tolist()) == kept, name
    with pytest.raises(UserError, match="massive-activation"):
        masks_for(rankings, 0.5, "tom-only-x2", channels=[1])


def test_mode_parsing_errors_are_clear():
    assert parse_mode("difference-p4-x3").name == "difference-p4-x3"
    for bad, words in (("diff", "unknown mask mode"), ("difference-p0.5", ">= 1"),
                       ("random-p2", "-p applies")):
        with pytest.raises(UserError, match=words):
            parse_mode(bad)


def test_massive_channels_find_a_planted_channel():
    model = tiny_model("llama")
    desc = adapter.describe(model)
    # Make channel 5 huge in the first block's output: its down projection writes row 5.
    with torch.no_grad():
        down = next(m for m in desc.matrices if m.name == "layers.0.down")
        down.module.weight[5] *= 0
        down.module.weight[5, :] += 50.0
    ids = [[1, 2, 3, 4, 5, 6], [7, 8, 9]]
    scores = channel_scores(model, desc, ids, pad_id=0)
    assert int(scores.argmax()) == 5
    assert massive_channels(model, desc, ids, 0, 2)[0]["channel"] == 5


# ------------------------------------------------------------------ a matched sweep


def test_matched_sweep_on_a_tiny_model(tmp_path):
    lm = tiny_loaded_model("llama", name="tiny-llama")
    model = lm.model
    tom, generic = random_scores(lm)
    corpus = tiny_corpus(tmp_path)
    cfg = SweepConfig(m_values=[0.0, 0.05], modes=["difference", "random", "difference-p2-x1"],
                      random_seeds=[0, 1], task_limit=1, corpus=corpus, ppl_seqlen=32,
                      ppl_max_tokens=256, batch_size=8, perturbation="zero",
                      matched_controls=["generic-only", "random-fraction"], match_steps=6,
                      match_tolerance=0.2, match_seeds=2)
    before = [p.detach().clone() for p in model.parameters()]
    run_sweep(lm, tom, generic, cfg, tmp_path / "sweep", progress=False)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    out = tmp_path / "sweep"
    record = json.loads((out / "matched.json").read_text())
    target = record["targets"]["difference_s0_m5.0000e-02"]
    base = json.loads((out / "points" / "none_s0_m0.0000e+00.json").read_text())["perplexity"]
    for control in target["controls"]:
        # every search step is one cached perplexity; the matched point was evaluated in full
        assert len(control["search"]) <= 6
        assert len(list((out / "search").glob(f"{control['mode']}_s0_*.json"))) == \
            len(control["search"])
        # the search's perplexities are on its own split, against the baseline's there
        change = control["perplexity"] / control["search_baseline_perplexity"] - 1
        assert abs(change - control["ppl_change"]) < 1e-12
        if control["matched"]:
            point = json.loads((out / "points" / f"{control['label']}.json").read_text())
            assert point["matched_to"] == "difference_s0_m5.0000e-02"
            if control["search_split"] == "reported tokens":
                assert abs(point["perplexity"] - control["perplexity"]) < 1e-6 * base
            else:   # searched on held-apart tokens: the point reports the other split
                assert control["search_baseline_perplexity"] != base
            # a seeded control is evaluated with --match-seeds seeds at the matched size
            seeds = [0, 1] if control["mode"] == "random-fraction" else [0]
            assert control["seeds"] == seeds
            for label in control["labels"]:
                assert json.loads((out / "points" / f"{label}.json").read_text())["m"] == \
                    control["m"]
    assert (out / "massive_channels.json").exists()
    # issue 23: the searches ran on tokens held apart from the reported perplexity
    assert {c["search_split"] for c in target["controls"]} == {"held apart"}
    held = json.loads((out / "search" / "none_s0_m0.0000e+00.json").read_text())
    assert held["split"] == "search" and held["perplexity"] != base
    tables = specificity_tables(out)
    assert len(tables["matched"]) == 2
    claims = {v["claim"]: v for v in verdicts(tables) if v["m"] == 0.05}
    assert "damage-matched" in claims["b"]["sentence"]
    if any(c["matched"] for c in target["controls"]):
        con = tables["contrasts"]
        assert set(con.loc[con["kind"] == "matched", "reference"]) == {
            "+".join(c["labels"]) for c in target["controls"] if c["matched"]}


def test_analysis_finds_the_channels_an_x_mode_leaves_out():
    lm = tiny_loaded_model("llama")
    tom, generic = random_scores(lm)
    prompts = [[5, 9, 14, 3, 22, 7, 31], [8, 2, 40, 11]]
    cfg = AnalysisConfig(m=0.05, modes=["difference-x2"], random_seeds=[0])
    res = analyze(lm.model, lm.tokenizer, lm.description, tom, generic, prompts, cfg,
                  log=lambda *_: None)
    expected = [c["channel"] for c in massive_channels(lm.model, lm.description, prompts,
                                                       lm.tokenizer.pad_token_id or 0, 2)]
    assert cfg.channels == expected
    counts = res.tables["mask_anatomy_channels"]
    assert not counts[(counts["mode"] == "difference-x2") & counts["channel"].isin(expected)
                      ]["masked"].any()


def test_search_bracket_gives_the_interpolation_weight():
    from tomsparse.sweep.matched import search_bracket

    # perplexity jumps from 18 to 55 between two sizes; the target's is 30
    entry = {"search_target_perplexity": 30.0,
             "search": [[1e-4, 18.0], [4e-4, 55.0], [2e-4, 17.5], [3e-4, 90.0]]}
    got = search_bracket(entry)
    assert (got["low"], got["high"]) == (1e-4, 4e-4)
    assert got["weight"] == pytest.approx((math.log(30) - math.log(18)) /
                                          (math.log(55) - math.log(18)))
    assert search_bracket({"search_target_perplexity": 30.0, "search": [[1e-4, 18.0]]}) is None
    assert search_bracket({"search": [[1e-4, 18.0], [4e-4, 55.0]]}) is None  # older folders


def test_an_unmatched_seeded_control_evaluates_both_ends_with_every_seed(tmp_path):
    """Issue 33.3: when no searched size lands within the tolerance, a seeded control's two
    bracketing sizes are evaluated with each of --match-seeds seeds, and matched.json lists
    the pairs seed by seed (the judge interpolates each)."""
    from types import SimpleNamespace

    from tomsparse.sweep import matched as mt

    evaluated = []
    entry = {"matched": False, "m": 4e-3, "search_target_perplexity": 15.0,
             "search": [[2e-3, 11.0], [8e-3, 20.0]]}
    sweep = SimpleNamespace(
        cfg=SimpleNamespace(match_seeds=3),
        folder=SimpleNamespace(search_result=lambda t, mode: tmp_path / f"{t}_{mode}.json"),
        locks=SimpleNamespace(compute_once=lambda name, done, fn: entry),
        point=lambda mode, seed, m, extra=None: evaluated.append((mode, seed, m, extra["bracket"])),
        log=lambda *a: None)
    target = {"mode": "difference", "seed": 0, "m": 1e-4, "perplexity": 15.0}
    got = mt.matched_control(sweep, target, "random-fraction")
    assert sorted(evaluated) == sorted((("random-fraction", s, m, end) for s in range(3)
                                        for m, end in ((2e-3, "low"), (8e-3, "high"))))
    inter = got["interpolation"]
    assert inter["seeds"] == [0, 1, 2] and len(inter["seed_labels"]) == 3
    assert inter["seed_labels"][1] == ["random-fraction_s1_m2.0000e-03",
                                       "random-fraction_s1_m8.0000e-03"]
    evaluated.clear()
    got = mt.matched_control(sweep, target, "generic-only")   # deterministic: one seed
    assert [e[1] for e in evaluated] == [0, 0] and got["interpolation"]["seeds"] == [0]
