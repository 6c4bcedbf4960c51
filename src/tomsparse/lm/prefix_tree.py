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
is n_positions long); a subtree larger than a row is split below its root into pieces that
each repeat the segments above them (a long story shared by variants that part early is then
run once per variant, not once per sequence); only the last columns of shorter rows are
padding. A row is as wide as the longest sequence needs (up to the model's positions), and
rows run a few at a time, so that the (row x row) masks stay within ``MASK_ELEMENTS``.
Logits are taken only at the columns asked for (``logits_to_keep`` as an index tensor where
the model takes one).

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


# The most tokens one packed row holds (unless a sequence itself is longer): its mask is
# (row x row), so the rows stay a size whose mask and attention weights are small beside the
# model.
ROW_TOKENS = 4096
# Mask entries one forward pass holds at most (rows x width x width): rows as wide as a long
# story run one or two at a time.
MASK_ELEMENTS = 4 * ROW_TOKENS * ROW_TOKENS


def position_limit(model) -> int | None:
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
    return int(limit) if limit else None


def row_limit(model, needed: int = 0) -> int:
    """The longest packed row ``model`` takes: ROW_TOKENS, or ``needed`` (the largest
    subtree of a tree, so that it stays whole in one row) where that is more, but never past
    its position limit (GPT-2's causal buffer is n_positions long, so a longer row fails even
    with every position id inside the limit); a subtree larger than that is split."""
    limit = position_limit(model)
    wanted = max(ROW_TOKENS, needed)
    return min(wanted, limit) if limit else wanted


def can_pack(model, seqs: list[list[int]]) -> bool:
    """Whether ``seqs`` can run as packed trees on ``model``: its attention takes a custom
    mask, no sequence is longer than a sliding window (the one mask serves every layer, so a
    window narrower than a sequence would not be applied) nor than a row (``row_limit``; a
    subtree larger than a row is split, so only a sequence longer than the positions can
    keep it from packing)."""
    config = model.config
    impl = getattr(config, "_attn_implementation", None) or "sdpa"
    window = sliding_window(model)
    longest = max(map(len, seqs))
    if impl not in MASKED_ATTENTION or (window is not None and longest > window):
        return False
    return longest <= row_limit(model, longest)


def subtree_tokens(tree: PrefixTree) -> list[int]:
    """Tokens under each root segment (in the order the roots were made): a row's unit."""
    size = _subtree_sizes(tree)
    return [size[i] for i, seg in enumerate(tree.segments) if seg.parent is None]


def _subtree_sizes(tree: PrefixTree) -> list[int]:
    size = [len(seg.tokens) for seg in tree.segments]
    for i in range(len(tree.segments) - 1, -1, -1):  # children come after their parents
        parent = tree.segments[i].parent
        if parent is not None:
            size[parent] += size[i]
    return size


def _pieces(tree: PrefixTree, row_tokens: int | None) -> list[list[int]]:
    """The tree cut into rows: lists of segment indices, each closed under ancestors (a
    segment's ancestors come with it, before it), at most ``row_tokens`` tokens. Whole root
    subtrees where they fit; a larger subtree is cut below its root, each piece repeating
    the segments above it; then pieces are joined in order while their union fits."""
    segs = tree.segments
    size = _subtree_sizes(tree)
    below: list[list[int]] = [[] for _ in segs]   # each segment's subtree, in index order
    for i in range(len(segs) - 1, -1, -1):
        below[i] = [i] + sorted(j for c in segs[i].children for j in below[c])
    roots = [i for i, seg in enumerate(segs) if seg.parent is None]
    if row_tokens is None:
        return [[j for r in roots for j in below[r]]]
    pieces: list[list[int]] = []
    todo = [(r, (), 0) for r in reversed(roots)]
    while todo:
        i, above, above_tokens = todo.pop()
        if above_tokens + size[i] <= row_tokens:
            pieces.append(list(above) + below[i])
            continue
        own = above_tokens + len(segs[i].tokens)
        if not segs[i].children or own > row_tokens:
            raise ValueError(f"a sequence of more than {row_tokens} tokens exceeds a row of "
                             f"{row_tokens}")
        todo += [(c, above + (i,), own) for c in reversed(segs[i].children)]
    rows: list[list[int]] = []
    for piece in pieces:
        if rows:
            held = set(rows[-1])
            union = rows[-1] + [j for j in piece if j not in held]
            if sum(len(segs[j].tokens) for j in union) <= row_tokens:
                rows[-1] = union
                continue
        rows.append(piece)
    return rows


@dataclass
class PackedTree:
    """A tree laid out in rows: each row holds whole root subtrees or pieces of one (the
    segments above a piece repeated in it), parents before children; rows shorter than the
    widest end in padding that sees only itself. ``allowed[r, q, k]``: in row r token q sees
    token k (k is q itself, earlier in q's segment, or in one of its ancestor segments);
    ``positions`` each token's position in its sequences; ``columns[s][p]`` the (row, column)
    of sequence s's token at p."""

    ids: torch.Tensor         # (rows, width) long
    positions: torch.Tensor   # (rows, width) long
    allowed: torch.Tensor     # (rows, width, width) bool
    columns: list[list[tuple[int, int]]]


def pack_tree(tree: PrefixTree, row_tokens: int | None = None, pad_id: int = 0) -> PackedTree:
    """The packed layout of ``tree`` in rows of at most ``row_tokens`` tokens (one row when
    None): root subtrees in the order made, a subtree larger than a row cut into pieces that
    repeat the segments above them (``_pieces``); a single sequence longer than a row is an
    error (``can_pack`` says so first). Within a row a parent always precedes its
    children."""
    segs = tree.segments
    rows_of = _pieces(tree, row_tokens)
    width = max(sum(len(segs[j].tokens) for j in row) for row in rows_of)
    rows = len(rows_of)
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    positions = torch.zeros((rows, width), dtype=torch.long)
    allowed = torch.eye(width, dtype=torch.bool).repeat(rows, 1, 1)  # padding sees itself
    place: dict[tuple[int, int], int] = {}    # (row, segment) -> its first column
    owner: dict[int, int] = {}                # segment -> the first row holding it
    for row, members in enumerate(rows_of):
        used = 0
        for i in members:
            seg = segs[i]
            a, length = used, len(seg.tokens)
            used += length
            place[(row, i)] = a
            owner.setdefault(i, row)
            ids[row, a:a + length] = torch.tensor(seg.tokens, dtype=torch.long)
            positions[row, a:a + length] = torch.arange(seg.start, seg.start + length)
            allowed[row, a:a + length, a:a + length] = torch.ones(
                (length, length), dtype=torch.bool).tril()
            parent = seg.parent
            while parent is not None:
                b = place[(row, parent)]
                allowed[row, a:a + length, b:b + len(segs[parent].tokens)] = True
                parent = segs[parent].parent
    columns = []
    for path in tree.paths:
        row = owner[path[-1][0]]  # the row holding its last segment holds all of it
        columns.append([(row, place[(row, g)] + o) for g, o in path])
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
        tree = build_prefix_tree(seqs)
        packed = pack_tree(tree, row_limit(model, max(subtree_tokens(tree))), pad_id)
        where = [[packed.columns[s][p] for p, _ in sp] for s, sp in enumerate(picks)]
        flat = [(r, c, t) for w, sp in zip(where, picks) for (r, c), (_, t) in zip(w, sp)]
        out = [[0.0] * len(p) for p in picks]
        if not flat:
            return out
        rows, width = packed.ids.shape
        step = max(1, MASK_ELEMENTS // (width * width))   # rows per forward pass
        values: dict[tuple[int, int, int], float] = {}
        for first in range(0, rows, step):
            part = [(r, c, t) for r, c, t in flat if first <= r < first + step]
            if not part:
                continue
            sl = slice(first, first + step)
            dtype = model_dtype(model)
            mask = torch.zeros(packed.allowed[sl].shape, dtype=dtype).masked_fill(
                ~packed.allowed[sl], torch.finfo(dtype).min)
            inputs = dict(input_ids=packed.ids[sl], position_ids=packed.positions[sl],
                          attention_mask=mask[:, None])
            got = _logprobs_at(model, inputs, [(r - first, c, t) for r, c, t in part], device)
            values.update({key: v for key, v in zip(part, got)})
        found = iter(values[key] for key in flat)
        for s, sp in enumerate(picks):
            for j in range(len(sp)):
                out[s][j] = next(found)
        return out
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
    values = iter(_logprobs_at(model, inputs, flat, device))
    for s, sp in enumerate(picks):
        for j in range(len(sp)):
            out[s][j] = next(values)
    return out


def _logprobs_at(model, inputs: dict, flat: list[tuple[int, int, int]], device) -> list[float]:
    """One forward pass of ``inputs``; for each (row, column, token) of ``flat``: log P(token)
    after that column."""
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
    return logp.gather(-1, tokens[:, None])[:, 0].tolist()
