"""lm.prefix_tree: the radix tree against plain prefix sets, its packed layout against the
ancestor relation restated, and its scoring against every sequence run alone (no padding, no
mask) on each tiny architecture."""

import random

import pytest
import torch

from tomsparse.lm.prefix_tree import (
    build_prefix_tree,
    can_pack,
    pack_tree,
    row_limit,
    sequence_logprobs,
    sliding_window,
    subtree_tokens,
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


def restated_allowed(seqs, packed):
    """Column k of a row is visible from column q iff some sequence holds both, k at an
    earlier or the same position (a sequence's columns are its prefix's tokens); padding
    sees only itself."""
    want = torch.zeros(packed.allowed.shape, dtype=torch.bool)
    for s, cols in zip(seqs, packed.columns):
        rows = {r for r, _ in cols}
        assert len(rows) == 1  # a sequence lives in one row
        (row,) = rows
        at = [c for _, c in cols]
        assert packed.ids[row, at].tolist() == s
        assert packed.positions[row, at].tolist() == list(range(len(s)))
        for i, q in enumerate(at):
            want[row, q, at[:i + 1]] = True
    used = want.any(-1)
    for r in range(want.shape[0]):
        for c in range(want.shape[1]):
            if not used[r, c]:
                want[r, c, c] = True
    return want


def test_packed_row_lets_each_token_see_exactly_its_own_prefix():
    seqs = story_variants(1)
    tree = build_prefix_tree(seqs)
    packed = pack_tree(tree)
    assert packed.ids.shape == (1, tree.tokens())  # no row limit: one row, no padding
    assert torch.equal(packed.allowed, restated_allowed(seqs, packed))


def test_rows_hold_whole_subtrees_within_the_limit():
    seqs = story_variants(9, n_stories=6)
    tree = build_prefix_tree(seqs)
    sizes = subtree_tokens(tree)
    limit = max(sizes) + 5
    packed = pack_tree(tree, limit, pad_id=PAD)
    rows, width = packed.ids.shape
    assert 1 < rows and width <= limit
    assert torch.equal(packed.allowed, restated_allowed(seqs, packed))
    # every token once; the rest of each row is padding, at its end
    held = {rc for cols in packed.columns for rc in cols}
    assert len(held) == tree.tokens()
    for r in range(rows):
        n = sum(1 for row, _ in held if row == r)
        assert {c for row, c in held if row == r} == set(range(n))
        assert (packed.ids[r, n:] == PAD).all()
    with pytest.raises(ValueError, match="exceeds a row"):
        pack_tree(tree, max(map(len, seqs)) - 1)  # one sequence longer than a row


def test_a_subtree_larger_than_a_row_is_split_repeating_what_is_above():
    # issue 36.11: a long story whose variants part early made a task's subtree larger than
    # a row, and the whole batch ran unshared (0 of 34 prompts in 330 s)
    seqs = story_variants(9, n_stories=6)
    tree = build_prefix_tree(seqs)
    limit = max(map(len, seqs)) + 2
    assert max(subtree_tokens(tree)) > limit
    packed = pack_tree(tree, limit, pad_id=PAD)
    assert packed.ids.shape[1] <= limit
    assert torch.equal(packed.allowed, restated_allowed(seqs, packed))
    held = {rc for cols in packed.columns for rc in cols}
    assert tree.tokens() <= len(held) < sum(map(len, seqs))  # some prefixes repeated, not all


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
    assert max(seg.level for seg in build_prefix_tree(seqs).segments) > 2  # nested deeply
    assert can_pack(model, seqs)
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_unshared_rows_equal_each_sequence_run_alone(arch):
    model = tiny_model(arch)
    seqs = story_variants(6)
    picks = random_picks(seqs, 7)
    with torch.inference_mode():
        want = alone(model, seqs, picks)
        got = sequence_logprobs(model, seqs, picks, PAD, "cpu", shared=False)
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-4)


def test_rows_stay_inside_gpt2s_position_buffer():
    # GPT-2's causal buffer is n_positions long: a packed row past it fails even with every
    # position id inside (transformers 5.0), so the tree is laid into several rows
    model = tiny_model("gpt2", n_positions=96)
    seqs = story_variants(10, n_stories=6)
    assert row_limit(model) == 96
    assert build_prefix_tree(seqs).tokens() > 96 and can_pack(model, seqs)
    assert pack_tree(build_prefix_tree(seqs), row_limit(model)).ids.shape[0] > 1
    picks = random_picks(seqs, 11)
    with torch.inference_mode():
        want = alone(model, seqs, picks)
        got = sequence_logprobs(model, seqs, picks, PAD, "cpu")
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-4)


def test_a_subtree_longer_than_a_row_is_packed_in_pieces_and_scores_as_alone():
    model = tiny_model("llama", max_position_embeddings=40)
    seqs = story_variants(12)
    assert max(subtree_tokens(build_prefix_tree(seqs))) > 40 >= max(map(len, seqs))
    assert can_pack(model, seqs) and row_limit(model, max(map(len, seqs))) == 40
    picks = random_picks(seqs, 5)
    with torch.inference_mode():
        want = alone(model, seqs, picks)
        got = sequence_logprobs(model, seqs, picks, PAD, "cpu")
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-4)


def test_a_sequence_longer_than_the_positions_runs_unshared():
    model = tiny_model("llama", max_position_embeddings=20)
    seqs = story_variants(12)
    assert max(map(len, seqs)) > 20 and not can_pack(model, seqs)


def test_an_attention_without_custom_masks_runs_unshared():
    model = tiny_model("llama")
    seqs = story_variants(8)
    assert can_pack(model, seqs)
    model.config._attn_implementation = "flash_attention_2"
    assert not can_pack(model, seqs)


def test_a_window_shorter_than_a_sequence_falls_back_to_unshared_rows():
    model = tiny_model("gemma3")  # sliding_window 16
    seqs = story_variants(4)
    assert sliding_window(model) == 16 and not can_pack(model, seqs)
    assert max(map(len, seqs)) > 16  # the window truncates the longer sequences themselves
    picks = random_picks(seqs, 5)
    with torch.inference_mode():
        want = alone(model, seqs, picks)
        got = sequence_logprobs(model, seqs, picks, PAD, "cpu")
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-4)
