"""Evaluation: metrics against hand computations, the reference layout, and batched scoring
against one-prompt-at-a-time scoring on tiny models (left padding, KV-cache reuse)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import pytest
import torch

import tomsparse.evaluate.tom as ev
from tomsparse.data.tasks import Prompt, load_tasks
from tomsparse.errors import UserError
from tomsparse.evaluate.generate import generate_hf
from tomsparse.evaluate.tom import (
    EvalResult,
    compute_metrics,
    continuation_ids,
    evaluate,
    score_likelihood,
)
from tomsparse.testing import CharTokenizer, tiny_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"


# ---------------------------------------------------------------- metrics by hand

# transfer, 2 tasks x 2 scenarios x 2 probes x 2 reps; (rep, task, scenario) -> (probe a, b)
HAND = {
    (1, 0, "false belief (F)"): (1, 1), (1, 0, "no transfer (F)"): (1, 0),
    (1, 1, "false belief (F)"): (1, 1), (1, 1, "no transfer (F)"): (1, 1),
    (2, 0, "false belief (F)"): (0, 1), (2, 0, "no transfer (F)"): (1, 1),
    (2, 1, "false belief (F)"): (1, 1), (2, 1, "no transfer (F)"): (0, 0),
}


def _hand_table(with_unexpected=False):
    rows = []
    for (rep, task, scenario), probes in HAND.items():
        for probe, ok in zip("ab", probes):
            rows.append(dict(model="m", scoring="likelihood", m=0.0, rep=rep, family="transfer",
                             task_index=task, condition=scenario[:-4], scenario=scenario,
                             probe=probe, correct=bool(ok), margin=1.0 if ok else -1.0))
    if with_unexpected:
        for rep, task, probe in itertools.product((1, 2), (0, 1), "ab"):
            rows.append(dict(model="m", scoring="likelihood", m=0.0, rep=rep, family="unexpected",
                             task_index=task, condition="false belief",
                             scenario="false belief (F)", probe=probe, correct=True, margin=2.0))
    return pd.DataFrame(rows)


def _row(metrics, family, level="family", condition="all", scenario="all"):
    sel = metrics[(metrics.family == family) & (metrics.level == level)
                  & (metrics.condition == condition) & (metrics.scenario == scenario)]
    assert len(sel) == 1
    return sel.iloc[0]


def test_family_metrics_match_hand_computation():
    metrics = compute_metrics(_hand_table(), n_boot=200, seed=0)
    row = _row(metrics, "transfer")
    assert row.n_tasks == 2 and row.reps == 2 and row.n_prompts == 8 and row.n_cells == 4
    assert row.prompt_accuracy == pytest.approx(12 / 16)
    # Cells right: rep 1 -> 3 of 4, rep 2 -> 2 of 4.
    assert row.scenario_accuracy == pytest.approx(5 / 8)
    assert row.reference_percent == pytest.approx(62.5)
    assert row.reference_percent_var == pytest.approx(312.5)  # var(75, 50), ddof=1
    # Only task 1 in rep 1 has every cell right.
    assert row.strict_score == pytest.approx(1 / 4)
    assert (row.chance_prompt, row.chance_scenario, row.chance_strict) == (0.5, 0.25, 0.5 ** 4)
    assert row.mean_margin == pytest.approx(0.5)
    for name, value in (("prompt", row.prompt_accuracy), ("scenario", row.scenario_accuracy),
                        ("strict", row.strict_score), ("margin", row.mean_margin)):
        assert row[f"{name}_ci_low"] <= value <= row[f"{name}_ci_high"], name


def test_condition_and_scenario_metrics():
    metrics = compute_metrics(_hand_table(), n_boot=0)
    row = _row(metrics, "transfer", "condition", "false belief")
    assert row.prompt_accuracy == pytest.approx(7 / 8)
    assert row.scenario_accuracy == pytest.approx(3 / 4)
    assert row.strict_score == pytest.approx(3 / 4)  # one cell per task in this group
    assert row.chance_strict == 0.25
    row = _row(metrics, "transfer", "scenario", "no transfer", "no transfer (F)")
    assert row.scenario_accuracy == pytest.approx(2 / 4)
    assert pd.isna(row.scenario_ci_low)  # n_boot=0: no interval


def test_reference_average_of_unexpected_and_transfer():
    metrics = compute_metrics(_hand_table(with_unexpected=True), n_boot=50)
    row = _row(metrics, "unexpected+transfer")
    # Per rep: (100 + 75) / 2 and (100 + 50) / 2.
    assert row.reference_percent == pytest.approx(81.25)
    assert row.reference_percent_var == pytest.approx(78.125)
    unexpected = _row(metrics, "unexpected")
    assert unexpected.prompt_accuracy == 1.0
    assert (unexpected.prompt_ci_low, unexpected.prompt_ci_high) == (1.0, 1.0)


def test_reference_layout_and_merge(tmp_path):
    table = _hand_table()
    result = EvalResult(table=table, metrics=compute_metrics(table, n_boot=0),
                        meta={"m": 0.0, "scoring": "likelihood"})
    paths = result.write(tmp_path)
    frame = pd.read_csv(tmp_path / "tom" / "1" / "0.0" / "transfer" / "results.csv", index_col=0)
    assert list(frame.columns) == ["false belief (F)", "no transfer (F)"]
    assert frame.values.tolist() == [[1, 0], [1, 1]]
    # The reference summarize step: 100 * sum / cells.
    assert 100 * frame.values.sum() / frame.size == 75.0
    assert len(paths["reference"]) == 2
    # A second run at another m adds rows; the same m again replaces them.
    result.write(tmp_path)
    shifted = table.assign(m=2e-6)
    EvalResult(table=shifted, metrics=compute_metrics(shifted, n_boot=0),
               meta={"m": 2e-6}).write(tmp_path)
    prompts = pd.read_csv(tmp_path / "tom_prompts.csv")
    assert sorted(prompts["m"].unique()) == [0.0, 2e-6]
    assert len(prompts) == 2 * len(table)
    assert (tmp_path / "tom" / "2" / "2e-06" / "transfer" / "results.csv").is_file()
    assert len((tmp_path / "tom_runs.jsonl").read_text().splitlines()) == 3


# ---------------------------------------------------------------- tokenization boundary

class _MergingTokenizer(CharTokenizer):
    """Merges "f" + " " into one token, so "... of" + " popcorn" is not a prefix extension."""

    def _ids(self, text, add_special_tokens=True):
        ids = super()._ids(text, add_special_tokens)
        out, i = [], 0
        while i < len(ids):
            if i + 1 < len(ids) and ids[i:i + 2] == super()._ids("f ", False):
                out.append(120)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        return out


def test_continuation_extends_prompt_tokens():
    tok = CharTokenizer()
    prompt = "It is full of"
    ids, clean = continuation_ids(tok, prompt, tok.encode(prompt), "popcorn")
    assert clean and ids == tok.encode(" popcorn", add_special_tokens=False)
    merging = _MergingTokenizer()
    ids, clean = continuation_ids(merging, prompt, merging.encode(prompt), "popcorn")
    assert not clean and ids == merging.encode(" popcorn", add_special_tokens=False)


# ---------------------------------------------------------------- batched vs one at a time

def _model(arch):
    extra = {"n_positions": 1024} if arch == "gpt2" else {"max_position_embeddings": 1024}
    return tiny_model(arch, **extra)


@pytest.fixture(scope="module")
def fixture_prompts():
    """Prompts of the fixture file from three families, of many lengths, with probe pairs
    sharing a story (scored on one stem), plus a one-token prompt (no stem at all)."""
    prompts = [p for p in load_tasks(str(FIXTURES / "reference_tasks.py")).prompts()
               if p.family == "irony" or p.condition in ("false belief", "informed protagonist")]
    tiny = Prompt(family="irony", task_id="x", task_index=9, condition="irony", reversed=False,
                  scenario="Irony", probe="", text="A", expected="No", alternative="Yes")
    return prompts + [tiny]


def _one_at_a_time(model, tok, prompts, span):
    """Reference computation: each prompt + continuation run alone, no padding, no cache."""
    out = []
    for p in prompts:
        ids = tok.encode(p.text)
        pair = []
        for answer in (p.expected, p.alternative):
            cont, _ = continuation_ids(tok, p.text, ids, ev.answer_text(answer, span))
            logp = model(torch.tensor([ids + cont])).logits[0].float().log_softmax(-1)
            pair.append(sum(logp[len(ids) - 1 + j, t].item() for j, t in enumerate(cont)))
        out.append(pair)
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt", "gemma3"])
def test_batched_likelihood_equals_one_at_a_time(arch, fixture_prompts):
    model, tok = _model(arch), CharTokenizer()
    with torch.inference_mode():
        reference = _one_at_a_time(model, tok, fixture_prompts, "full")
        for batch_size in (1, 5, 16):
            batched = score_likelihood(model, tok, fixture_prompts, batch_size=batch_size,
                                       answer_span="full")
            assert batched.tokens_expected[0] > 1  # multi-token continuations
            got = list(zip(batched.logprob_expected, batched.logprob_alternative))
            for pair, want in zip(got, reference):
                assert pair == pytest.approx(want, abs=1e-4), batch_size


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_greedy_generation_equals_one_at_a_time(arch, fixture_prompts):
    model, tok = _model(arch), CharTokenizer()
    texts = [p.text for p in fixture_prompts[::3]]
    with torch.inference_mode():
        batched = generate_hf(model, tok, texts, batch_size=5, sample=False)
        single = generate_hf(model, tok, texts, batch_size=1, sample=False)
    assert batched == single
    assert all(len(t) > 0 for t in batched)


def test_sampling_is_seeded(fixture_prompts):
    model, tok = _model("llama"), CharTokenizer()
    texts = [p.text for p in fixture_prompts[::3]]
    with torch.inference_mode():
        a = generate_hf(model, tok, texts, batch_size=4, sample=True, seed=7)
        b = generate_hf(model, tok, texts, batch_size=4, sample=True, seed=7)
        c = generate_hf(model, tok, texts, batch_size=4, sample=True, seed=8)
    assert a == b and a != c


# ---------------------------------------------------------------- evaluate()

def test_evaluate_likelihood_leaves_model_and_tokenizer_alone():
    model, tok = _model("llama"), CharTokenizer()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    taskset = load_tasks(str(FIXTURES / "reference_tasks.py"))
    result = evaluate(model, tok, taskset, scoring="likelihood", batch_size=8, model_name="tiny",
                      n_boot=50)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and tok.padding_side == "right"
    table = result.table
    assert len(table) == 34 and list(table.columns) == ev.TABLE_COLUMNS
    assert (table["correct"] == (table["margin"] > 0)).all()
    assert (table["margin"] == table["logprob_expected"] - table["logprob_alternative"]).all()
    family = result.metrics[(result.metrics.level == "family")
                            & (result.metrics.family == "transfer")].iloc[0]
    assert family.mean_margin == pytest.approx(table[table.family == "transfer"].margin.mean())
    assert result.meta["prompts"] == 34 and result.meta["boundary_fallbacks"] == 0


def test_evaluate_generate_scores_first_words(monkeypatch):
    taskset = load_tasks(str(FIXTURES / "reference_tasks.py"))
    prompts = taskset.prompts()
    seeds = []

    def fake_generate(model, tokenizer, texts, rep_seeds, batch_size, sample, device, progress):
        seeds.extend(rep_seeds)
        # Right answer with punctuation for every other prompt, the alternative otherwise.
        return [[f' {p.expected}." she' if i % 2 == 0 else f" {p.alternative}"
                 for i, p in enumerate(prompts)] for _ in rep_seeds]

    monkeypatch.setattr(ev, "generate_reps", fake_generate)
    result = evaluate(torch.nn.Linear(1, 1), CharTokenizer(), taskset, scoring="generate",
                      reps=3, seed=10, model_name="stub", n_boot=0)
    assert seeds == [10, 11, 12]
    table = result.table
    assert len(table) == 3 * len(prompts)
    assert sorted(table["seed"].unique()) == [10, 11, 12]
    assert table["correct"].tolist() == [i % 2 == 0 for i in range(len(prompts))] * 3
    assert table["answer_word"].iloc[0] == prompts[0].expected
    # Probe a right and probe b wrong in every cell: no scenario is right.
    unexpected = result.metrics[(result.metrics.family == "unexpected")
                                & (result.metrics.level == "family")].iloc[0]
    assert unexpected.prompt_accuracy == 0.5 and unexpected.scenario_accuracy == 0.0
    greedy = evaluate(torch.nn.Linear(1, 1), CharTokenizer(), taskset, scoring="greedy", reps=3,
                      n_boot=0)
    assert greedy.table["rep"].unique().tolist() == [1] and seeds[-1] is None


def test_evaluate_rejects_bad_arguments():
    taskset = load_tasks(str(FIXTURES / "reference_tasks.py"))
    model, tok = _model("llama"), CharTokenizer()
    with pytest.raises(UserError, match="unknown scoring"):
        evaluate(model, tok, taskset, scoring="sample")
    with pytest.raises(UserError, match="at least 1"):
        evaluate(model, tok, taskset, reps=0)
