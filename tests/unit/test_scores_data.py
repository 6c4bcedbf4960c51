"""Dataset builders for sensitivity scores: the reference's sample selection and tokenization,
the two supervisions, generic windows, and bad input."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import pytest

from tomsparse.data.score_samples import (
    IGNORE,
    build_generic_samples,
    build_tom_samples,
    reference_selection,
)
from tomsparse.errors import UserError
from tomsparse.testing import CharTokenizer


@dataclass
class P:
    txt: str
    answer: str | None = None


PROMPTS = [P(f"Story {i}: Anna puts the ball in the basket and leaves. She looks in the",
             answer=["basket", "box"][i % 2]) for i in range(12)]


def test_reference_selection_is_seed_shuffle_first_n():
    random.seed(5)
    order = list(range(30))
    random.shuffle(order)
    assert reference_selection(30, 7, 5) == order[:7]
    state = random.getstate()
    reference_selection(30, 7, 5)
    assert random.getstate() == state  # the global generator is left alone


def test_last_token_matches_reference_tokenization():
    tok = CharTokenizer(add_bos=True)  # special tokens must NOT be added
    data = build_tom_samples(tok, PROMPTS, nsamples=5, seed=0, supervision="last-token")
    random.seed(0)
    order = list(range(len(PROMPTS)))
    random.shuffle(order)
    for sample, i in zip(data.samples, order[:5]):
        ids = tok(PROMPTS[i].txt, add_special_tokens=False)["input_ids"]
        assert list(sample.input_ids) == ids
        assert list(sample.labels) == [IGNORE] * (len(ids) - 1) + [ids[-1]]
        assert sample.supervised_tokens == 1
        assert f"prompt {i} " in sample.source
    assert data.info["supervised_tokens"] == 5
    assert data.info["selected_records"] == order[:5]
    assert data.info["supervision"] == "last-token"


def test_answer_supervision_covers_only_the_answer():
    tok = CharTokenizer()
    data = build_tom_samples(tok, PROMPTS, nsamples=3, seed=1, supervision="answer")
    for sample, i in zip(data.samples, data.info["selected_records"]):
        prompt = PROMPTS[i]
        full = tok.encode(prompt.txt + " " + prompt.answer, add_special_tokens=False)
        assert list(sample.input_ids) == full
        supervised = [t for t in sample.labels if t != IGNORE]
        # Characters of " basket" / " box": the space that starts the answer and its letters.
        assert tok.decode(supervised) == " " + prompt.answer
        assert sample.labels[:len(prompt.txt)] == (IGNORE,) * len(prompt.txt)


def test_answer_supervision_needs_answers():
    prompts = PROMPTS[:3] + [P("A story without an answer. It is in the")]
    with pytest.raises(UserError, match=r"prompt 3 .*no answer.*--supervision last-token"):
        build_tom_samples(CharTokenizer(), prompts, nsamples=10, supervision="answer")
    # last-token works without answers.
    data = build_tom_samples(CharTokenizer(), prompts, nsamples=10, supervision="last-token")
    assert len(data) == 4


def test_more_samples_than_prompts_uses_all_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="tomsparse.score_data"):
        data = build_tom_samples(CharTokenizer(), PROMPTS, nsamples=100, seed=0,
                                 source="my.json")
    assert len(data) == len(PROMPTS)
    assert data.info["nsamples_requested"] == 100 and data.info["nsamples"] == 12
    assert "asked for 100 samples but there are only 12 prompts; using all" in caplog.text


def test_long_prompts_keep_their_tail_and_are_counted(caplog):
    prompts = [P("x" * 50 + " The ball is in the", "box"), P("Short: in the", "box")]
    with caplog.at_level(logging.WARNING, logger="tomsparse.score_data"):
        data = build_tom_samples(CharTokenizer(), prompts, nsamples=2, seed=0,
                                 supervision="answer", max_length=30)
    assert data.info["truncated"] == 1
    assert "1 of 2 prompt(s) are longer than 30 tokens; kept their last 30" in caplog.text
    long = [s for s in data.samples if "prompt 0" in s.source][0]
    assert len(long) == 30
    assert CharTokenizer().decode(long.input_ids).endswith("The ball is in the box")
    assert long.labels[0] == IGNORE and long.supervised_tokens == 4


def test_empty_and_bad_tom_input():
    with pytest.raises(UserError, match="empty dataset"):
        build_tom_samples(CharTokenizer(), [], nsamples=10)
    with pytest.raises(UserError, match="--nsamples"):
        build_tom_samples(CharTokenizer(), PROMPTS, nsamples=0)
    with pytest.raises(UserError, match="unknown supervision"):
        build_tom_samples(CharTokenizer(), PROMPTS, supervision="all")
    with pytest.raises(UserError, match="at least two tokens"):
        build_tom_samples(CharTokenizer(), [P("x")], supervision="last-token")


CORPUS = [("word " * n).strip() for n in (3, 40, 7, 90, 12, 60)]


def test_generic_windows_follow_the_reference_sampling():
    tok = CharTokenizer(add_bos=True)
    seqlen = 16
    data = build_generic_samples(tok, CORPUS, nsamples=6, seqlen=seqlen, seed=3)
    # The reference's draws, written out: randint over documents until one is longer than
    # seqlen tokens (tokenized with default special tokens), then randint for the start.
    rng = random.Random(3)
    for sample in data.samples:
        while True:
            doc = rng.randint(0, len(CORPUS) - 1)
            ids = tok(CORPUS[doc])["input_ids"]
            if len(ids) > seqlen:
                break
        start = rng.randint(0, len(ids) - seqlen - 1)
        assert list(sample.input_ids) == ids[start:start + seqlen]
        assert list(sample.labels) == [IGNORE] + ids[start + 1:start + seqlen]
        assert f"text {doc}, tokens {start}.." in sample.source
    assert data.info["supervised_tokens"] == 6 * (seqlen - 1)
    again = build_generic_samples(tok, CORPUS, nsamples=6, seqlen=seqlen, seed=3)
    assert again.info["samples_sha256"] == data.info["samples_sha256"]
    other = build_generic_samples(tok, CORPUS, nsamples=6, seqlen=seqlen, seed=4)
    assert other.info["samples_sha256"] != data.info["samples_sha256"]


def test_generic_accepts_a_corpus_object():
    class Corpus:
        name = "tiny-corpus"
        texts = CORPUS
        sha256 = "abc"

    data = build_generic_samples(CharTokenizer(), Corpus(), nsamples=2, seqlen=8)
    assert data.info["source"] == "tiny-corpus" and data.info["source_sha256"] == "abc"
    assert "tiny-corpus: window 0" in data.samples[0].source


def test_generic_bad_input():
    with pytest.raises(UserError, match="empty dataset"):
        build_generic_samples(CharTokenizer(), [], nsamples=2, seqlen=8)
    with pytest.raises(UserError, match=r"no text has more than 500 tokens \(the longest has "
                                        r"449\); lower --seqlen"):
        build_generic_samples(CharTokenizer(), CORPUS, nsamples=2, seqlen=500)
    with pytest.raises(UserError, match="longer than the model's context"):
        build_generic_samples(CharTokenizer(), CORPUS, nsamples=2, seqlen=64, max_length=32)
    with pytest.raises(UserError, match="at least 2"):
        build_generic_samples(CharTokenizer(), CORPUS, nsamples=2, seqlen=1)
