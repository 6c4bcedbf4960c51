"""The reference's renderer for reference-format task files, and the reference's first-word rule.

``reference_prompts`` below restates the reference's evaluation script (its prompt builders
for s1/s2/s3) in plain straight-line code, independently of tomsparse's renderer; every prompt
of the fixture must equal it character for character.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tomsparse.data.tasks import load_task_file, load_tasks
from tomsparse.data.tasks.bank import builtin_taskset, export_bank
from tomsparse.data.tasks.loaders import read_py_literals
from tomsparse.data.tasks.model import (
    Prompt,
    answer_word,
    first_word,
    make_task,
    reference_first_word,
)
from tomsparse.errors import UserError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"
PY_FILE = FIXTURES / "reference_numbered.py"
JSON_FILE = FIXTURES / "reference_numbered.json"


# ---------------------------------------------------------------- the reference, restated

def _swap(text, o1, o2):
    return text.replace(o1, "####").replace(o2, o1).replace("####", o2)


def _reference_s1(tsk, typ, reverse):
    n = str(tsk["NUMBER"])  # the reference compares with the int 1; our files may write "1"
    base = tsk["txt_correctlabel"] if typ == "txt_correctlabel" else tsk["txt"]
    if typ == "txt_open":
        if n == "1":
            txt = base + " XNAM connects to the CX and explores its contents. XNAM reads the label on the CX."  # noqa: E501
        elif n == "17":
            txt = base + " XNAM puts one in a CD player and listens to the songs. XNAM can can clearly hear that it is full of S2 music."  # noqa: E501
        else:
            txt = base + " XNAM opens the CX and looks inside. XNAM reads the label."
    else:
        if n == "1":
            txt = base + " XNAM does not connect to the CX and does not explore its contents. XNAM reads the label on the CX. "  # noqa: E501
        elif n == "17":
            txt = base + " XNAM does not open the box and does not listen to any of the CDs. XNAM reads the label."  # noqa: E501
        else:
            txt = base + " XNAM does not open the CX and does not look inside. XNAM reads the label."  # noqa: E501
        if typ == "txt_informed":
            txt = txt + ' A cousin calls XNAM and tells OBJ_PRO that the CX has S1 in it, and that XPRO should ignore the label that says "S2". XNAM believes OBJ_PRO cousin.'  # noqa: E501
    txt = (txt.replace("S1", tsk["o1"]).replace("S2", tsk["o2"]).replace("CX", tsk["c"])
           .replace("XNAM", tsk["xnam"]).replace("XPRO", tsk["xpro"])
           .replace("OBJ_PRO", tsk["obj_pro"]).replace("POS_PRO", tsk["pos_pro"])
           .replace(". h", ". H").replace(". s", ". S"))
    q1 = tsk["xpro"].capitalize() + " opens the " + tsk["c"] + " and looks inside. " + tsk["xpro"].capitalize() + " can clearly see that it is full of"  # noqa: E501
    q2 = tsk["xnam"] + " calls a friend to tell them that " + tsk["xpro"] + " has just found a " + tsk["c"] + " full of"  # noqa: E501
    if n == "17":
        q1 = tsk["xpro"].capitalize() + " puts one in a CD player and listens to the songs. " + tsk["xpro"].capitalize() + " can clearly hear that it is full of"  # noqa: E501
    if n in ("12", "14"):
        q2 = q2.replace("found", "received")
    if reverse:
        txt = _swap(txt, tsk["o1"], tsk["o2"])
    expected = [tsk["o1"], tsk["o2"]]
    if typ in ("txt_correctlabel", "txt_informed", "txt_open"):
        expected = [tsk["o1"], tsk["o1"]]
    if reverse:
        expected = [_swap(w, tsk["o1"], tsk["o2"]) for w in expected]
    return txt, q1, q2, [w.split()[0] for w in expected]


def _reference_s2(tsk, typ, reverse):
    txt = tsk["txt"] + " " + tsk["txt_informed"] if typ == "txt_informed" else tsk[typ]
    if reverse:
        txt = _swap(txt, tsk["o1"], tsk["o2"])
    expected = [tsk["o1"], tsk["o2"]]
    if typ == "txt_notransfer":
        expected = [tsk["o2"], tsk["o2"]]
    elif typ in ("txt_informed", "txt_present"):
        expected = [tsk["o1"], tsk["o1"]]
    if reverse:
        expected = [_swap(w, tsk["o1"], tsk["o2"]) for w in expected]
    return txt, tsk["q1"], tsk["q2"], [w.split()[0] for w in expected]


def reference_prompts(tsks1, tsks2, tsks3):
    """[(prompt, expected word)] in the reference's order: s1, s2, s3; per task, condition,
    original then reversed, probe a then b."""
    out = []
    for build, tsks, types in (
            (_reference_s1, tsks1, ["txt", "txt_correctlabel", "txt_informed", "txt_open"]),
            (_reference_s2, tsks2, ["txt", "txt_notransfer", "txt_informed", "txt_present"])):
        for tsk in tsks:
            for typ in types:
                for rev in (False, True):
                    txt, q1, q2, exps = build(tsk, typ, rev)
                    out.append((f"Complete the following story: {txt} {q1}", exps[0]))
                    out.append((f"Complete the following story: {txt} {q2}", exps[1]))
    for tsk in tsks3:
        out.append((f"Read the following story: {tsk['txt']} Correct Answer:", "No"))
        out.append((f"Read the following story: {tsk['txt_reverse']} Correct Answer:", "Yes"))
    return out


@pytest.fixture(scope="module")
def raw():
    values = read_py_literals(PY_FILE)
    return values["tsks1"], values["tsks2"], values["tsks3"]


def _ours(taskset):
    return [(p.text, p.reference_expected_word) for p in taskset.prompts()]


# ---------------------------------------------------------------- reference renderer

@pytest.mark.parametrize("path", [PY_FILE, JSON_FILE])
def test_file_renders_as_the_reference_does(path, raw):
    taskset = load_task_file(path)
    assert taskset.renderer == "reference"
    got, want = _ours(taskset), reference_prompts(*raw)
    assert len(got) == len(want) == 5 * 16 + 16 + 2
    for (text, word), (ref_text, ref_word) in zip(got, want):
        assert text == ref_text
        assert word == ref_word
    # load_tasks takes the same default.
    assert _ours(load_tasks(str(path))) == want


def test_reference_quirks_appear(raw):
    prompts = load_task_file(PY_FILE).prompts()
    by = {(p.task_id, p.scenario, p.probe): p.text for p in prompts if p.family == "unexpected"}
    # OBJ_PRO cousin, "tells him" (a male protagonist).
    informed = by[("5", "informed protagonist (F)", "a")]
    assert "A cousin calls Omar and tells him that the tin has buttons in it" in informed
    assert "Omar believes him cousin." in informed
    # Whitespace of the file kept.
    assert 'says "cookies".  Omar spots the tin.' in by[("5", "false belief (F)", "a")]
    # NUMBER 1: its own sentences; the closed one's trailing space doubles the next space.
    assert by[("1", "false belief (F)", "a")].endswith(
        "Mia does not connect to the tablet and does not explore its contents. Mia reads the "
        "label on the tablet.  She opens the tablet and looks inside. She can clearly see that "
        "it is full of")
    assert "the tablet.  A cousin calls Mia" in by[("1", "informed protagonist (F)", "b")]
    assert by[("1", "open container (F)", "b")].endswith(
        "Mia connects to the tablet and explores its contents. Mia reads the label on the "
        "tablet. Mia calls a friend to tell them that she has just found a tablet full of")
    # NUMBER 17: "can can", S2 as written, its own probe a.
    opened = by[("17", "open container (F)", "a")]
    assert ("Tom puts one in a CD player and listens to the songs. Tom can can clearly hear "
            "that it is full of rock music. He puts one in a CD player and listens to the "
            "songs. He can clearly hear that it is full of") in opened
    assert "Tom does not open the box and does not listen to any of the CDs. Tom reads the " \
           "label." in by[("17", "false belief (F)", "b")]
    # Only ". h" and ". s" are capitalised: after "!" the pronoun stays lowercase.
    assert '"rock"! he is curious.' in by[("17", "false belief (F)", "a")]
    # NUMBER 12 and 14: "received"; the others "found".
    for number, c in (("12", "parcel"), ("14", "hamper")):
        assert by[(number, "false belief (F)", "b")].endswith(
            f"has just received a {c} full of")
    assert by[("5", "false belief (F)", "b")].endswith("has just found a tin full of")
    # Transfer: double spaces and the leading space of q2 kept; irony as written.
    transfer = [p.text for p in prompts if p.family == "transfer"]
    assert transfer[0] == (
        "Complete the following story: Kai and Zoe are in the garage.  Kai puts the hammer in "
        "the toolbox and leaves. Zoe moves the hammer from the toolbox to the bucket.  Kai "
        "comes back. The hammer is now in the")
    assert transfer[9].endswith("texts Kai that the hammer is in the bucket.   Kai will look "
                                "for the hammer in the")
    irony = [p.text for p in prompts if p.family == "irony"]
    assert "new shirt.  His sister says" in irony[0]


def test_number_as_int_or_string_renders_the_same():
    assert [p.text for p in load_task_file(PY_FILE).prompts()] == \
        [p.text for p in load_task_file(JSON_FILE).prompts()]
    assert json.loads(JSON_FILE.read_text())["s1"][0]["NUMBER"] == "1"


def test_reversal_garbles_nested_answers_as_the_reference_does():
    raw = {"NUMBER": 3, "txt": 'A CX holds S1. The label says "S2". XNAM sees the CX.',
           "txt_correctlabel": 'A CX holds S1. The label says "S1". XNAM sees the CX.',
           "o1": "tea", "o2": "green tea", "c": "tin", "xnam": "Ada", "xpro": "she",
           "obj_pro": "her", "pos_pro": "her"}
    reference = make_task("unexpected", 0, raw, "t", "reference").render()
    ours = make_task("unexpected", 0, raw, "t", "tomsparse").render()
    assert reference[2].text.startswith(
        'Complete the following story: A tin holds green tea. The label says "green green tea".')
    assert ours[2].text.startswith(
        'Complete the following story: A tin holds green tea. The label says "tea".')
    # Expected answers are the same under both renderers (see render_reference).
    assert [(p.expected, p.alternative) for p in reference] == \
        [(p.expected, p.alternative) for p in ours]


# ---------------------------------------------------------------- tomsparse renderer, choices

def test_same_file_with_our_renderer(raw):
    taskset = load_task_file(PY_FILE, renderer="tomsparse")
    assert taskset.renderer == "tomsparse"
    prompts = taskset.prompts()
    texts = [p.text for p in prompts]
    assert all("  " not in t and t == t.strip() for t in texts)
    assert not any("can can" in t or "received" in t or "connect" in t for t in texts)
    informed = next(p.text for p in prompts if p.task_id == "5"
                    and p.scenario == "informed protagonist (F)")
    assert "Omar believes his cousin." in informed
    assert any('"rock"! He is curious.' in t for t in texts)
    # Same scenarios, probes and expected answers as the reference renderer.
    reference = load_task_file(PY_FILE).prompts()
    key = [(p.family, p.task_id, p.scenario, p.probe, p.expected, p.alternative) for p in prompts]
    assert key == [(p.family, p.task_id, p.scenario, p.probe, p.expected, p.alternative)
                   for p in reference]
    assert _ours(load_tasks(str(PY_FILE), renderer="tomsparse")) == _ours(taskset)


def test_bank_renders_with_ours():
    bank = builtin_taskset("train")
    assert bank.renderer == "tomsparse"
    texts = [p.text for p in bank.prompts()]
    assert all("  " not in t for t in texts)
    assert not any("connects to the" in t or "believes him cousin" in t for t in texts)
    assert load_tasks("builtin:train").renderer == "tomsparse"
    assert load_tasks("builtin:train", renderer="reference").renderer == "reference"


def test_exported_bank_reloads_with_our_renderer(tmp_path):
    export_bank(tmp_path, splits=("train",))
    want = [p.text for p in builtin_taskset("train").prompts()]
    data = json.loads((tmp_path / "tom_tasks_train.json").read_text())
    assert data["renderer"] == "tomsparse"
    assert read_py_literals(tmp_path / "tom_tasks_train.py")["renderer"] == "tomsparse"
    for suffix in ("json", "py"):
        path = tmp_path / f"tom_tasks_train.{suffix}"
        loaded = load_task_file(path)
        assert loaded.renderer == "tomsparse"
        assert [p.text for p in loaded.prompts()] == want
        # An explicit renderer wins over the declaration (task NUMBER 1 is special-cased).
        forced = load_task_file(path, renderer="reference")
        assert forced.renderer == "reference"
        assert [p.text for p in forced.prompts()] != want


def test_unknown_renderer_is_an_error(tmp_path):
    path = tmp_path / "tasks.json"
    data = json.loads(JSON_FILE.read_text())
    path.write_text(json.dumps(dict(data, renderer="kosinski")))
    with pytest.raises(UserError, match=r"tasks\.json.*'kosinski'.*'reference', 'tomsparse'"):
        load_task_file(path)
    py = tmp_path / "tasks.py"
    py.write_text(PY_FILE.read_text() + '\nrenderer = "ours"\n')
    with pytest.raises(UserError, match=r"tasks\.py.*'ours'.*'reference', 'tomsparse'"):
        load_task_file(py)
    with pytest.raises(UserError, match=r"reference_numbered\.py.*'plain'.*'reference'"):
        load_task_file(PY_FILE, renderer="plain")
    with pytest.raises(UserError, match="'plain'"):
        load_tasks("builtin", renderer="plain")


def test_leftover_placeholder_is_an_error_with_the_reference_renderer(tmp_path):
    data = json.loads(JSON_FILE.read_text())
    data["s1"][1]["txt"] += " {name} smiles."
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"\(s1\) task 1 \(NUMBER 5\), field 'txt'.*'\{name\}'"):
        load_task_file(path)
    data = json.loads(JSON_FILE.read_text())
    data["s2"][0]["txt_informed"] = "XNAM phones Kai."  # s2 texts have no placeholders
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"\(s2\) task 0 .*'txt_informed'.*'XNAM'"):
        load_task_file(path)


def test_overrides_with_the_reference_renderer():
    raw = dict(read_py_literals(PY_FILE)["tsks1"][0],  # NUMBER 1: the override beats it
               action_closed="XNAM leaves the CX shut.", q2="XPRO tells a friend the CX has")
    prompts = make_task("unexpected", 0, raw, "t", "reference").render()
    assert prompts[1].text.endswith(
        "She has never used it before. Mia leaves the tablet shut. She tells a friend the "
        "tablet has")
    assert "connects to the tablet" in prompts[-1].text  # action_open not overridden


# ---------------------------------------------------------------- first-word rules

def _prompt(expected):
    return Prompt(family="irony", task_id="1", task_index=0, condition="irony", reversed=False,
                  scenario="Irony", probe="", text="...", expected=expected, alternative="No")


@pytest.mark.parametrize("generated, ours, reference", [
    (" Yes, she", "Yes", "Yes"),
    ("yes,", "yes", "yes"),
    ("Yes!", "Yes", "Yes!"),
    ("Yes:", "Yes", "Yes:"),
    ("(Yes", "(Yes", "(Yes"),
    ('"Yes." he said', "Yes", "Yes"),
    ("'Yes';", "Yes", "Yes"),
    ("\n Yes\n", "Yes", "Yes"),
    ("", "", ""),
    ("   ", "", ""),
])
def test_first_word_rules(generated, ours, reference):
    assert first_word(generated) == answer_word(generated, "tomsparse") == ours
    assert reference_first_word(generated) == answer_word(generated, "reference") == reference


@pytest.mark.parametrize("generated, ours, reference", [
    (" Yes.", True, True),
    ("yes,", False, False),
    ("Yes!", True, False),
    ("(Yes", False, False),
    ("", False, False),
])
def test_match_rules(generated, ours, reference):
    p = _prompt("Yes")
    assert p.matches(generated) is ours
    assert p.matches(generated, "tomsparse") is ours
    assert p.matches(generated, "reference") is reference


def test_reference_expected_word_is_not_stripped():
    p = _prompt("popcorn.")
    assert p.expected_word == "popcorn" and p.reference_expected_word == "popcorn."
    assert p.matches("popcorn.") and not p.matches("popcorn.", "reference")
    assert _prompt("green tea").reference_expected_word == "green"
    assert _prompt("green tea").expected_word_for("reference") == "green"
    with pytest.raises(UserError, match="'exact'.*tomsparse, reference"):
        p.matches("Yes", "exact")
