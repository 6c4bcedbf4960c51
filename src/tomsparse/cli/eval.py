"""``tomsparse eval``: ToM evaluation of a model on a task source (likelihood, sampled or
greedy generation), with metrics and the reference's result layout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tomsparse.cli.options import (
    add_batch_size,
    add_model_args,
    load_model_from,
    note_limits,
    positive_int,
    seed_int,
)
from tomsparse.data.tasks import load_tasks
from tomsparse.evaluate.metrics import format_metrics
from tomsparse.evaluate.results import RESULTS_FILE
from tomsparse.errors import UserError
from tomsparse.evaluate.generate import vllm_available
from tomsparse.evaluate.tom import ANSWER_RULES, DEFAULT_REPS, evaluate
from tomsparse.files import check_output_dir


def cmd_eval(args: argparse.Namespace) -> int:
    if args.out:
        check_output_dir(args.out)  # before the model is loaded or anything evaluated
    reps = args.reps
    if reps is None:  # the reference samples 5 times; deterministic scorings run once
        reps = DEFAULT_REPS if args.scoring == "generate" else 1
    taskset = load_tasks(args.tasks).head(args.limit)
    note_limits(args.tasks, task_limit=args.limit, option="--limit")
    if args.backend != "hf" and args.scoring == "likelihood":
        print(f"note: --backend {args.backend} applies to generate and greedy scoring; "
              "likelihood scoring runs on the Hugging Face model", file=sys.stderr)
    elif args.backend == "vllm" and not vllm_available():  # before the model loads
        raise UserError("--backend vllm needs the vllm package, which is not installed (pip "
                        "install 'tomsparse[vllm]'); use --backend hf")
    lm = load_model_from(args)
    print(f"evaluating {lm.name} on {taskset.summary()} ({len(taskset.prompts())} prompts), "
          f"scoring={args.scoring}, reps={reps if args.scoring == 'generate' else 1}",
          file=sys.stderr)
    result = evaluate(lm.model, lm.tokenizer, taskset, scoring=args.scoring, reps=reps,
                      seed=args.seed, batch_size=args.batch_size, m=0.0, model_name=lm.name,
                      backend=args.backend, answer_span=args.answer_span, progress=True,
                      answer_rule=args.answer_rule)
    result.meta["fingerprint"] = lm.fingerprint
    print(format_metrics(result.metrics))
    if args.out:
        paths = result.write(args.out)
        print(f"wrote {paths['prompts']}, {paths['metrics']} and "
              f"{len(paths['reference'])} reference {RESULTS_FILE} under {Path(args.out) / 'tom'}",
              file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="ToM evaluation of a model")
    add_model_args(p)
    p.add_argument("--tasks", default="builtin", help="builtin, tomi, or a .py/.json task file")
    p.add_argument("--scoring", default="likelihood", choices=["likelihood", "generate", "greedy"])
    p.add_argument("--reps", type=positive_int, default=None,
                   help="repetitions of generate scoring, >= 1 (default: 5 for generate, as the "
                        "reference; likelihood and greedy run once)")
    p.add_argument("--seed", type=seed_int, default=0)
    add_batch_size(p, "eval", "batch_size", 16, "prompts per forward pass, >= 1 (default 16)")
    p.add_argument("--backend", default="hf", choices=["hf", "vllm", "auto"],
                   help="generation backend (vllm: optional extra; auto: vllm on a GPU if installed)")
    p.add_argument("--answer-span", dest="answer_span", default="word", choices=["word", "full"],
                   help="likelihood: score the answer's first word (default) or all of it")
    p.add_argument("--answer-rule", dest="answer_rule", choices=list(ANSWER_RULES),
                   default="tomsparse",
                   help="generate/greedy: how the generated first word is matched: tomsparse "
                        "(default: punctuation removed from both words) or reference (only "
                        ". , ' \" ; removed, case-sensitive, as the reference code)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="evaluate only the first N >= 1 tasks per family (default: all)")
    p.add_argument("--out", default=None, help="output folder")
    p.set_defaults(handler=cmd_eval)
