"""``tomsparse tasks export|show``: write the built-in bank in the reference formats, or print a
task source's counts and a few rendered prompts."""

from __future__ import annotations

import sys
import textwrap
from collections import Counter

from ..errors import UserError
from .model import FAMILY_TITLES


def _show(spec: str, examples: int) -> None:
    from .loaders import load_tasks

    taskset = load_tasks(spec)
    prompts = taskset.prompts()
    print(taskset.summary())
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


def _export(out: str, seed: int) -> None:
    from .bank import builtin_taskset, export_bank

    paths = export_bank(out, seed=seed)
    for split in ("eval", "train"):
        print(builtin_taskset(split, seed).summary())
    for path in paths:
        print(f"wrote {path}")


def cmd_tasks(args) -> int:
    """Handler of ``tomsparse tasks``. Reads ``args.action`` (export or show), and:
    export: ``--out DIR`` (required), ``--seed`` (bank seed, default 0);
    show: ``--tasks SPEC`` (default builtin), ``-n N`` (prompts shown per family, default 2).
    """
    action = getattr(args, "action", None)
    if action == "export":
        out = getattr(args, "out", None)
        if not out:
            raise UserError("tasks export needs --out DIR")
        _export(out, getattr(args, "seed", None) or 0)
    elif action == "show":
        examples = getattr(args, "n", None)
        _show(getattr(args, "tasks", None) or "builtin", 2 if examples is None else examples)
    else:
        raise UserError(f"unknown tasks action {action!r}; use export or show")
    sys.stdout.flush()
    return 0
