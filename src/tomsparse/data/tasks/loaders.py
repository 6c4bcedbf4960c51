"""Reading task files and ToM gradient-prompt files in the reference's formats.

* ``.py`` task files define lists ``tsks1`` (unexpected contents), ``tsks2`` (unexpected
  transfer) and ``tsks3`` (irony). They are parsed with ``ast`` and only literal values are
  accepted: a task file is data and must not be able to run code.
* ``.json`` task files hold an object with keys ``s1``, ``s2``, ``s3``.
* ``.jsonl`` files in the ToMi format (``input`` / ``target`` per line) load as ToMi items.
* A ``.py`` / ``.json`` task file renders with the reference's renderer unless it declares
  another (a top-level ``renderer = "tomsparse"`` in ``.py``, a ``"renderer"`` key in
  ``.json``, as ``export_bank`` writes); a ``renderer=`` argument overrides both.
* Gradient-prompt files are a JSON list, or JSONL, of objects with ``txt`` (a full prompt
  ending where the answer starts) and optionally ``answer``.
"""

from __future__ import annotations

import ast
import random
from pathlib import Path

from tomsparse.data.tasks.bank import builtin_taskset
from tomsparse.data.tasks.roles import CONTROL, FACT, TOM, prompt_role
from tomsparse.data.tasks.model import (
    JSON_KEYS,
    PY_NAMES,
    REFERENCE_FAMILIES,
    RENDERER_KEY,
    GradientPrompt,
    TaskSet,
    check_renderer,
    make_task,
)
from tomsparse.data.tasks.tomi import load_tomi
from tomsparse.errors import UserError
from tomsparse.safe_read import literal_value, parse_json, parse_python, read_text


def _read_text(path: Path, what: str = "task file") -> str:
    if not path.exists():
        raise UserError(f"{path}: no such file")
    return read_text(path, what)


def _non_literal(node: ast.AST, source: str, name: str) -> UserError:
    """A UserError pointing at the first non-literal inside ``node`` (task and field when the
    value is a list of dicts, as task lists are)."""
    if isinstance(node, (ast.List, ast.Tuple)):
        for i, element in enumerate(node.elts):
            try:
                literal_value(element, source)
            except ValueError:
                if isinstance(element, ast.Dict):
                    for key, value in zip(element.keys, element.values):
                        try:
                            literal_value(value, source)
                        except ValueError:
                            label = key.value if isinstance(key, ast.Constant) else "?"
                            return UserError(
                                f"{source}: {name} task {i}, field {label!r} (line "
                                f"{value.lineno}): only literal values are allowed in a task "
                                f"file, found {type(value).__name__}")
                return UserError(f"{source}: {name} task {i} (line {element.lineno}): only "
                                 f"literal values are allowed in a task file, found "
                                 f"{type(element).__name__}")
    return UserError(f"{source}: {name} (line {node.lineno}): only literal values are allowed "
                     f"in a task file, found {type(node).__name__}")


def read_py_literals(path: Path) -> dict:
    """The names a ``.py`` file assigns to literal values, without executing it.

    Allowed top-level statements: a docstring and assignments of literals to plain names.
    Anything else (imports, calls, function definitions, comprehensions ...) is refused.
    """
    tree = parse_python(_read_text(path), str(path))  # checked for size and depth first
    values: dict = {}
    for i, stmt in enumerate(tree.body):
        if i == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) \
                and isinstance(stmt.value.value, str):
            continue  # module docstring
        if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets):
            targets, value = [t.id for t in stmt.targets], stmt.value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) \
                and stmt.value is not None:
            targets, value = [stmt.target.id], stmt.value
        else:
            raise UserError(f"{path}: line {stmt.lineno}: a task file may only assign literal "
                            f"values to names (found a {type(stmt).__name__} statement); it is "
                            f"read, never executed")
        try:
            literal = literal_value(value, f"{path}: {targets[0]}")
        except ValueError:
            raise _non_literal(value, str(path), targets[0]) from None
        for target in targets:
            values[target] = literal
    return values


def _taskset_from_lists(lists: dict, labels: dict, source: str, renderer: str) -> TaskSet:
    """Validate the per-family lists of raw task dicts and build a TaskSet; ``labels`` are
    the file's names of the lists (s1 or tsks1 ...), for messages."""
    tasks = {}
    for family in REFERENCE_FAMILIES:
        raw = lists.get(family)
        if raw is None:
            continue
        if not isinstance(raw, list):
            raise UserError(f"{source}: {labels[family]} must be a "
                            f"list of tasks, got {type(raw).__name__}")
        tasks[family] = [make_task(family, i, t, source, renderer) for i, t in enumerate(raw)]
        seen: dict[str, int] = {}
        for task in tasks[family]:
            first = seen.setdefault(task.task_id, task.index)
            if first != task.index:  # they would be resampled as one cluster, unsaid
                raise UserError(f"{source}: {labels[family]} tasks {first} and {task.index} "
                                f"both have NUMBER {task.task_id} (a task without NUMBER is "
                                "numbered by its place, from 1); each task needs its own "
                                "NUMBER, since the verdicts resample tasks by it")
    taskset = TaskSet(name=source, tasks=tasks)
    if len(taskset) == 0:
        raise UserError(f"{source}: the task file holds no tasks (expected non-empty "
                        f"{'/'.join(JSON_KEYS.values())} or {'/'.join(PY_NAMES.values())})")
    return taskset


def _renderer(path: Path, declared, given: str | None) -> str:
    """The renderer of a task file: ``given`` (the caller's) if any, else the file's own
    declaration, else the reference's (a file in its format renders as it renders it)."""
    if given is not None:
        return check_renderer(given, str(path))
    if declared is None:
        return "reference"
    return check_renderer(declared, f"{path}, {RENDERER_KEY!r}")


def load_task_file(path: str | Path, renderer: str | None = None) -> TaskSet:
    """A task file in one of the reference's formats (``.py``, ``.json``) or ToMi ``.jsonl``.

    ``renderer`` ("reference" or "tomsparse") says how ``.py`` / ``.json`` tasks render; None:
    what the file declares, else "reference". ToMi items have one rendering and ignore it.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if renderer is not None:
        check_renderer(renderer, str(path))
    if suffix == ".py":
        values = read_py_literals(path)
        lists = {f: values[n] for f, n in PY_NAMES.items() if n in values}
        if not any(n in values for n in PY_NAMES.values()):
            raise UserError(f"{path}: the task file defines none of "
                            f"{', '.join(PY_NAMES.values())}")
        chosen = _renderer(path, values.get(RENDERER_KEY), renderer)
        return _taskset_from_lists(lists, PY_NAMES, str(path), chosen)
    if suffix == ".json":
        data = parse_json(_read_text(path), str(path))
        if isinstance(data, list):
            raise UserError(f"{path}: this is a JSON list (a gradient-prompt file?); a task "
                            f"file is an object with keys s1, s2, s3")
        if not isinstance(data, dict):
            raise UserError(f"{path}: a task file is a JSON object with keys s1, s2, s3")
        if not any(k in data for k in JSON_KEYS.values()):
            raise UserError(f"{path}: the task file has none of the keys s1, s2, s3")
        lists = {f: data[k] for f, k in JSON_KEYS.items() if k in data}
        chosen = _renderer(path, data.get(RENDERER_KEY), renderer)
        return _taskset_from_lists(lists, JSON_KEYS, str(path), chosen)
    if suffix == ".jsonl":
        return TaskSet(name=str(path), tomi=load_tomi(path))
    raise UserError(f"{path}: unknown task file type {suffix or '(none)'}; use .py (tsks1/2/3), "
                    f".json (s1/s2/s3) or ToMi .jsonl")


def _merge(sets: list[TaskSet], spec: str) -> TaskSet:
    merged = TaskSet(name=spec)
    for ts in sets:
        for family, tasks in ts.tasks.items():
            if tasks and merged.tasks.get(family):
                raise UserError(f"--tasks {spec}: two sources both hold {family} tasks; "
                                f"evaluate them separately")
            if tasks:
                merged.tasks[family] = tasks
        if ts.tomi:
            if merged.tomi:
                raise UserError(f"--tasks {spec}: ToMi is given twice")
            merged.tomi = ts.tomi
    return merged


def load_tasks(spec: str, renderer: str | None = None) -> TaskSet:
    """Tasks from a spec: ``builtin`` (the bank's eval split), ``builtin:train``, ``tomi``,
    a path to a ``.py`` / ``.json`` / ToMi ``.jsonl`` file, or several joined with commas
    (for instance ``builtin,tomi``). ``renderer``: as in ``load_task_file``, for every part;
    None renders the bank with ours and a file as it declares (else as the reference)."""
    spec = (spec or "").strip()
    if not spec:
        raise UserError("no task source given; use builtin, builtin:train, tomi or a file path")
    if renderer is not None:
        check_renderer(renderer, f"--tasks {spec}")
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if len(parts) > 1:
        return _merge([load_tasks(p, renderer) for p in parts], spec)
    if spec in ("builtin", "builtin:eval", "builtin:train"):
        cached = builtin_taskset("train" if spec.endswith(":train") else "eval")
        if renderer not in (None, cached.renderer):
            return cached.with_renderer(renderer)
        # A copy of the lists, so that a caller editing its TaskSet leaves the cache alone.
        return TaskSet(name=cached.name, tasks={f: list(t) for f, t in cached.tasks.items()})
    if spec == "tomi":
        return TaskSet(name="tomi", tomi=load_tomi())
    if spec.startswith("builtin:"):
        raise UserError(f"unknown built-in split {spec!r}; use builtin (eval) or builtin:train")
    return load_task_file(spec, renderer)


def read_prompt_file(path: str | Path) -> list[GradientPrompt]:
    """A reference gradient-prompt file: JSON list or JSONL of {"txt", optional "answer"}."""
    path = Path(path)
    text = _read_text(path, "score-prompt file")
    rows: list = []
    stripped = text.lstrip()
    if stripped.startswith("["):
        rows = parse_json(text, str(path))
        if not isinstance(rows, list):
            raise UserError(f"{path}: expected a JSON list of prompts")
        where = [f"{path}: prompt {i}" for i in range(len(rows))]
    else:
        where = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(parse_json(line, f"{path}: line {number}"))
            except UserError as exc:
                if "not valid JSON" in str(exc):
                    raise UserError(f"{path}: line {number}: not a JSON object") from None
                raise
            where.append(f"{path}: line {number}")
    if not rows:
        raise UserError(f"{path}: the prompt file holds no prompts")
    prompts = []
    for row, loc in zip(rows, where):
        if not isinstance(row, dict):
            raise UserError(f"{loc}: expected an object with 'txt', got {type(row).__name__}")
        if "txt" not in row:
            raise UserError(f"{loc}, field 'txt': missing field")
        txt, answer = row["txt"], row.get("answer")
        if not isinstance(txt, str) or not txt.strip():
            raise UserError(f"{loc}, field 'txt': must be a non-empty string")
        if answer is not None and (not isinstance(answer, str) or not answer.strip()):
            raise UserError(f"{loc}, field 'answer': must be a non-empty string or absent")
        prompts.append(GradientPrompt(txt=txt, answer=answer.strip() if answer else None))
    return prompts


def _is_prompt_file(path: Path) -> bool:
    """Whether a .json/.jsonl path holds gradient prompts (as opposed to tasks)."""
    head = _read_text(path, "score-prompt file").lstrip()
    if head.startswith("["):
        return True
    if path.suffix.lower() == ".jsonl":
        first = head.splitlines()[0] if head else ""
        try:
            row = parse_json(first, f"{path}: line 1")
        except UserError:
            return True  # let read_prompt_file report the bad line
        return isinstance(row, dict) and "txt" in row
    return False


SCORE_PROMPTS = ("all", "false-belief")   # which rendered prompts the ToM scores draw from
# The prompts that need no belief (issue 37: the ``tom-nobelief`` score set): the reality
# probes (``roles.FACT``) and the true-belief controls (``roles.CONTROL``); not a
# --score-prompts choice, the dataset's own selection.
NO_BELIEF = "no-belief"
NO_BELIEF_ROLES = (FACT, CONTROL)


def gradient_prompts(spec: str = "builtin", sample: int | None = None, seed: int = 0,
                     families=None, select: str = "all") -> list["GradientPrompt"]:
    """ToM prompts for sensitivity scores, each with its expected answer where known.

    ``builtin``: the bank's train split (disjoint from the eval tasks) rendered as prompts;
    a path to a gradient-prompt file (JSON list / JSONL of {"txt", "answer"}); a task spec
    (``tomi``, ``builtin:eval``, a task file): its tasks rendered as prompts. ``families``
    restricts rendered tasks to some families; ``sample`` draws that many prompts without
    replacement with ``random.Random(seed)`` (the reference samples 100 with seed 0).
    ``select`` "false-belief" keeps only the ToM prompts of rendered tasks (``roles.TOM``: the
    false-belief belief probes, the ironic remarks, ToMi's false-belief questions); the
    reference draws from "all". ``NO_BELIEF`` ("no-belief") keeps only the prompts that need
    no belief (``NO_BELIEF_ROLES``: the reality probes, role ``fact``, and the true-belief
    controls, role ``control``, irony's literal twins included), in the same order.
    """
    if select not in SCORE_PROMPTS + (NO_BELIEF,):
        raise UserError(f"--score-prompts {select!r}: choose from {', '.join(SCORE_PROMPTS)}")
    spec = (spec or "builtin").strip()
    path = Path(spec)
    if spec not in ("builtin", "builtin:train", "builtin:eval", "tomi") \
            and path.suffix.lower() in (".json", ".jsonl") and _is_prompt_file(path):
        if families:
            raise UserError(f"{path}: a gradient-prompt file has no families to select")
        if select == NO_BELIEF:
            raise UserError(f"{path}: a gradient-prompt file has no conditions or probes, so "
                            "the prompts that need no belief (--dataset tom-nobelief) cannot "
                            "be told apart in it; give a task file or builtin")
        if select != "all":
            raise UserError(f"{path}: a gradient-prompt file has no conditions, so "
                            f"--score-prompts {select} cannot select from it; give a task file "
                            "or builtin, or --score-prompts all")
        prompts = read_prompt_file(path)
    else:
        taskset = load_tasks("builtin:train" if spec == "builtin" else spec)
        rendered = taskset.prompts()
        if families:
            wanted = set(families)
            unknown = wanted - set(taskset.families())
            if unknown:
                raise UserError(f"{spec}: no tasks of famil{'y' if len(unknown) == 1 else 'ies'}"
                                f" {', '.join(sorted(unknown))}; it has "
                                f"{', '.join(taskset.families())}")
            rendered = [p for p in rendered if p.family in wanted]
        if select == "false-belief":
            rendered = [p for p in rendered
                        if prompt_role(p.family, p.condition, p.probe, p.scenario) == TOM]
        elif select == NO_BELIEF:
            rendered = [p for p in rendered if prompt_role(p.family, p.condition, p.probe,
                                                           p.scenario) in NO_BELIEF_ROLES]
        prompts = [GradientPrompt(txt=p.text, answer=p.expected) for p in rendered]
    if sample is not None:
        if sample <= 0:
            raise UserError(f"--sample must be positive, got {sample}")
        if sample < len(prompts):
            prompts = random.Random(seed).sample(prompts, sample)
    return prompts
