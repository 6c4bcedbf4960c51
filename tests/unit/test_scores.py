"""Sensitivity scores on tiny models: the batched implementation against the plain loop (the
definition), the loop against an independent torch.func computation, padding, the reference's
fp16 mode, and bad input."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
import torch.utils._python_dispatch

from tomsparse.data.score_samples import IGNORE, ScoreSample
from tomsparse.errors import UserError
from tomsparse.lm.adapter import describe
from tomsparse.scores.compute import compute_scores
from tomsparse.testing import ARCHITECTURES, CharTokenizer, tiny_model


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny matrices on a shared 2-core machine: thread hand-offs cost more than the maths.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_samples(n=7, seed=0, lo=4, hi=21, vocab=120, density=0.4):
    """Samples of unequal lengths (so batches are padded) with a mix of supervised tokens
    (``density`` of them; 1.0 = every token, as in generic windows)."""
    rng = random.Random(seed)
    samples = []
    for k in range(n):
        length = rng.randint(lo, hi)
        ids = [rng.randint(2, vocab - 1) for _ in range(length)]
        labels = [IGNORE] + [t if rng.random() < density else IGNORE for t in ids[1:]]
        labels[-1] = ids[-1]  # at least one supervised token
        samples.append(ScoreSample(tuple(ids), tuple(labels), f"sample {k}"))
    return samples


def assert_scores_close(a: dict, b: dict, rtol=1e-5):
    assert a.keys() == b.keys()
    for name in a:
        scale = a[name].abs().max().clamp_min(1e-30)
        err = ((a[name] - b[name]).abs().max() / scale).item()
        assert err < rtol, f"{name}: relative max error {err:.2e}"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_batched_matches_loop(arch):
    model = tiny_model(arch)
    samples = make_samples()
    loop = compute_scores(model, CharTokenizer(), samples, method="loop", progress=False)
    batched = compute_scores(model, CharTokenizer(), samples, method="batched", batch_size=3,
                             progress=False)
    assert batched.padded_tokens > 0  # the batches really were padded
    desc = describe(model)
    assert set(loop.scores) == {m.name for m in desc.matrices}
    for m in desc.matrices:
        assert loop.scores[m.name].shape == m.shape
        assert loop.scores[m.name].dtype == torch.float32
        assert loop.scores[m.name].device.type == "cpu"
        assert loop.scores[m.name].abs().sum() > 0
    assert_scores_close(loop.scores, batched.scores)
    assert loop.supervised_tokens == batched.supervised_tokens == sum(
        s.supervised_tokens for s in samples)
    assert loop.nsamples == batched.nsamples == len(samples)
    assert abs(loop.mean_loss - batched.mean_loss) < 1e-4


def test_architecture_coverage():
    """The tiny models exercise what the exactness test claims: GQA, fused QKV in a transposed
    Conv1D, tied embeddings and biases."""
    llama, mistral, gpt2, qwen2 = (tiny_model(a) for a in ("llama", "mistral", "gpt2", "qwen2"))
    assert describe(llama).tied_embeddings
    g = describe(mistral).geometry
    assert (g.num_heads, g.num_kv_heads) == (4, 1)
    fused = [m for m in describe(gpt2).matrices if m.role in ("q", "k", "v")]
    assert fused[0].module is fused[1].module and fused[0].transposed
    assert describe(qwen2).matrices[0].module.bias is not None


def _torch_func_grads(model, samples, matrices):
    """Per-sample gradients (canonical orientation) with torch.func and the model's own loss:
    code independent of compute_scores (no hooks, no requires_grad juggling, HF's loss)."""
    from torch.func import functional_call, grad

    params = {m.param_name: m.module.weight.detach() for m in matrices}

    def loss(p, ids, labels):
        return functional_call(model, p, (ids,), {"labels": labels, "use_cache": False}).loss

    out = []
    for s in samples:
        g = grad(loss)(params, torch.tensor([s.input_ids]), torch.tensor([s.labels]))
        per = {}
        for m in matrices:
            full = g[m.param_name]
            per[m.name] = (full.t() if m.transposed else full)[m.rows]
        out.append(per)
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_loop_matches_torch_func(arch):
    model = tiny_model(arch)
    samples = make_samples(n=4)
    matrices = describe(model).matrices
    grads = _torch_func_grads(model, samples, matrices)
    expected = {m.name: sum(g[m.name] ** 2 for g in grads) for m in matrices}
    got = compute_scores(model, None, samples, method="loop", progress=False).scores
    assert_scores_close(expected, got)


@pytest.mark.parametrize("arch", ["qwen2", "opt"])
def test_fully_supervised_samples(arch, monkeypatch):
    """Generic windows supervise every token: both methods against torch.func, the logits
    formed a chunk of rows at a time, never for the whole batch."""
    from tomsparse.scores import losses as S

    model = tiny_model(arch)
    samples = make_samples(n=4, density=1.0)
    matrices = describe(model).matrices
    grads = _torch_func_grads(model, samples, matrices)
    expected = {m.name: sum(g[m.name] ** 2 for g in grads) for m in matrices}
    vocab = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(S, "LOGIT_CHUNK_BYTES", 4 * vocab * 16)  # 16 rows a chunk
    for method in ("loop", "batched"):
        with _VocabProducts(vocab) as products:
            got = compute_scores(model, None, samples, method=method, batch_size=4,
                                 progress=False)
        assert got.supervised_tokens == sum(len(s) - 1 for s in samples)
        assert_scores_close(expected, got.scores)
        assert max(products.rows) == 16 < got.supervised_tokens, products.rows


def answer_samples(n=5, seed=1, vocab=120):
    """ToM-like samples of unequal lengths: a prompt, then one to three supervised answer
    tokens at the end (one is the reference's last-token supervision)."""
    rng = random.Random(seed)
    samples = []
    for k in range(n):
        length = rng.randint(12, 24)
        answer = rng.randint(1, 3)
        ids = [rng.randint(2, vocab - 1) for _ in range(length)]
        labels = [IGNORE] * (length - answer) + ids[length - answer:]
        samples.append(ScoreSample(tuple(ids), tuple(labels), f"prompt {k}"))
    return samples


def test_supervised_positions():
    from tomsparse.scores.losses import MIN_KEPT_POSITIONS, supervised_positions

    width = 40
    labels = torch.full((2, width), IGNORE)
    labels[0, 30] = 5   # predicted from position 29
    labels[1, 12] = 7   # from 11
    kept = supervised_positions(labels).tolist()
    assert {29, 11} <= set(kept) and len(kept) == MIN_KEPT_POSITIONS
    assert kept == sorted(kept) and max(kept) == width - 2
    # Enough supervised positions: exactly those.
    labels[0, 1:12] = 3
    assert supervised_positions(labels).tolist() == list(range(12)) + [29]
    # Most positions supervised (generic windows): every position's logits.
    labels[0, 1:] = 3
    assert supervised_positions(labels) is None
    # Short samples: at most every position.
    short = torch.full((1, 5), IGNORE)
    short[0, 4] = 1
    assert supervised_positions(short).tolist() == [0, 1, 2, 3]


class _VocabProducts(torch.utils._python_dispatch.TorchDispatchMode):
    """Rows of every matrix product whose output is ``vocab`` wide (the output layer's)."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab, self.rows = vocab, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default,
                    torch.ops.aten.bmm.default) and out.shape[-1] == self.vocab:
            self.rows.append(out.numel() // self.vocab)
        return out


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2", "opt"])
def test_answer_supervision_projects_only_supervised_positions(arch):
    """With a few supervised tokens the output layer runs on their positions only; both methods
    still equal torch.func on the model's own loss over every position's logits."""
    from tomsparse.scores.compute import output_head
    from tomsparse.scores.losses import MIN_KEPT_POSITIONS

    model = tiny_model(arch, vocab_size=131)  # no other product is 131 wide
    assert output_head(model) is not None  # these families' logits are the output layer's
    samples = answer_samples()
    matrices = describe(model).matrices
    grads = _torch_func_grads(model, samples, matrices)
    expected = {m.name: sum(g[m.name] ** 2 for g in grads) for m in matrices}
    vocab = model.get_output_embeddings().weight.shape[0]
    for method in ("loop", "batched"):
        with _VocabProducts(vocab) as products:
            got = compute_scores(model, None, samples, method=method, batch_size=3,
                                 progress=False)
        assert_scores_close(expected, got.scores)
        assert got.supervised_tokens == sum(s.supervised_tokens for s in samples)
        # At most 3 samples x 3 answer tokens are projected (every position: >= 3 x 12).
        assert products.rows and max(products.rows) <= max(MIN_KEPT_POSITIONS, 9), products.rows


def test_logits_transformed_after_the_output_layer():
    """A model whose logits are not the output layer's alone (Gemma's soft-capping) is scored
    through its own logits, still exactly, computing only the supervised positions' logits
    (through its logits_to_keep)."""
    from tomsparse.scores.compute import output_head

    model = tiny_model("gemma3")
    model.config.final_logit_softcapping = 0.5
    assert output_head(model) is None
    samples = answer_samples(n=4, seed=3)
    matrices = describe(model).matrices
    grads = _torch_func_grads(model, samples, matrices)
    expected = {m.name: sum(g[m.name] ** 2 for g in grads) for m in matrices}
    kept = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: kept.append((kwargs["input_ids"].shape[1],
                                                  kwargs.get("logits_to_keep"))),
        with_kwargs=True)
    try:
        for method in ("loop", "batched"):
            kept.clear()
            got = compute_scores(model, None, samples, method=method, batch_size=2,
                                 progress=False)
            assert_scores_close(expected, got.scores)
            assert kept and all(isinstance(k, torch.Tensor) and k.ndim == 1 and k.numel() < w - 1
                                for w, k in kept), kept
    finally:
        hook.remove()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_head_loss_matches_autograd(dtype, monkeypatch):
    """The fused output layer + loss against autograd through the plain logits, with chunks of
    a few rows and a bias; in fp32 with any incoming gradient, in bf16 with the ones of a sum of
    losses (what scoring backpropagates), where both round alike."""
    from tomsparse.scores import losses as S

    monkeypatch.setattr(S, "LOGIT_CHUNK_BYTES", 4 * 50 * 3)  # 3 rows of a 50-token vocabulary
    torch.manual_seed(0)
    hidden = torch.randn(10, 16, dtype=dtype, requires_grad=True)
    weight = torch.randn(50, 16, dtype=dtype)
    bias = torch.randn(50, dtype=dtype)
    targets = torch.randint(0, 50, (10,))
    sample_of_row = torch.tensor([0, 0, 0, 1, 2, 2, 2, 2, 2, 3])
    counts = torch.tensor([3.0, 1.0, 5.0, 1.0])
    incoming = torch.tensor([1.0, -2.0, 0.5, 3.0]) if dtype == torch.float32 else torch.ones(4)

    losses = S.HeadLoss.apply(hidden, weight, bias, targets, sample_of_row, counts)
    (grad,) = torch.autograd.grad(losses, hidden, incoming)

    plain = hidden.detach().clone().requires_grad_(True)
    token = F.cross_entropy(F.linear(plain, weight, bias).float(), targets, reduction="none")
    expected = torch.zeros(4).index_add(0, sample_of_row, token) / counts
    (expected_grad,) = torch.autograd.grad(expected, plain, incoming)
    assert torch.allclose(losses, expected, rtol=1e-5, atol=1e-5)
    tol = 1e-5 if dtype == torch.float32 else 8e-3  # bf16: at most an ulp apart
    assert torch.allclose(grad.float(), expected_grad.float(), rtol=tol, atol=1e-6)


def test_head_loss_is_as_accurate_as_autograd():
    """Large logits: the fused gradient against the fp64 truth is as accurate as autograd's fp32
    one (a log-sum-exp subtracted from the logits directly loses low bits of every probability:
    here 2.7x the error; 5x on the default model's own logits)."""
    from tomsparse.scores import losses as S

    torch.manual_seed(1)
    rows, width, vocab = 32, 64, 512
    hidden = torch.randn(rows, width)
    weight = torch.randn(vocab, width) * 0.5
    bias = torch.full((vocab,), 200.0)
    targets = torch.randint(0, vocab, (rows,))
    sample_of_row = torch.arange(rows) // 8
    counts = torch.full((4,), 8.0)

    def autograd_grad(h, w, b):
        x = h.clone().requires_grad_(True)
        token = F.cross_entropy(F.linear(x, w, b), targets, reduction="none")
        (torch.zeros(4, dtype=h.dtype).index_add(0, sample_of_row, token) / counts).sum().backward()
        return x.grad.double()

    truth = autograd_grad(hidden.double(), weight.double(), bias.double())
    x = hidden.clone().requires_grad_(True)
    S.HeadLoss.apply(x, weight, bias, targets, sample_of_row, counts).sum().backward()

    def error(g):
        return ((g - truth).abs().max() / truth.abs().max()).item()

    assert error(x.grad.double()) <= 1.5 * error(autograd_grad(hidden, weight, bias)) + 1e-9


def test_models_without_logits_to_keep_get_sliced_logits():
    """A model whose forward has no logits_to_keep computes every position's logits; the loss
    then reads the supervised positions from them, with the same scores."""
    model = tiny_model("llama")

    class WithoutLogitsToKeep(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def get_input_embeddings(self):
            return self.inner.get_input_embeddings()

        def forward(self, input_ids, attention_mask=None, use_cache=False):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              use_cache=use_cache)

    samples = answer_samples(n=4, seed=2)
    matrices = describe(model).matrices
    direct = compute_scores(model, None, samples, method="batched", batch_size=2,
                            progress=False)
    wrapped = compute_scores(WithoutLogitsToKeep(model), None, samples, matrices=matrices,
                             method="batched", batch_size=2, progress=False)
    assert_scores_close(direct.scores, wrapped.scores)
    assert abs(direct.mean_loss - wrapped.mean_loss) < 1e-5


def test_square_is_per_sample_not_of_the_batch_sum():
    model = tiny_model("llama")
    samples = make_samples(n=4)
    matrices = describe(model).matrices
    grads = _torch_func_grads(model, samples, matrices)
    batched = compute_scores(model, None, samples, method="batched", batch_size=4,
                             progress=False).scores
    name = "layers.0.q"
    assert torch.allclose(batched[name], sum(g[name] ** 2 for g in grads), rtol=1e-4,
                          atol=1e-12)
    # The square of the batch-summed gradient is something else.
    assert not torch.allclose(batched[name], sum(g[name] for g in grads) ** 2, rtol=1e-2)


def test_padding_does_not_leak():
    """A sample's contribution is the same alone and padded beside a longer sample, whatever
    the pad id."""
    model = tiny_model("qwen2")
    short = make_samples(n=1, seed=3, lo=5, hi=5)[0]
    long = make_samples(n=1, seed=4, lo=20, hi=20)[0]
    alone = [compute_scores(model, None, [s], method="loop", progress=False).scores
             for s in (short, long)]
    expected = {k: alone[0][k] + alone[1][k] for k in alone[0]}

    class PadWith:
        def __init__(self, pad):
            self.pad_token_id = pad

    for pad in (1, 77):
        together = compute_scores(model, PadWith(pad), [short, long], method="batched",
                                  batch_size=2, progress=False)
        assert together.padded_tokens == 15
        assert_scores_close(expected, together.scores)


def test_accelerate_dispatched_model():
    """A model dispatched by accelerate (what device_map="auto" does on several devices: an
    AlignDevicesHook wrapping each block's forward) scores like the plain model; hooks and
    accumulators follow each module's device."""
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    plain = tiny_model("mistral")
    dispatched = tiny_model("mistral")
    for block in list(dispatched.model.layers) + [dispatched.lm_head]:
        add_hook_to_module(block, AlignDevicesHook(execution_device="cpu", io_same_device=True))
    assert hasattr(dispatched.model.layers[0], "_hf_hook")
    samples = make_samples(n=4)
    expected = compute_scores(plain, None, samples, method="loop", progress=False).scores
    for method in ("loop", "batched"):
        got = compute_scores(dispatched, None, samples, method=method, progress=False).scores
        assert_scores_close(expected, got)


def test_offloaded_weights_are_refused():
    model = tiny_model("llama")
    model.model.layers[1].mlp.up_proj.to("meta")
    with pytest.raises(UserError, match="layers.1.up and 0 other target weights are offloaded"):
        compute_scores(model, None, make_samples(n=1), progress=False)


@pytest.mark.parametrize("method", ["loop", "batched"])
def test_subset_of_matrices_and_names(method):
    model = tiny_model("llama")
    samples = make_samples(n=3)
    full = compute_scores(model, None, samples, method=method, progress=False).scores
    some = compute_scores(model, None, samples, matrices=["layers.1.q", "layers.0.down"],
                          method=method, progress=False).scores
    assert set(some) == {"layers.1.q", "layers.0.down"}
    assert_scores_close({k: full[k] for k in some}, some)
    with pytest.raises(UserError, match="unknown matrix"):
        compute_scores(model, None, samples, matrices=["layers.9.q"], progress=False)


def test_requires_grad_and_mode_restored():
    model = tiny_model("gpt2")
    model.train()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    list(model.parameters())[0].requires_grad_(False)
    flags[next(iter(flags))] = False
    for method in ("loop", "batched"):
        compute_scores(model, None, make_samples(n=2), method=method, progress=False)
        assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
        assert all(p.grad is None for p in model.parameters())
        assert model.training


@pytest.mark.parametrize("method", ["loop", "batched"])
def test_dropout_off_while_scoring(method):
    """Scores are computed in eval mode even when the model was left in training mode."""
    model = tiny_model("gpt2", resid_pdrop=0.5)
    samples = make_samples(n=2)
    model.train()
    a = compute_scores(model, None, samples, method=method, progress=False).scores
    b = compute_scores(model, None, samples, method=method, progress=False).scores
    assert_scores_close(a, b, rtol=1e-6)


def _reference_like(model, samples):
    """An independent re-implementation of the reference's loop: fp16 model, every parameter
    trainable, HF loss, ``acc = acc + grad ** 2`` in fp16."""
    acc = {}
    for s in samples:
        model.zero_grad(set_to_none=True)
        out = model(input_ids=torch.tensor([s.input_ids]), labels=torch.tensor([s.labels]))
        out.loss.backward()
        for name, p in model.named_parameters():
            acc[name] = acc.get(name, torch.zeros_like(p)) + torch.pow(p.grad, 2)
    return acc


def test_reference_fp16_reproduces_reference_loop():
    model = tiny_model("llama").half()
    for p in model.parameters():
        p.requires_grad_(True)
    # Last-token supervision, as in the reference's ToM set.
    samples = [ScoreSample(s.input_ids, (IGNORE,) * (len(s) - 1) + s.input_ids[-1:], s.source)
               for s in make_samples(n=5)]
    expected = _reference_like(model, samples)
    result = compute_scores(model, None, samples, reference_fp16=True, method="batched",
                            progress=False)
    assert result.method == "loop" and result.accumulation_dtype.startswith("float16")
    for m in describe(model).matrices:
        ref = expected[m.param_name].float()
        assert torch.equal(result.scores[m.name], ref), m.name
    assert sum(result.zero_counts.values()) == sum(
        int((expected[m.param_name] == 0).sum()) for m in describe(model).matrices)


def test_reference_fp16_flushes_small_gradients_to_zero():
    """In fp32 no entry is exactly zero; the fp16 squaring zeroes gradients below ~2.4e-4."""
    model = tiny_model("llama")
    samples = make_samples(n=2)
    exact = compute_scores(model, None, samples, progress=False)
    fp16 = compute_scores(model, None, samples, reference_fp16=True, progress=False)
    assert sum(exact.zero_counts.values()) == 0
    small = sum(int(((t.sqrt() < 2.4e-4 / 2 ** 0.5)).sum()) for t in exact.scores.values())
    assert sum(fp16.zero_counts.values()) > 0
    assert sum(fp16.zero_counts.values()) >= small * 0.9


def test_bf16_model_accumulates_in_fp32():
    model = tiny_model("llama").to(torch.bfloat16)
    samples = make_samples(n=3)
    loop = compute_scores(model, None, samples, method="loop", progress=False)
    batched = compute_scores(model, None, samples, method="batched", progress=False)
    assert loop.accumulation_dtype == "float32"
    assert all(t.dtype == torch.float32 for t in batched.scores.values())
    # bf16 activations: the two methods agree to bf16 precision only.
    assert_scores_close(loop.scores, batched.scores, rtol=5e-2)


# ------------------------------------------------------------------------------ bad input


def test_empty_dataset():
    with pytest.raises(UserError, match="empty dataset"):
        compute_scores(tiny_model("llama"), None, [], progress=False)


def test_sample_without_supervised_token():
    bad = ScoreSample((5, 6, 7), (IGNORE, IGNORE, IGNORE), "prompt 3 ('x')")
    with pytest.raises(UserError, match=r"prompt 3 .*no supervised token"):
        compute_scores(tiny_model("llama"), None, [bad], progress=False)


@pytest.mark.parametrize("method", ["loop", "batched"])
def test_nan_loss_names_the_sample(method):
    model = tiny_model("qwen2")  # untied: a NaN input embedding leaves the LM head intact
    samples = make_samples(n=4, vocab=90)
    poisoned = 99  # an id no other sample uses
    samples[2] = ScoreSample((poisoned,) + samples[2].input_ids[1:], samples[2].labels,
                             "prompt 7 ('the poisoned one')")
    with torch.no_grad():
        model.get_input_embeddings().weight[poisoned] = float("nan")
    with pytest.raises(UserError, match=r"non-finite loss \(nan\) on sample 2 \(prompt 7 "
                                        r"\('the poisoned one'\)\); stopping"):
        compute_scores(model, None, samples, method=method, batch_size=2, progress=False)
    assert all(p.grad is None for p in model.parameters())


def test_bad_method_and_batch_size():
    model = tiny_model("llama")
    with pytest.raises(UserError, match="unknown method"):
        compute_scores(model, None, make_samples(n=1), method="fast", progress=False)
    with pytest.raises(UserError, match="batch-size"):
        compute_scores(model, None, make_samples(n=1), batch_size=0, progress=False)
