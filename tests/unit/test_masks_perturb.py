"""Masks against a brute-force selection; perturbation against its formula; exact undo."""

import pytest
import torch

from tomsparse.errors import UserError
from tomsparse.lm import adapter
from tomsparse.masks import (
    build_rankings,
    check_m_values,
    k_for,
    mask_stats,
    masks_for,
    random_indices,
    reference_top,
    top_order,
)
from tomsparse.perturb import apply_perturbation, perturbed, restore
from tomsparse.testing import ARCHITECTURES, tiny_model


def brute_top(score, k):
    """Top k by (score desc, index asc), by plain Python sorting."""
    vals = score.reshape(-1).tolist()
    return sorted(range(len(vals)), key=lambda i: (-vals[i], i))[:k]


def brute_mask(ts, gs, m, mode):
    k = int(ts.numel() * m)
    t, g = brute_top(ts, k), set(brute_top(gs, k))
    if mode == "tom-only":
        return sorted(t)
    if mode == "difference":
        return sorted(i for i in t if i not in g)
    return sorted(i for i in g if i not in set(t))


@pytest.fixture
def scores():
    gen = torch.Generator().manual_seed(0)
    # Integers in a small range make many ties, which the tie-break must resolve.
    ts = torch.randint(0, 20, (12, 10), generator=gen).float()
    gs = torch.randint(0, 20, (12, 10), generator=gen).float()
    return {"layers.0.q": ts}, {"layers.0.q": gs}


@pytest.mark.parametrize("mode", ["difference", "tom-only", "generic-only"])
@pytest.mark.parametrize("m", [0.0, 0.01, 0.05, 0.1, 0.25, 0.5])
def test_masks_match_brute_force(scores, mode, m):
    tom, gen = scores
    rk = build_rankings(tom, gen, ["layers.0.q"], m_max=0.5)["layers.0.q"]
    got = sorted(rk.mask(m, mode).tolist())
    assert got == brute_mask(tom["layers.0.q"], gen["layers.0.q"], m, mode)


def test_top_order_is_exact_on_ties():
    s = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0, 0.0])
    assert top_order(s, 2).tolist() == [1, 2]
    assert top_order(s, 4).tolist() == [1, 2, 4, 3]
    assert top_order(torch.zeros(5), 2).tolist() == [0, 1]


def test_reference_ties_drop_threshold_ties():
    s = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0, 0.0])
    assert sorted(reference_top(s, 2).tolist()) == []  # k-th largest is 3: nothing is > 3
    assert sorted(reference_top(s, 4).tolist()) == [1, 2, 4]
    assert reference_top(torch.zeros(8), 3).numel() == 0  # all-zero scores select nothing


def test_random_mask_same_count_and_nested(scores):
    tom, gen = scores
    rk = build_rankings(tom, gen, ["layers.0.q"], m_max=0.5)["layers.0.q"]
    for m in (0.05, 0.1, 0.3):
        assert rk.mask(m, "random", seed=3).numel() == rk.mask(m, "difference").numel()
    small, big = rk.mask(0.05, "random", seed=3), rk.mask(0.3, "random", seed=3)
    assert set(small.tolist()) <= set(big.tolist())
    assert torch.equal(big[:small.numel()], small)  # a prefix of one ordering per matrix
    assert torch.equal(big, random_indices(120, big.numel(), 3, "layers.0.q"))
    assert not torch.equal(rk.mask(0.3, "random", seed=3), rk.mask(0.3, "random", seed=4))
    frac = rk.mask(0.3, "random-fraction", seed=3)
    assert frac.numel() == 36 and frac.unique().numel() == 36
    assert torch.equal(frac[:big.numel()], big)


def test_random_mask_in_reference_ties_mode(scores):
    tom, gen = scores
    rk = build_rankings(tom, gen, ["layers.0.q"], m_max=0.5, reference_ties=True)["layers.0.q"]
    diff = rk.mask(0.3, "difference", reference_ties=True)
    rnd = rk.mask(0.3, "random", seed=2, reference_ties=True)
    assert rnd.numel() == diff.numel() and rnd.unique().numel() == rnd.numel()
    assert torch.equal(rnd, random_indices(120, diff.numel(), 2, "layers.0.q"))


def test_bad_inputs(scores):
    tom, gen = scores
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        check_m_values([0.1, 1.5])
    with pytest.raises(UserError, match="empty"):
        check_m_values([])
    with pytest.raises(UserError, match="missing from the generic"):
        build_rankings(tom, {}, ["layers.0.q"], 0.1)
    with pytest.raises(UserError, match="different models"):
        build_rankings(tom, {"layers.0.q": torch.zeros(3, 3)}, ["layers.0.q"], 0.1)


def test_mask_stats_counts(scores):
    tom, gen = scores
    rk = build_rankings(tom, gen, ["layers.0.q"], m_max=0.5)
    masks = {"layers.0.q": rk["layers.0.q"].mask(0.25, "difference")}
    row = mask_stats(masks, rk, 0.25)[0]
    assert row["k"] == k_for(120, 0.25) == 30
    assert row["masked"] == 30 - row["tom_generic_overlap"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("mode", ["mean", "reference-mean", "zero"])
def test_perturbation_formula_and_exact_restore(arch, mode):
    model = tiny_model(arch)
    desc = adapter.describe(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    masks = {m.name: torch.randperm(m.numel, generator=gen)[:7] for m in desc.matrices}
    expected = {}
    for m in desc.matrices:  # independent computation from a dense copy
        w = m.weight().detach().clone()
        sel = torch.zeros(m.numel, dtype=torch.bool)
        sel[masks[m.name]] = True
        sel = sel.view(m.shape)
        center = {"mean": w[~sel].mean(), "reference-mean": (w * ~sel).mean(),
                  "zero": torch.tensor(0.0)}[mode]
        new = w.clone()
        new[sel] = center + 0.5 * (w[sel] - center)
        expected[m.name] = new
    saved = apply_perturbation(desc.matrices, masks, mode=mode, scale=0.5)
    for m in desc.matrices:
        torch.testing.assert_close(m.weight(), expected[m.name], rtol=1e-6, atol=1e-6)
    restore(saved)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n  # bit for bit


def test_restore_is_bit_exact_in_bfloat16():
    model = tiny_model("llama").to(torch.bfloat16)
    desc = adapter.describe(model)
    before = [p.detach().clone() for p in model.parameters()]
    masks = {m.name: torch.arange(0, m.numel, 5) for m in desc.matrices}
    saved = apply_perturbation(desc.matrices, masks, mode="mean")
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
    restore(saved)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_cached_matrix_sums_give_the_same_perturbation():
    model = tiny_model("qwen2")
    desc = adapter.describe(model)
    masks = {m.name: torch.arange(3, m.numel, 11) for m in desc.matrices}
    saved = apply_perturbation(desc.matrices, masks, mode="mean")
    plain = [m.weight().clone() for m in desc.matrices]
    restore(saved)
    sums = {}
    for _ in range(2):  # first call fills the cache, second uses it
        saved = apply_perturbation(desc.matrices, masks, mode="mean", totals=sums)
        assert all(torch.equal(m.weight(), p) for m, p in zip(desc.matrices, plain))
        restore(saved)
    assert len(sums) == len(desc.matrices)


def test_masks_for_one_condition(scores):
    tom, gen = scores
    rk = build_rankings(tom, gen, ["layers.0.q"], m_max=0.5)
    masks = masks_for(rk, 0.25, "random", seed=3)
    assert list(masks) == ["layers.0.q"]
    assert torch.equal(masks["layers.0.q"], rk["layers.0.q"].mask(0.25, "random", seed=3))
    assert masks_for(rk, 0.25, "none") == {}


def test_perturbed_restores_bit_for_bit_after_an_exception():
    model = tiny_model("llama")
    desc = adapter.describe(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = {m.name: torch.arange(1, m.numel, 3) for m in desc.matrices}
    with pytest.raises(RuntimeError, match="inside the block"):
        with perturbed(desc.matrices, masks, mode="mean", scale=0.5) as saved:
            assert saved.masked == sum(int(x.numel()) for x in masks.values())
            assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
            raise RuntimeError("inside the block")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_a_failed_perturbation_leaves_no_trace():
    """A mask covering a whole matrix has no unmasked mean: the matrices perturbed before
    the error are restored."""
    model = tiny_model("llama")
    desc = adapter.describe(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = {m.name: torch.arange(0, m.numel, 2) for m in desc.matrices}
    last = desc.matrices[-1]
    masks[last.name] = torch.arange(last.numel)
    with pytest.raises(UserError, match="whole matrix"):
        with perturbed(desc.matrices, masks, mode="mean"):
            pass
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
