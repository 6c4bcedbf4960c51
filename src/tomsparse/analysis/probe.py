"""Forward-pass measurements for analyses 2-5, reduced on the fly.

Post-RoPE queries and keys are read at one named hook point: while a ``capture`` is active,
the model's attention implementation is ``"tomsparse_probe"``, registered through
transformers' ``AttentionInterface`` as ``_probe_attention`` (with eager's mask format). Every Hugging Face attention module of transformers 5 (Llama, Qwen2,
Mistral, Gemma 3, GPT-2 and OPT are tested) calls that interface with the query and key
already rotated, shaped (batch, heads, T, head_dim) and (batch, kv_heads, T, head_dim) (keys
not yet repeated for grouped heads). The probe delegates to the model's own
``eager_attention_forward`` (so Gemma's soft-capping and sliding windows are kept), then
reduces the query, key and attention weights to per-(layer, head) sums before returning.

Queries and keys "without the rotary embedding" are the captured ones rotated back with the
very cos/sin tensors the model passed to its attention module (read by a forward pre-hook on
the module's ``position_embeddings`` argument). We un-rotate instead of hooking q_proj/k_proj
because that gives the tensors exactly where RoPE acts: after Gemma's q_norm/k_norm, after
the reshaping into heads, and with the model's own per-layer rotary base (Gemma 3 local and
global layers differ), without re-implementing any model's attention.

Nothing is kept per token across batches: every quantity is a running sum (float64) per
(layer, head[, pair]) with its count, and the massive activations keep only a running top-k.

Conventions: prompts are right-padded, so position 0 is the first token of every prompt
(BOS where the tokenizer adds one; SmolLM2's does not, so there it is the prompt's first
word piece). "Queries" are the valid positions t >= 1: position 0 attends only to itself and
is left out of every attention / angle average. "Other keys" of a query at t are the keys at
positions 1..t (causal, position 0 excluded).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

import torch

from tomsparse.lm.batching import input_device
from tomsparse.lm.hooks import Hook, hooked

_ACTIVE: "Probe | None" = None
# Log10 range and bins of the |hidden state| histogram behind the per-layer median.
MEDIAN_LOG10_RANGE = (-12.0, 8.0)
MEDIAN_BINS = 4096
# Entries of the (batch, heads, T, T) angle matrix built at once (heads are chunked to fit).
GEOMETRY_CHUNK = 1 << 24


def _eager_for(module):
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:
        raise RuntimeError(f"{type(module).__name__}: its modeling file has no "
                           "eager_attention_forward to delegate to")
    return fn


def _probe_attention(module, query, key, value, attention_mask, *args, **kwargs):
    out, weights = _eager_for(module)(module, query, key, value, attention_mask, *args, **kwargs)
    probe = _ACTIVE
    if probe is not None and id(module) in probe.layer_of:
        probe.on_attention(module, query, key, weights)
    return out, weights


def rotate(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The partner-swapping map of RoPE: y = x*cos + rotate(x)*sin."""
    if layout == "half":
        a, b = x.chunk(2, dim=-1)
        return torch.cat((-b, a), dim=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack((-b, a), dim=-1).flatten(-2)


def unrotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str) -> torch.Tensor:
    """Undo ``x*cos + rotate(x)*sin`` on the first cos.shape[-1] dims of ``x``.

    x: (B, heads, T, D); cos, sin: (B, T, rotary_dim). With c and s equal on both dims of a
    pair, (y*c - rotate(y)*s) = x*(c^2 + s^2), so dividing by c^2 + s^2 also undoes a rotary
    attention scaling factor.
    """
    rd = cos.shape[-1]
    c, s = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
    y = x[..., :rd]
    back = (y * c - rotate(y, layout) * s) / (c * c + s * s)
    return torch.cat((back, x[..., rd:]), dim=-1) if rd < x.shape[-1] else back


def pair_sq_norms(x: torch.Tensor, rotary_dim: int, layout: str) -> torch.Tensor:
    """Squared norm of each rotary pair: (..., D) -> (..., rotary_dim/2)."""
    y = x[..., :rotary_dim]
    if layout == "half":
        a, b = y.chunk(2, dim=-1)
    else:
        a, b = y[..., 0::2], y[..., 1::2]
    return a * a + b * b


class Probe:
    """Running sums for one condition (baseline or one perturbation)."""

    def __init__(self, desc, massive_top: int = 3):
        g = desc.geometry
        self.desc = desc
        self.layer_of = {id(m): i for i, m in enumerate(desc.attention_modules)}
        L, H, KV = desc.num_layers, g.num_heads, g.num_kv_heads
        self.L, self.H, self.KV, self.group = L, H, KV, g.group_size
        self.rope = desc.rope
        z = lambda *s: torch.zeros(*s, dtype=torch.float64)  # noqa: E731
        self.calls = torch.zeros(L, dtype=torch.long)
        self.n_query = z(L)          # query tokens t >= 1
        self.n_token = z(L)          # all valid tokens
        self.sink = z(L, H)          # sum of attention weight on position 0
        P = self.rope.num_pairs if self.rope else 0
        self.q_pair = z(L, H, P)     # sum of per-pair norms of q
        self.k_pair = z(L, KV, P)
        # geometry, [0] with RoPE (as attention sees them), [1] rotated back
        self.geo = {k: z(2, L, H) for k in ("angle_bos", "angle_others", "norm_q",
                                            "norm_kbos", "norm_kothers")}
        self.geo_ok = torch.zeros(2, L, dtype=torch.bool)
        self.massive_top = massive_top
        self.massive: list[list[tuple]] = [[] for _ in range(L)]  # (mag, prompt, pos, dim, id)
        # |h| per layer as a histogram on log10 bins (streaming median with bounded error).
        self.abs_hist = z(L, MEDIAN_BINS)
        self.valid: torch.Tensor | None = None     # (B, T) bool, set per batch
        self.input_ids: torch.Tensor | None = None
        self.prompt_offset = 0
        self.pos_emb: dict[int, tuple] = {}

    # ------------------------------------------------------------------ attention
    @torch.no_grad()
    def on_attention(self, module, query, key, weights):
        layer = self.layer_of[id(module)]
        self.calls[layer] += 1
        valid = self.valid.to(query.device)
        B, H, T, D = query.shape
        if H != self.H:
            raise RuntimeError(f"layer {layer}: query has {H} heads, the model description {self.H}")
        qmask = valid.clone()
        qmask[:, 0] = False                       # queries t >= 1
        qm = qmask[:, None, :].float()            # (B, 1, T)
        self.n_query[layer] += float(qmask.sum())
        self.n_token[layer] += float(valid.sum())
        if weights is not None:
            self.sink[layer] += (weights[..., 0].float() * qm).sum(dim=(0, 2)).double().cpu()
        if self.rope is None:
            return
        rd, layout = self.rope.rotary_dim, self.rope.layout
        vm = valid[:, None, :, None].float()
        q32, k32 = query.float(), key.float()
        self.q_pair[layer] += (pair_sq_norms(q32, rd, layout).sqrt() * vm).sum(dim=(0, 2)).double().cpu()
        self.k_pair[layer] += (pair_sq_norms(k32, rd, layout).sqrt() * vm).sum(dim=(0, 2)).double().cpu()
        versions = [(q32, k32)]
        pe = self.pos_emb.get(layer)
        if pe is not None:
            cos, sin = pe
            versions.append((unrotate(q32, cos.float(), sin.float(), layout),
                             unrotate(k32, cos.float(), sin.float(), layout)))
        for v, (q, k) in enumerate(versions):
            self._geometry(layer, v, q, k, qmask)

    def _geometry(self, layer, v, q, k, qmask):
        k = k.repeat_interleave(self.group, dim=1)       # head h uses KV head h // group
        B, H, T, D = q.shape
        # The (B, heads, T, T) angle matrix is built a few heads at a time so that its extra
        # memory stays bounded (GEOMETRY_CHUNK entries) on long prompts and many heads.
        step = max(1, min(H, GEOMETRY_CHUNK // max(1, B * T * T)))
        for h0 in range(0, H, step):
            self._geometry_heads(layer, v, q[:, h0:h0 + step], k[:, h0:h0 + step], qmask, h0)
        self.geo_ok[v, layer] = True

    def _geometry_heads(self, layer, v, q, k, qmask, h0):
        B, H, T, D = q.shape
        qn, kn = q.norm(dim=-1), k.norm(dim=-1)          # (B, H, T)
        qhat = q / qn.clamp_min(1e-30)[..., None]
        khat = k / kn.clamp_min(1e-30)[..., None]
        cosang = (qhat @ khat.transpose(-1, -2)).clamp(-1.0, 1.0)   # (B, H, Tq, Tk)
        ang = torch.rad2deg(torch.arccos(cosang))
        qm = qmask[:, None, :].float()
        t = torch.arange(T, device=q.device)
        others = ((t[None, :] >= 1) & (t[None, :] <= t[:, None])).float()   # (Tq, Tk)
        n_others = others.sum(-1).clamp_min(1.0)                          # = t for t >= 1
        ang_others = (ang * others).sum(-1) / n_others
        kn_others = (kn[:, :, None, :] * others).sum(-1) / n_others
        g = self.geo
        red = lambda x: (x * qm).sum(dim=(0, 2)).double().cpu()  # noqa: E731
        hs = slice(h0, h0 + H)
        g["angle_bos"][v, layer, hs] += red(ang[..., 0])
        g["angle_others"][v, layer, hs] += red(ang_others)
        g["norm_q"][v, layer, hs] += red(qn)
        g["norm_kbos"][v, layer, hs] += red(kn[..., :1].expand_as(qn))
        g["norm_kothers"][v, layer, hs] += red(kn_others)

    # ------------------------------------------------------------------ hidden states
    @torch.no_grad()
    def on_hidden(self, layer: int, h: torch.Tensor):
        valid = self.valid.to(h.device)
        mag = h.detach().float().abs() * valid[..., None]
        B, T, D = mag.shape
        k = min(self.massive_top, mag.numel())
        vals, idx = mag.reshape(-1).topk(k)
        cand = self.massive[layer]
        for val, i in zip(vals.tolist(), idx.tolist()):
            b, rem = divmod(i, T * D)
            pos, dim = divmod(rem, D)
            cand.append((val, self.prompt_offset + b, pos, dim, int(self.input_ids[b, pos])))
        cand.sort(key=lambda c: -c[0])
        del cand[self.massive_top:]
        # clamped into the range: histc would drop values outside it
        logs = mag[valid].reshape(-1).clamp_min(10.0 ** MEDIAN_LOG10_RANGE[0]).log10().clamp_max(
            MEDIAN_LOG10_RANGE[1])
        self.abs_hist[layer] += torch.histc(logs, MEDIAN_BINS, *MEDIAN_LOG10_RANGE).double().cpu()

    def median_abs(self, layer: int) -> float:
        """Median |h| over every valid token and dimension of a layer's output, from the
        histogram: the centre of the bin holding the middle value (relative error below
        half a bin, about 0.6%; values are clamped into 1e-12 .. 1e8)."""
        counts = self.abs_hist[layer]
        total = float(counts.sum())
        if total == 0:
            return float("nan")
        i = int(torch.searchsorted(counts.cumsum(0), torch.tensor(total / 2, dtype=torch.float64)))
        lo, hi = MEDIAN_LOG10_RANGE
        return 10.0 ** (lo + (min(i, MEDIAN_BINS - 1) + 0.5) * (hi - lo) / MEDIAN_BINS)

    # ------------------------------------------------------------------ results
    def sink_means(self) -> torch.Tensor:
        return self.sink / self.n_query.clamp_min(1)[:, None]

    def pair_means(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.n_token.clamp_min(1)[:, None, None]
        return self.q_pair / n, self.k_pair / n

    def geometry_means(self) -> dict[str, torch.Tensor]:
        n = self.n_query.clamp_min(1)[None, :, None]
        out = {k: v / n for k, v in self.geo.items()}
        for k in out:
            out[k][~self.geo_ok] = float("nan")
        return out


def _block_hook(probe: Probe, layer: int):
    def hook(_module, _inputs, output):
        h = output[0] if isinstance(output, (tuple, list)) else output
        probe.on_hidden(layer, h)
    return hook


def _pos_emb_hook(probe: Probe, layer: int):
    def hook(_module, args, kwargs):
        pe = kwargs.get("position_embeddings")
        if isinstance(pe, (tuple, list)) and len(pe) == 2 and all(torch.is_tensor(x) for x in pe):
            probe.pos_emb[layer] = (pe[0].detach(), pe[1].detach())
    return hook


PROBE_ATTENTION = "tomsparse_probe"


def _register_probe_attention() -> None:
    """Register the probe as an attention implementation of its own (public transformers
    interfaces), with eager's mask format: the model is switched to it for a capture, and no
    other model in the process is affected."""
    from transformers import AttentionInterface
    from transformers.masking_utils import (
        ALL_MASK_ATTENTION_FUNCTIONS,
        AttentionMaskInterface,
    )

    AttentionInterface.register(PROBE_ATTENTION, _probe_attention)
    AttentionMaskInterface.register(PROBE_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["eager"])


@contextmanager
def capture(model, probe: Probe):
    """Route the model's attention through the probe and hook its blocks, for the duration."""
    global _ACTIVE
    _register_probe_attention()
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    # SDPA / flash attention return no weights: the probe computes eager attention.
    model.set_attn_implementation(PROBE_ATTENTION)
    hooks = [Hook(block, "forward", _block_hook(probe, layer))
             for layer, block in enumerate(probe.desc.blocks)]
    hooks += [Hook(att, "forward_pre", _pos_emb_hook(probe, layer), with_kwargs=True)
              for layer, att in enumerate(probe.desc.attention_modules)]
    _ACTIVE = probe
    try:
        with hooked(hooks):
            yield probe
    finally:
        _ACTIVE = None
        model.set_attn_implementation(impl)


def batches(tokenized: list[list[int]], batch_size: int, pad_id: int):
    """Right-padded batches: (offset, input_ids, attention_mask)."""
    for start in range(0, len(tokenized), batch_size):
        chunk = tokenized[start:start + batch_size]
        width = max(len(x) for x in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, x in enumerate(chunk):
            ids[i, :len(x)] = torch.tensor(x, dtype=torch.long)
            mask[i, :len(x)] = 1
        yield start, ids, mask


@torch.no_grad()
def measure(model, desc, tokenized: list[list[int]], pad_id: int = 0, batch_size: int = 8,
            massive_top: int = 3) -> Probe:
    """Run the prompts once through the model with the probe; returns the filled probe."""
    probe = Probe(desc, massive_top=massive_top)
    device = input_device(model)
    with capture(model, probe):
        for offset, ids, mask in batches(tokenized, batch_size, pad_id):
            probe.valid = mask.bool().to(device)
            probe.input_ids = ids
            probe.prompt_offset = offset
            probe.pos_emb = {}
            model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    missing = [i for i in range(probe.L) if int(probe.calls[i]) == 0]
    if missing:
        raise RuntimeError(f"layers {missing} never called the attention interface; this "
                           "model's attention cannot be probed")
    return probe
