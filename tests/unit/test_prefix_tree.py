"""lm.prefix_tree: the radix tree against plain prefix sets, and its scoring against every
sequence run alone (no padding, no cache) on each tiny architecture."""

import random

import pytest
import torch

from tomsparse.lm.prefix_tree import (
    build_prefix_tree,
    flat_tree,
    padded_width,
    sequence_logprobs,
    sliding_window,
)
from tomsparse.testing import ARCHITECTURES, tiny_model

PAD = 1


def story_variants(seed: int, n_stories: int = 3) -> list[list[int]]:
    """Sequences shaped like a task's prompts: a story, variants that part at several
    depths, the same variant twice (two continuations), one a prefix of another, a
    one-token sequence."""
    rng = random.Random(seed)
    seqs = []
    for _ in range(n_stories):
        story = [rng.randrange(2, 120) for _ in range(rng.randrange(8, 30))]
        for _ in range(4):
            cut = rng.randrange(1, len(story))
            variant = story[:cut] + [rng.randrange(2, 120) for _ in range(rng.randrange(1, 12))]
            seqs += [variant, variant + [rng.randrange(2, 120)]]
        seqs.append(story)
        seqs.append(story[:5])
    seqs.append([rng.randrange(2, 120)])
    rng.shuffle(seqs)
    return seqs


def test_tree_holds_each_distinct_prefix_once_and_rebuilds_every_sequence():
    seqs = story_variants(0)
    tree = build_prefix_tree(seqs)
    prefixes = {tuple(s[:i + 1]) for s in seqs for i in range(len(s))}
    assert tree.tokens() == len(prefixes) < sum(map(len, seqs))
    for s, path in zip(seqs, tree.paths):
        assert [tree.segments[g].tokens[o] for g, o in path] == s
        for pos, (g, o) in enumerate(path):
            assert tree.segments[g].start + o == pos  # positions as in the sequence alone
    for i, seg in enumerate(tree.segments):
        if seg.parent is None:
            assert seg.level == 0 and seg.start == 0
        else:
            parent = tree.segments[seg.parent]
            assert seg.level == parent.level + 1 and i in parent.children
            assert seg.start == parent.start + len(parent.tokens)
        # a segment ends where sequences part or end: never one child only
        assert len(seg.children) != 1 or any(path[-1] == (i, len(seg.tokens) - 1)
                                             for path in tree.paths)


def test_flat_tree_shares_nothing():
    seqs = story_variants(1)
    tree = flat_tree(seqs)
    assert tree.tokens() == sum(map(len, seqs)) and len(tree.levels()) == 1


def alone(model, seqs, picks):
    """Reference: each sequence run by itself."""
    out = []
    for s, ps in zip(seqs, picks):
        logp = model(torch.tensor([s])).logits[0].float().log_softmax(-1)
        out.append([logp[p, t].item() for p, t in ps])
    return out


def random_picks(seqs, seed):
    rng = random.Random(seed)
    return [[(p, rng.randrange(0, 128)) for p in sorted(rng.sample(range(len(s)),
                                                               min(len(s), 3)))]
            for s in seqs]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tree_scores_equal_each_sequence_run_alone(arch):
    extra = {"sliding_window": 4096} if arch == "gemma3" else {}  # the tree, not the fallback
    model = tiny_model(arch, **extra)
    seqs = story_variants(2)
    picks = random_picks(seqs, 3)
    with torch.inference_mode():
        want = alone(model, seqs, picks)
        got = sequence_logprobs(model, seqs, picks, PAD, "cpu")
    assert len(build_prefix_tree(seqs).levels()) > 2  # deep enough to test the chaining
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-4)


def test_a_window_narrower_than_the_padded_tree_falls_back_to_unshared_rows():
    model = tiny_model("gemma3")  # sliding_window 16
    seqs = story_variants(4)
    assert sliding_window(model) == 16 and padded_width(build_prefix_tree(seqs)) > 16
    assert max(map(len, seqs)) > 16  # the window truncates the longer sequences themselves
    picks = random_picks(seqs, 5)
    with torch.inference_mode():
        want = alone(model, seqs, picks)
        got = sequence_logprobs(model, seqs, picks, PAD, "cpu")
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-4)
