"""Architecture adapter: what the method needs to know about any loaded causal LM.

Given a Hugging Face causal LM, ``describe(model)`` finds by structure:

* the decoder blocks (the longest ``nn.ModuleList`` of identical blocks);
* in each block, the weight matrices the method acts on, each with a canonical role
  (q, k, v, o, gate, up, down). Fused projections (GPT-2's ``c_attn``, Phi-3's ``qkv_proj``
  and ``gate_up_proj``) are split into roles by views, and GPT-2's transposed ``Conv1D``
  layout is handled, so every matrix is seen in the ``nn.Linear`` orientation
  ``(out_features, in_features)``;
* the attention geometry (heads, KV heads, head size, hidden size);
* whether the model uses a rotary position embedding, with its base (theta), rotary size and
  the layout of the rotary pairs.

The model family is never read from its name. Projections are told apart by their shapes
against the attention geometry and, where shapes cannot tell (q and k of a multi-head model
have the same shape), by the conventional attribute names of Hugging Face modules, then by
registration order.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from tomsparse.errors import UserError

ROLES = ("q", "k", "v", "o", "gate", "up", "down")
ATTENTION_ROLES = ("q", "k", "v", "o")

# Attribute names Hugging Face modules conventionally give each projection. They only
# break ties that shapes cannot (q vs k vs v with equal shapes, gate vs up); shapes are
# always checked against the attention geometry.
_ROLE_NAMES = {
    "q": ("q_proj", "query", "q", "wq", "q_lin"),
    "k": ("k_proj", "key", "k", "wk", "k_lin"),
    "v": ("v_proj", "value", "v", "wv", "v_lin"),
    "o": ("o_proj", "out_proj", "c_proj", "dense", "wo", "out_lin", "o"),
    "qkv": ("c_attn", "qkv_proj", "Wqkv", "qkv"),
    "gate": ("gate_proj", "w1", "gate"),
    "up": ("up_proj", "c_fc", "fc1", "w3", "fc_in", "lin1", "up"),
    "down": ("down_proj", "c_proj", "fc2", "w2", "fc_out", "lin2", "down"),
    "gate_up": ("gate_up_proj",),
}
# Fused QKV projections laid out per head ([head][q,k,v][head_dim]) cannot be split by
# contiguous views; these are refused with a clear message instead of being split wrongly.
_INTERLEAVED_QKV_NAMES = ("query_key_value",)


def _is_conv1d(module: nn.Module) -> bool:
    # transformers' Conv1D (GPT-2) stores its weight as (in_features, out_features) and has
    # an ``nf`` attribute (number of output features); recognised by that structure.
    return (not isinstance(module, nn.Linear) and hasattr(module, "nf")
            and isinstance(getattr(module, "weight", None), torch.Tensor)
            and module.weight.dim() == 2 and module.weight.shape[1] == module.nf)


def _is_projection(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or _is_conv1d(module)


def _out_in(module: nn.Module) -> tuple[int, int]:
    w = module.weight
    return (w.shape[1], w.shape[0]) if _is_conv1d(module) else (w.shape[0], w.shape[1])


@dataclass(frozen=True)
class Geometry:
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def group_size(self) -> int:
        """Query heads sharing one KV head (grouped-query attention)."""
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class Rope:
    """Rotary position embedding facts.

    ``layout`` is ``"half"`` when dimension j of a head rotates together with j + rotary_dim/2
    (Hugging Face's ``rotate_half``: Llama, Qwen2, Mistral, Gemma), ``"interleaved"`` when it
    rotates with j + 1 (GPT-J style). Pair j turns at angular frequency ``inv_freq[j]``
    = theta ** (-2j / rotary_dim) radians per position: low j = high frequency.
    """

    theta: float
    rotary_dim: int
    layout: str
    inv_freq: tuple[float, ...]
    # Models with several rotary bases (Gemma 3: local and global layers) list them here.
    thetas_by_layer_type: dict = field(default_factory=dict)
    # ... and the frequencies each decoder layer really uses (empty: inv_freq for every layer).
    inv_freq_by_layer: tuple = ()

    def layer_inv_freq(self, layer: int) -> tuple[float, ...]:
        """The angular frequencies (radians per position) of the pairs of one layer."""
        if self.inv_freq_by_layer:
            return self.inv_freq_by_layer[layer]
        return self.inv_freq

    @property
    def num_pairs(self) -> int:
        return self.rotary_dim // 2

    def pair_dims(self, j: int) -> tuple[int, int]:
        """The two head dimensions that rotary pair j rotates together."""
        if self.layout == "half":
            return j, j + self.rotary_dim // 2
        return 2 * j, 2 * j + 1


@dataclass(frozen=True)
class Matrix:
    """One weight matrix the method acts on, seen as (out_features, in_features).

    ``module`` is the Linear/Conv1D holding it; for a fused projection this role owns rows
    ``rows`` of the module's output. ``weight()`` returns a view into the live parameter, so
    writes through it change the model.
    """

    name: str  # canonical: "layers.{layer}.{role}"
    layer: int
    role: str
    module: nn.Module
    param_name: str  # the weight's name in model.named_parameters()
    rows: slice  # output features of ``module`` that belong to this role
    transposed: bool  # True when the parameter is stored (in, out) (GPT-2 Conv1D)
    shape: tuple[int, int]  # (out_features, in_features) of this role

    def weight(self) -> torch.Tensor:
        w = self.module.weight
        w = w.t() if self.transposed else w
        return w[self.rows]

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def reference_key(self) -> str:
        """Key in the reference code's per-layer chunk files (layer_{i}.pt)."""
        return {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
                "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}[self.role]


@dataclass
class ModelDescription:
    blocks_path: str
    blocks: nn.ModuleList
    matrices: list[Matrix]
    geometry: Geometry
    rope: Rope | None
    attention_modules: list[nn.Module]
    tied_embeddings: bool

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def by_name(self) -> dict[str, Matrix]:
        return {m.name: m for m in self.matrices}

    def roles(self) -> list[str]:
        seen = [m.role for m in self.matrices]
        return [r for r in ROLES if r in seen]

    def shapes(self) -> dict[str, tuple[int, int]]:
        return {m.name: m.shape for m in self.matrices}


def _config_of(model: nn.Module):
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise UserError("the model has no Hugging Face config; load it with transformers' "
                        "AutoModelForCausalLM")
    # Multimodal wrappers keep the language model's config under text_config.
    return getattr(cfg, "text_config", None) or cfg


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder blocks: the longest ModuleList whose items share one class and each hold
    projections."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if len({type(b) for b in mod}) != 1:
            continue
        if not any(_is_projection(s) for s in mod[0].modules()):
            continue
        if best is None or len(mod) > len(best[1]):
            best = (name, mod)
    if best is None:
        raise UserError(f"cannot find decoder blocks in {type(model).__name__}: no list of "
                        "repeated blocks with linear projections; this model family is not "
                        "supported")
    return best


def geometry_of(model: nn.Module) -> Geometry:
    cfg = _config_of(model)
    hidden = getattr(cfg, "hidden_size", None)
    heads = getattr(cfg, "num_attention_heads", None)
    if hidden is None or heads is None:
        raise UserError(f"the config of {type(model).__name__} names no hidden_size / "
                        "num_attention_heads; this model family is not supported")
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    return Geometry(hidden_size=int(hidden), num_heads=int(heads), num_kv_heads=int(kv),
                    head_dim=int(head_dim))


def _layer_thetas(cfg) -> dict:
    params = getattr(cfg, "rope_parameters", None)
    out = {}
    # An entry may hold rope_theta None (transformers 5.0's Gemma 3 config): no base there.
    if isinstance(params, dict):
        if params.get("rope_theta") is not None:
            out["default"] = float(params["rope_theta"])
        for key, value in params.items():
            if isinstance(value, dict) and value.get("rope_theta") is not None:
                out[key] = float(value["rope_theta"])
    if not out and getattr(cfg, "rope_theta", None) is not None:
        out["default"] = float(cfg.rope_theta)
    return out


def rope_of(model: nn.Module, geometry: Geometry) -> Rope | None:
    """RoPE facts, found from the rotary module's ``inv_freq`` buffers; None for models
    without a rotary embedding (GPT-2, OPT)."""
    inv, inv_kind = None, ""
    by_kind: dict[str, tuple] = {}
    for name, buf in model.named_buffers():
        leaf = name.rsplit(".", 1)[-1]
        if leaf.endswith("inv_freq") and "original" not in leaf:
            kind = leaf[: -len("inv_freq")].rstrip("_")
            by_kind[kind] = tuple(float(x) for x in buf.detach().float().cpu())
            # With several rotary bases (Gemma 3: "sliding_attention_inv_freq" and
            # "full_attention_inv_freq"), prefer the global (full attention) one.
            if inv is None or leaf.startswith("full"):
                inv, inv_kind = buf, kind
    if inv is None:
        return None
    # Per layer, the buffer named after its layer type (config.layer_types), where there are
    # several; an unknown type falls back to the main one.
    layer_types = getattr(_config_of(model), "layer_types", None) or ()
    per_layer = ()
    if len(by_kind) > 1 and layer_types:
        per_layer = tuple(by_kind.get(t, by_kind[inv_kind]) for t in layer_types)
    inv = inv.detach().float().cpu()
    rotary_dim = 2 * inv.numel()
    # theta from the first non-unit frequency: inv_freq[j] = theta^(-2j/rotary_dim).
    theta = float(inv[1] ** (-rotary_dim / 2.0)) if inv.numel() > 1 else float("nan")
    # Round away float error (1e5 reads back as 99999.99...).
    if theta == theta and theta > 0:
        theta = float(f"{theta:.6g}")
    thetas = _layer_thetas(_config_of(model))
    # Report the configured base of the buffer we read, so theta and inv_freq agree.
    theta = thetas.get(inv_kind or "default", thetas.get("default", theta))
    # The pairing layout is a property of the attention code: Hugging Face modules that pair
    # dimension j with j + d/2 define ``rotate_half``; GPT-J-style ones ``rotate_every_two``.
    layout = "half"
    for mod in model.modules():
        code = sys.modules.get(type(mod).__module__)
        if code is not None and hasattr(code, "rotate_every_two") and not hasattr(code, "rotate_half"):
            layout = "interleaved"
            break
    return Rope(theta=theta, rotary_dim=rotary_dim, layout=layout,
                inv_freq=tuple(float(x) for x in inv), thetas_by_layer_type=thetas,
                inv_freq_by_layer=per_layer)


def _name_role(attr: str) -> str | None:
    for role, names in _ROLE_NAMES.items():
        if attr in names:
            return role
    return None


def _assign_attention(projs: list[tuple[str, nn.Module]], g: Geometry, where: str):
    """Roles for the projections of one attention module: [(role, module, rows, attr)]."""
    out = []
    attrs = [a.rsplit(".", 1)[-1] for a, _ in projs]
    if any(a in _INTERLEAVED_QKV_NAMES for a in attrs):
        raise UserError(f"{where}: fused QKV projection laid out per head (GPT-NeoX style) is "
                        "not supported; use a model with separate or contiguous QKV projections")
    shapes = [_out_in(m) for _, m in projs]
    fused_size = g.q_size + 2 * g.kv_size
    fused = [i for i, (o, i_) in enumerate(shapes) if o == fused_size and i_ == g.hidden_size]
    if len(projs) == 2 and fused:
        i_qkv = fused[0]
        i_o = 1 - i_qkv
        _, qkv = projs[i_qkv]
        out.append(("q", qkv, slice(0, g.q_size), attrs[i_qkv]))
        out.append(("k", qkv, slice(g.q_size, g.q_size + g.kv_size), attrs[i_qkv]))
        out.append(("v", qkv, slice(g.q_size + g.kv_size, fused_size), attrs[i_qkv]))
        o_mod = projs[i_o][1]
        if _out_in(o_mod) != (g.hidden_size, g.q_size):
            raise UserError(f"{where}: output projection has shape {_out_in(o_mod)}, expected "
                            f"{(g.hidden_size, g.q_size)}")
        out.append(("o", o_mod, slice(0, g.hidden_size), attrs[i_o]))
        return out
    if len(projs) != 4:
        raise UserError(f"{where}: found {len(projs)} projections in the attention module "
                        f"({', '.join(attrs)}); expected q, k, v, o or a fused qkv and o")
    # Output projection: the one whose input is the concatenated heads and output the model
    # width, preferring the conventional name when q_size == hidden (then q and o match).
    remaining = list(range(4))
    by_name = {i: _name_role(attrs[i]) for i in remaining}
    o_cands = [i for i in remaining if shapes[i] == (g.hidden_size, g.q_size)]
    named_o = [i for i in o_cands if by_name[i] == "o"]
    i_o = named_o[0] if named_o else (o_cands[-1] if o_cands else None)
    if i_o is None:
        raise UserError(f"{where}: no projection of shape {(g.hidden_size, g.q_size)} "
                        "(output projection)")
    remaining.remove(i_o)
    assigned = {"o": i_o}
    for role, size in (("q", g.q_size), ("k", g.kv_size), ("v", g.kv_size)):
        cands = [i for i in remaining if shapes[i] == (size, g.hidden_size)]
        named = [i for i in cands if by_name[i] == role]
        pick = named[0] if named else (cands[0] if cands else None)
        if pick is None:
            raise UserError(f"{where}: no projection for role {role} with shape "
                            f"{(size, g.hidden_size)} among {dict(zip(attrs, shapes))}")
        assigned[role] = pick
        remaining.remove(pick)
    for role in ATTENTION_ROLES:
        i = assigned[role]
        mod = projs[i][1]
        out.append((role, mod, slice(0, _out_in(mod)[0]), attrs[i]))
    return out


def _assign_mlp(projs: list[tuple[str, nn.Module]], g: Geometry, where: str):
    attrs = [a.rsplit(".", 1)[-1] for a, _ in projs]
    shapes = [_out_in(m) for _, m in projs]
    names = [_name_role(a) for a in attrs]
    if len(projs) == 2:
        # Either up/down (GPT-2, OPT) or a fused gate_up and down (Phi-3).
        i_down = [i for i in range(2) if shapes[i][0] == g.hidden_size]
        i_up = [i for i in range(2) if shapes[i][1] == g.hidden_size and i not in i_down[:1]]
        if len(i_down) < 1 or len(i_up) < 1:
            raise UserError(f"{where}: cannot tell the MLP projections apart: "
                            f"{dict(zip(attrs, shapes))}")
        d, u = i_down[0], i_up[0]
        inter = shapes[d][1]
        up_mod = projs[u][1]
        if names[u] == "gate_up" or shapes[u][0] == 2 * inter:
            return [("gate", up_mod, slice(0, inter), attrs[u]),
                    ("up", up_mod, slice(inter, 2 * inter), attrs[u]),
                    ("down", projs[d][1], slice(0, g.hidden_size), attrs[d])]
        return [("up", up_mod, slice(0, shapes[u][0]), attrs[u]),
                ("down", projs[d][1], slice(0, g.hidden_size), attrs[d])]
    if len(projs) == 3:
        downs = [i for i in range(3) if shapes[i][0] == g.hidden_size and shapes[i][1] != g.hidden_size]
        if len(downs) != 1:
            downs = [i for i in range(3) if names[i] == "down"]
        if len(downs) != 1:
            raise UserError(f"{where}: cannot find the MLP down projection among "
                            f"{dict(zip(attrs, shapes))}")
        d = downs[0]
        rest = [i for i in range(3) if i != d]
        gate = [i for i in rest if names[i] == "gate"]
        i_gate = gate[0] if gate else rest[0]  # registration order: gate before up
        i_up = [i for i in rest if i != i_gate][0]
        return [(role, projs[i][1], slice(0, shapes[i][0]), attrs[i])
                for role, i in (("gate", i_gate), ("up", i_up), ("down", d))]
    raise UserError(f"{where}: found {len(projs)} MLP projections ({', '.join(attrs)}); "
                    "expected gate/up/down, up/down or gate_up/down")


def describe(model: nn.Module) -> ModelDescription:
    """Find blocks, target matrices, geometry and RoPE facts of a causal LM by structure."""
    g = geometry_of(model)
    blocks_path, blocks = find_blocks(model)
    param_names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    matrices: list[Matrix] = []
    attention_modules: list[nn.Module] = []
    for layer, block in enumerate(blocks):
        where = f"{blocks_path}.{layer}"
        projs = [(n, m) for n, m in block.named_modules() if n and _is_projection(m)]
        if not projs:
            raise UserError(f"{where}: no linear projections found")
        # Attention is the first sub-module holding projections (every HF decoder registers
        # attention before the MLP); its projections are those under that parent.
        first_parent = projs[0][0].rsplit(".", 1)[0] if "." in projs[0][0] else ""
        attn = [(n, m) for n, m in projs if first_parent and n.startswith(first_parent + ".")]
        if not attn:
            raise UserError(f"{where}: cannot locate the attention module")
        mlp = [(n, m) for n, m in projs if not n.startswith(first_parent + ".")]
        attention_modules.append(block.get_submodule(first_parent))
        assigned = (_assign_attention(attn, g, where + "." + first_parent)
                    + _assign_mlp(mlp, g, where))
        for role, mod, rows, _attr in assigned:
            pname = param_names.get(id(mod.weight))
            conv = _is_conv1d(mod)
            _, in_f = _out_in(mod)
            out_f = rows.stop - rows.start
            matrices.append(Matrix(name=f"layers.{layer}.{role}", layer=layer, role=role,
                                   module=mod, param_name=pname, rows=rows, transposed=conv,
                                   shape=(out_f, in_f)))
    counts = Counter(m.role for m in matrices)
    if len(set(counts.values())) != 1:
        raise UserError(f"inconsistent projections across layers: {dict(counts)}")
    tied = False
    inp, outp = model.get_input_embeddings(), model.get_output_embeddings()
    if inp is not None and outp is not None:
        tied = inp.weight.data_ptr() == outp.weight.data_ptr()
    return ModelDescription(blocks_path=blocks_path, blocks=blocks, matrices=matrices,
                            geometry=g, rope=rope_of(model, g),
                            attention_modules=attention_modules, tied_embeddings=tied)


def select_matrices(desc: ModelDescription, roles=None, layers=None) -> list[Matrix]:
    """The target matrices restricted to some roles and/or layers (None = all)."""
    roles = set(roles) if roles else None
    bad = (roles or set()) - set(ROLES)
    if bad:
        raise UserError(f"unknown role(s) {sorted(bad)}; roles are {', '.join(ROLES)}")
    out = [m for m in desc.matrices
           if (roles is None or m.role in roles) and (layers is None or m.layer in layers)]
    if not out:
        raise UserError(f"no target matrices for roles={sorted(roles) if roles else 'all'} "
                        f"layers={layers}; this model has roles {desc.roles()} and "
                        f"{desc.num_layers} layers")
    return out


def fingerprint(model: nn.Module, desc: ModelDescription | None = None,
                weights: str | None = None) -> str:
    """A short hash of the config, the target matrices' shapes and (``weights``, a digest of
    the weight files it was read from: ``gguf.weights_digest``) their content: score files,
    masks and sweeps carry it so they are never applied to another model, nor to damaged
    weights. A model built in memory has no weights digest: config and shapes only."""
    desc = desc or describe(model)
    cfg = _config_of(model).to_dict()
    for volatile in ("_name_or_path", "transformers_version", "dtype", "torch_dtype",
                     "quantization_config", "_attn_implementation_autoset", "architectures",
                     "use_cache", "_commit_hash", "attn_implementation",
                     "_attn_implementation"):
        cfg.pop(volatile, None)
    facts = {"config": cfg, "shapes": {k: list(v) for k, v in desc.shapes().items()}}
    if weights:
        facts["weights"] = weights
    payload = json.dumps(facts, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
