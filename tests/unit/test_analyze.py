"""The mechanistic analyses (``tomsparse analyze``) on tiny models with hand-set weights.

Every expected value is computed independently of the code under test: closed forms,
torch re-computations from the projection outputs with our own rotary embedding, numpy
ranks of dense masks.
"""

import math

import numpy as np
import pytest
import torch
from helpers import tom_and_generic_scores, write_run_folder

from tomsparse.analysis import anatomy as A
from tomsparse.analysis import tables as T
from tomsparse.analysis.probe import Probe, capture, measure
from tomsparse.analysis.run import AnalysisConfig, analyze
from tomsparse.lm.adapter import describe
from tomsparse.testing import ARCHITECTURES, CharTokenizer, tiny_model

PROMPTS = [[5, 9, 14, 3, 22, 7, 31], [8, 2, 40, 11], [17, 6, 25, 12, 4, 19, 27, 33, 2]]


# ------------------------------------------------------------------ independent helpers
def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope(x, theta):
    """Rotate (B, heads, T, D) by positions 0..T-1 with base theta, the half layout."""
    D, Tn = x.shape[-1], x.shape[-2]
    inv = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = torch.arange(Tn, dtype=torch.float64)[:, None] * inv[None, :]
    emb = torch.cat((ang, ang), dim=-1)
    x = x.double()
    return (x * emb.cos() + _rotate_half(x) * emb.sin()).float()


def _projections(model, ids, names=("q_proj", "k_proj")):
    """Outputs of each layer's q_proj / k_proj (or q_norm / k_norm) for one prompt."""
    got = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        for n in names:
            mod = getattr(layer.self_attn, n)
            hooks.append(mod.register_forward_hook(
                lambda _m, _i, out, key=(i, n): got.__setitem__(key, out.detach())))
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    for h in hooks:
        h.remove()
    return got


def _heads(x, head_dim):
    """(1, T, heads*D) -> (1, heads, T, D)."""
    return x.view(1, x.shape[1], -1, head_dim).transpose(1, 2)


class _Recorder(Probe):
    """A probe that also keeps what the attention interface received (test only)."""

    def __init__(self, desc):
        super().__init__(desc)
        self.seen = {}

    def on_attention(self, module, query, key, weights):
        layer = self.layer_of[id(module)]
        self.seen[layer] = (query.detach().clone(), key.detach().clone(),
                            self.pos_emb.get(layer))
        super().on_attention(module, query, key, weights)


def _record(model, desc, ids):
    probe = _Recorder(desc)
    with capture(model, probe):
        probe.valid = torch.ones(1, len(ids), dtype=torch.bool)
        probe.input_ids = torch.tensor([ids])
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]))
    return probe


# ------------------------------------------------------------------ routing
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_routes_through_the_probe(arch):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    model = tiny_model(arch)
    desc = describe(model)
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    probe = measure(model, desc, PROMPTS, pad_id=1, batch_size=2)
    assert probe.calls.tolist() == [2] * desc.num_layers       # two batches, every layer
    assert bool(probe.geo_ok.all()) == (desc.rope is not None)
    assert "eager" not in ALL_ATTENTION_FUNCTIONS._local_mapping  # override removed
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert torch.equal(before, after)
    # The probe does not change what the model computes either.
    rec = _Recorder(desc)
    with capture(model, rec):
        rec.valid = torch.ones_like(ids, dtype=torch.bool)
        rec.input_ids = ids
        with torch.no_grad():
            during = model(input_ids=ids).logits
    assert torch.allclose(before, during, atol=1e-6)


def test_sdpa_model_is_switched_to_eager_and_back():
    model = tiny_model("llama", attn_implementation="sdpa")
    probe = measure(model, describe(model), PROMPTS[:1], pad_id=1)
    assert model.config._attn_implementation == "sdpa"
    assert float(probe.sink.abs().sum()) > 0


# ------------------------------------------------------------------ post-RoPE capture
@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_captured_query_key_equal_independent_rotation(arch):
    model = tiny_model(arch)
    desc = describe(model)
    theta = desc.rope.theta
    ids = PROMPTS[2]
    proj = _projections(model, ids)
    rec = _record(model, desc, ids)
    hd = desc.geometry.head_dim
    for layer in range(desc.num_layers):
        q, k, pe = rec.seen[layer]
        q_pre, k_pre = _heads(proj[layer, "q_proj"], hd), _heads(proj[layer, "k_proj"], hd)
        assert k.shape[1] == desc.geometry.num_kv_heads            # keys not repeated
        assert torch.allclose(q, _rope(q_pre, theta), atol=1e-5)
        assert torch.allclose(k, _rope(k_pre, theta), atol=1e-5)
        from tomsparse.analysis.probe import unrotate
        assert torch.allclose(unrotate(q, *pe, "half"), q_pre, atol=1e-5)
        assert torch.allclose(unrotate(k, *pe, "half"), k_pre, atol=1e-5)


def test_gemma3_without_rope_is_after_q_norm():
    model = tiny_model("gemma3")
    desc = describe(model)
    ids = PROMPTS[0]
    normed = _projections(model, ids, names=("q_norm", "k_norm"))
    rec = _record(model, desc, ids)
    from tomsparse.analysis.probe import unrotate
    for layer in range(desc.num_layers):
        q, k, pe = rec.seen[layer]
        assert torch.allclose(unrotate(q, *pe, "half"), normed[layer, "q_norm"], atol=1e-5)
        assert torch.allclose(unrotate(k, *pe, "half"), normed[layer, "k_norm"], atol=1e-5)


# ------------------------------------------------------------------ attention sinks
def test_sink_closed_form_with_zero_queries():
    """q = 0 makes every score 0: a query at t attends 1/(t+1) to position 0."""
    model = tiny_model("llama")
    desc = describe(model)
    with torch.no_grad():
        for m in desc.matrices:
            if m.role == "q":
                m.weight().zero_()
    probe = measure(model, desc, PROMPTS, pad_id=1, batch_size=3)   # padded batch
    num = sum(sum(1.0 / (t + 1) for t in range(1, len(p))) for p in PROMPTS)
    den = sum(len(p) - 1 for p in PROMPTS)
    expected = torch.full((desc.num_layers, desc.geometry.num_heads), num / den, dtype=torch.float64)
    assert torch.allclose(probe.sink_means(), expected, atol=1e-6)


def test_sink_against_manual_softmax():
    model = tiny_model("llama", seed=3)
    desc = describe(model)
    g = desc.geometry
    ids = PROMPTS[2]
    proj = _projections(model, ids)
    probe = measure(model, desc, [ids], pad_id=1)
    for layer in range(desc.num_layers):
        q = _rope(_heads(proj[layer, "q_proj"], g.head_dim), desc.rope.theta)[0]
        k = _rope(_heads(proj[layer, "k_proj"], g.head_dim), desc.rope.theta)[0]
        Tn = len(ids)
        for h in range(g.num_heads):
            kh = k[h // (g.num_heads // g.num_kv_heads)]
            scores = (q[h] @ kh.T) / math.sqrt(g.head_dim)
            scores = scores.masked_fill(torch.triu(torch.ones(Tn, Tn, dtype=torch.bool), 1), -1e9)
            attn = scores.softmax(-1)
            expected = attn[1:, 0].mean()
            assert abs(float(probe.sink_means()[layer, h]) - float(expected)) < 1e-5


class _Stub:
    def __init__(self, sink):
        self._s = torch.tensor(sink, dtype=torch.float64)

    def sink_means(self):
        return self._s


def test_displaced_share_per_layer():
    base = [[0.50, 0.50, 0.50, 0.50], [0.90, 0.10, 0.30, 0.70]]
    after = [[0.505, 0.52, 0.47, 0.50], [0.90, 0.10, 0.30, 0.60]]
    rows, by_layer = T.sinks({T.BASELINE: _Stub(base), ("difference", 0): _Stub(after)}, 0.01)
    d = by_layer[by_layer["mode"] == "difference"].set_index("layer")["displaced_share"]
    assert d.tolist() == [0.5, 0.25]
    assert rows[rows["mode"] == "baseline"]["displaced"].sum() == 0


# ------------------------------------------------------------------ q-k geometry
def test_geometry_against_torch_angles():
    model = tiny_model("llama", seed=5)
    desc = describe(model)
    g = desc.geometry
    ids = PROMPTS[0]
    proj = _projections(model, ids)
    probe = measure(model, desc, [ids], pad_id=1)
    got = probe.geometry_means()

    def ang(a, b):
        c = (a @ b) / (a.norm() * b.norm())
        return math.degrees(math.acos(max(-1.0, min(1.0, float(c)))))

    Tn = len(ids)
    for v, rotate in ((0, True), (1, False)):
        for layer in range(desc.num_layers):
            q = _heads(proj[layer, "q_proj"], g.head_dim)
            k = _heads(proj[layer, "k_proj"], g.head_dim)
            if rotate:
                q, k = _rope(q, desc.rope.theta), _rope(k, desc.rope.theta)
            q, k = q[0], k[0]
            for h in range(g.num_heads):
                kh = k[h // (g.num_heads // g.num_kv_heads)]
                bos = [ang(q[h, t], kh[0]) for t in range(1, Tn)]
                oth = [np.mean([ang(q[h, t], kh[s]) for s in range(1, t + 1)]) for t in range(1, Tn)]
                kno = [np.mean([float(kh[s].norm()) for s in range(1, t + 1)]) for t in range(1, Tn)]
                assert got["angle_bos"][v, layer, h] == pytest.approx(np.mean(bos), abs=1e-3)
                assert got["angle_others"][v, layer, h] == pytest.approx(np.mean(oth), abs=1e-3)
                assert got["norm_q"][v, layer, h] == pytest.approx(
                    float(q[h, 1:].norm(dim=-1).mean()), rel=1e-5)
                assert got["norm_kbos"][v, layer, h] == pytest.approx(float(kh[0].norm()), rel=1e-5)
                assert got["norm_kothers"][v, layer, h] == pytest.approx(np.mean(kno), rel=1e-5)
    # Norms do not depend on the rotation; angles to the first key do.
    assert torch.allclose(got["norm_q"][0], got["norm_q"][1], rtol=1e-5)
    assert not torch.allclose(got["angle_bos"][0], got["angle_bos"][1], atol=1e-2)


# ------------------------------------------------------------------ dominant frequencies
def test_pair_norms_and_planted_dominant_pair():
    model = tiny_model("llama", seed=2)
    desc = describe(model)
    g = desc.geometry
    with torch.no_grad():   # blow up pair 3 (dims 3 and 7) of every query head of layer 0
        wq = desc.by_name()["layers.0.q"].weight()
        for h in range(g.num_heads):
            for d in desc.rope.pair_dims(3):
                wq[h * g.head_dim + d] *= 50
    ids = PROMPTS[1]
    proj = _projections(model, ids)
    probe = measure(model, desc, [ids], pad_id=1)
    qn, kn = probe.pair_means()
    for layer in range(desc.num_layers):
        for name, got in (("q_proj", qn), ("k_proj", kn)):
            x = _heads(proj[layer, name], g.head_dim)[0]          # heads, T, D (pre-RoPE)
            pairs = torch.stack([x[..., [a, b]].norm(dim=-1)
                                 for a, b in (desc.rope.pair_dims(j) for j in range(4))], -1)
            assert torch.allclose(got[layer].float(), pairs.mean(1), rtol=1e-4, atol=1e-6)
    top = T.top_pairs(qn, 1)
    assert top[0, :, 3].all()


def test_change_share_on_top_pairs():
    base = torch.tensor([[[1.0, 5.0, 2.0, 9.0]]])
    after = torch.tensor([[[1.5, 5.0, 1.0, 8.0]]])     # |changes| 0.5, 0, 1, 1
    top = T.top_pairs(base, 2)                           # pairs 3 and 1
    assert top.tolist() == [[[False, True, False, True]]]
    assert T.change_share(base, after, top) == pytest.approx(1.0 / 2.5)


# ------------------------------------------------------------------ massive activations
def test_planted_massive_activation_found():
    model = tiny_model("llama")
    desc = describe(model)
    token, dim = 40, 7
    with torch.no_grad():
        model.model.embed_tokens.weight[token, dim] = 500.0
    probe = measure(model, desc, PROMPTS, pad_id=1, batch_size=2)
    for layer in range(desc.num_layers):
        mag, prompt, pos, d, tok = probe.massive[layer][0]
        assert (prompt, pos, d, tok) == (1, 2, dim, token)
        assert 450 < mag < 550
    # Top-3 against output_hidden_states (layers before the last, which HF reports normed).
    with torch.no_grad():
        hs = [model(input_ids=torch.tensor([p]), output_hidden_states=True).hidden_states
              for p in PROMPTS]
    for layer in range(desc.num_layers - 1):
        vals = torch.cat([h[layer + 1].abs().reshape(-1) for h in hs])
        expected = vals.topk(3).values.tolist()
        got = [c[0] for c in probe.massive[layer]]
        assert got == pytest.approx(expected, rel=1e-5)
        # the streaming median of |h| against the exact one over all tokens and dimensions
        # (numpy's "lower" median: the histogram reports the bin of the middle value)
        exact = float(np.quantile(vals.numpy(), 0.5, method="lower"))
        assert probe.median_abs(layer) == pytest.approx(exact, rel=0.006)


# ------------------------------------------------------------------ mask anatomy
def test_mask_rank_matches_numpy():
    shape = (6, 5)
    cases = {1: [0, 1, 5, 6], 3: [0, 6, 12], 2: [0, 1, 5]}
    for rank, idx in cases.items():
        assert A.mask_rank(torch.tensor(idx), shape) == rank
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        idx = torch.randperm(30, generator=gen)[:9]
        dense = np.zeros(30)
        dense[idx.numpy()] = 1
        assert A.mask_rank(idx, shape) == np.linalg.matrix_rank(dense.reshape(shape))
    assert A.mask_rank(torch.empty(0, dtype=torch.long), shape) == 0


def test_qk_pairs_heads_and_frequencies():
    model = tiny_model("llama")     # 4 query heads, 2 KV heads (groups of 2), head_dim 8
    desc = describe(model)
    theta = float(model.config.rope_parameters["rope_theta"])
    n_in = desc.geometry.hidden_size

    def flat(head, dim, col=3):
        return (head * 8 + dim) * n_in + col

    masks = {"layers.1.q": torch.tensor([flat(0, 0), flat(0, 4, 5), flat(1, 2), flat(3, 6)]),
             "layers.0.k": torch.tensor([flat(1, 5), flat(0, 3)])}
    _, qk = A.mask_anatomy(desc, {("difference", 0): masks})
    got = {(r.layer, r.role, r.head, r.pair): r for r in qk.itertuples()}
    assert {k: r.masked for k, r in got.items()} == {
        (1, "q", 0, 0): 2, (1, "q", 1, 2): 1, (1, "q", 3, 2): 1,
        (0, "k", 0, 3): 1, (0, "k", 1, 1): 1}
    for (layer, role, head, pair), r in got.items():
        assert r.frequency_rad_per_token == pytest.approx(theta ** (-2 * pair / 8), rel=1e-6)
        assert r.period_tokens == pytest.approx(2 * math.pi * theta ** (2 * pair / 8), rel=1e-6)
    assert got[0, "k", 1, 1].query_heads == "2 3"       # KV head 1 serves query heads 2, 3
    assert got[1, "q", 3, 2].kv_head == 1
    assert (got[1, "q", 0, 0].dim_a, got[1, "q", 0, 0].dim_b) == (0, 4)


def test_pair_frequencies_follow_each_layers_rotary_base():
    # Gemma 3: layer 0 local (theta 1e4), layer 1 global (theta 1e6); head_dim 8.
    model = tiny_model("gemma3", layer_types=["sliding_attention", "full_attention"])
    desc = describe(model)
    n_in = desc.geometry.hidden_size
    masks = {f"layers.{i}.q": torch.tensor([(0 * 8 + 1) * n_in]) for i in (0, 1)}  # pair 1
    _, qk = A.mask_anatomy(desc, {("difference", 0): masks})
    freq = qk.set_index("layer")["frequency_rad_per_token"]
    assert freq[0] == pytest.approx(1e4 ** (-2 / 8), rel=1e-6)
    assert freq[1] == pytest.approx(1e6 ** (-2 / 8), rel=1e-6)


def test_matrix_rows_counts_rank_and_magnitude():
    model = tiny_model("llama")
    desc = describe(model)
    w = desc.by_name()["layers.0.up"].weight()
    idx = torch.tensor([0, 1, w.shape[1], w.shape[1] + 1, 5 * w.shape[1] + 9])  # rank 2
    with torch.no_grad():
        w.fill_(0.1)
        w.view(-1)[idx] = -5.0
    mats, _ = A.mask_anatomy(desc, {("difference", 0): {"layers.0.up": idx}})
    r = mats.set_index("matrix").loc["layers.0.up"]
    assert r.masked == 5 and r.mask_rank == 2
    assert r.mean_abs_masked == pytest.approx(5.0)
    assert r.mean_abs_unmasked == pytest.approx(0.1)
    assert r.abs_percentile_masked == pytest.approx(100.0)
    assert mats.set_index("matrix").loc["layers.1.q"].masked == 0


# ------------------------------------------------------------------ end to end
@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_analyze_end_to_end(arch, tmp_path):
    model = tiny_model(arch)
    desc = describe(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tom, gen = tom_and_generic_scores(desc)
    cfg = AnalysisConfig(m=0.02, modes=["difference", "random"], random_seeds=[0, 1])
    res = analyze(model, CharTokenizer(), desc, tom, gen, PROMPTS, cfg, out=tmp_path, log=lambda *_: None)
    for k, v in model.state_dict().items():        # restored bit for bit
        assert torch.equal(v, state[k]), k
    rope = desc.rope is not None
    assert ("qk_geometry" in res.tables) == rope
    assert ("dominant_frequencies" in res.tables) == rope
    titles = [t for t, _ in res.sections]
    assert sum(t.startswith("Analysis") for t in titles) == 5
    html = (tmp_path / "analysis.html").read_text()
    assert ("does not apply" in html) == (not rope)
    for name in ("mask_anatomy_matrices", "attention_sinks", "massive_activations"):
        assert (tmp_path / f"{name}.csv").is_file()
    assert (tmp_path / "plot_attention_sinks.png").stat().st_size > 1000
    mats = res.tables["mask_anatomy_matrices"]
    # Random masks have the difference mask's count in every matrix.
    d = mats[mats["mode"] == "difference"].set_index("matrix")["masked"]
    for seed in (0, 1):
        r = mats[(mats["mode"] == "random") & (mats["seed"] == seed)].set_index("matrix")["masked"]
        assert r.equals(d)
    assert set(res.headline["displaced_sink_share"]) == {"difference", "random"}


def test_perturbing_one_query_head_moves_only_its_sink(tmp_path):
    """Scores put the whole difference mask on query head 2 of layer 1: sinks of other
    heads and of layer 0 cannot move."""
    model = tiny_model("llama", seed=1)
    desc = describe(model)
    tom = {m.name: torch.zeros(m.shape) for m in desc.matrices}
    gen = {m.name: torch.zeros(m.shape) for m in desc.matrices}
    tom["layers.1.q"][16:24, :] = 1.0 + torch.rand(8, 32)      # rows of query head 2
    cfg = AnalysisConfig(m=0.25, modes=["difference"], perturbation="zero", sink_threshold=0.0)
    res = analyze(model, CharTokenizer(), desc, tom, gen, PROMPTS, cfg, log=lambda *_: None)
    s = res.tables["attention_sinks"]
    d = s[s["mode"] == "difference"].set_index(["layer", "head"])["change"]
    assert d.loc[(1, 2)] != 0
    assert (d.drop((1, 2)) == 0).all()
    qk = res.tables["mask_anatomy_qk_pairs"]
    assert set(qk["head"]) == {2} and set(qk["role"]) == {"q"}


def _cli(capsys, *args):
    from tomsparse.cli.main import main

    code = main(["analyze", *args])
    return code, capsys.readouterr().err


def test_cli_bad_input(tmp_path, capsys):
    code, err = _cli(capsys, "--run", str(tmp_path / "nope"))
    assert code == 2 and "no such folder" in err and err.count("\n") == 1
    code, err = _cli(capsys, "--run", str(tmp_path))
    assert code == 2 and "manifest.json" in err
    for m in ("0", "1.5", "-1e-5", "nan"):
        code, err = _cli(capsys, "--scores-tom", "a", "--scores-generic", "b", f"--m={m}")
        assert code == 2 and "(0, 1]" in err and err.count("\n") == 1
    code, err = _cli(capsys, "--m", "1e-4")
    assert code == 2 and "--scores-tom" in err


def test_unknown_mode_is_a_user_error():
    from tomsparse.errors import UserError

    model = tiny_model("llama")
    desc = describe(model)
    tom, gen = tom_and_generic_scores(desc)
    with pytest.raises(UserError, match="unknown mask mode"):
        analyze(model, CharTokenizer(), desc, tom, gen, PROMPTS,
                AnalysisConfig(m=0.01, modes=["difference", "bogus"]), log=lambda *_: None)


def test_abs_percentiles_against_sorting():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(1000, generator=gen).abs()
    a[:10] = a[10]                                   # ties
    vals = a[torch.tensor([10, 500, 3, 999, 77])]
    expected = [100.0 * float((a <= v).sum()) / a.numel() for v in vals]
    assert A.abs_percentiles(a, vals).tolist() == pytest.approx(expected)


def test_geometry_head_chunks_give_the_same_result(monkeypatch):
    from tomsparse.analysis import probe as P

    model = tiny_model("mistral")          # 4 query heads sharing one KV head
    desc = describe(model)
    whole = measure(model, desc, PROMPTS, pad_id=1, batch_size=3).geometry_means()
    monkeypatch.setattr(P, "GEOMETRY_CHUNK", 1)      # one head at a time
    chunked = measure(model, desc, PROMPTS, pad_id=1, batch_size=3).geometry_means()
    for k in whole:
        assert torch.allclose(whole[k], chunked[k], rtol=1e-6, atol=1e-6), k


def test_channel_counts_read_and_write():
    model = tiny_model("llama")
    desc = describe(model)
    n_in_down = desc.by_name()["layers.0.down"].shape[1]
    masks = {"layers.0.q": torch.tensor([0 * 32 + 5, 3 * 32 + 5, 7 * 32 + 9]),   # cols 5, 5, 9
             "layers.1.down": torch.tensor([5 * n_in_down + 2]),                   # row 5
             "layers.1.o": torch.tensor([11 * 32 + 0])}                            # row 11
    t = A.channel_table(desc, {("difference", 0): masks}).set_index("channel")
    assert t.loc[5, "masked_reading"] == 2 and t.loc[5, "masked_writing"] == 1
    assert t.loc[9, "masked"] == 1 and t.loc[11, "masked_writing"] == 1
    assert t["masked"].sum() == 5


def test_mask_in_one_rotary_pair_changes_only_that_pair():
    """The difference mask covers rotary pair 2 (dims 2 and 6) of query head 1 in layer 0;
    zeroing it must zero that pair's norm and leave every other layer-0 pair as it was."""
    model = tiny_model("llama", seed=4)
    desc = describe(model)
    tom = {m.name: torch.zeros(m.shape) for m in desc.matrices}
    gen = {m.name: torch.zeros(m.shape) for m in desc.matrices}
    a, b = desc.rope.pair_dims(2)
    for d in (a, b):
        tom["layers.0.q"][8 + d] = 1.0 + torch.rand(32)          # head 1 = rows 8..15
    cfg = AnalysisConfig(m=64 / 1024, modes=["difference"], perturbation="zero")
    res = analyze(model, CharTokenizer(), desc, tom, gen, PROMPTS, cfg, log=lambda *_: None)
    qk = res.tables["mask_anatomy_qk_pairs"]
    assert qk[["layer", "role", "head", "pair", "masked"]].values.tolist() == [[0, "q", 1, 2, 64]]
    f = res.tables["dominant_frequencies"]
    d = f[(f["mode"] == "difference") & (f["layer"] == 0)]
    moved = d[d["change"] != 0]
    assert moved[["proj", "head", "pair"]].values.tolist() == [["q", 1, 2]]
    assert moved["mean_pair_norm"].iloc[0] == 0.0


def test_cli_run_folder_end_to_end(tmp_path, capsys, monkeypatch):
    """`tomsparse analyze --run DIR` takes model, scores and options from the run, writes
    its outputs to DIR/analysis and hands the five sections to the run's report."""
    import json

    import pandas as pd

    from tomsparse.cli import analyze as analyze_command
    from tomsparse.cli.main import main
    from tomsparse.lm.adapter import fingerprint
    from tomsparse.lm.registry import wrap_model
    from tomsparse.testing import registered_model

    tiny = tiny_model("llama")
    fp = fingerprint(tiny, describe(tiny))
    run = write_run_folder(tmp_path / "run", tiny, m_list=[0.0, 0.01, 0.02],
                           random_seeds=[0, 1])
    (run / "sweep").mkdir()
    pd.DataFrame({"mode": ["none"], "seed": [0], "m": [0.0]}).to_csv(run / "sweep" / "summary.csv")
    calls = []
    # the command re-renders the run's report through the write_report it imported
    monkeypatch.setattr(analyze_command, "write_report",
                        lambda out, summary, manifest, extra_sections=(): calls.append(
                            (out, summary, manifest, list(extra_sections)))
                        or out / "report.html")
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    with registered_model("tiny", lambda **_: wrap_model(tiny, CharTokenizer(), "tiny")
                          ) as loaded:
        assert main(["analyze", "--run", str(run), "--max-prompts", "3"]) == 0
    out = capsys.readouterr().out
    assert "displaced-sink share" in out and "q-k_first angle change" in out
    assert loaded[0]["name"] == "tiny" and loaded[0]["attn_implementation"] == "eager"
    man = json.loads((run / "analysis" / "analysis_manifest.json").read_text())
    assert man["resolved"]["m"] == 0.02 and man["resolved"]["random_seeds"] == [0, 1]
    assert man["resolved"]["perturbation"] == "zero"
    assert man["model_fingerprint"] == fp and man["prompts"]["prompts"] == 3
    assert len(man["scores_tom"]["manifest_sha256"]) == 64
    (where, summary, manifest, sections), = calls
    assert where == run / "sweep" and manifest["model"] == "tiny" and len(summary) == 1
    assert [t.split(":")[0] for t in (s[0] for s in sections) if t.startswith("Analysis")] == [
        f"Analysis {i}" for i in range(1, 6)]
    mats = pd.read_csv(run / "analysis" / "mask_anatomy_matrices.csv")
    assert set(mats["mode"]) == {"difference", "random"} and set(mats["seed"]) == {0, 1}
    for k, v in tiny.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_capture_restores_the_attention_implementation():
    """The probe switches an SDPA model to its own eager-style attention for the measurement
    only; afterwards the model runs SDPA again with unchanged outputs."""
    model = tiny_model("llama", attn_implementation="sdpa")
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    probe = measure(model, describe(model), PROMPTS, pad_id=1, batch_size=2)
    assert probe.sink_means().sum() > 0
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rotation_helpers_against_explicit_pair_rotations(layout):
    """rotate / unrotate / pair_sq_norms against an explicit 2x2 rotation of each pair
    (dims from Rope.pair_dims), for both pairing layouts; rotary_dim 6 of head_dim 8."""
    from tomsparse.analysis.probe import pair_sq_norms, rotate, unrotate
    from tomsparse.lm.adapter import Rope

    rd, d = 6, 8
    rope = Rope(theta=100.0, rotary_dim=rd, layout=layout,
                inv_freq=tuple(100.0 ** (-2 * j / rd) for j in range(rd // 2)))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, d, generator=gen, dtype=torch.float64)
    angle = torch.arange(5, dtype=torch.float64)[:, None] * torch.tensor(rope.inv_freq)  # (T, P)
    explicit = x.clone()
    for j in range(rd // 2):
        a, b = rope.pair_dims(j)
        c, s = angle[:, j].cos(), angle[:, j].sin()
        explicit[..., a] = x[..., a] * c - x[..., b] * s
        explicit[..., b] = x[..., a] * s + x[..., b] * c
    per_dim = (torch.cat((angle, angle), -1) if layout == "half"
               else angle.repeat_interleave(2, dim=-1))                           # (T, rd)
    cos, sin = per_dim.cos().expand(2, 5, rd), per_dim.sin().expand(2, 5, rd)
    y = torch.cat((x[..., :rd] * cos[:, None] + rotate(x[..., :rd], layout) * sin[:, None],
                   x[..., rd:]), dim=-1)
    assert torch.allclose(y, explicit, atol=1e-12)
    assert torch.allclose(unrotate(y, cos, sin, layout), x, atol=1e-12)
    norms = pair_sq_norms(x, rd, layout)
    for j in range(rd // 2):
        a, b = rope.pair_dims(j)
        assert torch.allclose(norms[..., j], x[..., a] ** 2 + x[..., b] ** 2)


def test_matched_readings_say_when_a_damage_matched_control_reproduces_an_effect():
    from tomsparse.analysis.page import REPRODUCES, matched_readings

    label = "random-fraction (matched, m=3.34e-02)"
    h = {"conditions": {"difference": {}, "random": {}, label: {"matched": True}},
         "displaced_sink_share": {"difference": 0.774, "random": 0.004, label: 0.793},
         "abs_angle_q_kbos_change_deg": {"difference": 1.0, "random": 0.0,
                                         label: REPRODUCES - 0.01},
         "total_abs_norm_change": {"difference": 10.0, "random": 1.0}}
    lines = matched_readings(h)
    assert len(lines) == 2           # no matched value for the norm change: no sentence
    assert "reaches 102%" in lines[0] and "not evidence of a ToM-specific" in lines[0]
    assert "no damage-matched control reaches 80%" in lines[1] and "79%" in lines[1]
    assert matched_readings({**h, "conditions": {"difference": {}}}) == []
