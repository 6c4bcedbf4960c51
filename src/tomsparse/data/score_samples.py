"""The datasets sensitivity scores are computed on: token ids plus which tokens are supervised.

Two builders, both following the reference code's sampling so that the same inputs give the
same samples:

* ``build_tom_samples``: ToM prompts. The reference draws its prompts with Python's
  ``random.seed(seed)``, shuffles the record indices and keeps the first ``nsamples``; prompts
  are tokenized without special tokens and kept at full length (too long ones lose their head,
  keeping the tail). Supervision ``answer`` appends " " + the expected answer and supervises
  only the answer's tokens; ``last-token`` (the reference's) supervises only the prompt's final
  token, i.e. the loss of predicting the prompt's own last word.
* ``build_generic_samples``: random windows of ``seqlen`` tokens from a corpus (pick a random
  document until one is long enough, then a random window inside it), by our recipe or,
  with ``recipe="reference"``, exactly the reference's C4 recipe; every token of the window
  is supervised.

Labels follow the Hugging Face convention: ``labels[t]`` is the token predicted from position
``t - 1``; -100 marks an unsupervised position (position 0 always is).
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from tomsparse.data.corpora import DEFAULT_GENERIC, load_corpus
from tomsparse.data.overlap import story_hashes
from tomsparse.data.tasks import gradient_prompts
from tomsparse.errors import UserError
from tomsparse.lm.batching import context_length, encode
from tomsparse.manifest import sha256_texts

log = logging.getLogger(__name__)

IGNORE = -100
SUPERVISIONS = ("answer", "last-token")
# Consecutive failed document draws after which the generic sampler checks whether any
# document is long enough at all (the reference would loop forever).
_DRAWS_BEFORE_CHECK = 1000


@dataclass(frozen=True)
class ScoreSample:
    """One sample: its token ids, per-position labels (-100 = not supervised) and where it
    came from (used to name it in error messages)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    source: str

    def __post_init__(self):
        if len(self.input_ids) != len(self.labels):
            raise ValueError("input_ids and labels differ in length")

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def supervised_tokens(self) -> int:
        return sum(1 for t in self.labels[1:] if t != IGNORE)


@dataclass
class ScoreDataset:
    """Samples plus what the manifest records about them (``info``)."""

    samples: list[ScoreSample]
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def samples_sha256(samples: Iterable[ScoreSample]) -> str:
    """A hash of the exact token ids and labels, so two score sets can be checked to have seen
    the same inputs."""
    h = hashlib.sha256()
    for s in samples:
        h.update(len(s.input_ids).to_bytes(8, "little"))
        for seq in (s.input_ids, s.labels):
            h.update(b"".join(int(t).to_bytes(8, "little", signed=True) for t in seq))
    return h.hexdigest()


def reference_selection(n_records: int, nsamples: int, seed: int) -> list[int]:
    """The record indices the reference uses: ``random.seed(seed)``, shuffle the indices, keep
    the first ``nsamples``. A private Random instance seeded the same way draws the same
    shuffle without touching the global generator."""
    order = list(range(n_records))
    random.Random(seed).shuffle(order)
    return order[:nsamples]


def _check_nsamples(nsamples: int) -> None:
    if nsamples is None or isinstance(nsamples, bool) or int(nsamples) != nsamples \
            or int(nsamples) <= 0:
        raise UserError(f"--nsamples must be a positive number, got {nsamples}")


def _snippet(text: str, width: int = 48) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _answer_ids(tokenizer, txt: str, answer: str) -> tuple[list[int], int]:
    """Token ids of prompt + answer and the index of the first answer token.

    The answer is tokenized in context (not separately) so its tokens are the ones the model
    would see; the boundary is where the prompt's own tokenization stops agreeing with it.
    """
    sep = "" if txt[-1:].isspace() else " "
    full = encode(tokenizer, txt + sep + answer.strip(), add_special_tokens=False)
    prompt = encode(tokenizer, txt, add_special_tokens=False)
    start = 0
    while start < min(len(full), len(prompt)) and full[start] == prompt[start]:
        start += 1
    return full, start


def build_tom_samples(tokenizer, prompts: Sequence, nsamples: int = 100, seed: int = 0,
                      supervision: str = "answer", max_length: int | None = None,
                      source: str = "prompts") -> ScoreDataset:
    """Samples for ToM scores from prompts (objects with ``.txt`` and ``.answer``).

    Selection is the reference's (see ``reference_selection``); with ``nsamples`` above the
    number of prompts all are used and a warning says so. ``max_length`` caps the tokens per
    sample (the model's context): longer samples keep their tail and are counted in
    ``info["truncated"]``.
    """
    if supervision not in SUPERVISIONS:
        raise UserError(f"unknown supervision {supervision!r}; use one of {', '.join(SUPERVISIONS)}")
    _check_nsamples(nsamples)
    prompts = list(prompts)
    if not prompts:
        raise UserError(f"{source}: no ToM prompts to compute scores on (empty dataset)")
    if nsamples > len(prompts):
        log.warning("%s: asked for %d samples but there are only %d prompts; using all of them",
                    source, nsamples, len(prompts))
    chosen = reference_selection(len(prompts), min(nsamples, len(prompts)), seed)
    if supervision == "answer":
        missing = [i for i in chosen if not getattr(prompts[i], "answer", None)]
        if missing:
            raise UserError(f"{source}: prompt {missing[0]} ({_snippet(prompts[missing[0]].txt)!r}) "
                            f"and {len(missing) - 1} other(s) have no answer; --supervision answer "
                            "needs one per prompt (use --supervision last-token for answer-less "
                            "prompt files)")
    samples, truncated = [], 0
    for i in chosen:
        p = prompts[i]
        where = f"{source}: prompt {i} ({_snippet(p.txt)!r})"
        if supervision == "answer":
            ids, start = _answer_ids(tokenizer, p.txt, p.answer)
            if start >= len(ids):
                raise UserError(f"{where}: the answer {p.answer!r} adds no tokens to the prompt")
            if start == 0:
                raise UserError(f"{where}: the prompt has no tokens before the answer")
            labels = [IGNORE] * start + ids[start:]
        else:
            ids = encode(tokenizer, p.txt, add_special_tokens=False)
            if len(ids) < 2:
                raise UserError(f"{where}: a prompt needs at least two tokens for last-token "
                                "supervision (the last one is predicted from the rest)")
            labels = [IGNORE] * (len(ids) - 1) + ids[-1:]
        if max_length is not None and len(ids) > max_length:
            # Keep the tail, as the reference does: the supervised tokens are at the end.
            truncated += 1
            ids, labels = ids[-max_length:], labels[-max_length:]
        labels[0] = IGNORE  # nothing precedes the first position
        sample = ScoreSample(tuple(ids), tuple(labels), where)
        if sample.supervised_tokens == 0:
            raise UserError(f"{where}: no supervised token is left after keeping the last "
                            f"{max_length} tokens; raise --seqlen or shorten the answer")
        samples.append(sample)
    if truncated:
        log.warning("%s: %d of %d prompt(s) are longer than %d tokens; kept their last %d tokens",
                    source, truncated, len(samples), max_length, max_length)
    info = {
        "dataset": "tom",
        "source": source,
        "source_sha256": sha256_texts(f"{p.txt}\x00{getattr(p, 'answer', None) or ''}"
                                      for p in prompts),
        "source_records": len(prompts),
        "nsamples_requested": int(nsamples),
        "selection": "reference: random.seed(seed), shuffle record indices, first nsamples",
        "selected_records": chosen,
        # Per selected record, in that order: its story, for the overlap check against the
        # evaluation prompts (tomsparse.data.overlap).
        "story_sha256": story_hashes(prompts[i].txt for i in chosen),
        "supervision": supervision,
        "add_special_tokens": False,
        "max_length": max_length,
        "truncated": truncated,
    }
    return _finish(samples, info, seed)


def _texts_of(corpus) -> tuple[list[str], str, str | None]:
    if isinstance(corpus, (list, tuple)):
        return list(corpus), "texts", None
    texts = getattr(corpus, "texts", None)
    if texts is None:
        raise TypeError("corpus must be a list of texts or an object with .texts")
    return list(texts), getattr(corpus, "name", "corpus"), getattr(corpus, "sha256", None)


# How generic windows are drawn: ``tomsparse`` (ours, the default) or ``reference`` (the
# reference code's C4 recipe, for reproducing its scores).
WINDOW_RECIPES = ("tomsparse", "reference")
# The reference draws at most this many documents per window before taking the last one.
_REFERENCE_DRAWS = 100


def build_generic_samples(tokenizer, corpus, nsamples: int = 100, seqlen: int = 128,
                          seed: int = 0, add_special_tokens: bool = True,
                          max_length: int | None = None,
                          recipe: str = "tomsparse") -> ScoreDataset:
    """Random ``seqlen``-token windows of a corpus (a ``Corpus`` or a list of texts), every
    token supervised. Both recipes seed a private ``random.Random(seed)``.

    * ``tomsparse``: per sample, draw documents with ``randint`` until one has more than
      ``seqlen`` tokens (tokenized with the tokenizer's default special tokens unless
      ``add_special_tokens=False``), then a start with ``randint(0, len - seqlen - 1)``;
      a corpus with no long enough document is refused.
    * ``reference``: the reference's C4 recipe, exactly: per sample up to 100 draws of
      ``randint(0, len(docs) - 1)``, each document tokenized without special tokens, stopping
      at the first with at least ``seqlen`` tokens (after 100 failures the last one drawn is
      used, whole, as a shorter window); the start is 0 when the length equals ``seqlen``,
      else ``randint(0, len - seqlen)`` (inclusive).
    """
    _check_nsamples(nsamples)
    if recipe not in WINDOW_RECIPES:
        raise UserError(f"unknown window recipe {recipe!r}; use {' or '.join(WINDOW_RECIPES)}")
    texts, name, corpus_sha = _texts_of(corpus)
    if not texts:
        raise UserError(f"corpus {name!r} holds no texts (empty dataset)")
    if seqlen is None or seqlen < 2:
        raise UserError(f"--seqlen must be at least 2 for generic windows, got {seqlen}")
    if max_length is not None and seqlen > max_length:
        raise UserError(f"--seqlen {seqlen} is longer than the model's context ({max_length} "
                        "tokens)")
    _check_window_pool(texts, name, nsamples, seqlen)
    rng = random.Random(seed)
    special = add_special_tokens and recipe == "tomsparse"
    cache: dict[int, list[int]] = {}

    def tokens(i: int) -> list[int]:
        if i not in cache:
            cache[i] = encode(tokenizer, texts[i], special)
        return cache[i]

    draw = _reference_window if recipe == "reference" else _tomsparse_window
    samples, short = [], 0
    for k in range(nsamples):
        doc, start, ids = draw(rng, len(texts), tokens, seqlen, name)
        window = ids[start:start + seqlen]
        short += len(window) < seqlen
        labels = [IGNORE] + window[1:]
        samples.append(ScoreSample(tuple(window), tuple(labels),
                                   f"{name}: window {k} (text {doc}, tokens {start}.."
                                   f"{start + len(window)})"))
    if short:
        log.warning("%s: %d of %d windows are shorter than %d tokens (the reference recipe found "
                    "no long enough document in %d draws and kept the last one drawn)",
                    name, short, nsamples, seqlen, _REFERENCE_DRAWS)
    selection = {
        "tomsparse": "tomsparse: random.seed(seed); randint document until longer than seqlen "
                     "tokens; start randint(0, len - seqlen - 1)",
        "reference": "reference C4 recipe: random.seed(seed); up to 100 randint documents, "
                     "tokenized without special tokens, until one has >= seqlen tokens; start 0 "
                     "if len == seqlen else randint(0, len - seqlen)",
    }[recipe]
    info = {
        "dataset": "generic",
        "source": name,
        "source_sha256": corpus_sha or sha256_texts(texts),
        "source_records": len(texts),
        "nsamples_requested": int(nsamples),
        "window_recipe": recipe,
        "selection": selection,
        "supervision": "all",
        "add_special_tokens": special,
        "seqlen": seqlen,
        "short_windows": short,
        "truncated": 0,
    }
    return _finish(samples, info, seed)


def _check_window_pool(texts: list[str], name: str, nsamples: int, seqlen: int) -> None:
    """Refuse, before any window is drawn, more windows than the corpus holds. A window starts
    at a token, and no tokenizer makes more tokens of a text than it has UTF-8 bytes plus a
    few special tokens, so ``bytes + 2 per text`` bounds the distinct windows from above
    without tokenizing anything (``--nsamples 1000000000`` once grew memory for minutes)."""
    pool = sum(len(t.encode("utf-8", "surrogatepass")) + 2 for t in texts)
    if nsamples > pool:
        raise UserError(f"--nsamples {nsamples:,}: corpus {name!r} can give at most {pool:,} "
                        f"distinct windows of {seqlen} tokens (one per token of its "
                        f"{len(texts):,} texts); ask for fewer samples or use a larger corpus")


def _tomsparse_window(rng: random.Random, n_docs: int, tokens, seqlen: int, name: str):
    """(document, start, its ids): documents with more than ``seqlen`` tokens only."""
    failures = 0
    while True:
        doc = rng.randint(0, n_docs - 1)
        ids = tokens(doc)
        if len(ids) > seqlen:
            return doc, rng.randint(0, len(ids) - seqlen - 1), ids
        failures += 1
        if failures == _DRAWS_BEFORE_CHECK and not any(
                len(tokens(i)) > seqlen for i in range(n_docs)):
            longest = max(len(tokens(i)) for i in range(n_docs))
            raise UserError(f"corpus {name!r}: no text has more than {seqlen} tokens (the "
                            f"longest has {longest}); lower --seqlen")


def _reference_window(rng: random.Random, n_docs: int, tokens, seqlen: int, name: str):
    """(document, start, its ids) as the reference draws them (see build_generic_samples)."""
    for _ in range(_REFERENCE_DRAWS):
        doc = rng.randint(0, n_docs - 1)
        ids = tokens(doc)
        if len(ids) >= seqlen:
            break
    if len(ids) <= seqlen:
        # Exactly seqlen: the reference starts at 0. Shorter (100 failed draws): the reference
        # keeps the last document drawn; its start would be an empty randint range, so the
        # whole document is the window.
        return doc, 0, ids
    return doc, rng.randint(0, len(ids) - seqlen), ids


def _finish(samples: list[ScoreSample], info: dict, seed: int) -> ScoreDataset:
    info.update({
        "seed": seed,
        "nsamples": len(samples),
        "supervised_tokens": sum(s.supervised_tokens for s in samples),
        "total_tokens": sum(len(s) for s in samples),
        "samples_sha256": samples_sha256(samples),
    })
    return ScoreDataset(samples, info)


DATASETS = ("tom", "generic")


@dataclass(frozen=True)
class ScoreDataConfig:
    """Which samples one score set is computed on.

    ``dataset``: ``tom`` (prompts with answers) or ``generic`` (corpus windows).
    ``seqlen``: generic window length (None: 128); for ToM the last ``seqlen`` tokens of each
    prompt are kept (None or 0: whole prompts, up to the model's context; the reference's 0).
    ``prompts``: the ToM prompt source (``builtin`` = the built-in train split, or a file);
    ``corpus``: the generic corpus.
    """

    dataset: str = "tom"
    nsamples: int = 100
    seed: int = 0
    seqlen: int | None = None
    prompts: str = "builtin"
    supervision: str = "answer"
    corpus: str = DEFAULT_GENERIC
    windows: str = "tomsparse"  # generic window recipe: tomsparse or reference
    select: str = "all"  # ToM: "all" rendered prompts, or only the "false-belief" ones

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise UserError(f"unknown --dataset {self.dataset!r}; use tom or generic")
        if self.supervision not in SUPERVISIONS:
            raise UserError(f"unknown --supervision {self.supervision!r}; use "
                            f"{' or '.join(SUPERVISIONS)}")
        if self.windows not in WINDOW_RECIPES:
            raise UserError(f"unknown window recipe {self.windows!r}; use "
                            f"{' or '.join(WINDOW_RECIPES)}")
        _check_nsamples(self.nsamples)
        if self.seqlen is not None and self.seqlen < 0:
            raise UserError(f"--seqlen must be 0 or more, got {self.seqlen}")
        # 0 means "whole prompts" for ToM samples only; a generic window has a length.
        if self.dataset == "generic" and self.seqlen is not None and self.seqlen < 2:
            raise UserError(f"--seqlen {self.seqlen}: a generic window needs at least 2 tokens "
                            "(give 2 or more, or leave it out for 128)")


def check_prompt_pool(cfg: ScoreDataConfig, option: str = "--nsamples") -> None:
    """Refuse ToM ``nsamples`` above the prompts ``cfg`` can draw from, before any model is
    loaded (the command line's check; ``build_tom_samples`` itself uses all of them and
    warns). Generic windows are checked against their pool as they are cut."""
    if cfg.dataset != "tom":
        return
    pool = len(gradient_prompts(cfg.prompts, select=cfg.select))
    if cfg.nsamples > pool:
        raise UserError(f"{option} {cfg.nsamples}: {cfg.prompts} has only {pool} ToM prompts "
                        f"(--score-prompts {cfg.select}); give {option} {pool} or fewer, or a "
                        "larger prompt file")


def build_dataset(cfg: ScoreDataConfig, tokenizer, model) -> ScoreDataset:
    """The samples ``cfg`` describes, tokenized for ``model``'s tokenizer and context."""
    context = context_length(model)
    if cfg.dataset == "tom":
        # seqlen 0 (the reference's value for ToM) keeps prompts whole, up to the context.
        limit = cfg.seqlen if cfg.seqlen else context
        dataset = build_tom_samples(tokenizer, gradient_prompts(cfg.prompts, select=cfg.select),
                                    nsamples=cfg.nsamples, seed=cfg.seed,
                                    supervision=cfg.supervision, max_length=limit,
                                    source=cfg.prompts)
        dataset.info["seqlen"] = cfg.seqlen or 0
        dataset.info["select"] = cfg.select
        return dataset
    corpus = load_corpus(cfg.corpus)
    return build_generic_samples(tokenizer, corpus, nsamples=cfg.nsamples,
                                 seqlen=cfg.seqlen if cfg.seqlen else 128, seed=cfg.seed,
                                 max_length=context, recipe=cfg.windows)
