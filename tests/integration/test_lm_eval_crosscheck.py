"""Our likelihood scoring against lm-evaluation-harness's, on the real default model.

``tomsparse tasks export --format lm-eval`` writes the tasks; lm-eval itself (its Python entry
point ``simple_evaluate``, model ``hf``, offline) scores them on the converted default model
folder, and its logged per-prompt log-likelihoods and accuracies must equal ours
(``evaluate.tom.score_likelihood`` / ``evaluate``) on the same prompts. A subset of the bank
(one task per family, 34 prompts) and of ToMi (6 prompts) keeps it to about a minute on two
CPU cores.
"""

from __future__ import annotations

import math
from collections import defaultdict

import pytest

from tomsparse.data.tasks import load_tasks
from tomsparse.data.tasks.lm_eval_export import export_lm_eval, slug
from tomsparse.data.tasks.model import TaskSet
from tomsparse.evaluate.tom import answer_text, evaluate

pytestmark = pytest.mark.integration
lm_eval = pytest.importorskip("lm_eval")

TOLERANCE = 1e-4  # nats
TASKS_PER_FAMILY = 1
TOMI_ITEMS = 6
GROUP = "tomsparse_crosscheck"


def _subset() -> TaskSet:
    bank = load_tasks("builtin")
    tomi = load_tasks("tomi")
    return TaskSet(name="crosscheck",
                   tasks={f: ts[:TASKS_PER_FAMILY] for f, ts in bank.tasks.items()},
                   tomi=tomi.tomi[:TOMI_ITEMS])


def _identity(doc: dict) -> tuple:
    return (doc["family"], doc["task_id"], doc["condition"], doc["scenario"], doc["probe"],
            doc["prompt"])


def _requests(sample: dict) -> list[tuple]:
    """The (context, continuation) pairs lm-eval logged for one sample."""
    args = sample["arguments"]
    pairs = args.values() if isinstance(args, dict) else args
    return [tuple(a.values()) if isinstance(a, dict) else tuple(a) for a in pairs]


@pytest.fixture(scope="module")
def crosscheck(default_model, tmp_path_factory, monkeypatch_module):
    from lm_eval.tasks import TaskManager

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch_module.setenv(var, "1")
    taskset = _subset()
    out = tmp_path_factory.mktemp("lm_eval_tasks")
    export_lm_eval(taskset, out, group=GROUP)
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": default_model.source, "dtype": "float32", "device": "cpu"},
        tasks=[GROUP], task_manager=TaskManager(include_path=str(out), include_defaults=False),
        batch_size=8, log_samples=True, bootstrap_iters=0, random_seed=0)
    ours = evaluate(default_model.model, default_model.tokenizer, taskset, n_boot=0)
    return taskset, results, ours


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_log_likelihoods_and_accuracy_equal_ours(crosscheck):
    taskset, results, ours = crosscheck
    # A boundary fallback is the one case where lm-eval's continuation tokens differ from ours
    # (data/tasks/lm_eval_export.py); none occurs on these prompts.
    assert ours.meta["boundary_fallbacks"] == 0
    ours_by_id = {(r.family, str(r.task_id), r.condition, r.scenario, r.probe, r.prompt):
                  (r.logprob_expected, r.logprob_alternative, r.correct)
                  for r in ours.table.itertuples()}
    rows = {(r.family, str(r.task_id), r.condition, r.scenario, r.probe, r.prompt): r
            for r in ours.table.itertuples()}
    assert len(ours_by_id) == len(taskset.prompts())
    seen, diffs, right = set(), [], defaultdict(list)
    for task, samples in results["samples"].items():
        for sample in samples:
            key = _identity(sample["doc"])
            lls = [float(r[0]) for r in sample["filtered_resps"]]
            assert len(lls) == 2, f"{task}: a prompt with {len(lls)} choices"
            expected, alternative, correct = ours_by_id[key]
            # lm-eval's requests: its context is our prompt verbatim and its continuations are
            # ours, " " + the answer's first word (evaluate.tom.answer_text)
            row = rows[key]
            assert _requests(sample) == [(row.prompt, " " + answer_text(a, "word"))
                                         for a in (row.expected, row.alternative)], key
            diffs += [abs(lls[0] - expected), abs(lls[1] - alternative)]
            assert sample["acc"] == float(correct), key
            right[task].append(correct)
            seen.add(key)
    assert seen == set(ours_by_id), "lm-eval scored other prompts than ours"
    worst = max(diffs)
    print(f"\nlm-eval vs tomsparse: {len(seen)} prompts, {len(diffs)} log-likelihoods, "
          f"max |difference| = {worst:.2e} nats")
    assert worst <= TOLERANCE
    for task, flags in right.items():
        assert results["results"][task]["acc,none"] == pytest.approx(sum(flags) / len(flags))


def test_accuracy_per_task_and_group_equals_our_evaluation(crosscheck):
    _, results, ours = crosscheck
    table = ours.table
    ours = table.groupby(["family", "condition"])["correct"].mean()
    for (family, condition), acc in ours.items():
        task = f"{GROUP}_{family}_{slug(condition)}"
        theirs = results["results"][task]["acc,none"]
        print(f"{task}: lm-eval {theirs:.4f}, tomsparse {acc:.4f}")
        assert theirs == pytest.approx(acc, abs=1e-12), task
    overall = results["results"][GROUP]["acc,none"]
    print(f"{GROUP}: lm-eval {overall:.4f}, tomsparse {table['correct'].mean():.4f}")
    assert math.isclose(overall, table["correct"].mean(), abs_tol=1e-12)
