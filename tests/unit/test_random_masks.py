"""Random control masks (masks.random_indices): count, range, no duplicates, nesting across m,
seeding, independence of visit order and global RNG state, and uniformity over k-subsets."""

import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from tomsparse.masks import (
    build_rankings,
    first_distinct,
    masks_for,
    random_generators,
    random_indices,
)


def _check(idx, numel, count):
    assert idx.dtype == torch.long and idx.device.type == "cpu" and idx.dim() == 1
    assert idx.numel() == count
    assert idx.unique().numel() == count  # no duplicates
    if count:
        assert int(idx.min()) >= 0 and int(idx.max()) < numel


@pytest.mark.parametrize("numel", [1, 2, 3, 5, 8, 120, 1000, 4097])
def test_count_range_and_no_duplicates(numel):
    head = numel // 4
    counts = sorted({0, 1, head, head + 1, numel // 2, numel - 1, numel} & set(range(numel + 1)))
    for count in counts:
        _check(random_indices(numel, count, seed=7, name="layers.3.down"), numel, count)


def test_zero_and_whole_matrix():
    assert random_indices(50, 0, 1, "a").numel() == 0
    assert random_indices(0, 0, 1, "a").numel() == 0
    assert sorted(random_indices(50, 50, 1, "a").tolist()) == list(range(50))
    assert random_indices(50, 80, 1, "a").numel() == 50  # more than the matrix: all of it


@pytest.mark.parametrize("numel", [40, 1000, 65536])
def test_nested_across_counts_and_the_switch_point(numel):
    """Every mask is a prefix of a larger count's, including across numel // 4, where the
    draw stream hands over to the permutation of the rest."""
    head = numel // 4
    counts = sorted({1, 3, head // 3, head - 1, head, head + 1, numel // 2, numel - 1, numel})
    seqs = [random_indices(numel, c, seed=2, name="layers.0.q").tolist() for c in counts]
    for small, big in zip(seqs, seqs[1:]):
        assert big[:len(small)] == small
        assert set(small) <= set(big)


def test_nested_across_m_through_the_ranking():
    gen = torch.Generator().manual_seed(0)
    ts, gs = torch.rand(30, 40, generator=gen), torch.rand(30, 40, generator=gen)
    rk = build_rankings({"layers.0.q": ts}, {"layers.0.q": gs}, ["layers.0.q"], m_max=1.0)
    rk = rk["layers.0.q"]
    ms = [0.001, 0.01, 0.1, 0.25, 0.26, 0.5, 0.9, 1.0]
    for mode in ("random-fraction", "random"):
        # random's count (that of difference) need not grow with m: nested by count
        seqs = sorted((rk.mask(m, mode, seed=4).tolist() for m in ms), key=len)
        assert len({len(x) for x in seqs}) > 4
        for small, big in zip(seqs, seqs[1:]):
            assert set(small) <= set(big)
    assert len(rk.mask(0.26, "random-fraction", seed=4)) == int(1200 * 0.26)


def test_deterministic_per_seed_and_name_different_across():
    a = random_indices(10_000, 200, seed=5, name="layers.1.k")
    assert torch.equal(a, random_indices(10_000, 200, seed=5, name="layers.1.k"))
    assert not torch.equal(a, random_indices(10_000, 200, seed=6, name="layers.1.k"))
    assert not torch.equal(a, random_indices(10_000, 200, seed=5, name="layers.2.k"))
    big = random_indices(10_000, 9000, seed=5, name="layers.1.k")  # the large-count path too
    assert torch.equal(big, random_indices(10_000, 9000, seed=5, name="layers.1.k"))
    assert not torch.equal(big, random_indices(10_000, 9000, seed=6, name="layers.1.k"))


def test_independent_of_global_rng_state():
    torch.manual_seed(0)
    np.random.seed(0)
    a = [random_indices(999, c, 3, "layers.0.v") for c in (10, 600)]
    torch.manual_seed(1)
    np.random.seed(1)
    torch.rand(100)
    np.random.rand(100)
    b = [random_indices(999, c, 3, "layers.0.v") for c in (10, 600)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_independent_of_visit_order():
    gen = torch.Generator().manual_seed(1)
    names = [f"layers.{i}.{r}" for i in range(3) for r in ("q", "up")]
    tom = {n: torch.rand(16, 24, generator=gen) for n in names}
    generic = {n: torch.rand(16, 24, generator=gen) for n in names}
    fwd = build_rankings(tom, generic, names, m_max=0.5)
    rev = build_rankings(tom, generic, names[::-1], m_max=0.5)
    for mode in ("random", "random-fraction"):
        a, b = masks_for(fwd, 0.2, mode, seed=9), masks_for(rev, 0.2, mode, seed=9)
        assert list(b) == names[::-1]
        assert all(torch.equal(a[n], b[n]) for n in names)
    # a matrix's mask does not depend on which other matrices are there
    one = build_rankings(tom, generic, names[4:5], m_max=0.5)
    assert torch.equal(masks_for(one, 0.2, "random-fraction", seed=9)[names[4]],
                       masks_for(fwd, 0.2, "random-fraction", seed=9)[names[4]])


def _brute_first_distinct(gen, numel, count):
    """The stream, one raw word at a time: top bits, values >= numel skipped."""
    bits = max(1, (numel - 1).bit_length())
    out, seen = [], set()
    while len(out) < count:
        v = int(gen.bit_generator.random_raw(1)[0]) >> (64 - bits)
        if v < numel and v not in seen:
            seen.add(v)
            out.append(v)
    return out


@pytest.mark.parametrize("numel,count", [(10, 2), (37, 9), (1000, 250), (3, 3)])
def test_stream_does_not_depend_on_how_it_is_read(numel, count):
    def gen():
        return random_generators(11, "layers.0.o")[0]
    want = _brute_first_distinct(gen(), numel, count)
    for per_read in (None, 1, 7, 64):  # small reads force several rounds (and the dedup
        got = first_distinct(gen(), numel, count, words_per_read=per_read)
        assert got.tolist() == want     # against what earlier rounds picked)


def _subset_chi2(sample, numel, count, trials):
    """Chi-square statistic of the subsets drawn over ``trials`` seeds against uniform over
    all count-subsets of range(numel)."""
    seen = Counter(tuple(sorted(sample(numel, count, seed))) for seed in range(trials))
    cells = list(itertools.combinations(range(numel), count))
    expect = trials / len(cells)
    return sum((seen.get(c, 0) - expect) ** 2 / expect for c in cells), len(cells) - 1


def _ours(numel, count, seed):
    return random_indices(numel, count, seed, "layers.0.gate").tolist()


def _first_k(numel, count, seed):
    return list(range(count))


def _consecutive(numel, count, seed):  # a block from a random start, wrapping round
    start = np.random.default_rng(seed).integers(numel)
    return [(start + i) % numel for i in range(count)]


def _edge_biased(numel, count, seed):  # uniform except that entry 0 is favoured a little
    rng = np.random.default_rng(seed)
    w = np.ones(numel)
    w[0] = 1.6
    return rng.choice(numel, count, replace=False, p=w / w.sum()).tolist()


# (numel, count): count <= numel // 4 uses the draw stream only; larger counts the stream up
# to numel // 4 and then the permutation of the rest.
CASES = [(8, 2), (8, 3), (9, 5), (7, 7)]


@pytest.mark.parametrize("numel,count", CASES)
def test_uniform_over_subsets(numel, count):
    trials = 60 * len(list(itertools.combinations(range(numel), count)))
    stat, df = _subset_chi2(_ours, numel, count, trials)
    # mean df, sd sqrt(2 df): df + 5 sd is beyond p = 1e-4 for these df
    assert stat < df + 5 * (2 * df) ** 0.5 + 1, (stat, df)


def test_the_uniformity_check_fails_biased_samplers():
    numel, count = 8, 3
    trials = 60 * 56
    limit = 55 + 5 * (110 ** 0.5) + 1
    for biased in (_first_k, _consecutive, _edge_biased):
        stat, _ = _subset_chi2(biased, numel, count, trials)
        assert stat > limit, biased.__name__


def test_entry_frequencies_are_k_over_numel():
    """Each entry's frequency over many seeds is close to count / numel (larger matrix)."""
    numel, count, trials = 60, 9, 3000
    freq = np.zeros(numel)
    for seed in range(trials):
        freq[random_indices(numel, count, seed, "layers.5.up").numpy()] += 1
    expect = trials * count / numel
    stat = ((freq - expect) ** 2 / expect).sum()
    assert stat < (numel - 1) + 5 * (2 * (numel - 1)) ** 0.5, stat
    # the same statistic for "the first count entries" is enormous
    first = np.zeros(numel)
    first[:count] = trials
    assert ((first - expect) ** 2 / expect).sum() > 100 * numel
