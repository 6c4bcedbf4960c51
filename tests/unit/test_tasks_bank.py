"""The built-in task bank: sizes, disjoint splits, answer hygiene, grammar checks, export."""

from __future__ import annotations

import json
import re

import pytest

from tomsparse.data.tasks import load_tasks
from tomsparse.data.tasks.bank import builtin_taskset, export_bank, generate_split
from tomsparse.data.tasks.bank_text import IRONY_SCENARIOS, LEXICONS
from tomsparse.data.tasks.model import first_word


@pytest.fixture(scope="module")
def bank():
    return {split: builtin_taskset(split) for split in ("eval", "train")}


@pytest.fixture(scope="module")
def prompts(bank):
    return {split: ts.prompts() for split, ts in bank.items()}


def test_sizes(bank):
    ev = bank["eval"]
    assert ev.count("unexpected") >= 200 and ev.count("transfer") >= 200
    assert ev.count("irony") >= 80
    assert load_tasks("builtin").summary() == ev.summary()
    assert load_tasks("builtin:train").count("unexpected") == bank["train"].count("unexpected")


def test_generation_is_seeded():
    assert generate_split("train", seed=0) == generate_split("train", seed=0)
    assert generate_split("train", seed=0) != generate_split("train", seed=1)


def test_lexicons_are_disjoint_between_splits():
    ev, tr = LEXICONS["eval"], LEXICONS["train"]
    for attr in ("rooms", "objects", "locations", "departures", "irony"):
        assert not set(getattr(ev, attr)) & set(getattr(tr, attr)), attr
    assert not {n for ns in ev.names.values() for n in ns} & {n for ns in tr.names.values()
                                                              for n in ns}
    assert not set(ev.containers) & set(tr.containers)
    assert not ({c for cs in ev.containers.values() for c in cs}
                & {c for cs in tr.containers.values() for c in cs})
    assert not {room for _, room in ev.settings} & {room for _, room in tr.settings}
    assert sorted(ev.irony + tr.irony) == list(range(len(IRONY_SCENARIOS)))


ALL_NAMES = {n for lex in LEXICONS.values() for names in lex.names.values() for n in names}


def _entities(taskset):
    """Names, containers and answers appearing in a split's tasks."""
    found = set()
    for task in taskset.tasks["unexpected"]:
        found |= {task.fields[k] for k in ("o1", "o2", "c", "xnam")}
    for task in taskset.tasks["transfer"]:
        found |= {task.fields["o1"], task.fields["o2"]}
    for family in ("transfer", "irony"):
        for task in taskset.tasks[family]:
            found |= set(re.findall(r"\b[A-Z][a-z]+\b", task.fields["txt"])) & ALL_NAMES
    return found


def test_splits_share_no_story_and_no_entity(bank, prompts):
    assert not {p.text for p in prompts["eval"]} & {p.text for p in prompts["train"]}
    assert not _entities(bank["eval"]) & _entities(bank["train"])


def test_no_story_repeats_within_a_split(bank):
    for taskset in bank.values():
        for family, fields in (("unexpected", "txt"), ("transfer", "txt"), ("irony", "txt"),
                               ("irony", "txt_reverse")):
            stories = [t.fields[fields] for t in taskset.tasks[family]]
            assert len(stories) == len(set(stories)), (family, fields)


def test_answers_separate_by_first_word_and_stand_alone(prompts):
    for split in prompts.values():
        for p in split:
            assert p.expected_word and p.expected_word != p.alternative_word
            assert first_word(p.expected) == p.expected_word
            if p.family in ("unexpected", "transfer"):
                # A reversal swaps answers by text: they must never sit inside another word.
                for word in (p.expected, p.alternative):
                    inside = re.findall(rf"[A-Za-z]{re.escape(word)}|{re.escape(word)}[A-Za-z]",
                                        p.text)
                    assert not inside, (word, p.text)


def test_prompts_look_grammatical(prompts):
    # "a" before a vowel sound ("a used candle" is fine).
    vowel_article = re.compile(r"\ba (?!us|uni)[aeiou]\w*", re.IGNORECASE)
    for split in prompts.values():
        for p in split:
            text = p.text
            assert "  " not in text and " ." not in text and " ," not in text
            assert not re.search(r"[{}#]|\b(?:XNAM|XPRO|CX|S1|S2|OBJ_PRO|POS_PRO)\b", text)
            assert text.count('"') % 2 == 0
            assert not vowel_article.search(text), text
            # Every sentence starts with a capital letter (or an opening quote).
            for start in re.findall(r'[.!?]"? +(\S)', text):
                assert start.isupper() or start == '"', text
            assert not re.search(r"\b(\w+) \1\b", text.replace("that that", "")), text
            assert text.startswith(("Complete the following story: ",
                                    "Read the following story: "))


def test_wording_varies(bank):
    contents = bank["eval"].tasks["unexpected"]
    openings = {t.fields["txt"].split(".")[0].split(" ")[0] for t in contents}
    assert len(openings) >= 4
    probes = {t.fields["q2"].split(" ")[1] for t in bank["eval"].tasks["transfer"]}
    assert len(probes) >= 3
    lengths = [len(t.fields["txt"]) for t in bank["eval"].tasks["transfer"]]
    assert max(lengths) - min(lengths) > 60
    scenarios = {t.fields["txt"].split(".")[0] for t in bank["eval"].tasks["irony"]}
    assert len(scenarios) >= 60


def test_export_round_trip(tmp_path, bank):
    paths = export_bank(tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["tom_gradient_prompts.json", "tom_tasks_eval.json", "tom_tasks_eval.py",
                     "tom_tasks_train.json", "tom_tasks_train.py"]
    for split in ("eval", "train"):
        expected = [p.text for p in bank[split].prompts()]
        for suffix in ("json", "py"):
            loaded = load_tasks(str(tmp_path / f"tom_tasks_{split}.{suffix}"))
            assert loaded.renderer == "tomsparse"  # declared in the file
            assert [p.text for p in loaded.prompts()] == expected
    data = json.loads((tmp_path / "tom_tasks_eval.json").read_text())
    assert set(data) == {"renderer", "s1", "s2", "s3"} and data["renderer"] == "tomsparse"
    assert len(data["s1"]) == bank["eval"].count("unexpected")
    grads = json.loads((tmp_path / "tom_gradient_prompts.json").read_text())
    assert grads[0].keys() == {"txt", "answer"}
    assert len(grads) == len(bank["train"].prompts())
