"""Task model, rendering and loaders, checked against hand-written prompts and small fixture
files (tests/fixtures/tasks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tomsparse.data.tasks import (
    GradientPrompt,
    gradient_prompts,
    load_task_file,
    load_tasks,
    read_prompt_file,
)
from tomsparse.data.tasks.model import (
    capitalize_sentences,
    cluster_of,
    first_word,
    make_task,
    swap_words,
)
from tomsparse.data.tasks.tomi import load_tomi
from tomsparse.errors import UserError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"
PY_FILE = FIXTURES / "reference_tasks.py"
JSON_FILE = FIXTURES / "reference_tasks.json"

CONTENTS_STORY = ('Here is a bag filled with popcorn. There is no chocolate in the bag. Yet, the '
                  'label on the bag says "chocolate" and not "popcorn". Sam finds the bag. She '
                  'has never seen it before.')
CLOSED = "Sam does not open the bag and does not look inside. Sam reads the label."
SEE = "She opens the bag and looks inside. She can clearly see that it is full of"
TELL = "Sam calls a friend to tell them that she has just found a bag full of"


def _by_key(prompts):
    return {(p.scenario, p.probe): p for p in prompts}


def _ours(path):
    """A fixture file rendered by our renderer (the tests of the reference's renderer, the
    default for a file, are in test_reference_render.py)."""
    return load_task_file(path, renderer="tomsparse")


def _swap(text):
    return text.replace("popcorn", "#").replace("chocolate", "popcorn").replace("#", "chocolate")


# ---------------------------------------------------------------- rendering

def test_unexpected_contents_prompts_match_hand_written():
    taskset = _ours(PY_FILE)
    prompts = _by_key(taskset.tasks["unexpected"][0].render())
    assert len(prompts) == 16
    fb_a = prompts[("false belief (F)", "a")]
    assert fb_a.text == f"Complete the following story: {CONTENTS_STORY} {CLOSED} {SEE}"
    assert (fb_a.expected, fb_a.alternative) == ("popcorn", "chocolate")
    fb_b = prompts[("false belief (F)", "b")]
    assert fb_b.text == f"Complete the following story: {CONTENTS_STORY} {CLOSED} {TELL}"
    assert (fb_b.expected, fb_b.alternative) == ("chocolate", "popcorn")

    correct_label = ('Here is a bag filled with popcorn. There is no chocolate in the bag. The '
                     'label on the bag says "popcorn" and not "chocolate". Sam finds the bag. '
                     'She has never seen it before.')
    assert prompts[("correct label (F)", "b")].text == \
        f"Complete the following story: {correct_label} {CLOSED} {TELL}"
    informed = ('A cousin calls Sam and tells her that the bag has popcorn in it, and that she '
                'should ignore the label that says "chocolate". Sam believes her cousin.')
    assert prompts[("informed protagonist (F)", "b")].text == \
        f"Complete the following story: {CONTENTS_STORY} {CLOSED} {informed} {TELL}"
    opened = "Sam opens the bag and looks inside. Sam reads the label."
    assert prompts[("open container (F)", "a")].text == \
        f"Complete the following story: {CONTENTS_STORY} {opened} {SEE}"


def test_unexpected_contents_expected_answers_per_scenario():
    prompts = _by_key(_ours(PY_FILE).tasks["unexpected"][0].render())
    expected = {  # (probe a, probe b) per condition, original then reversed
        "false belief": (("popcorn", "chocolate"), ("chocolate", "popcorn")),
        "correct label": (("popcorn", "popcorn"), ("chocolate", "chocolate")),
        "informed protagonist": (("popcorn", "popcorn"), ("chocolate", "chocolate")),
        "open container": (("popcorn", "popcorn"), ("chocolate", "chocolate")),
    }
    for condition, (original, reverse) in expected.items():
        for tag, answers in (("F", original), ("T", reverse)):
            got = tuple(prompts[(f"{condition} ({tag})", probe)].expected for probe in "ab")
            assert got == answers, (condition, tag)
            for probe in "ab":
                p = prompts[(f"{condition} ({tag})", probe)]
                assert {p.expected, p.alternative} == {"popcorn", "chocolate"}
                assert p.reversed == (tag == "T")


def test_reversal_swaps_answers_in_story_but_not_probe():
    prompts = _by_key(_ours(PY_FILE).tasks["unexpected"][0].render())
    for condition in ("false belief", "correct label", "informed protagonist", "open container"):
        for probe in "ab":
            original = prompts[(f"{condition} (F)", probe)].text
            reverse = prompts[(f"{condition} (T)", probe)].text
            assert reverse == _swap(original)
    assert prompts[("false belief (T)", "b")].text.startswith(
        "Complete the following story: Here is a bag filled with chocolate. There is no popcorn")


def test_male_protagonist_uses_his_cousin():
    raw = json.loads(JSON_FILE.read_text())["s1"][0]
    raw.update(xnam="Omar", xpro="he", obj_pro="him", pos_pro="his")
    prompts = _by_key(make_task("unexpected", 0, raw, "test").render())
    text = prompts[("informed protagonist (F)", "a")].text
    assert "Omar calls him" not in text
    assert "A cousin calls Omar and tells him that" in text
    assert text.endswith("Omar believes his cousin. He opens the bag and looks inside. He can "
                         "clearly see that it is full of")


def test_transfer_prompts_match_hand_written():
    prompts = _by_key(_ours(JSON_FILE).tasks["transfer"][0].render())
    assert len(prompts) == 16
    story = ("Priya and Tomas are in the kitchen, which has a drawer and a jar. Priya puts the "
             "keys in the drawer and goes out. While Priya is away, Tomas moves the keys from "
             "the drawer to the jar. Priya comes back.")
    assert prompts[("false belief (F)", "a")].text == \
        f"Complete the following story: {story} The keys are now in the"
    assert prompts[("false belief (F)", "b")].text == \
        f"Complete the following story: {story} Priya will look for the keys in the"
    assert prompts[("informed protagonist (F)", "b")].text == (
        f"Complete the following story: {story} Tomas phones Priya and tells her that the keys "
        f"are in the jar. Priya will look for the keys in the")
    reversed_story = ("Priya and Tomas are in the kitchen, which has a jar and a drawer. Priya "
                      "puts the keys in the jar and goes out. While Priya is away, Tomas moves "
                      "the keys from the jar to the drawer. Priya comes back.")
    assert prompts[("false belief (T)", "b")].text == \
        f"Complete the following story: {reversed_story} Priya will look for the keys in the"
    expected = {"false belief": ("jar", "drawer"), "no transfer": ("drawer", "drawer"),
                "informed protagonist": ("jar", "jar"), "present protagonist": ("jar", "jar")}
    flip = {"jar": "drawer", "drawer": "jar"}
    for condition, answers in expected.items():
        assert tuple(prompts[(f"{condition} (F)", q)].expected for q in "ab") == answers
        assert tuple(prompts[(f"{condition} (T)", q)].expected for q in "ab") == \
            tuple(flip[a] for a in answers)


def test_irony_prompts_match_hand_written():
    prompts = _ours(PY_FILE).tasks["irony"][0].render()
    assert [(p.scenario, p.expected, p.alternative) for p in prompts] == [
        ("Irony", "No", "Yes"), ("Irony reversed", "Yes", "No")]
    assert prompts[0].text == (
        'Read the following story: Lena bakes bread that comes out burnt and as hard as a rock. '
        'Her brother takes a bite and says: "Delicious, as always." Did her brother mean that '
        'the bread was delicious? Correct Answer:')
    assert prompts[1].text.startswith("Read the following story: Lena bakes bread that comes out "
                                      "soft and warm.")


def test_every_scenario_has_both_probes():
    taskset = load_tasks(str(PY_FILE))
    for family in ("unexpected", "transfer"):
        prompts = taskset.tasks[family][0].render()
        scenarios = {p.scenario for p in prompts}
        assert len(scenarios) == 8
        for scenario in scenarios:
            assert sorted(p.probe for p in prompts if p.scenario == scenario) == ["a", "b"]


def test_first_word_and_helpers():
    assert first_word("  popcorn. She") == "popcorn"
    assert first_word('"Yes!" he said') == "Yes"
    assert first_word("") == ""
    assert swap_words("green tea, not tea", "tea", "green tea") == "tea, not green tea"
    assert capitalize_sentences("he ran. she sat! he said: \"go.\" it rained") == \
        'He ran. She sat! He said: "go." It rained'


# ---------------------------------------------------------------- loaders

def test_py_and_json_files_load_the_same_tasks():
    from_py, from_json = load_tasks(str(PY_FILE)), load_tasks(str(JSON_FILE))
    assert from_py.families() == ["unexpected", "transfer", "irony"]
    assert from_py.renderer == from_json.renderer == "reference"  # a file's default
    assert [p.text for p in from_py.prompts()] == [p.text for p in from_json.prompts()]
    assert [p.text for p in _ours(PY_FILE).prompts()] == \
        [p.text for p in _ours(JSON_FILE).prompts()]
    assert len(from_py.prompts()) == 16 + 16 + 2


def test_py_file_is_never_executed(tmp_path):
    marker = tmp_path / "ran"
    code = tmp_path / "tasks.py"
    code.write_text(f"open({str(marker)!r}, 'w').write('x')\ntsks3 = []\n")
    with pytest.raises(UserError, match=r"tasks\.py: line 1: .*only assign literal"):
        load_tasks(str(code))
    assert not marker.exists()


def test_py_file_with_import_is_refused():
    with pytest.raises(UserError, match=r"not_literal\.py: line 1: .*Import"):
        load_tasks(str(FIXTURES / "not_literal.py"))


def test_py_file_with_a_call_in_a_field_names_task_and_field():
    with pytest.raises(UserError) as err:
        load_tasks(str(FIXTURES / "call_in_field.py"))
    message = str(err.value)
    assert "call_in_field.py" in message and "tsks3 task 1" in message and "'txt'" in message


def _write_json(tmp_path, data, name="tasks.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _reference():
    return json.loads(JSON_FILE.read_text())


def test_missing_field_names_file_task_and_field(tmp_path):
    data = _reference()
    del data["s2"][0]["txt_present"]
    path = _write_json(tmp_path, data)
    with pytest.raises(UserError) as err:
        load_tasks(str(path))
    message = str(err.value)
    assert str(path) in message and "(s2) task 0" in message and "'txt_present'" in message
    assert "missing" in message


def test_unreplaced_placeholder_is_an_error(tmp_path):
    data = _reference()
    data["s2"][0]["txt_informed"] = "XNAM phones Priya."  # s2 texts have no placeholders
    path = _write_json(tmp_path, data)
    with pytest.raises(UserError, match=r"\(s2\) task 0 .*'txt_informed'.*'XNAM'"):
        load_tasks(str(path))
    data = _reference()
    data["s1"][0]["txt"] += " {name} smiles."
    path = _write_json(tmp_path, data)
    with pytest.raises(UserError, match=r"\(s1\) task 0 .*'txt'.*'\{name\}'"):
        load_tasks(str(path))


def test_same_first_word_for_both_answers_is_an_error(tmp_path):
    data = _reference()
    data["s1"][0].update(o1="green apples", o2="green pears")
    path = _write_json(tmp_path, data)
    with pytest.raises(UserError, match=r"\(s1\) task 0 .*'o2'.*first word"):
        load_tasks(str(path))


@pytest.mark.parametrize("content", ['{"s1": [], "s2": [], "s3": []}', "{}", ""])
def test_empty_task_file_is_an_error(tmp_path, content):
    path = tmp_path / "empty.json"
    path.write_text(content)
    with pytest.raises(UserError, match="empty.json"):
        load_tasks(str(path))


def test_empty_py_file_is_an_error(tmp_path):
    path = tmp_path / "empty.py"
    path.write_text('"""nothing here"""\n')
    with pytest.raises(UserError, match=r"empty\.py: .*defines none of tsks1"):
        load_tasks(str(path))


def test_non_string_field_is_an_error(tmp_path):
    data = _reference()
    data["s3"][0]["txt"] = 3
    with pytest.raises(UserError, match=r"\(s3\) task 0 .*'txt'.*non-empty string"):
        load_tasks(str(_write_json(tmp_path, data)))


def test_unknown_spec_and_missing_file():
    with pytest.raises(UserError, match="no such file"):
        load_tasks("/nonexistent/tasks.json")
    with pytest.raises(UserError, match="unknown task file type"):
        load_tasks(str(FIXTURES / "prompts.jsonl").replace(".jsonl", ".txt"))
    with pytest.raises(UserError, match="built-in split"):
        load_tasks("builtin:test")


def test_combined_spec_merges_families():
    taskset = load_tasks(f"{PY_FILE},{FIXTURES / 'tomi_small.jsonl'}")
    assert taskset.families() == ["unexpected", "transfer", "irony", "tomi"]
    with pytest.raises(UserError, match="both hold"):
        load_tasks(f"{PY_FILE},{JSON_FILE}")


# ---------------------------------------------------------------- gradient prompts

@pytest.mark.parametrize("name", ["prompts.json", "prompts.jsonl"])
def test_gradient_prompt_files(name):
    prompts = gradient_prompts(str(FIXTURES / name))
    assert prompts == [
        GradientPrompt("Complete the following story: Mia hides a coin in a cup. The coin is in "
                       "the", "cup"),
        GradientPrompt("Read the following story: It rains. Correct Answer:", None)]


def test_gradient_prompt_file_errors(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[{"txt": "ok"}, {"answer": "x"}]')
    with pytest.raises(UserError, match=r"p\.json: prompt 1, field 'txt': missing"):
        read_prompt_file(path)
    path.write_text("[]")
    with pytest.raises(UserError, match="no prompts"):
        read_prompt_file(path)


def test_builtin_gradient_prompts_are_the_train_split_with_answers():
    prompts = gradient_prompts("builtin")
    assert len(prompts) == 40 * 16 + 40 * 16 + 20 * 2
    assert all(p.answer for p in prompts)
    eval_texts = {p.text for p in load_tasks("builtin").prompts()}
    assert not eval_texts & {p.txt for p in prompts}
    sample = gradient_prompts("builtin", sample=100, seed=0)
    assert len(sample) == 100 and sample == gradient_prompts("builtin", sample=100, seed=0)
    assert sample != gradient_prompts("builtin", sample=100, seed=1)
    irony = gradient_prompts("builtin", families=["irony"])
    assert {p.answer for p in irony} == {"Yes", "No"}


def test_task_file_as_gradient_prompts():
    prompts = gradient_prompts(str(PY_FILE), families=["transfer"])
    assert len(prompts) == 16
    assert prompts[0].txt.endswith("The keys are now in the") and prompts[0].answer == "jar"


# ---------------------------------------------------------------- ToMi

def test_tomi_wheel_items():
    items = load_tomi()
    assert len(items) == 100
    counts = {}
    for item in items:
        counts[item.qtype] = counts.get(item.qtype, 0) + 1
        assert item.target in (item.first_location, item.last_location)
        assert item.alternative != item.target
    assert set(counts) == {"first-order", "second-order", "reality", "memory"}
    assert counts == {"first-order": 33, "second-order": 33, "memory": 17, "reality": 17}
    assert len({item.story_index for item in items}) == 17
    first = items[0]
    assert first.question == "Where was the boots at the beginning?"
    assert (first.first_location, first.last_location) == ("bathtub", "pantry")
    prompt = first.prompt()
    assert prompt.text.endswith("Where was the boots at the beginning? Answer: At the beginning, "
                                "the boots was in the")
    assert (prompt.expected, prompt.alternative) == ("bathtub", "pantry")


def test_tomi_fixture_file():
    taskset = load_tasks(str(FIXTURES / "tomi_small.jsonl"))
    prompts = taskset.prompts()
    assert [(p.condition, p.expected, p.alternative) for p in prompts] == [
        ("first-order", "basket", "crate"), ("reality", "crate", "basket"),
        ("second-order", "basket", "crate"), ("memory", "box", "drawer")]
    assert [p.task_id for p in prompts] == ["story0", "story0", "story0", "story1"]
    assert prompts[0].scenario == "first-order (false belief)"
    assert prompts[2].text == (
        "Read the following story: Ava entered the garden. Leo entered the garden. The apple is "
        "in the basket. Ava exited the garden. Leo moved the apple to the crate. Question: Where "
        "does Leo think that Ava searches for the apple? Answer: Leo thinks that Ava searches "
        "for the apple in the")
    assert taskset.head(1).count("tomi") == 3


def test_tomi_bad_target(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"input": "The hat is in the box. Max moved the hat to the drawer. '
                    'Where is the hat really?", "target": "shelf"}\n')
    with pytest.raises(UserError, match=r"t\.jsonl: line 1: target 'shelf'"):
        load_tomi(path)


def test_cluster_of_is_the_prompts_cluster_else_its_task():
    assert cluster_of("7", "") == "task 7"
    assert cluster_of("7") == "task 7"
    assert cluster_of("7", "irony scenario 3") == "irony scenario 3"
    prompts = load_tasks("builtin").prompts()
    irony = [p for p in prompts if p.family == "irony"]
    assert irony and all(cluster_of(p.task_id, p.cluster) == p.cluster for p in irony)
    other = [p for p in prompts if p.family != "irony"]
    assert all(cluster_of(p.task_id, p.cluster) == f"task {p.task_id}" for p in other)
