"""Score many token sequences that share prefixes, running every shared prefix once.

The prompts of one ToM task are variants of one story: the o1/o2-swapped versions part after
a few dozen tokens, the conditions (false belief, informed protagonist, open container ...)
part where a sentence is added or changed, the two probes part at the question, and each
prompt is scored with two continuations. Laid out as a radix tree of token segments, a task's
16 prompts and their 32 continuation rows hold about a quarter of the tokens of the
sequences run one by one (12,654 against 46,381 for the 356 prompts of 10 clusters per
family).

The tree runs packed (``pack_tree``): every segment's tokens once, parents before children,
each token at its own position (explicit position ids) and an attention mask that lets it see
exactly its own sequence's earlier tokens (its segment's, and its ancestor segments'). A token
therefore computes what it would in its sequence run alone, in one forward pass with no KV
cache copied between levels. Whole root subtrees (a task's prompts) fill rows of at most
``row_limit`` tokens, so the masks stay small and no row outruns a position buffer (GPT-2's
is n_positions long); only the last columns of shorter rows are padding. Logits are taken
only at the columns asked for (``logits_to_keep`` as an index tensor where the model takes
one).

The one mask serves every layer, so where a sliding attention window is shorter than a
sequence, or the attention implementation takes no custom mask (flash attention), the
sequences run unshared in one right-padded batch instead (``can_pack``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tomsparse.lm.batching import takes_logits_to_keep


@dataclass
class Segment:
    tokens: list[int]
    start: int            # position of the first token in every sequence through it
    parent: int | None    # index of the parent segment; None at level 0
    level: int
    children: list[int] = field(default_factory=list)


@dataclass
class PrefixTree:
    segments: list[Segment]
    # where each sequence's tokens live: paths[s][p] = (segment index, offset) of position p
    paths: list[list[tuple[int, int]]]

    def tokens(self) -> int:
        """Tokens the tree holds: what running it costs, padding aside."""
        return sum(len(s.tokens) for s in self.segments)


def build_prefix_tree(seqs: list[list[int]]) -> PrefixTree:
    """The radix tree of ``seqs`` (non-empty token lists): a token trie whose chains of
    single-child nodes are merged into segments."""
    if any(not s for s in seqs):
        raise ValueError("every sequence needs at least one token")
    children: list[dict[int, int]] = [{}]   # token trie; node 0 is the root (no token)
    tok: list[int] = [-1]
    node_paths = []
    for s in seqs:
        node, path = 0, []
        for t in s:
            nxt = children[node].get(t)
            if nxt is None:
                nxt = len(tok)
                children[node][t] = nxt
                children.append({})
                tok.append(t)
            node = nxt
            path.append(node)
        node_paths.append(path)

    where: dict[int, tuple[int, int]] = {}
    segments: list[Segment] = []
    # (first trie node of a segment, its parent segment, its start position)
    todo = [(n, None, 0) for n in children[0].values()]
    while todo:
        node, parent, start = todo.pop()
        seg = Segment(tokens=[], start=start, parent=parent,
                      level=0 if parent is None else segments[parent].level + 1)
        index = len(segments)
        segments.append(seg)
        if parent is not None:
            segments[parent].children.append(index)
        while True:
            where[node] = (index, len(seg.tokens))
            seg.tokens.append(tok[node])
            if len(children[node]) != 1:
                break
            (node,) = children[node].values()
        end = start + len(seg.tokens)
        todo += [(n, index, end) for n in children[node].values()]
    return PrefixTree(segments=segments,
                      paths=[[where[n] for n in path] for path in node_paths])


def sliding_window(model) -> int | None:
    """The model's attention window where it has one (Gemma 3's local layers, Mistral), else
    None. Taken as in force whenever the config names one."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(text, "sliding_window", None)
    return int(window) if window else None


# Attention implementations that apply a 4D additive mask as given (transformers passes a 4D
# mask through unchanged); flash attention and the like take no arbitrary mask.
MASKED_ATTENTION = ("sdpa", "eager")


# The most tokens one packed row holds: its mask is (row x row), so the rows stay a size
# whose mask and attention weights are small beside the model.
ROW_TOKENS = 4096


def row_limit(model) -> int:
    """The longest packed row ``model`` takes: ROW_TOKENS, or its position limit where that
    is shorter (GPT-2's causal buffer is n_positions long, so a longer row fails even with
    every position id inside the limit)."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
    return min(ROW_TOKENS, int(limit)) if limit else ROW_TOKENS


def can_pack(model, seqs: list[list[int]]) -> bool:
    """Whether ``seqs`` can run as packed trees on ``model``: its attention takes a custom
    mask, no sequence is longer than a sliding window (the one mask serves every layer, so a
    window narrower than a sequence would not be applied), and every subtree under a root
    fits one row (``row_limit``)."""
    config = model.config
    impl = getattr(config, "_attn_implementation", None) or "sdpa"
    window = sliding_window(model)
    if impl not in MASKED_ATTENTION or (window is not None and max(map(len, seqs)) > window):
        return False
    return max(subtree_tokens(build_prefix_tree(seqs))) <= row_limit(model)


def subtree_tokens(tree: PrefixTree) -> list[int]:
    """Tokens under each root segment (in the order the roots were made): a row's unit."""
    size = [len(seg.tokens) for seg in tree.segments]
    for i in range(len(tree.segments) - 1, -1, -1):  # children come after their parents
        parent = tree.segments[i].parent
        if parent is not None:
            size[parent] += size[i]
    return [size[i] for i, seg in enumerate(tree.segments) if seg.parent is None]


@dataclass
class PackedTree:
    """A tree laid out in rows: each row holds whole root subtrees, every segment's tokens
    once, parents before children; rows shorter than the widest end in padding that sees
    only itself. ``allowed[r, q, k]``: in row r token q sees token k (k is q itself, earlier
    in q's segment, or in one of its ancestor segments); ``positions`` each token's position
    in its sequences; ``columns[s][p]`` the (row, column) of sequence s's token at p."""

    ids: torch.Tensor         # (rows, width) long
    positions: torch.Tensor   # (rows, width) long
    allowed: torch.Tensor     # (rows, width, width) bool
    columns: list[list[tuple[int, int]]]


def pack_tree(tree: PrefixTree, row_tokens: int | None = None, pad_id: int = 0) -> PackedTree:
    """The packed layout of ``tree``: root subtrees laid into rows of at most ``row_tokens``
    tokens in the order made (one row when None); a subtree larger than a row is an error
    (``can_pack`` says so first). Within a subtree segments keep creation order, so a parent
    always precedes its children."""
    sizes = subtree_tokens(tree)
    if row_tokens is not None and max(sizes) > row_tokens:
        raise ValueError(f"a prefix subtree of {max(sizes)} tokens exceeds a row of {row_tokens}")
    roots = [i for i, seg in enumerate(tree.segments) if seg.parent is None]
    root_of = list(range(len(tree.segments)))
    for i, seg in enumerate(tree.segments):
        if seg.parent is not None:
            root_of[i] = root_of[seg.parent]
    row_of_root, fill = {}, [0]
    for r, size in zip(roots, sizes):
        if row_tokens is not None and fill[-1] and fill[-1] + size > row_tokens:
            fill.append(0)
        row_of_root[r] = len(fill) - 1
        fill[-1] += size
    width = max(fill)
    rows = len(fill)
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    positions = torch.zeros((rows, width), dtype=torch.long)
    allowed = torch.eye(width, dtype=torch.bool).repeat(rows, 1, 1)  # padding sees itself
    used = [0] * rows
    place: list[tuple[int, int]] = []   # (row, first column) of each segment
    for i, seg in enumerate(tree.segments):
        row = row_of_root[root_of[i]]
        a, length = used[row], len(seg.tokens)
        used[row] += length
        place.append((row, a))
        ids[row, a:a + length] = torch.tensor(seg.tokens, dtype=torch.long)
        positions[row, a:a + length] = torch.arange(seg.start, seg.start + length)
        allowed[row, a:a + length, a:a + length] = torch.ones(
            (length, length), dtype=torch.bool).tril()
        parent = seg.parent
        while parent is not None:
            _, b = place[parent]
            allowed[row, a:a + length, b:b + len(tree.segments[parent].tokens)] = True
            parent = tree.segments[parent].parent
    columns = [[(place[g][0], place[g][1] + o) for g, o in path] for path in tree.paths]
    return PackedTree(ids, positions, allowed, columns)


def model_dtype(model) -> torch.dtype:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(emb, "weight", None)
    return weight.dtype if weight is not None and weight.is_floating_point() else torch.float32


@torch.no_grad()
def sequence_logprobs(model, seqs: list[list[int]], picks: list[list[tuple[int, int]]],
                      pad_id: int, device, shared: bool | None = None) -> list[list[float]]:
    """For each sequence s and each pick (position p, token t) in ``picks[s]``: log P(t | the
    first p + 1 tokens of s), the model's next-token log-probability after position p. The
    sequences run as a packed prefix tree (one forward pass, each prefix once) where the model
    allows (``can_pack``), else unshared in one right-padded batch; ``shared`` False runs
    them unshared anyway (the benchmark's comparison), True insists on the tree."""
    if any(not s for s in seqs):
        raise ValueError("every sequence needs at least one token")
    if shared is None:
        shared = can_pack(model, seqs)
    if shared:
        packed = pack_tree(build_prefix_tree(seqs), row_limit(model), pad_id)
        dtype = model_dtype(model)
        mask = torch.zeros(packed.allowed.shape, dtype=dtype).masked_fill(
            ~packed.allowed, torch.finfo(dtype).min)
        inputs = dict(input_ids=packed.ids, position_ids=packed.positions,
                      attention_mask=mask[:, None])
        where = [[packed.columns[s][p] for p, _ in sp] for s, sp in enumerate(picks)]
    else:
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        attend = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, :len(s)] = torch.tensor(s, dtype=torch.long)
            attend[r, :len(s)] = 1
        positions = (attend.cumsum(1) - 1).clamp(min=0)
        inputs = dict(input_ids=ids, position_ids=positions, attention_mask=attend)
        where = [[(s, p) for p, _ in sp] for s, sp in enumerate(picks)]
    flat = [(r, c, t) for w, sp in zip(where, picks) for (r, c), (_, t) in zip(w, sp)]
    out = [[0.0] * len(p) for p in picks]
    if not flat:
        return out
    kwargs = {}
    columns = sorted({c for _, c, _ in flat})
    if takes_logits_to_keep(model):
        # logits only at the columns asked for (index tensor: the output layer's rows)
        kwargs["logits_to_keep"] = torch.tensor(columns, device=device)
        column = {c: k for k, c in enumerate(columns)}
    else:
        column = {c: c for c in columns}
    result = model(**{k: v.to(device) for k, v in inputs.items()}, use_cache=False, **kwargs)
    rows = torch.tensor([r for r, _, _ in flat], device=device)
    cols = torch.tensor([column[c] for _, c, _ in flat], device=device)
    tokens = torch.tensor([t for _, _, t in flat], device=device)
    logp = result.logits[rows, cols].float().log_softmax(-1)
    values = iter(logp.gather(-1, tokens[:, None])[:, 0].tolist())
    for s, sp in enumerate(picks):
        for j in range(len(sp)):
            out[s][j] = next(values)
    return out
