"""``tomsparse tasks export|show``: write the built-in bank in the reference formats, or print a
task source's counts and a few rendered prompts."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections import Counter

from tomsparse.cli.options import seed_int
from tomsparse.data.tasks.bank import builtin_taskset, export_bank
from tomsparse.data.tasks.lm_eval_export import ANSWER_SPANS, export_lm_eval
from tomsparse.data.tasks.loaders import load_tasks
from tomsparse.data.tasks.model import FAMILY_TITLES
from tomsparse.errors import UserError
from tomsparse.files import check_output_dir


def _show(spec: str, examples: int) -> None:

    taskset = load_tasks(spec)
    prompts = taskset.prompts()
    print(f"{taskset.summary()} (rendered by the {taskset.renderer} renderer)")
    for family in taskset.families():
        mine = [p for p in prompts if p.family == family]
        per_condition = Counter(p.condition for p in mine)
        conditions = ", ".join(f"{c} {n}" for c, n in per_condition.items())
        print(f"\n{FAMILY_TITLES[family]}: {taskset.count(family)} tasks, {len(mine)} prompts "
              f"({conditions})")
        if examples <= 0:
            continue
        # Spread the examples over the family so that several conditions show up.
        step = max(1, len(mine) // examples)
        for p in mine[::step][:examples]:
            print(f"- task {p.task_id}, {p.scenario}" + (f", probe {p.probe}" if p.probe else "")
                  + f": expected {p.expected!r}, alternative {p.alternative!r}")
            print(textwrap.indent(textwrap.fill(p.text, width=100), "    "))


def _export(out: str, seed: int, overwrite: bool) -> None:

    paths = export_bank(out, seed=seed, overwrite=overwrite)
    for split in ("eval", "train"):
        print(builtin_taskset(split, seed).summary())
    for path in paths:
        print(f"wrote {path}")


def _export_lm_eval(out: str, spec: str, answer_span: str, overwrite: bool) -> None:
    taskset = load_tasks(spec)
    paths = export_lm_eval(taskset, out, answer_span=answer_span, overwrite=overwrite)
    print(f"{taskset.summary()}: {(len(paths) - 1) // 2} lm-eval tasks")
    for path in paths:
        print(f"wrote {path}")
    group = paths[-1].stem
    print(f"run: lm_eval --model hf --model_args pretrained=MODEL --include_path {out} "
          f"--tasks {group}")


SHOWN_PER_FAMILY = 3


def cmd_tasks(args: argparse.Namespace) -> int:
    if args.action == "export":
        if not args.out:
            raise UserError("tasks export needs --out DIR")
        check_output_dir(args.out)  # before anything is built or written
        if args.format == "lm-eval":
            _export_lm_eval(args.out, args.tasks, args.answer_span, args.overwrite)
        else:
            _export(args.out, args.seed, args.overwrite)
    else:
        if args.n < 0:  # a one-line error (tests/unit/test_evaluate_cli.py), not argparse's
            raise UserError(f"tasks show -n {args.n}: give the number of prompts to show per "
                            "family, 0 or more")
        _show(args.tasks, args.n)
    sys.stdout.flush()
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("tasks", help="the built-in ToM task bank: export or show")
    p.add_argument("action", choices=["export", "show"])
    p.add_argument("--tasks", default="builtin", help="builtin, builtin:train, tomi or a file")
    p.add_argument("--out", default=None, help="export folder")
    p.add_argument("--format", choices=["reference", "lm-eval"], default="reference",
                   help="export: the bank in the reference's .json/.py formats (default), or "
                        "--tasks as lm-evaluation-harness task YAMLs + JSONL")
    p.add_argument("--answer-span", choices=list(ANSWER_SPANS), default="word",
                   help="lm-eval export: score the answer's first word (default, as our "
                        "likelihood scoring) or all of it")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--overwrite", action="store_true",
                   help="export: replace files of an earlier export in --out (refused "
                        "otherwise, as by every command that writes named files)")
    p.add_argument("-n", dest="n", type=int, default=SHOWN_PER_FAMILY,
                   help=f"prompts to show per family (default {SHOWN_PER_FAMILY}), 0 or more")
    p.set_defaults(handler=cmd_tasks)
