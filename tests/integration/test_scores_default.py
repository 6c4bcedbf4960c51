"""Sensitivity scores on the real default model (SmolLM2-135M-Instruct) with the built-in ToM
prompts and the offline Wikipedia corpus, at small nsamples: batched equals the plain loop,
both score sets are computed and stored. About half a minute on two CPU cores."""

from __future__ import annotations

import pytest
import torch

from tomsparse.data.score_samples import build_generic_samples, build_tom_samples
from tomsparse.scores.compute import compute_score_set, compute_scores
from tomsparse.scores.store import load_scores

pytestmark = pytest.mark.integration


def _context(lm):
    return lm.model.config.max_position_embeddings


def test_tom_batched_equals_loop(default_model):
    from tomsparse.data.tasks import gradient_prompts

    lm = default_model
    data = build_tom_samples(lm.tokenizer, gradient_prompts("builtin"), nsamples=3, seed=0,
                             supervision="answer", max_length=_context(lm))
    assert len({len(s) for s in data}) > 1  # unequal lengths: the batch is padded
    # The first, a middle and the last layer: enough to cover the whole backward pass.
    layers = {0, lm.description.num_layers // 2, lm.description.num_layers - 1}
    matrices = [m for m in lm.description.matrices if m.layer in layers]
    loop = compute_scores(lm.model, lm.tokenizer, data, matrices=matrices, method="loop",
                          progress=False)
    batched = compute_scores(lm.model, lm.tokenizer, data, matrices=matrices,
                             method="batched", batch_size=3, progress=False)
    assert batched.padded_tokens > 0
    for name, expected in loop.scores.items():
        err = ((batched.scores[name] - expected).abs().max() / expected.abs().max()).item()
        assert err < 1e-4, f"{name}: {err:.2e}"
    assert loop.supervised_tokens == data.info["supervised_tokens"] >= 3


def test_both_score_sets_stored(default_model, tmp_path):
    from tomsparse.data.corpora import DEFAULT_GENERIC, load_corpus
    from tomsparse.data.tasks import gradient_prompts

    lm = default_model
    tom = build_tom_samples(lm.tokenizer, gradient_prompts("builtin"), nsamples=2, seed=0,
                            supervision="last-token", max_length=_context(lm))
    generic = build_generic_samples(lm.tokenizer, load_corpus(DEFAULT_GENERIC), nsamples=2,
                                    seqlen=128, seed=0, max_length=_context(lm))
    results = {}
    for name, data in (("tom", tom), ("generic", generic)):
        results[name] = compute_score_set(lm, data, out=tmp_path / name, batch_size=2,
                                          progress=False)
    assert results["tom"].supervised_tokens == 2
    assert results["generic"].supervised_tokens == 2 * 127  # ~128x the ToM set per sample
    for name in ("tom", "generic"):
        scores, manifest = load_scores(tmp_path / name, lm)
        assert len(scores) == len(lm.description.matrices) == 30 * 7
        assert all(torch.isfinite(t).all() for t in scores.values())
        assert manifest["fingerprint"] == lm.fingerprint
        assert manifest["dataset"] == name
        # fp32 sums: no entry of a real model's score is exactly zero.
        assert sum(manifest["zero_counts"].values()) == 0


def test_reference_fp16_zeroes_small_entries(default_model):
    from tomsparse.data.tasks import gradient_prompts

    lm = default_model
    data = build_tom_samples(lm.tokenizer, gradient_prompts("builtin"), nsamples=2, seed=0,
                             supervision="last-token", max_length=_context(lm))
    matrices = [m for m in lm.description.matrices if m.layer == 0]
    result = compute_scores(lm.model, lm.tokenizer, data, matrices=matrices,
                            reference_fp16=True, progress=False)
    assert result.accumulation_dtype == "float16 (reference)"
    assert sum(result.zero_counts.values()) > 0
