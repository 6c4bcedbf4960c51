"""The built-in task bank: a seeded generator from this project's own templates and lexicons
(``bank_text``).

Two splits, disjoint by story and by entity: ``eval`` (at least 200 unexpected-contents, 200
unexpected-transfer and 80 irony tasks) and ``train`` (the tasks whose rendered prompts feed
the ToM sensitivity scores). Every lexicon (names, settings, containers and their contents,
objects, locations, irony scenarios) is split in two, so no name, container, content, object,
location or irony scenario of one split appears in the other; the sentence frames are
shared. Tasks use the reference's fields, so the bank exports to its ``.json`` / ``.py``
formats and renders through the same code as a user's file.

Answers are single words (contents, locations, Yes/No), so their first word always tells the
two choices apart; the generator also checks that neither answer occurs inside another word
of the story (a reversal swaps them by text).
"""

from __future__ import annotations

import json
import pprint
import random
import re
from functools import lru_cache
from pathlib import Path

from tomsparse.data.tasks.bank_text import (
    CONTENTS_DISCOVERIES,
    CONTENTS_INTROS,
    CONTENTS_LABELS,
    IRONY_QUESTIONS,
    IRONY_SCENARIOS,
    IRONY_SPEECH,
    LEXICONS,
    PRONOUNS,
    RELATIONS,
    TRANSFER_B_LEAVES,
    TRANSFER_BELIEF_PROBES,
    TRANSFER_INFORMED,
    TRANSFER_MOVES,
    TRANSFER_PRESENT,
    TRANSFER_PUTS,
    TRANSFER_REALITY_PROBES,
    TRANSFER_RETURNS,
    TRANSFER_SETUPS,
    Lexicon,
)
from tomsparse.data.tasks.model import (
    JSON_KEYS,
    PY_NAMES,
    REFERENCE_FAMILIES,
    RENDERER_KEY,
    TaskSet,
    capitalize_sentences,
    make_task,
)
from tomsparse.files import atomic_write_text, check_no_overwrite

SPLITS = ("eval", "train")
# Tasks per family and split: (unexpected contents, unexpected transfer, irony).
SIZES = {"eval": (200, 200, 96), "train": (40, 40, 20)}


# ---------------------------------------------------------------- generation helpers

def _whole_words_only(text: str, words) -> bool:
    """Whether every occurrence of each word in ``text`` stands as a whole word (a reversal
    swaps answers by text, so "ice" inside "notice" would be swapped too)."""
    for word in words:
        anywhere = len(re.findall(re.escape(word), text))
        whole = len(re.findall(rf"(?<![A-Za-z]){re.escape(word)}(?![A-Za-z])", text))
        if anywhere != whole:
            return False
    return True


def _person(rng: random.Random, lex: Lexicon, avoid=()) -> dict:
    gender = rng.choice(("f", "m"))
    name = rng.choice([n for n in lex.names[gender] if n not in avoid])
    pro, obj, pos = PRONOUNS[gender]
    return dict(name=name, gender=gender, pro=pro, obj=obj, pos=pos)


def _people(rng: random.Random, lex: Lexicon) -> dict:
    a = _person(rng, lex)
    b = _person(rng, lex, avoid=(a["name"],))
    return {"A": a["name"], "B": b["name"], "pro_A": a["pro"], "obj_A": a["obj"],
            "pos_A": a["pos"], "pro_B": b["pro"], "obj_B": b["obj"], "pos_B": b["pos"],
            "rel": rng.choice(RELATIONS[b["gender"]])}


def _fill(template: str, values: dict) -> str:
    return capitalize_sentences(template.format(**values))


def _unique(make, n: int, rng: random.Random, keys) -> list:
    """Draw ``n`` tasks from ``make(rng)`` whose texts ``keys(task)`` were never drawn before
    (a ``None`` draw is rejected)."""
    out, seen = [], set()
    for _ in range(n * 200):
        task = make(rng)
        if task is None or any(k in seen for k in keys(task)):
            continue
        seen.update(keys(task))
        out.append(task)
        if len(out) == n:
            return out
    raise RuntimeError(f"the lexicon cannot give {n} distinct tasks")  # a bank-design bug


def _answers_stand_alone(family: str, task: dict) -> bool:
    """Whether o1 and o2 occur only as whole words in every prompt the task renders to."""
    prompts = make_task(family, 0, task, "builtin", "tomsparse").render()
    return all(_whole_words_only(p.text, (task["o1"], task["o2"])) for p in prompts)


def _contents_task(rng: random.Random, lex: Lexicon) -> dict | None:
    container = rng.choice(sorted(lex.containers))
    o1, o2 = rng.sample(lex.containers[container], 2)
    surface, room = rng.choice(lex.settings)
    intro = rng.choice(CONTENTS_INTROS)
    false_label, true_label = rng.choice(CONTENTS_LABELS)
    discovery = rng.choice(CONTENTS_DISCOVERIES)
    person = _person(rng, lex)
    setting = {"surface": surface, "Surface": surface[0].upper() + surface[1:], "room": room}
    txt = " ".join((intro, false_label, discovery)).format(**setting)
    txt_correct = " ".join((intro, true_label, discovery)).format(**setting)
    task = dict(txt=txt, txt_correctlabel=txt_correct, o1=o1, o2=o2, c=container,
                xnam=person["name"], xpro=person["pro"], obj_pro=person["obj"],
                pos_pro=person["pos"])
    return task if _answers_stand_alone("unexpected", task) else None


def _transfer_task(rng: random.Random, lex: Lexicon) -> dict | None:
    v = _people(rng, lex)
    new, old = rng.sample(lex.locations, 2)
    v.update(room=rng.choice(lex.rooms), obj=rng.choice(lex.objects), new=new, old=old,
             leave=rng.choice(lex.departures))
    move, stay = rng.choice(TRANSFER_MOVES)
    setup, put = rng.choice(TRANSFER_SETUPS), rng.choice(TRANSFER_PUTS)
    b_leaves, comes_back = rng.choice(TRANSFER_B_LEAVES), rng.choice(TRANSFER_RETURNS)

    def story(*parts):
        return _fill(" ".join(p for p in parts if p), v)

    task = dict(txt=story(setup, put, move, b_leaves, comes_back),
                txt_notransfer=story(setup, put, stay, b_leaves, comes_back),
                txt_informed=_fill(rng.choice(TRANSFER_INFORMED), v),
                txt_present=story(setup, rng.choice(TRANSFER_PRESENT)),
                o1=new, o2=old,
                q1=_fill(rng.choice(TRANSFER_REALITY_PROBES), v),
                q2=_fill(rng.choice(TRANSFER_BELIEF_PROBES), v))
    return task if _answers_stand_alone("transfer", task) else None


def _irony_task(rng: random.Random, lex: Lexicon) -> dict:
    index = rng.choice(lex.irony)
    scenario = IRONY_SCENARIOS[index]
    v = _people(rng, lex)
    v["remark"] = scenario["remark"]
    v["meaning"] = scenario["meaning"].format(**v)
    speech, question = rng.choice(IRONY_SPEECH), rng.choice(IRONY_QUESTIONS)
    setup = scenario["setup"]
    return dict(txt=_fill(" ".join((setup, rng.choice(scenario["contradict"]), speech,
                                    question)), v),
                txt_reverse=_fill(" ".join((setup, rng.choice(scenario["agree"]), speech,
                                            question)), v),
                # the tasks of one scenario share a story: they resample as one cluster
                SCENARIO=index)


def generate_split(split: str, seed: int = 0, sizes=None) -> dict:
    """Raw task dicts of one split: {"unexpected": [...], "transfer": [...], "irony": [...]}.

    Deterministic for a given seed; each family draws from its own seeded stream so that
    changing one family's size leaves the others unchanged.
    """
    lex = LEXICONS[split]
    sizes = sizes or SIZES[split]
    # Texts that must be new for a draw to count: no story appears twice in a split.
    texts = {"unexpected": lambda t: (t["txt"], t["txt_correctlabel"]),
             "transfer": lambda t: (t["txt"], t["txt_notransfer"], t["txt_present"]),
             "irony": lambda t: (t["txt"], t["txt_reverse"])}
    makers = {"unexpected": _contents_task, "transfer": _transfer_task, "irony": _irony_task}
    out = {}
    for family, n in zip(REFERENCE_FAMILIES, sizes):
        make = makers[family]
        rng = random.Random(f"tomsparse-bank:{seed}:{split}:{family}")
        tasks = _unique(lambda r: make(r, lex), n, rng, texts[family])
        out[family] = [dict(t, NUMBER=i + 1) for i, t in enumerate(tasks)]
    return out


@lru_cache(maxsize=8)
def builtin_taskset(split: str = "eval", seed: int = 0) -> TaskSet:
    """The bank's ``eval`` or ``train`` split as a validated TaskSet."""
    raw = generate_split(split, seed)
    source = f"builtin:{split}"
    tasks = {f: [make_task(f, i, t, source, "tomsparse") for i, t in enumerate(raw[f])]
             for f in raw}
    return TaskSet(name=source, tasks=tasks)


def _py_source(data: dict, split: str) -> str:
    lines = [f'"""tomsparse built-in ToM task bank, {split} split (reference .py format: '
             f'tsks1 unexpected contents, tsks2 unexpected transfer, tsks3 irony)."""', "",
             "# tomsparse renders these tasks with its own renderer, not the reference's;",
             "# the reference's evaluation script ignores this name.",
             f"{RENDERER_KEY} = {data[RENDERER_KEY]!r}", ""]
    for family in REFERENCE_FAMILIES:
        lines.append(f"{PY_NAMES[family]} = "
                     + pprint.pformat(data[JSON_KEYS[family]], width=100, sort_dicts=False))
        lines.append("")
    return "\n".join(lines)


def bank_files(out_dir: str | Path, splits=SPLITS) -> list[Path]:
    """The files ``export_bank`` writes into ``out_dir``."""
    out = Path(out_dir)
    files = []
    for split in splits:
        files += [out / f"tom_tasks_{split}.json", out / f"tom_tasks_{split}.py"]
        if split == "train":
            files.append(out / "tom_gradient_prompts.json")
    return files


def export_bank(out_dir: str | Path, seed: int = 0, splits=SPLITS,
                overwrite: bool = True) -> list[Path]:
    """Write the bank in the reference's formats: per split ``tom_tasks_<split>.json``
    (s1/s2/s3) and ``tom_tasks_<split>.py`` (tsks1/2/3), and the train split's rendered
    prompts as ``tom_gradient_prompts.json`` (a JSON list of {"txt", "answer"}).

    Both task files declare ``renderer = "tomsparse"`` (a key in .json, a top-level name in
    .py), so that ``load_task_file`` reloads them with the renderer they were made for;
    the reference's loader reads only s1/s2/s3 (tsks1/2/3) and ignores it.

    Every file is written atomically (``files.atomic_path``: never half-written, never
    through a link out of the folder); an existing one is refused unless ``overwrite``."""
    out = Path(out_dir)
    check_no_overwrite(bank_files(out, splits), overwrite)
    written = []
    for split in splits:
        taskset = builtin_taskset(split, seed)
        # Declared first, so that it is the first thing a reader of the file sees.
        data = {RENDERER_KEY: taskset.renderer, **taskset.to_reference()}
        written.append(atomic_write_text(out / f"tom_tasks_{split}.json",
                                         json.dumps(data, indent=1, ensure_ascii=False) + "\n"))
        written.append(atomic_write_text(out / f"tom_tasks_{split}.py", _py_source(data, split)))
        if split == "train":
            prompts = [{"txt": p.text, "answer": p.expected} for p in taskset.prompts()]
            written.append(atomic_write_text(out / "tom_gradient_prompts.json",
                                             json.dumps(prompts, indent=1, ensure_ascii=False)
                                             + "\n"))
    return written
