"""Export a TaskSet as lm-evaluation-harness tasks (``tomsparse tasks export --format lm-eval``).

One task per family and condition (``<bank>_<family>_<condition>``), each a YAML file and its
prompts as JSONL beside it, and a group ``<bank>`` over all of them (accuracy weighted by the
number of prompts). Run them with ``lm_eval --include_path DIR --tasks <bank> ...``.

The tasks reproduce our likelihood scoring (``evaluate.tom``, scoring ``likelihood``):

* ``output_type: multiple_choice`` with two choices, the expected answer first
  (``doc_to_target: label``, always 0) and the alternative second;
* ``doc_to_text`` is the prompt field verbatim: zero-shot, lm-eval's context is that text with
  nothing added (no description, no few-shot examples);
* ``target_delimiter: " "`` and the choices are the scored answer text (the answer's first
  word by default, ``answer_span="full"`` for all of it), so lm-eval scores
  ``" " + answer`` after the prompt, as we do;
* lm-eval tokenises ``prompt + " " + answer`` and takes the tokens past ``len(encode(prompt))``
  as the continuation; so do we (``evaluate.tom.continuation_ids``).

The one difference by design: where the tokenizer merges across the prompt/answer boundary
(the prompt's tokens are not a prefix of the longer sequence's), we tokenize the answer on its
own and count a ``boundary_fallback``; lm-eval keeps the tail of the joint tokenization. Our
prompts end in a word and the answers start with a space, so a BPE tokenizer does not merge
there (tests/integration/test_lm_eval_crosscheck.py checks the log-likelihoods agree). A tie
between the two answers counts as right in lm-eval (argmax takes the first) and wrong for us
(margin > 0); with float log-probabilities it does not occur in practice.

The JSONL records carry, besides ``prompt``/``choices``/``label``, the prompt's identity
(family, task_id, condition, reversed, scenario, probe, cell, expected, alternative) so that
lm-eval's logged samples can be matched back to our rows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tomsparse.data.tasks.model import Prompt, TaskSet
from tomsparse.errors import UserError
from tomsparse.files import atomic_write_text, check_no_overwrite

ANSWER_SPANS = ("word", "full")  # as evaluate.tom.ANSWER_SPANS
TARGET_DELIMITER = " "           # our continuation is " " + answer
GROUP_PREFIX = "tomsparse"


def scored_answer(answer: str, span: str) -> str:
    """The answer text our likelihood scoring scores (evaluate.tom.answer_text): its first
    word as written, or all of it with whitespace collapsed."""
    return answer.split()[0] if span == "word" else " ".join(answer.split())


def slug(text: str) -> str:
    """``text`` as an lm-eval task-name part: lowercase letters, digits and underscores."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "tasks"


def bank_name(taskset: TaskSet) -> str:
    """The group name for a task source: ``tomsparse_builtin``, ``tomsparse_builtin_train``,
    ``tomsparse_tomi``, ``tomsparse_<file stem>`` for a user's task file, the parts joined
    for a merged spec (``builtin,tomi`` -> ``tomsparse_builtin_tomi``)."""
    parts = []
    for part in taskset.name.split(","):
        part = part.strip()
        if part in ("builtin", "builtin:eval"):
            parts.append("builtin")
        elif part in ("builtin:train", "tomi"):
            parts.append(slug(part))
        else:
            parts.append(slug(Path(part).stem))
    return "_".join([GROUP_PREFIX] + parts)


def lm_eval_record(p: Prompt, answer_span: str = "word") -> dict:
    """One JSONL record: what lm-eval reads (prompt, choices, label) and who the prompt is."""
    return {"prompt": p.text,
            "choices": [scored_answer(p.expected, answer_span),
                        scored_answer(p.alternative, answer_span)],
            "label": 0,
            "family": p.family, "task_id": str(p.task_id), "task_index": p.task_index,
            "condition": p.condition, "reversed": bool(p.reversed), "scenario": p.scenario,
            "probe": p.probe, "cell": p.cell_id, "expected": p.expected,
            "alternative": p.alternative}


def task_config(task: str, group: str, data_file: Path, family: str, condition: str) -> dict:
    """The lm-eval task YAML (as a dict) of one family and condition."""
    return {
        "task": task,
        "dataset_path": "json",
        # datasets resolves a relative data file against the working directory, not the YAML's
        # folder, so the path is absolute: export again after moving the folder.
        "dataset_kwargs": {"data_files": {"test": str(data_file.resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "prompt",
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "target_delimiter": TARGET_DELIMITER,
        "num_fewshot": 0,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, "family": family, "condition": condition,
                     "exported_by": "tomsparse tasks export --format lm-eval"},
    }


def group_config(group: str, tasks: list[str], source: str) -> dict:
    return {"group": group, "task": tasks,
            "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean",
                                       "weight_by_size": True}],
            "metadata": {"version": 1.0, "source": source}}


def by_family_and_condition(prompts: list[Prompt]) -> dict[tuple[str, str], list[Prompt]]:
    """Prompts grouped by (family, condition), in the order they first appear."""
    out: dict[tuple[str, str], list[Prompt]] = {}
    for p in prompts:
        out.setdefault((p.family, p.condition), []).append(p)
    return out


def _dump_yaml(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=100)


def export_lm_eval(taskset: TaskSet, out_dir: str | Path, answer_span: str = "word",
                   group: str | None = None, overwrite: bool = True) -> list[Path]:
    """Write ``taskset`` as lm-eval tasks into ``out_dir``; returns the files written (the
    group YAML last). ``group`` names the group (default ``bank_name(taskset)``). An
    existing file is refused, before anything is written, unless ``overwrite``."""
    if answer_span not in ANSWER_SPANS:
        raise UserError(f"unknown answer span {answer_span!r}; choose from word, full")
    prompts = taskset.prompts()
    if not prompts:
        raise UserError(f"{taskset.name}: no prompts to export")
    group = slug(group) if group else bank_name(taskset)
    out = Path(out_dir)
    planned = [out / f"{group}.yaml"]
    for family, condition in by_family_and_condition(prompts):
        task = f"{group}_{family}_{slug(condition)}"
        planned += [out / f"{task}.jsonl", out / f"{task}.yaml"]
    check_no_overwrite(planned, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    written, names = [], []
    for (family, condition), members in by_family_and_condition(prompts).items():
        task = f"{group}_{family}_{slug(condition)}"
        data_file = out / f"{task}.jsonl"
        lines = [json.dumps(lm_eval_record(p, answer_span), ensure_ascii=False) for p in members]
        written.append(atomic_write_text(data_file, "\n".join(lines) + "\n"))
        config = task_config(task, group, data_file, family, condition)
        written.append(atomic_write_text(out / f"{task}.yaml", _dump_yaml(config)))
        names.append(task)
    group_file = out / f"{group}.yaml"
    written.append(atomic_write_text(group_file,
                                     _dump_yaml(group_config(group, names, taskset.name))))
    return written
