"""The overlap check between score prompts and evaluation prompts: the story key, the built-in
splits' disjointness (on the real bank), refusal and its record, and the hashes a score store
keeps in its manifest."""

from __future__ import annotations

import collections
import hashlib
import json

import pytest

from tomsparse.data.overlap import check_overlap, find_overlap, story_hashes, story_key
from tomsparse.data.score_samples import build_tom_samples
from tomsparse.data.tasks import gradient_prompts, load_tasks
from tomsparse.data.tasks.model import make_task
from tomsparse.errors import UserError
from tomsparse.scores.compute import compute_score_set
from tomsparse.scores.store import read_manifest, story_hashes as stored_story_hashes
from tomsparse.testing import CharTokenizer, tiny_loaded_model

TOMI_FIXTURE = "tests/fixtures/tasks/tomi_small.jsonl"

# A task of each family whose story text both renderers write the same words for (a woman, so
# the reference's "believes OBJ_PRO cousin" reads as ours; no NUMBER the reference special-
# cases), with stray spaces the reference keeps and ours collapses.
SAME_STORY = {
    "unexpected": {"NUMBER": 7, "txt": "Here is a CX  filled with S1. There is no S2 in it. "
                   "Yet, the label on the CX says \"S2\". XNAM finds the CX. XPRO has never "
                   "seen it before.",
                   "txt_correctlabel": "Here is a CX filled with S1. There is no S2 in it. The "
                   "label on the CX says \"S1\". XNAM finds the CX.  XPRO has never seen it.",
                   "o1": "popcorn", "o2": "chocolate", "c": "bag", "xnam": "Sam",
                   "xpro": "she", "obj_pro": "her", "pos_pro": "her"},
    "transfer": {"NUMBER": 7, "txt": "Priya puts the keys in the drawer  and goes out. Tomas "
                 "moves the keys to the jar. Priya comes back.",
                 "txt_notransfer": "Priya puts the keys in the drawer and goes out. Tomas "
                 "leaves the keys alone. Priya comes back.",
                 "txt_informed": "Tomas tells Priya that the keys are in the jar.",
                 "txt_present": "Priya puts the keys in the drawer. Priya watches Tomas move "
                 "them to the jar.",
                 "o1": "jar", "o2": "drawer", "q1": "The keys are now in the ",
                 "q2": " Priya will look for the keys in the"},
    "irony": {"NUMBER": 7, "txt": "Lena's bread comes out burnt. Her brother says:  \"Delicious, "
              "as always.\" Did her brother mean that the bread was delicious?",
              "txt_reverse": "Lena's bread comes out soft and warm. Her brother says: "
              "\"Delicious, as always.\" Did her brother mean that the bread was delicious?"},
}


def _by_scenario(prompts):
    """(family, task_id, scenario) -> the set of story keys of its prompts."""
    keys = collections.defaultdict(set)
    for prompt in prompts:
        keys[(prompt.family, prompt.task_id, prompt.scenario)].add(story_key(prompt.text))
    return keys


def _write_task_file(path, numbers: dict) -> None:
    """A user's .json task file (the reference's format) of the bank's train tasks, renumbered:
    ``numbers`` maps family -> the NUMBERs to give its first tasks."""
    bank = load_tasks("builtin:train")
    data = {}
    for family, key in (("unexpected", "s1"), ("transfer", "s2"), ("irony", "s3")):
        tasks = bank.tasks[family][:len(numbers.get(family, ()))]
        data[key] = [dict(t.fields, NUMBER=n) for t, n in zip(tasks, numbers[family])]
    path.write_text(json.dumps(data), encoding="utf-8")


def test_two_probes_of_one_story_share_a_key_and_stories_differ():
    # The bank's train split (ours) and the same tasks rendered by the reference's renderer:
    # every scenario's two probes give one key, and no two scenarios share one.
    train = load_tasks("builtin:train")
    for taskset in (train, train.with_renderer("reference")):
        keys = _by_scenario(taskset.prompts())
        assert all(len(k) == 1 for k in keys.values())
        assert len(set().union(*keys.values())) == len(keys)
    probes = [p for p in train.prompts() if p.scenario == "false belief (F)"][:2]
    assert probes[0].text != probes[1].text and "looks inside" in probes[0].text
    assert story_key(probes[0].text).endswith("reads the label")


def test_tomi_questions_of_one_story_share_a_key():
    items = load_tasks(TOMI_FIXTURE).prompts()
    by_story = collections.defaultdict(set)
    for prompt in items:
        by_story[prompt.task_id].add(story_key(prompt.text))
    assert len(items) > len(by_story) > 1  # several questions per story, several stories
    assert all(len(k) == 1 for k in by_story.values())
    assert len(set().union(*by_story.values())) == len(by_story)


def test_reference_and_our_rendering_of_one_story_share_a_key():
    for family, fields in SAME_STORY.items():
        ours = make_task(family, 0, fields, "user.json", renderer="tomsparse").render()
        theirs = make_task(family, 0, fields, "user.json", renderer="reference").render()
        assert [p.scenario for p in ours] == [p.scenario for p in theirs]
        assert any(a.text != b.text for a, b in zip(ours, theirs))  # the texts do differ
        assert [story_key(p.text) for p in ours] == [story_key(p.text) for p in theirs]


def test_key_normalisation_and_distinct_stories():
    base = "Complete the following story: Anna puts the ball in the basket. The ball is in the"
    same = 'complete  the following story:   anna puts "the ball" in the Basket! Where is the'
    assert story_key(base) == story_key(same) == "anna puts the ball in the basket"
    other = base.replace("basket", "box")
    assert story_key(other) != story_key(base)
    irony = ('Read the following story: Tom trips twice. Ann says: "Graceful!" Did Ann mean '
             'it? Correct Answer:')
    assert story_key(irony) == "tom trips twice ann says graceful"
    assert story_hashes([base, other]) == [
        hashlib.sha256(story_key(t).encode("utf-8")).hexdigest() for t in (base, other)]
    # Nothing but a probe: the key falls back to the text's words, never empty.
    assert story_key("Complete the following story: The coin is in the") == "the coin is in the"


def test_builtin_train_and_eval_splits_share_no_story():
    # The claim "disjoint by construction", on the whole bank: every score prompt of the
    # built-in default against every evaluation prompt of the built-in eval split.
    score = gradient_prompts("builtin")
    evaluation = load_tasks("builtin").prompts()
    record = check_overlap(story_hashes(p.txt for p in score), evaluation, allow=False,
                           where="builtin vs builtin:train")
    assert record["checked"] and record["overlapping_tasks"] == []
    assert record["n_overlapping_prompts"] == 0
    assert record["score_stories"] == len({story_key(p.txt) for p in score}) > 500
    assert record["eval_stories"] == len({story_key(p.text) for p in evaluation}) > 3000


def test_one_user_file_for_both_is_refused_naming_the_tasks(tmp_path):
    path = tmp_path / "mine.json"
    _write_task_file(path, {"unexpected": [3, 1], "transfer": [10, 2, 9], "irony": [4]})
    score = gradient_prompts(str(path))
    data = build_tom_samples(CharTokenizer(), score, nsamples=len(score), seed=0,
                             supervision="last-token", source=str(path))
    hashes = data.info["story_sha256"]
    evaluation = load_tasks(str(path)).prompts()
    with pytest.raises(UserError) as err:
        check_overlap(hashes, evaluation, allow=False, where=f"--tasks {path}")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"--tasks {path}: ")
    # Natural order, the first five named, the rest counted, the fix given.
    assert ("(irony:4, transfer:2, transfer:9, transfer:10, unexpected:1 and 1 more)"
            in message)
    assert f"{len(evaluation)} evaluation prompt(s) of 6 task(s)" in message
    assert "--allow-overlap" in message and "disjoint task sets" in message

    record = check_overlap(hashes, evaluation, allow=True, where=f"--tasks {path}")
    assert record == {"checked": True, "allowed": True,
                      "overlapping_tasks": ["irony:4", "transfer:2", "transfer:9",
                                            "transfer:10", "unexpected:1", "unexpected:3"],
                      "n_overlapping_prompts": len(evaluation),
                      "score_stories": 2 * 8 + 3 * 8 + 2, "eval_stories": 2 * 8 + 3 * 8 + 2}


def test_only_the_shared_tasks_are_named(tmp_path):
    # Scores on two of the file's tasks; the evaluation on all of them.
    both, scored = tmp_path / "all.json", tmp_path / "some.json"
    _write_task_file(both, {"unexpected": [1, 2], "transfer": [1, 2], "irony": [1, 2]})
    _write_task_file(scored, {"unexpected": [1], "transfer": [], "irony": [1]})
    hashes = story_hashes(p.txt for p in gradient_prompts(str(scored)))
    report = find_overlap(hashes, load_tasks(str(both)).prompts())
    assert report.overlapping_tasks == ("irony:1", "unexpected:1")
    assert report.n_overlapping_prompts == 16 + 2
    assert (report.n_score_stories, report.n_eval_stories) == (8 + 2, 2 * (8 + 8 + 2))


def test_a_store_without_hashes_is_recorded_unchecked():
    record = check_overlap(None, load_tasks("builtin").prompts(), allow=False, where="x")
    assert record["checked"] is False and "no story hashes" in record["reason"]
    assert stored_story_hashes({"data": {"dataset": "tom"}}) is None
    assert stored_story_hashes({}) is None
    with pytest.raises(UserError, match="data.story_sha256"):
        stored_story_hashes({"data": {"story_sha256": ["not a hash"]}})


def test_score_store_manifest_keeps_the_story_hashes(tmp_path):
    prompts = gradient_prompts("builtin")
    lm = tiny_loaded_model("llama")
    data = build_tom_samples(lm.tokenizer, prompts, nsamples=3, seed=1,
                             supervision="last-token", max_length=64)
    compute_score_set(lm, data, out=tmp_path / "tom", batch_size=2, progress=False)
    stored = stored_story_hashes(read_manifest(tmp_path / "tom"))
    chosen = data.info["selected_records"]
    assert stored == story_hashes(prompts[i].txt for i in chosen)
    assert len(stored) == 3
