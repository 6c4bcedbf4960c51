"""Issue 14 on CPU: perplexity without the full vocabulary logits, the KV-cache spelling of
every transformers version the pyproject admits, and generation whose reps share one prefill."""

from __future__ import annotations

import pytest
import torch

from tomsparse.evaluate.perplexity import window_losses
from tomsparse.lm.batching import cache_keyword, output_cache
from tomsparse.lm.head import output_head, token_losses
from tomsparse.testing import ARCHITECTURES, tiny_model


@pytest.mark.parametrize("arch", [*ARCHITECTURES, "gemma3-softcap"])
def test_chunked_window_losses_equal_the_model_loss(arch, monkeypatch):
    model = tiny_model(arch.split("-")[0])
    if arch == "gemma3-softcap":  # logits transformed after the output layer
        model.config.final_logit_softcapping = 0.5
    vocab = model.get_output_embeddings().weight.shape[0]
    batch = torch.randint(0, vocab, (3, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = torch.stack([model(input_ids=w[None], labels=w[None]).loss for w in batch])
        head = output_head(model)
        # a few rows per chunk, so that the chunking itself is exercised
        monkeypatch.setattr("tomsparse.lm.head.LOGIT_CHUNK_BYTES", 4 * vocab * 5)
        got = window_losses(model, batch, head)
        plain = window_losses(model, batch, None)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain, expected, rtol=1e-5, atol=1e-5)
    if arch == "gemma3-softcap":  # the head is not the logits: the model's own are used
        assert head is None
    else:
        assert head is not None


def test_token_losses_chunks_agree_with_one_chunk(monkeypatch):
    model = tiny_model("llama")
    head = output_head(model)
    hidden = torch.randn(37, model.config.hidden_size)
    targets = torch.randint(0, head.weight.shape[0], (37,))
    with torch.no_grad():
        whole = torch.nn.functional.cross_entropy(hidden @ head.weight.T, targets, reduction="none")
        monkeypatch.setattr("tomsparse.lm.head.LOGIT_CHUNK_BYTES", 4 * head.weight.shape[0] * 4)
        chunked = token_losses(head, hidden, targets)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)


def test_kv_cache_spelling():
    """Whatever this transformers calls the cache, the helpers find it, and a continuation
    run on the cache gives the logits of the whole sequence."""
    model = tiny_model("llama")
    ids = torch.arange(3, 15)[None]
    with torch.no_grad():
        whole = model(input_ids=ids).logits
        first = model(input_ids=ids[:, :8], use_cache=True)
        rest = model(input_ids=ids[:, 8:], use_cache=True,
                     **{cache_keyword(model): output_cache(first)})
    torch.testing.assert_close(rest.logits, whole[:, 8:], rtol=1e-4, atol=1e-5)
    assert cache_keyword(model) in ("cache", "past_key_values")


# ------------------------------------------------------------------ generation


def _prompts():
    return ["Complete the following story: Anna puts the ball in the", "Read this: it rains.",
            "Tom opens the box and sees that it is full of", "Yes or no?"]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt", "gemma3"])
def test_greedy_reps_equal_hugging_face_generate(arch):
    """Our decoding loop (shared prefill, cache repeated per rep) is greedy decoding exactly:
    the same new tokens as transformers' own generate, prompt by prompt, for every rep."""
    from tomsparse.evaluate.generate import MAX_NEW_TOKENS, generate_reps
    from tomsparse.testing import CharTokenizer

    model, tok = tiny_model(arch), CharTokenizer()
    texts = _prompts()
    with torch.inference_mode():
        reps = generate_reps(model, tok, texts, [None, None], batch_size=3, sample=False)
        for i, text in enumerate(texts):
            ids = torch.tensor([tok.encode(text)])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
                                 min_new_tokens=MAX_NEW_TOKENS, eos_token_id=None,
                                 pad_token_id=tok.pad_token_id)
            tokens = out[0, ids.shape[1]:].tolist()
            eos = tok.eos_token_id
            tokens = tokens[:tokens.index(eos)] if eos in tokens else tokens
            want = tok.decode(tokens, skip_special_tokens=True)
            assert reps[0][i] == want and reps[1][i] == want, (arch, i)


def test_sampled_reps_are_seeded_and_independent_of_each_other():
    from tomsparse.evaluate.generate import generate_reps
    from tomsparse.testing import CharTokenizer

    model, tok = tiny_model("llama"), CharTokenizer()
    texts = _prompts() * 3
    with torch.inference_mode():
        five = generate_reps(model, tok, texts, [0, 1, 2, 3, 4], batch_size=4)
        two = generate_reps(model, tok, texts, [3, 1], batch_size=4)
        again = generate_reps(model, tok, texts, [0, 1, 2, 3, 4], batch_size=4)
    assert five == again
    assert two == [five[3], five[1]]  # a rep's words depend on its seed, not on the others
    assert five[0] != five[1]


def test_sampling_filter_is_temperature_then_top_p():
    """Against transformers' own warpers (an independent implementation) and, for the draws,
    against the filtered distribution's probabilities."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopPLogitsWarper,
    )

    from tomsparse.evaluate.generate import (
        TEMPERATURE,
        TOP_P,
        next_tokens,
        sampling_filter,
    )

    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(2)) * 3
    want = TopPLogitsWarper(TOP_P)(None, TemperatureLogitsWarper(TEMPERATURE)(None, logits.clone()))
    got = sampling_filter(logits)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    torch.testing.assert_close(got[~torch.isinf(got)], want[~torch.isinf(want)])
    row = logits[:1].repeat(20000, 1)
    draws = next_tokens(row, [torch.Generator().manual_seed(5)], 20000)
    freq = torch.bincount(draws, minlength=50).float() / 20000
    probs = got[0].softmax(-1)
    assert (freq[probs == 0] == 0).all()
    assert (freq - probs).abs().max() < 0.015


# ------------------------------------------------------------------ rankings from stores


def _scores_with_ties(shapes, seed):
    gen = torch.Generator().manual_seed(seed)
    # few distinct values: many ties at every threshold, and some all-zero rows
    out = {}
    for name, shape in shapes.items():
        t = torch.randint(0, 6, shape, generator=gen).float()
        t[0] = 0
        out[name] = t
    return out


SHAPES = {"layers.0.q": (16, 12), "layers.0.down": (12, 20), "layers.1.up": (20, 12)}


def test_reference_ties_from_the_ranking_equal_the_reference_on_full_scores():
    """strictly_above_kth (what the rankings keep) against reference_top (the reference's
    rule restated on the full scores), and the masks of every mode against a plain loop."""
    from tomsparse.masks import (
        build_rankings,
        k_for,
        masks_for,
        reference_top,
        strictly_above_kth,
        top_order,
    )

    tom, gen = _scores_with_ties(SHAPES, 1), _scores_with_ties(SHAPES, 2)
    for name, score in tom.items():
        order = top_order(score, score.numel())
        values = score.reshape(-1)[order]
        for k in range(0, score.numel() + 1, 7):
            assert strictly_above_kth(order, values, k).tolist() == \
                reference_top(score, k).tolist(), (name, k)
    rankings = build_rankings(tom, gen, list(SHAPES), m_max=0.3, reference_ties=True)
    for m in (0.01, 0.05, 0.1, 0.3):
        for mode in ("difference", "tom-only", "generic-only"):
            got = masks_for(rankings, m, mode, reference_ties=True)
            for name in SHAPES:
                k = k_for(tom[name].numel(), m)
                t, g = reference_top(tom[name], k), reference_top(gen[name], k)
                want = {"difference": t[~torch.isin(t, g)], "tom-only": t,
                        "generic-only": g[~torch.isin(g, t)]}[mode]
                assert sorted(got[name].tolist()) == sorted(want.tolist()), (m, mode, name)


def test_rankings_from_a_store_read_one_matrix_at_a_time(tmp_path, monkeypatch):
    """open_scores reads each matrix on access (never the whole store), and rankings built
    from it equal rankings built from the scores in memory."""
    from tomsparse.masks import build_rankings, masks_for
    from tomsparse.scores.store import (
        StoredScores,
        load_scores,
        open_scores,
        save_scores,
    )

    tom, gen = _scores_with_ties(SHAPES, 3), _scores_with_ties(SHAPES, 4)
    for kind, scores in (("tom", tom), ("gen", gen)):
        save_scores(tmp_path / kind, scores, {"model": "t", "dataset": kind,
                                             "samples_sha256": kind})
    reads = []
    original = StoredScores.__getitem__
    monkeypatch.setattr(StoredScores, "__getitem__",
                        lambda self, name: reads.append(name) or original(self, name))
    lazy_tom, lazy_gen = open_scores(tmp_path / "tom"), open_scores(tmp_path / "gen")
    assert reads == []  # opening reads no matrix
    streamed = build_rankings(lazy_tom, lazy_gen, list(SHAPES), m_max=0.2)
    assert sorted(reads) == sorted(list(SHAPES) * 2)  # each matrix read once per store
    in_memory = build_rankings(tom, gen, list(SHAPES), m_max=0.2)
    for mode in ("difference", "random", "tom-only", "generic-only"):
        a = masks_for(streamed, 0.2, mode, seed=3)
        b = masks_for(in_memory, 0.2, mode, seed=3)
        assert all(torch.equal(a[n], b[n]) for n in SHAPES)
    whole, _ = load_scores(tmp_path / "tom")
    assert all(torch.equal(whole[n], tom[n]) for n in SHAPES)
    assert streamed["layers.0.q"].tom_order.device.type == "cpu"


def test_bench_sweep_runs_at_the_tiny_shape():
    """benchmarks/bench_sweep.py (issue 14, part 7) stays runnable: every stage through the
    public API and the projection, on a tiny random-weight model."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_sweep.py"),
                           "--shape", "tiny", "--repeats", "1"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for stage in ("1. scores", "2. rankings", "3. masks_for", "4. perturbed()",
                  "5. ToM evaluation", "6. perplexity", "7. the reference protocol projected"):
        assert stage in proc.stdout, stage
    assert "time of 5 reps / time of 1 rep" in proc.stdout and "total" in proc.stdout
