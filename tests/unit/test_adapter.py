"""The adapter finds blocks, roles, geometry and RoPE by structure on six architectures."""

import pytest
import torch

from tomsparse.errors import UserError
from tomsparse.lm import adapter
from tomsparse.testing import ARCHITECTURES, tiny_model

EXPECTED_ROLES = {
    "llama": ["q", "k", "v", "o", "gate", "up", "down"],
    "qwen2": ["q", "k", "v", "o", "gate", "up", "down"],
    "mistral": ["q", "k", "v", "o", "gate", "up", "down"],
    "gemma3": ["q", "k", "v", "o", "gate", "up", "down"],
    "gpt2": ["q", "k", "v", "o", "up", "down"],
    "opt": ["q", "k", "v", "o", "up", "down"],
}
KV_HEADS = {"llama": 2, "qwen2": 2, "mistral": 1, "gemma3": 2, "gpt2": 4, "opt": 4}
MLP_WIDTH = {"gpt2": 128}  # GPT-2's MLP is 4 x hidden; the others use intermediate 48


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_roles_shapes_counts(arch):
    model = tiny_model(arch)
    desc = adapter.describe(model)
    assert desc.num_layers == 2
    assert desc.roles() == EXPECTED_ROLES[arch]
    assert len(desc.matrices) == 2 * len(EXPECTED_ROLES[arch])
    g = desc.geometry
    assert (g.hidden_size, g.num_heads, g.num_kv_heads, g.head_dim) == (32, 4, KV_HEADS[arch], 8)
    inter = MLP_WIDTH.get(arch, 48)
    want = {"q": (32, 32), "k": (8 * KV_HEADS[arch], 32), "v": (8 * KV_HEADS[arch], 32),
            "o": (32, 32), "gate": (inter, 32), "up": (inter, 32), "down": (32, inter)}
    for m in desc.matrices:
        assert m.shape == want[m.role], (m.name, m.shape)
        assert tuple(m.weight().shape) == m.shape
        assert m.param_name in dict(model.named_parameters())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_role_matrix_is_what_the_module_computes(arch):
    """x @ W_role^T must equal the role's slice of the module's output (minus bias): checks
    the Conv1D transposition and the fused-QKV split independently of the adapter's views."""
    model = tiny_model(arch)
    desc = adapter.describe(model)
    torch.manual_seed(1)
    for m in desc.matrices:
        x = torch.randn(3, m.shape[1])
        with torch.no_grad():
            full = m.module(x)
            bias = getattr(m.module, "bias", None)
            if bias is not None:
                full = full - bias
        expected = full[:, m.rows]
        got = x @ m.weight().T
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_weight_view_writes_through(arch):
    model = tiny_model(arch)
    desc = adapter.describe(model)
    k = [m for m in desc.matrices if m.role == "k"][0]
    params = dict(model.named_parameters())
    before = params[k.param_name].detach().clone()
    with torch.no_grad():
        k.weight()[0, 0] = 123.0
    after = params[k.param_name].detach()
    assert (after != before).sum().item() == 1
    assert 123.0 in after


def test_opt_qk_order_follows_names_not_registration():
    # OPT registers k_proj before q_proj; the q role must still be q_proj.
    desc = adapter.describe(tiny_model("opt"))
    q = [m for m in desc.matrices if m.role == "q"][0]
    assert q.param_name.endswith("q_proj.weight")


@pytest.mark.parametrize("arch,theta", [("llama", 10000.0), ("qwen2", 10000.0),
                                        ("mistral", 10000.0), ("gemma3", 10000.0)])
def test_rope_facts(arch, theta):
    desc = adapter.describe(tiny_model(arch))
    r = desc.rope
    assert r is not None and r.layout == "half" and r.rotary_dim == 8 and r.num_pairs == 4
    assert r.theta == pytest.approx(theta)
    # inv_freq[j] = theta^(-2j/d): independent recomputation.
    for j in range(4):
        assert r.inv_freq[j] == pytest.approx(theta ** (-2 * j / 8), rel=1e-5)
    assert r.pair_dims(1) == (1, 5)


@pytest.mark.parametrize("arch", ["gpt2", "opt"])
def test_no_rope(arch):
    assert adapter.describe(tiny_model(arch)).rope is None


def test_tied_embeddings_detected():
    assert adapter.describe(tiny_model("llama")).tied_embeddings
    assert not adapter.describe(tiny_model("qwen2", tie_word_embeddings=False)).tied_embeddings


def test_fingerprint_separates_models_and_is_stable():
    a1, a2 = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    assert adapter.fingerprint(a1) == adapter.fingerprint(a2)  # same architecture and shapes
    assert adapter.fingerprint(a1) != adapter.fingerprint(tiny_model("mistral"))


def test_select_matrices_and_bad_role():
    desc = adapter.describe(tiny_model("llama"))
    assert [m.name for m in adapter.select_matrices(desc, roles=["q"], layers=[1])] == ["layers.1.q"]
    with pytest.raises(UserError, match="unknown role"):
        adapter.select_matrices(desc, roles=["query"])


def test_unsupported_model_is_a_clear_error():
    class NotALM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"hidden_size": 4, "num_attention_heads": 1})()
            self.lin = torch.nn.Linear(4, 4)

    with pytest.raises(UserError, match="cannot find decoder blocks"):
        adapter.describe(NotALM())


def test_rope_frequencies_per_layer_type():
    """Gemma 3 rotates its local (sliding) and global layers with different bases: each
    layer's pair frequencies are theta_type ** (-2j / d) of its own type."""
    model = tiny_model("gemma3", layer_types=["sliding_attention", "full_attention"])
    rope = adapter.describe(model).rope
    d = rope.rotary_dim
    for layer, theta in ((0, 10_000.0), (1, 1_000_000.0)):
        expected = [theta ** (-2 * j / d) for j in range(d // 2)]
        assert rope.layer_inv_freq(layer) == pytest.approx(expected, rel=1e-6)
    # one base only (Llama): every layer uses inv_freq
    llama = adapter.describe(tiny_model("llama")).rope
    assert llama.inv_freq_by_layer == () and llama.layer_inv_freq(1) == llama.inv_freq
