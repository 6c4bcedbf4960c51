"""The vLLM generation backend against the HF one, on the real default model (run by
``make test-vllm`` in .venv-vllm; skipped where vllm is not installed). One engine serves the
whole module: it takes minutes to start on the CPU."""

import os

import pytest

# vLLM on the CPU: a small KV cache is plenty for 5-token continuations of short prompts.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
pytest.importorskip("vllm")

import torch  # noqa: E402

from tomsparse.data.tasks.bank import builtin_taskset  # noqa: E402
from tomsparse.evaluate.generate import (  # noqa: E402
    close_vllm_generator,
    generate_reps,
    vllm_generator,
)
from tomsparse.masks import random_indices  # noqa: E402
from tomsparse.perturb import perturbed  # noqa: E402

SAMPLE = 24  # prompts, spread over the bank's families


@pytest.fixture(scope="module")
def engine(default_model):
    gen = vllm_generator(default_model.model, default_model.tokenizer)
    yield gen
    close_vllm_generator()


@pytest.fixture(scope="module")
def texts():
    prompts = builtin_taskset().prompts()
    step = len(prompts) // SAMPLE
    return [p.text for p in prompts[::step][:SAMPLE]]


def hf_greedy(lm, texts):
    with torch.inference_mode():
        return generate_reps(lm.model, lm.tokenizer, texts, [None], sample=False)[0]


def test_greedy_words_equal_hf_word_for_word(engine, default_model, texts):
    ours = hf_greedy(default_model, texts)
    theirs = engine.generate(texts, sample=False, seed=None)
    assert len(theirs) == len(texts)
    assert sum(bool(t.strip()) for t in ours) > len(texts) // 2  # real words, not blanks
    assert theirs == ours


def test_sampling_uses_the_reference_protocol_with_per_rep_seeds(engine, texts):
    seeds = (7, 8, 9, 10, 11)  # one per rep, as evaluate's seed + rep - 1
    sampled = [engine.generate(texts, sample=True, seed=s) for s in seeds]
    assert sampled == [engine.generate(texts, sample=True, seed=s) for s in seeds]  # repeatable
    assert any(sampled[0][i] != rep[i] for rep in sampled[1:] for i in range(len(texts)))
    greedy = engine.generate(texts, sample=False, seed=None)
    assert any(s != greedy for s in sampled)  # temperature 0.6 is not greedy


def test_a_perturbed_point_reaches_vllm_and_is_undone(engine, default_model, texts):
    lm = default_model
    before = engine.generate(texts, sample=False, seed=None)
    masks = {m.name: random_indices(m.numel, m.numel // 20, 0, m.name)
             for m in lm.description.matrices}
    with perturbed(lm.description.matrices, masks, mode="mean"):
        hf_perturbed = hf_greedy(lm, texts)
        sent = engine.tensors_sent
        vllm_perturbed = engine.generate(texts, sample=False, seed=None)
        assert engine.tensors_sent > sent  # the changed blocks were pushed
    assert hf_perturbed != before  # the perturbation changes words, so this can tell
    assert vllm_perturbed == hf_perturbed
    assert engine.generate(texts, sample=False, seed=None) == before
    assert engine.sync_weights() == 0  # nothing changed since
