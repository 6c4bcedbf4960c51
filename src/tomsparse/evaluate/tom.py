"""ToM evaluation: score a causal LM on a TaskSet and summarise per family and condition.

Scorings
--------
* ``likelihood`` (deterministic): for every prompt, the log-probability of the expected
  answer's continuation ``" " + answer`` against the alternative's (o1 vs o2, Yes vs No,
  ToMi's two locations). By default the continuation is the answer's first word, the unit the
  generation protocol matches on (``answer_span="full"`` scores the whole answer). A prompt is
  right when the expected answer is the more likely one; the margin (expected minus
  alternative, in nats) moves even when accuracy does not. Prompts that tell the same story
  (the prompts of one task) share the runs of what they have in common: a task's prompts and
  continuations are run as one prefix tree (``lm.prefix_tree``: each shared prefix once,
  explicit position ids, padding hidden), so a prompt costs well under one forward pass over
  its own tokens.
* ``generate`` (the reference protocol): sample 5 new tokens (temperature 0.6, top-p 0.9, no
  top-k), take the first word with punctuation removed and match it exactly against the
  expected answer's first word. Repeated ``reps`` times; rep r uses seed ``seed + r - 1``.
* ``greedy``: the generate protocol without sampling (deterministic, one rep).

Answer rules for the generated first word (``answer_rule``): ``tomsparse`` (default) removes
``. , ' " ; : ! ?`` from both words, so "Yes!" counts as "Yes"; ``reference`` is the reference
code's rule exactly: the first whitespace-separated word with only ``. , ' " ;`` removed,
compared case-sensitively with the expected answer's first word as written.

Backends for generation: Hugging Face ``generate`` (batched, left padding) and vLLM when it
is installed (``backend="vllm"``; the in-memory weights are saved to a temporary folder first,
so a perturbed model is evaluated as it is in memory).

Metrics (per family, condition and scenario): prompt accuracy, scenario accuracy (a
(task, scenario) cell counts only if both probes are right), the reference's per-family
percentage (100 x cells right / cells, mean and sample variance over reps), Kosinski's strict
task score (a task counts only if every cell of the group is right), the chance level of each
under a random choice between the two candidates, and bootstrap 95% intervals over tasks and
reps. The reference's layout ``<out>/tom/<rep>/<m>/<family>/results.csv`` is written too.
"""

from __future__ import annotations

import logging
import numbers
import time
from dataclasses import dataclass

import pandas as pd
import torch

from tomsparse.data.tasks.model import (
    MATCH_RULES,
    Prompt,
    TaskSet,
    answer_word,
    cluster_of,
)
from tomsparse.errors import UserError
from tomsparse.evaluate.generate import (
    MAX_NEW_TOKENS,
    TEMPERATURE,
    TOP_P,
    VLLMGenerator,
    generate_reps,
    vllm_available,
)
from tomsparse.evaluate.metrics import compute_metrics
from tomsparse.evaluate.results import EvalResult
from tomsparse.lm.batching import (
    context_length,
    encode,
    input_device,
    pad_token_id,
    progress_bar,
)
from tomsparse.lm.prefix_tree import sequence_logprobs

log = logging.getLogger(__name__)

SCORINGS = ("likelihood", "generate", "greedy")
BACKENDS = ("hf", "vllm", "auto")
ANSWER_SPANS = ("word", "full")
ANSWER_RULES = MATCH_RULES  # ("tomsparse", "reference"): data.tasks.model.answer_word
DEFAULT_REPS = 5


TABLE_COLUMNS = ["model", "scoring", "m", "rep", "seed", "family", "task_id", "task_index",
                 "condition", "reversed", "scenario", "probe", "cell", "cluster", "expected",
                 "alternative", "expected_word", "generated", "answer_word", "logprob_expected",
                 "logprob_alternative", "margin", "tokens_expected", "tokens_alternative",
                 "correct", "prompt"]


# ---------------------------------------------------------------- tokenization helpers

def prompt_token_limit(model) -> int | None:
    """The most tokens a prompt and its answer may have: the config's ``max_prompt_tokens``
    where it sets one (tomsparse.testing's tiny RoPE models declare 128 positions, which keeps
    their perplexity windows small, yet read longer prompts), else the model's context."""
    config = getattr(model, "config", None)
    explicit = getattr(config, "max_prompt_tokens", None)
    return explicit if isinstance(explicit, int) and explicit > 0 else context_length(model)


def check_prompt_lengths(model, prompts: list[Prompt], lengths: list[int], what: str) -> None:
    """Refuse, before any forward pass, a prompt whose ``lengths`` (its tokens and ``what``
    follows it) exceed the model's context: it would be read past the positions the model
    knows, or exhaust memory on its attention (a 50k-token story asked for 41 GB)."""
    limit = prompt_token_limit(model)
    if limit is None:
        return
    worst = max(range(len(prompts)), key=lengths.__getitem__, default=None)
    if worst is not None and lengths[worst] > limit:
        p = prompts[worst]
        over = sum(n > limit for n in lengths)
        raise UserError(f"task {p.task_id} ({p.family}, {p.condition}): a prompt and {what} "
                        f"take {lengths[worst]} tokens, more than the model's context of "
                        f"{limit} tokens ({over} prompt(s) too long); shorten the story or "
                        "use a model with a longer context")



def answer_text(answer: str, span: str) -> str:
    """The part of an answer that is scored: its first word (as written) or all of it."""
    return answer.split()[0] if span == "word" else " ".join(answer.split())


def continuation_ids(tokenizer, prompt: str, prompt_ids: list[int], answer: str
                     ) -> tuple[list[int], bool]:
    """Token ids of ``" " + answer`` as they follow ``prompt``.

    The prompt and prompt + continuation are tokenized the same way and the continuation is
    what the longer sequence adds, so merges at the boundary follow the tokenizer's own
    rules. Returns (ids, True) when the prompt's tokens are a prefix of the longer
    sequence's; otherwise (the tokenizer merged across the boundary) the continuation is
    tokenized on its own and (ids, False) is returned.
    """
    full = encode(tokenizer, f"{prompt} {answer}")
    n = len(prompt_ids)
    if len(full) > n and full[:n] == prompt_ids:
        return full[n:], True
    return encode(tokenizer, " " + answer, add_special_tokens=False), False


# ---------------------------------------------------------------- likelihood scoring

@dataclass
class LikelihoodScores:
    logprob_expected: list[float]
    logprob_alternative: list[float]
    tokens_expected: list[int]
    tokens_alternative: list[int]
    boundary_fallbacks: int = 0


def task_groups(prompts: list[Prompt], batch_size: int) -> list[list[int]]:
    """Indices of the prompts of one task (variants of one story: they share long token
    prefixes), at most ``batch_size`` per group."""
    groups: dict = {}
    for i, p in enumerate(prompts):
        groups.setdefault((p.family, p.task_index), []).append(i)
    out = []
    for members in groups.values():
        out += [members[j:j + batch_size] for j in range(0, len(members), batch_size)]
    return out


def continuation_rows(prompt: list[int], expected: list[int], alternative: list[int],
                       out: int) -> list[tuple[list[int], list[tuple[int, int, int]]]]:
    """Sequences that score one prompt's two continuations: (tokens, picks), a pick being
    (position, token, output slot: ``out`` for the expected answer, ``out + 1`` for the
    alternative), the token's log-prob read from the logits at that position.

    The first sequence is ``prompt + expected[:-1]``: its logits predict every expected
    token and, at the prompt's last position, the alternative's first token too. A second
    sequence runs the alternative only when it has more than one token.
    """
    last = len(prompt) - 1
    picks = [(last + j, t, out) for j, t in enumerate(expected)] + [(last, alternative[0], out + 1)]
    rows = [(prompt + expected[:-1], picks)]
    if len(alternative) > 1:
        rows.append((prompt + alternative[:-1],
                     [(last + j, t, out + 1) for j, t in enumerate(alternative) if j > 0]))
    return rows


def score_likelihood(model, tokenizer, prompts: list[Prompt], batch_size: int = 16,
                     device=None, answer_span: str = "word", progress: bool = False
                     ) -> LikelihoodScores:
    """Log-probabilities of each prompt's expected and alternative answer (batched).

    The prompts of a task are batched together and run as one prefix tree, so what they
    share is run once; ``batch_size`` counts prompts (1 = one prompt at a time: only its two
    continuations share it).
    """
    device = input_device(model, device)
    pad_id = pad_token_id(tokenizer)
    prompt_ids, conts, fallbacks = [], [], 0
    for p in prompts:
        ids = encode(tokenizer, p.text)
        if not ids:
            raise UserError(f"a {p.family} prompt tokenizes to nothing")
        pair = []
        for answer in (p.expected, p.alternative):
            cont, clean = continuation_ids(tokenizer, p.text, ids, answer_text(answer, answer_span))
            fallbacks += not clean
            if not cont:
                raise UserError(f"answer {answer!r} of a {p.family} prompt tokenizes to nothing")
            pair.append(cont)
        prompt_ids.append(ids)
        conts.append(pair)
    check_prompt_lengths(model, prompts, [len(ids) + max(map(len, pair))
                                          for ids, pair in zip(prompt_ids, conts)],
                         "its longer answer")
    if fallbacks:
        log.warning("%d answer continuation(s) did not extend the prompt's tokens; they were "
                    "tokenized on their own", fallbacks)
    # Pack whole tasks into batches of about ``batch_size`` prompts; each batch runs as one
    # prefix tree (lm.prefix_tree), so what a task's prompts share is run once.
    batches, current = [], []
    for group in task_groups(prompts, batch_size):
        if current and len(current) + len(group) > batch_size:
            batches.append(current)
            current = []
        current += group
    if current:
        batches.append(current)

    results: list = [None] * len(prompts)
    bar = progress_bar(len(prompts), "likelihood", "prompt", progress)
    for batch in batches:
        seqs, picks = [], []
        for n, i in enumerate(batch):
            expected, alternative = conts[i]
            for seq, seq_picks in continuation_rows(prompt_ids[i], expected, alternative, 2 * n):
                seqs.append(seq)
                picks.append(seq_picks)
        values = sequence_logprobs(model, seqs, [[(pos, t) for pos, t, _ in sp] for sp in picks],
                                   pad_id, device)
        sums = [0.0] * (2 * len(batch))
        for seq_picks, seq_values in zip(picks, values):
            for (_, _, slot), v in zip(seq_picks, seq_values):
                sums[slot] += v
        for n, i in enumerate(batch):
            results[i] = sums[2 * n:2 * n + 2]
        bar.update(len(batch))
    bar.close()
    return LikelihoodScores(
        logprob_expected=[r[0] for r in results], logprob_alternative=[r[1] for r in results],
        tokens_expected=[len(c[0]) for c in conts], tokens_alternative=[len(c[1]) for c in conts],
        boundary_fallbacks=fallbacks)


# ---------------------------------------------------------------- generation


# ---------------------------------------------------------------- evaluation


def evaluate(model, tokenizer, taskset: TaskSet, scoring: str = "likelihood", reps: int = 1,
             seed: int = 0, batch_size: int = 16, m: float = 0.0, model_name: str = "",
             device=None, backend: str = "hf", answer_span: str = "word", n_boot: int = 1000,
             progress: bool = False, answer_rule: str = "tomsparse") -> EvalResult:
    """Score ``model`` on every prompt of ``taskset`` and summarise.

    ``reps`` applies to ``generate`` only (the deterministic scorings run once, as rep 1).
    The model's weights are not touched; it is put in eval mode for the call.
    """
    if scoring not in SCORINGS:
        raise UserError(f"unknown scoring {scoring!r}; choose from {', '.join(SCORINGS)}")
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if answer_span not in ANSWER_SPANS:
        raise UserError(f"unknown answer span {answer_span!r}; choose from word, full")
    if answer_rule not in ANSWER_RULES:
        raise UserError(f"unknown answer rule {answer_rule!r}; choose from "
                        f"{', '.join(ANSWER_RULES)}")
    for name, value, low in (("--reps", reps, 1), ("--batch-size", batch_size, 1),
                             ("--seed", seed, 0), ("n_boot", n_boot, 0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise UserError(f"{name} must be a whole number of at least {low}, got {value!r}")
    prompts = taskset.prompts()
    if not prompts:
        raise UserError(f"{taskset.name}: no prompts to evaluate")
    if scoring != "generate" and reps > 1:
        log.info("%s scoring is deterministic: running it once instead of %d reps", scoring, reps)
        reps = 1
    use_vllm = scoring != "likelihood" and (
        backend == "vllm" or (backend == "auto" and vllm_available() and torch.cuda.is_available()))
    model_name = model_name or str(getattr(getattr(model, "config", None), "_name_or_path", "")
                                   or type(model).__name__)
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    rows = []
    seeds = []
    try:
        with torch.inference_mode():
            if scoring == "likelihood":
                s = score_likelihood(model, tokenizer, prompts, batch_size, device, answer_span,
                                     progress)
                for i, p in enumerate(prompts):
                    margin = s.logprob_expected[i] - s.logprob_alternative[i]
                    rows.append(_row(p, rep=1, seed=None, correct=margin > 0,
                                     logprob_expected=s.logprob_expected[i],
                                     logprob_alternative=s.logprob_alternative[i], margin=margin,
                                     tokens_expected=s.tokens_expected[i],
                                     tokens_alternative=s.tokens_alternative[i]))
                fallbacks = s.boundary_fallbacks
            else:
                fallbacks = 0
                seeds, rows = _generation_rows(model, tokenizer, prompts, scoring, reps, seed,
                                               batch_size, device, progress, answer_rule,
                                               use_vllm)
    finally:
        if was_training:
            model.train()
    elapsed = time.perf_counter() - started
    table = pd.DataFrame(rows)
    table.insert(0, "m", float(m))
    table.insert(0, "scoring", scoring)
    table.insert(0, "model", model_name)
    table = table.reindex(columns=TABLE_COLUMNS)
    metrics = compute_metrics(table, n_boot=n_boot, seed=seed)
    meta = dict(model=model_name, tasks=taskset.name, renderer=taskset.renderer,
                scoring=scoring, m=float(m), reps=reps,
                seeds=seeds, batch_size=batch_size, answer_span=answer_span,
                backend="vllm" if use_vllm else "hf", prompts=len(prompts),
                seconds=round(elapsed, 3), boundary_fallbacks=fallbacks,
                answer_rule=answer_rule if scoring != "likelihood" else None,
                protocol=_protocol(scoring, answer_span, answer_rule),
                families={f: taskset.count(f) for f in taskset.families()})
    return EvalResult(table=table, metrics=metrics, meta=meta)


def _generation_rows(model, tokenizer, prompts, scoring: str, reps: int, seed: int,
                     batch_size: int, device, progress: bool, answer_rule: str,
                     use_vllm: bool) -> tuple[list, list[dict]]:
    """(per-rep seeds, table rows) of the generate / greedy scorings: every prompt generated
    ``reps`` times (sampled with seed + rep - 1 under ``generate``), its first word matched."""
    sample = scoring == "generate"
    generator = VLLMGenerator(model, tokenizer) if use_vllm else None
    texts = [p.text for p in prompts]
    check_prompt_lengths(model, prompts, [len(encode(tokenizer, t)) + MAX_NEW_TOKENS
                                          for t in texts], f"{MAX_NEW_TOKENS} generated tokens")
    seeds = [seed + rep - 1 if sample else None for rep in range(1, reps + 1)]
    if generator is not None:
        by_rep = [generator.generate(texts, sample, s) for s in seeds]
    else:  # the reps share each prompt's prefill
        by_rep = generate_reps(model, tokenizer, texts, seeds, batch_size, sample, device,
                               progress)
    rows = []
    for rep, (rep_seed, outputs) in enumerate(zip(seeds, by_rep), start=1):
        for p, text in zip(prompts, outputs):
            rows.append(_row(p, rep=rep, seed=rep_seed, generated=text,
                             answer_word=answer_word(text, answer_rule),
                             correct=p.matches(text, answer_rule),
                             expected_word=p.expected_word_for(answer_rule)))
    return seeds, rows


def _protocol(scoring: str, answer_span: str, answer_rule: str = "tomsparse") -> str:
    if scoring == "likelihood":
        return (f"log P(' ' + answer {'first word' if answer_span == 'word' else 'text'} | "
                f"prompt), expected vs alternative; correct when expected is more likely")
    match = ("first word with . , ' \" ; removed, equal (case-sensitive) to the expected "
             "answer's first word as written (the reference's rule)" if answer_rule == "reference"
             else "first word, punctuation removed from both, exact match")
    if scoring == "generate":
        return (f"sample {MAX_NEW_TOKENS} new tokens (temperature {TEMPERATURE}, top-p {TOP_P}, "
                f"no top-k); {match}")
    return f"greedy {MAX_NEW_TOKENS} new tokens; {match}"


def _row(p: Prompt, rep: int, seed, correct: bool, **values) -> dict:
    values.setdefault("expected_word", p.expected_word)
    return dict(rep=rep, seed=seed, family=p.family, task_id=p.task_id, task_index=p.task_index,
                condition=p.condition, reversed=p.reversed, scenario=p.scenario, probe=p.probe,
                cell=p.cell_id, cluster=cluster_of(p.task_id, p.cluster),
                expected=p.expected, alternative=p.alternative, correct=bool(correct), prompt=p.text, **values)


# ---------------------------------------------------------------- metrics


# ---------------------------------------------------------------- CLI

