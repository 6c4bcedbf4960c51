"""The task-swapped score sets of issue 37 (item 2): ``tom-nobelief`` (the train split's prompts
that need no belief) and ``format-control`` (generated object tracking and counting in the
bank's prompt format). Disjoint from the evaluation prompts, free of false-belief prompts and
mental-state words, deterministic from the seed, and computable into a score store whose
manifest names the dataset."""

from __future__ import annotations

import re

import pytest
from test_scores import one_thread  # noqa: F401

from tomsparse.cli.main import main
from tomsparse.data.format_control import KINDS, POOL_SIZE, format_control_prompts
from tomsparse.data.overlap import find_overlap, story_hashes
from tomsparse.data.score_samples import (
    DATASETS,
    IGNORE,
    ScoreDataConfig,
    build_dataset,
    build_tom_samples,
    check_prompt_pool,
    prompt_pool,
)
from tomsparse.data.tasks import gradient_prompts, load_tasks
from tomsparse.data.tasks.bank_text import LEXICONS
from tomsparse.data.tasks.model import COMPLETE
from tomsparse.data.tasks.roles import CONTROL, FACT, TOM, prompt_role
from tomsparse.errors import UserError
from tomsparse.scores.compute import score_set
from tomsparse.scores.store import load_scores, read_manifest
from tomsparse.testing import CharTokenizer, registered_model, tiny_loaded_model, tiny_model

SWAPPED = ("tom-nobelief", "format-control")
# Mental-state and perception words no format-control item may use (whole words, any case).
MENTAL_STATE = ("think", "thinks", "thought", "believe", "believes", "believed", "belief",
                "know", "knows", "knew", "known", "expect", "expects", "expected", "look for",
                "looks for", "looking for", "look", "looks", "want", "wants", "wanted",
                "remember", "remembers", "forget", "forgets", "forgot", "feel", "feels", "hope",
                "hopes", "wish", "wishes", "guess", "guesses", "suppose", "assume", "wonder",
                "wonders", "realize", "realizes", "realise", "notice", "notices", "sure",
                "aware", "mind", "imagine", "pretend", "pretends", "trust", "doubt", "suspect",
                "decide", "decides", "plan", "plans", "see", "sees", "saw", "seen", "tell",
                "tells", "told", "say", "says", "said", "mean", "means", "meant", "surprised",
                "label", "fooled", "mistaken")
_MENTAL_RE = re.compile(r"\b(?:" + "|".join(re.escape(w).replace(r"\ ", r"\s+")
                                            for w in MENTAL_STATE) + r")\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def eval_prompts():
    """The evaluation prompts a sweep scores by default (``--tasks builtin``: the eval split)."""
    return load_tasks("builtin").prompts()


def _role(p) -> str:
    return prompt_role(p.family, p.condition, p.probe, p.scenario)


def _pool(dataset: str) -> list:
    return prompt_pool(ScoreDataConfig(dataset=dataset))


def test_the_two_datasets_are_named():
    assert set(SWAPPED) <= set(DATASETS)


def test_nobelief_is_the_train_splits_fact_and_control_prompts_rendered_as_tom():
    train = load_tasks("builtin:train").prompts()
    wanted = [p for p in train if _role(p) in (FACT, CONTROL)]
    pool = _pool("tom-nobelief")
    assert [(p.txt, p.answer) for p in pool] == [(p.text, p.expected) for p in wanted]
    assert len(pool) == 1140  # 40 + 40 tasks x 14 prompts, 20 irony literal twins
    # the same text and answer as the very prompts the "tom" set draws from
    tom_pool = {(p.txt, p.answer) for p in gradient_prompts("builtin")}
    assert {(p.txt, p.answer) for p in pool} <= tom_pool
    # both roles of each family that has them: reality probes and true-belief controls
    roles = {(p.family, _role(p)) for p in wanted}
    assert roles == {("unexpected", FACT), ("unexpected", CONTROL), ("transfer", FACT),
                     ("transfer", CONTROL), ("irony", CONTROL)}


def test_nobelief_samples_hold_no_false_belief_prompt():
    train = load_tasks("builtin:train").prompts()
    tom_texts = {p.text for p in train if _role(p) == TOM}
    role_of = {p.text: _role(p) for p in train}
    pool = _pool("tom-nobelief")
    assert not tom_texts & {p.txt for p in pool}
    lm = tiny_loaded_model()
    data = build_dataset(ScoreDataConfig(dataset="tom-nobelief", nsamples=200, seed=3),
                         lm.tokenizer, lm.model)
    chosen = [pool[i] for i in data.info["selected_records"]]
    assert len(chosen) == 200
    assert {role_of[p.txt] for p in chosen} <= {FACT, CONTROL}
    assert data.info["select"] == "no-belief" and data.info["roles"] == [FACT, CONTROL]
    # and none of the eval split's false-belief prompts either
    assert not {p.text for p in load_tasks("builtin").prompts() if _role(p) == TOM} \
        & {p.txt for p in chosen}


def test_nobelief_samples_are_tokenized_and_supervised_as_tom_samples():
    """Rendering and supervision are the "tom" set's: the same prompt gives the same ids and
    labels, with only the answer's tokens supervised."""
    tok = CharTokenizer()
    data = build_tom_samples(tok, _pool("tom-nobelief"), nsamples=6, seed=1,
                             dataset="tom-nobelief")
    pool = _pool("tom-nobelief")
    for i, sample in zip(data.info["selected_records"], data.samples):
        alone = build_tom_samples(tok, [pool[i]], nsamples=1)[0]
        assert (sample.input_ids, sample.labels) == (alone.input_ids, alone.labels)
        supervised = [t for t in sample.labels if t != IGNORE]
        assert tok.decode(supervised) == " " + pool[i].answer  # the space, then the answer
    assert data.info["dataset"] == "tom-nobelief"


@pytest.mark.parametrize("dataset", SWAPPED)
def test_swapped_prompts_are_disjoint_from_the_evaluation_prompts(dataset, eval_prompts):
    """Every prompt a seed can draw (the whole pool, so every score sample) against every
    evaluation prompt: no equal text, no evaluation prompt inside a score prompt or the other
    way round, and no shared story (the check a sweep makes on the store's story hashes)."""
    pool = _pool(dataset)
    eval_texts = {p.text for p in eval_prompts}
    assert not eval_texts & {p.txt for p in pool}
    assert not eval_texts & {f"{p.txt} {p.answer}" for p in pool}
    eval_stories = set(story_hashes(eval_texts))
    assert not eval_stories & set(story_hashes(p.txt for p in pool))
    # the samples actually built: decoded, and by the hashes their manifest records
    tok = CharTokenizer()
    data = build_tom_samples(tok, pool, nsamples=40, seed=7, dataset=dataset)
    decoded = [tok.decode(s.input_ids) for s in data.samples]
    assert all(d == f"{pool[i].txt} {pool[i].answer}"
               for i, d in zip(data.info["selected_records"], decoded))
    for text in decoded:
        assert not any(e in text for e in eval_texts)
    report = find_overlap(data.info["story_sha256"], eval_prompts)
    assert not report.overlaps and report.n_score_stories == 40


def test_format_control_shares_no_sentence_or_lexicon_word_with_the_bank(eval_prompts):
    pool = _pool("format-control")
    eval_sentences = {s.strip() for p in eval_prompts
                      for s in re.split(r"(?<=[.!?])\s+", p.text.removeprefix(COMPLETE))
                      if len(s.split()) > 2}
    for p in pool:
        for sentence in re.split(r"(?<=[.!?])\s+", p.txt.removeprefix(COMPLETE).strip()):
            assert sentence not in eval_sentences, sentence
    # no name, object, place or content word of either bank split
    lexicon = set()
    for lex in LEXICONS.values():
        lexicon |= set(lex.names["f"]) | set(lex.names["m"]) | set(lex.objects) \
            | set(lex.locations) | set(lex.containers)
        lexicon |= {c for contents in lex.containers.values() for c in contents}
    words = {w.strip(".,") for p in pool for w in f"{p.txt} {p.answer}".split()}
    assert not {w for w in lexicon if " " not in w} & words


def test_format_control_has_no_mental_state_words():
    assert _MENTAL_RE.search("Then she looks  for the key")  # the list itself works
    for p in format_control_prompts():
        for text in (p.txt, p.answer, p.alternative):
            found = _MENTAL_RE.search(text)
            assert found is None, (found.group(0), text)


def test_format_control_items_follow_the_bank_layout_and_are_right():
    pool = format_control_prompts()
    assert len(pool) == POOL_SIZE and len({p.txt for p in pool}) == POOL_SIZE
    assert [p.kind for p in pool[:4]] == list(KINDS) * 2
    numbers = ("zero one two three four five six seven eight nine ten eleven twelve").split()
    for p in pool:
        # "Complete the following story: <story> <unfinished probe>" + " " + one-word answer
        assert p.txt.startswith(COMPLETE + " ") and not p.txt.endswith((".", " "))
        assert re.fullmatch(r"[a-z]+", p.answer) and p.answer != p.alternative
        story, probe = p.txt[len(COMPLETE) + 1:].rsplit(". ", 1)
        if p.kind == "tracking":
            places = re.findall(r"\b(?:in|to) the (\w+)", story)
            assert p.answer == (places[0] if probe.startswith("At the start") else places[-1])
        else:
            n1, n2 = (numbers.index(w) for w in re.findall(
                r"\b(" + "|".join(numbers) + r")\b", story)[:2])
            more = " more " in story
            assert numbers.index(p.answer) == (n1 + n2 if more else n1 - n2)


@pytest.mark.parametrize("dataset", SWAPPED)
def test_deterministic_from_the_seed_and_different_across_seeds(dataset):
    lm = tiny_loaded_model()

    def build(seed):
        return build_dataset(ScoreDataConfig(dataset=dataset, nsamples=12, seed=seed),
                             lm.tokenizer, lm.model)

    a, b, c = build(0), build(0), build(1)
    assert [(s.input_ids, s.labels) for s in a] == [(s.input_ids, s.labels) for s in b]
    assert a.info["samples_sha256"] == b.info["samples_sha256"]
    assert a.info["samples_sha256"] != c.info["samples_sha256"]
    assert a.info["selected_records"] != c.info["selected_records"]
    assert a.info["dataset"] == dataset and a.info["nsamples"] == 12


def test_format_control_generator_is_seeded():
    assert format_control_prompts(50) == format_control_prompts(50)
    assert format_control_prompts(50, seed=1) != format_control_prompts(50)
    assert format_control_prompts(20) == format_control_prompts(50)[:20]


def test_refusals():
    with pytest.raises(UserError, match="does not apply to --dataset tom-nobelief"):
        ScoreDataConfig(dataset="tom-nobelief", select="false-belief")
    with pytest.raises(UserError, match="leave --data_path out"):
        ScoreDataConfig(dataset="format-control", prompts="my.json")
    with pytest.raises(UserError, match="unknown --dataset 'nope'"):
        ScoreDataConfig(dataset="nope")
    with pytest.raises(UserError, match="has only 1140 ToM prompts that need no belief"):
        check_prompt_pool(ScoreDataConfig(dataset="tom-nobelief", nsamples=1141))
    with pytest.raises(UserError, match=f"format-control has {POOL_SIZE} generated items"):
        check_prompt_pool(ScoreDataConfig(dataset="format-control", nsamples=POOL_SIZE + 1))
    check_prompt_pool(ScoreDataConfig(dataset="format-control", nsamples=POOL_SIZE))


def test_nobelief_refuses_a_prompt_file(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text('[{"txt": "Complete the following story: It rains. It is", "answer": "wet"}]')
    with pytest.raises(UserError, match="cannot be told apart"):
        check_prompt_pool(ScoreDataConfig(dataset="tom-nobelief", prompts=str(path)))


@pytest.mark.parametrize("dataset", SWAPPED)
def test_score_store_from_each_on_a_tiny_model(dataset, tmp_path):
    lm = tiny_loaded_model()
    out = tmp_path / dataset
    result = score_set(lm, dataset, out=out, nsamples=3, seed=2)
    scores, manifest = load_scores(out, lm.model)
    assert set(scores) == set(result.scores) and result.nsamples == 3
    expected = build_dataset(ScoreDataConfig(dataset=dataset, nsamples=3, seed=2),
                             lm.tokenizer, lm.model)
    assert manifest["dataset"] == dataset and manifest["data"]["dataset"] == dataset
    assert manifest["samples_sha256"] == expected.info["samples_sha256"]
    assert manifest["nsamples"] == 3 and manifest["seed"] == 2
    assert len(manifest["data"]["story_sha256"]) == 3


@pytest.mark.parametrize("dataset", SWAPPED)
def test_scores_command_takes_the_swapped_datasets(dataset, tmp_path, capsys):
    out = tmp_path / "store"
    with registered_model("tiny"):
        code = main(["scores", "--model", "tiny", "--device", "cpu", "--dataset", dataset,
                     "--nsamples", "2", "--seed", "5", "--out", str(out)])
        assert code == 0, capsys.readouterr().err
        assert f"2 samples ({dataset}, supervision answer)" in capsys.readouterr().out
        manifest = read_manifest(out)
        assert manifest["dataset"] == dataset and manifest["seed"] == 5
        assert load_scores(out, tiny_model("llama"))[1]["samples_sha256"] \
            == manifest["samples_sha256"]
        # a store of another dataset in the same folder is refused, before any work
        assert main(["scores", "--model", "tiny", "--device", "cpu", "--dataset", "tom",
                     "--nsamples", "2", "--out", str(out)]) == 2
        assert f"{dataset} data, not tom" in capsys.readouterr().err
