"""ToM evaluation: score a causal LM on a TaskSet and summarise per family and condition.

Scorings
--------
* ``likelihood`` (deterministic): for every prompt, the log-probability of the expected
  answer's continuation ``" " + answer`` against the alternative's (o1 vs o2, Yes vs No,
  ToMi's two locations). By default the continuation is the answer's first word, the unit the
  generation protocol matches on (``answer_span="full"`` scores the whole answer). A prompt is
  right when the expected answer is the more likely one; the margin (expected minus
  alternative, in nats) moves even when accuracy does not. Prompts that tell the same story
  (the two probes of a scenario) share one run of it: the story is run once, left-padded with
  explicit position ids, and the rest of each prompt with its continuations runs on the
  story's KV cache, so a prompt costs less than one forward pass over its own tokens.
* ``generate`` (the reference protocol): sample 5 new tokens (temperature 0.6, top-p 0.9, no
  top-k), take the first word with punctuation removed and match it exactly against the
  expected answer's first word. Repeated ``reps`` times; rep r uses seed ``seed + r - 1``.
* ``greedy``: the generate protocol without sampling (deterministic, one rep).

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

import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .errors import UserError
from .tasks.model import (CONTENTS_CONDITIONS, REFERENCE_FAMILIES, TRANSFER_CONDITIONS, Prompt,
                          TaskSet, first_word)

log = logging.getLogger(__name__)

SCORINGS = ("likelihood", "generate", "greedy")
BACKENDS = ("hf", "vllm", "auto")
ANSWER_SPANS = ("word", "full")
# The reference protocol's sampling settings.
TEMPERATURE = 0.6
TOP_P = 0.9
MAX_NEW_TOKENS = 5
DEFAULT_REPS = 5

# Reference results.csv columns, in the reference's order.
REFERENCE_COLUMNS = {
    "unexpected": [f"{c} ({r})" for c in CONTENTS_CONDITIONS for r in "FT"],
    "transfer": [f"{c} ({r})" for c in TRANSFER_CONDITIONS for r in "FT"],
    "irony": ["Irony", "Irony reversed"],
}

TABLE_COLUMNS = ["model", "scoring", "m", "rep", "seed", "family", "task_id", "task_index",
                 "condition", "reversed", "scenario", "probe", "cell", "expected", "alternative",
                 "expected_word", "generated", "answer_word", "logprob_expected",
                 "logprob_alternative", "margin", "tokens_expected", "tokens_alternative",
                 "correct", "prompt"]


# ---------------------------------------------------------------- tokenization helpers

def _encode(tokenizer, text: str, special: bool = True) -> list[int]:
    ids = tokenizer(text, add_special_tokens=special)["input_ids"]
    return [int(i) for i in ids]


def _pad_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


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
    full = _encode(tokenizer, f"{prompt} {answer}")
    n = len(prompt_ids)
    if len(full) > n and full[:n] == prompt_ids:
        return full[n:], True
    return _encode(tokenizer, " " + answer, special=False), False


def _device_of(model, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def _batches_by_length(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), to waste little
    compute on padding; results are put back in the original order by the callers."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="prompt", file=sys.stderr, leave=False)


# ---------------------------------------------------------------- likelihood scoring

@dataclass
class LikelihoodScores:
    logprob_expected: list[float]
    logprob_alternative: list[float]
    tokens_expected: list[int]
    tokens_alternative: list[int]
    boundary_fallbacks: int = 0


def _forward_kwargs(model) -> dict:
    """Ask for the last position's logits only where the model supports it (saves a
    [batch, length, vocabulary] tensor)."""
    import inspect
    params = inspect.signature(model.forward).parameters
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


def _common_prefix(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs[1:]):
            return i
    return n


def _story_groups(prompts: list[Prompt], batch_size: int) -> list[list[int]]:
    """Indices of prompts likely to share a long token prefix (the two probes of one scenario;
    the questions of one ToMi story), at most ``batch_size`` per group."""
    groups: dict = {}
    for i, p in enumerate(prompts):
        key = (p.family, p.task_index, p.scenario if p.family in REFERENCE_FAMILIES else "")
        groups.setdefault(key, []).append(i)
    out = []
    for members in groups.values():
        out += [members[j:j + batch_size] for j in range(0, len(members), batch_size)]
    return out


def _continuation_rows(rest: list[int], expected: list[int], alternative: list[int],
                       out: int) -> list[tuple[list[int], list[tuple[int, int, int]]]]:
    """Rows that score one prompt's two continuations after its stem: (tokens after the
    stem, picks), a pick being (position in the row, token, output slot: ``out`` for the
    expected answer, ``out + 1`` for the alternative).

    The first row is ``rest + expected[:-1]``: its logits predict every expected token and,
    at the prompt's last position, the alternative's first token too. A second row runs the
    alternative only when it has more than one token.
    """
    last = len(rest) - 1
    picks = [(last + j, t, out) for j, t in enumerate(expected)] + [(last, alternative[0], out + 1)]
    rows = [(rest + expected[:-1], picks)]
    if len(alternative) > 1:
        rows.append((rest + alternative[:-1],
                     [(last + j, t, out + 1) for j, t in enumerate(alternative) if j > 0]))
    return rows


def _score_batch(model, stems: list[list[int]], rows: list, n_out: int, pad_id: int, device,
                 forward_kwargs: dict) -> list[float]:
    """Sums of log-probs for one batch, in ``n_out`` output slots.

    ``stems`` are token prefixes shared by several prompts. A row ``(g, tail, picks)`` is
    stem g followed by ``tail``; each pick ``(position in tail, token, slot)`` adds that
    token's log-prob at that position to the slot. The stems are run once, left-padded with
    explicit position ids; their KV cache is gathered per row and the tails are run on top of
    it, right-padded, so that every real token keeps its position and its context.
    """
    if not all(stems):  # a one-token prompt leaves an empty stem: run every row whole
        rows = [(g, stems[g] + tail, [(pos + len(stems[g]), t, k) for pos, t, k in picks])
                for g, tail, picks in rows]
    group = torch.tensor([g for g, _, _ in rows], device=device)
    width = max(len(tail) for _, tail, _ in rows)
    tail_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    tail_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, (_, tail, _) in enumerate(rows):
        tail_ids[j, :len(tail)] = torch.tensor(tail, dtype=torch.long)
        tail_mask[j, :len(tail)] = 1
    tail_ids, tail_mask = tail_ids.to(device), tail_mask.to(device)
    offsets = torch.arange(width, device=device)[None, :]
    if all(stems):
        ids, mask = _left_pad(stems, pad_id, device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                      **forward_kwargs).cache
        cache.reorder_cache(group)  # one copy of its stem's cache per row
        out = model(input_ids=tail_ids, attention_mask=torch.cat([mask[group], tail_mask], 1),
                    position_ids=mask.sum(-1)[group][:, None] + offsets, cache=cache,
                    use_cache=True)
    else:
        out = model(input_ids=tail_ids, attention_mask=tail_mask,
                    position_ids=offsets.expand(len(rows), -1))
    flat = [(j, pos, t, k) for j, (_, _, picks) in enumerate(rows) for pos, t, k in picks]
    row_idx, pos_idx, tokens, slots = (torch.tensor(c, device=device) for c in zip(*flat))
    logp = out.logits[row_idx, pos_idx].float().log_softmax(-1)     # only the picked positions
    picked = logp.gather(-1, tokens[:, None])[:, 0]
    sums = torch.zeros(n_out, dtype=picked.dtype, device=device).index_add_(0, slots, picked)
    return sums.tolist()


def score_likelihood(model, tokenizer, prompts: list[Prompt], batch_size: int = 16,
                     device=None, answer_span: str = "word", progress: bool = False
                     ) -> LikelihoodScores:
    """Log-probabilities of each prompt's expected and alternative answer (batched).

    Prompts telling the same story are grouped so the story is run once; ``batch_size``
    counts prompts (1 = one prompt at a time, no sharing).
    """
    device = _device_of(model, device)
    pad_id = _pad_id(tokenizer)
    prompt_ids, conts, fallbacks = [], [], 0
    for p in prompts:
        ids = _encode(tokenizer, p.text)
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
    if fallbacks:
        log.warning("%d answer continuation(s) did not extend the prompt's tokens; they were "
                    "tokenized on their own", fallbacks)
    groups = _story_groups(prompts, batch_size)
    # A stem is the group's common prefix, less at least one token so every prompt keeps a
    # token whose logits predict its continuation.
    stem_len = [min(_common_prefix([prompt_ids[i] for i in g]),
                    min(len(prompt_ids[i]) for i in g) - 1) for g in groups]
    # Pack whole groups into batches of about ``batch_size`` prompts, longest stems first.
    order = sorted(range(len(groups)), key=lambda g: -stem_len[g])
    batches, current, size = [], [], 0
    for g in order:
        if current and size + len(groups[g]) > batch_size:
            batches.append(current)
            current, size = [], 0
        current.append(g)
        size += len(groups[g])
    if current:
        batches.append(current)

    results: list = [None] * len(prompts)
    bar = _progress(len(prompts), "likelihood", progress)
    forward_kwargs = _forward_kwargs(model)
    for batch in batches:
        stems = [prompt_ids[groups[g][0]][:stem_len[g]] for g in batch]
        rows, owners = [], []
        for local, g in enumerate(batch):
            for i in groups[g]:
                expected, alternative = conts[i]
                for tail, picks in _continuation_rows(prompt_ids[i][stem_len[g]:], expected,
                                                      alternative, 2 * len(owners)):
                    rows.append((local, tail, picks))
                owners.append(i)
        values = _score_batch(model, stems, rows, 2 * len(owners), pad_id, device,
                              forward_kwargs)
        for n, i in enumerate(owners):
            results[i] = values[2 * n:2 * n + 2]
        if bar is not None:
            bar.update(len(owners))
    if bar is not None:
        bar.close()
    return LikelihoodScores(
        logprob_expected=[r[0] for r in results], logprob_alternative=[r[1] for r in results],
        tokens_expected=[len(c[0]) for c in conts], tokens_alternative=[len(c[1]) for c in conts],
        boundary_fallbacks=fallbacks)


# ---------------------------------------------------------------- generation

def _generation_config(model, tokenizer, sample: bool):
    from transformers import GenerationConfig

    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(tokenizer, "eos_token_id", None)
    # Everything that shapes the distribution is set explicitly, so values from the model's
    # own generation_config (top_k=50, repetition penalties ...) cannot leak in.
    common = dict(max_new_tokens=MAX_NEW_TOKENS, min_new_tokens=0, num_beams=1,
                  repetition_penalty=1.0, no_repeat_ngram_size=0, pad_token_id=_pad_id(tokenizer),
                  eos_token_id=eos, use_cache=True)
    if sample:
        return GenerationConfig(do_sample=True, temperature=TEMPERATURE, top_p=TOP_P, top_k=0,
                                **common)
    return GenerationConfig(do_sample=False, **common)


def generate_hf(model, tokenizer, texts: list[str], batch_size: int = 16, sample: bool = True,
                seed: int | None = None, device=None, progress: bool = False) -> list[str]:
    """Continuations (``MAX_NEW_TOKENS`` new tokens, decoded) of each text, batched with left
    padding. ``seed`` seeds torch's generator once before the first batch."""
    device = _device_of(model, device)
    config = _generation_config(model, tokenizer, sample)
    ids_list = [_encode(tokenizer, t) for t in texts]
    if seed is not None:
        torch.manual_seed(seed)
    results: list = [None] * len(texts)
    bar = _progress(len(texts), "generate" if sample else "greedy", progress)
    for batch in _batches_by_length([len(x) for x in ids_list], batch_size):
        ids, mask = _left_pad([ids_list[i] for i in batch], config.pad_token_id, device)
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        new = out[:, ids.shape[1]:].tolist()
        for i, tokens in zip(batch, new):
            results[i] = tokenizer.decode(tokens, skip_special_tokens=True)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return results


class VLLMGenerator:
    """Generation through vLLM (optional). The in-memory model and tokenizer are saved to a
    temporary folder and loaded by vLLM from there, so any perturbation is included."""

    def __init__(self, model, tokenizer, dtype: str = "auto"):
        try:
            import vllm
        except ImportError:
            raise UserError("--backend vllm needs the vllm package (pip install "
                            "'tomsparse[vllm]'); use --backend hf") from None
        import tempfile
        self._vllm = vllm
        self._dir = tempfile.TemporaryDirectory(prefix="tomsparse-vllm-")
        try:
            model.save_pretrained(self._dir.name)
            tokenizer.save_pretrained(self._dir.name)
        except Exception as exc:  # noqa: BLE001 - any save failure means vLLM cannot load it
            raise UserError(f"cannot hand the model to vLLM: saving it failed ({exc})") from None
        self.llm = vllm.LLM(model=self._dir.name, tokenizer=self._dir.name, dtype=dtype,
                            enforce_eager=True, gpu_memory_utilization=0.5)
        self.tokenizer = tokenizer

    def generate(self, texts: list[str], sample: bool, seed: int | None) -> list[str]:
        base = 0 if seed is None else seed * 1_000_003
        params = [self._vllm.SamplingParams(
            max_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE if sample else 0.0,
            top_p=TOP_P if sample else 1.0, seed=base + i) for i in range(len(texts))]
        # Token ids, so vLLM sees exactly the tokens the HF backend would.
        inputs = [{"prompt_token_ids": _encode(self.tokenizer, t)} for t in texts]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        return [o.outputs[0].text for o in outputs]


def vllm_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("vllm") is not None


# ---------------------------------------------------------------- evaluation

@dataclass
class EvalResult:
    table: pd.DataFrame
    metrics: pd.DataFrame
    meta: dict = field(default_factory=dict)

    def reference_results(self) -> dict:
        """{(rep, family): DataFrame} in the reference's results.csv shape: one row per task,
        one 0/1 column per scenario (1 when both probes of the cell are right)."""
        out = {}
        table = self.table[self.table["family"].isin(REFERENCE_FAMILIES)]
        for (rep, family), rows in table.groupby(["rep", "family"], sort=True):
            cells = rows.groupby(["task_index", "scenario"])["correct"].all().unstack("scenario")
            columns = [c for c in REFERENCE_COLUMNS[family] if c in cells.columns]
            n_tasks = int(rows["task_index"].max()) + 1
            frame = cells.reindex(index=range(n_tasks), columns=columns).fillna(False)
            out[(int(rep), family)] = frame.astype(int)
        return out

    def write(self, out_dir: str | Path, prompt_text: bool = False) -> dict:
        """Write ``tom_prompts.csv`` (one row per prompt), ``tom_metrics.csv``, the reference
        layout ``tom/<rep>/<m>/<family>/results.csv`` and a line in ``tom_runs.jsonl``.

        The two CSVs are merged with what an earlier run wrote there: rows of the same model,
        scoring and m are replaced, others kept (so a sweep over m can share one folder). The
        prompt texts are left out of the CSV unless ``prompt_text`` (a sweep would repeat
        them for every m and rep; ``tomsparse tasks show`` renders them). Returns the written
        paths by kind.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"prompts": out / "tom_prompts.csv", "metrics": out / "tom_metrics.csv"}
        table = self.table if prompt_text else self.table.drop(columns=["prompt"], errors="ignore")
        for kind, frame in (("prompts", table), ("metrics", self.metrics)):
            _merge_csv(paths[kind], frame)
        m_tag = str(float(self.meta.get("m", 0.0)))
        paths["reference"] = []
        for (rep, family), frame in self.reference_results().items():
            path = out / "tom" / str(rep) / m_tag / family / "results.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(path, index=True)
            paths["reference"].append(path)
        paths["runs"] = out / "tom_runs.jsonl"
        with open(paths["runs"], "a", encoding="utf-8") as fh:
            fh.write(json.dumps(self.meta, default=str) + "\n")
        return paths


def _merge_csv(path: Path, frame: pd.DataFrame) -> None:
    keys = ["model", "scoring", "m"]
    if path.exists():
        old = pd.read_csv(path, keep_default_na=False, na_values=[""])
        if all(k in old.columns for k in keys) and len(frame):
            mine = set(map(tuple, frame[keys].astype(str).drop_duplicates().values.tolist()))
            same = old[keys].astype(str).apply(tuple, axis=1).isin(mine)
            frame = pd.concat([old[~same], frame], ignore_index=True)
    tmp = path.with_suffix(".tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def evaluate(model, tokenizer, taskset: TaskSet, scoring: str = "likelihood", reps: int = 1,
             seed: int = 0, batch_size: int = 16, m: float = 0.0, model_name: str = "",
             device=None, backend: str = "hf", answer_span: str = "word", n_boot: int = 1000,
             progress: bool = False) -> EvalResult:
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
    if reps < 1 or batch_size < 1:
        raise UserError(f"--reps and --batch-size must be at least 1 (got {reps}, {batch_size})")
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
                sample = scoring == "generate"
                generator = VLLMGenerator(model, tokenizer) if use_vllm else None
                texts = [p.text for p in prompts]
                for rep in range(1, reps + 1):
                    rep_seed = seed + rep - 1 if sample else None
                    seeds.append(rep_seed)
                    if generator is not None:
                        outputs = generator.generate(texts, sample, rep_seed)
                    else:
                        outputs = generate_hf(model, tokenizer, texts, batch_size, sample,
                                              rep_seed, device, progress)
                    for p, text in zip(prompts, outputs):
                        word = first_word(text)
                        rows.append(_row(p, rep=rep, seed=rep_seed, generated=text,
                                         answer_word=word, correct=word == p.expected_word))
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
    meta = dict(model=model_name, tasks=taskset.name, scoring=scoring, m=float(m), reps=reps,
                seeds=seeds, batch_size=batch_size, answer_span=answer_span,
                backend="vllm" if use_vllm else "hf", prompts=len(prompts),
                seconds=round(elapsed, 3), boundary_fallbacks=fallbacks,
                protocol=_protocol(scoring, answer_span),
                families={f: taskset.count(f) for f in taskset.families()})
    return EvalResult(table=table, metrics=metrics, meta=meta)


def _protocol(scoring: str, answer_span: str) -> str:
    if scoring == "likelihood":
        return (f"log P(' ' + answer {'first word' if answer_span == 'word' else 'text'} | "
                f"prompt), expected vs alternative; correct when expected is more likely")
    if scoring == "generate":
        return (f"sample {MAX_NEW_TOKENS} new tokens (temperature {TEMPERATURE}, top-p {TOP_P}, "
                f"no top-k); first word, punctuation removed, exact match")
    return f"greedy {MAX_NEW_TOKENS} new tokens; first word, punctuation removed, exact match"


def _row(p: Prompt, rep: int, seed, correct: bool, **values) -> dict:
    return dict(rep=rep, seed=seed, family=p.family, task_id=p.task_id, task_index=p.task_index,
                condition=p.condition, reversed=p.reversed, scenario=p.scenario, probe=p.probe,
                cell=p.cell_id, expected=p.expected, alternative=p.alternative,
                expected_word=p.expected_word, correct=bool(correct), prompt=p.text, **values)


# ---------------------------------------------------------------- metrics

def _grid(frame: pd.DataFrame, value: pd.Series, tasks, reps) -> tuple[np.ndarray, np.ndarray]:
    """Per (task, rep) sums and counts of ``value`` as [tasks x reps] arrays."""
    keyed = pd.DataFrame({"t": frame["task_index"].values, "r": frame["rep"].values,
                          "v": value.values.astype(float)})
    sums = keyed.pivot_table(index="t", columns="r", values="v", aggfunc="sum")
    counts = keyed.pivot_table(index="t", columns="r", values="v", aggfunc="count")
    sums = sums.reindex(index=tasks, columns=reps).fillna(0.0).to_numpy()
    counts = counts.reindex(index=tasks, columns=reps).fillna(0.0).to_numpy()
    return sums, counts


def _bootstrap(sums: np.ndarray, counts: np.ndarray, rng: np.random.Generator, n_boot: int
               ) -> tuple[float, float]:
    """95% percentile interval of sum/count, resampling tasks and reps with replacement."""
    n_tasks, n_reps = sums.shape
    if n_boot <= 0 or n_tasks == 0:
        return math.nan, math.nan
    ti = rng.integers(n_tasks, size=(n_boot, n_tasks))
    ri = rng.integers(n_reps, size=(n_boot, n_reps))
    s = sums[ti[:, :, None], ri[:, None, :]].sum(axis=(1, 2))
    c = counts[ti[:, :, None], ri[:, None, :]].sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = s / c
    low, high = np.nanpercentile(stats, [2.5, 97.5])
    return float(low), float(high)


def _group_metrics(rows: pd.DataFrame, rng: np.random.Generator, n_boot: int) -> dict:
    tasks = sorted(rows["task_index"].unique())
    reps = sorted(rows["rep"].unique())
    correct = rows["correct"].astype(bool)
    out = {"n_tasks": len(tasks), "reps": len(reps), "n_prompts": int(len(rows) / len(reps))}

    # Prompts.
    sums, counts = _grid(rows, correct, tasks, reps)
    out["prompt_accuracy"] = float(correct.mean())
    out["prompt_ci_low"], out["prompt_ci_high"] = _bootstrap(sums, counts, rng, n_boot)

    # Cells: a (task, scenario) is right only if all its probes are (ToMi: every question is
    # a cell of its own).
    cell_key = "cell" if "cell" in rows else "scenario"
    cells = rows.groupby(["task_index", "rep", cell_key], sort=False)["correct"].agg(
        ["all", "size"]).reset_index()
    sums, counts = _grid(cells, cells["all"], tasks, reps)
    out["n_cells"] = int(len(cells) / len(reps))
    out["scenario_accuracy"] = float(cells["all"].mean())
    out["scenario_ci_low"], out["scenario_ci_high"] = _bootstrap(sums, counts, rng, n_boot)
    per_rep = 100.0 * cells.groupby("rep")["all"].mean()
    out["reference_percent"] = float(per_rep.mean())
    out["reference_percent_var"] = float(per_rep.var(ddof=1)) if len(per_rep) > 1 else 0.0

    # Strict: a task counts only if every cell of the group is right.
    strict = cells.groupby(["task_index", "rep"])["all"].all().reset_index()
    sums, counts = _grid(strict, strict["all"], tasks, reps)
    out["strict_score"] = float(strict["all"].mean())
    out["strict_ci_low"], out["strict_ci_high"] = _bootstrap(sums, counts, rng, n_boot)

    # Chance under a random pick between the two candidates of every prompt.
    first_rep = cells[cells["rep"] == reps[0]]
    out["chance_prompt"] = 0.5
    out["chance_scenario"] = float((0.5 ** first_rep["size"]).mean())
    per_task = first_rep.groupby("task_index")["size"].sum()
    out["chance_strict"] = float((0.5 ** per_task).mean())

    margin = pd.to_numeric(rows.get("margin"), errors="coerce") if "margin" in rows else None
    if margin is not None and margin.notna().all():
        sums, counts = _grid(rows, margin, tasks, reps)
        out["mean_margin"] = float(margin.mean())
        out["margin_ci_low"], out["margin_ci_high"] = _bootstrap(sums, counts, rng, n_boot)
    else:
        out["mean_margin"] = out["margin_ci_low"] = out["margin_ci_high"] = math.nan
    return out


METRIC_COLUMNS = ["model", "scoring", "m", "family", "level", "condition", "scenario",
                  "n_tasks", "reps", "n_prompts", "n_cells", "prompt_accuracy", "prompt_ci_low",
                  "prompt_ci_high", "scenario_accuracy", "scenario_ci_low", "scenario_ci_high",
                  "reference_percent", "reference_percent_var", "strict_score", "strict_ci_low",
                  "strict_ci_high", "chance_prompt", "chance_scenario", "chance_strict",
                  "mean_margin", "margin_ci_low", "margin_ci_high"]


def compute_metrics(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Metrics per family (level "family"), condition and scenario, per model / scoring / m.

    Also one row ``family="unexpected+transfer"`` holding the reference's
    ``avg_percent_unexpected_transfer`` (mean over reps of the two families' percentages).
    """
    rng = np.random.default_rng(seed)
    records = []
    for (model, scoring, m), run in table.groupby(["model", "scoring", "m"], sort=False):
        base = {"model": model, "scoring": scoring, "m": m}
        for family in [f for f in ("unexpected", "transfer", "irony", "tomi")
                       if f in set(run["family"])]:
            rows = run[run["family"] == family]
            records.append({**base, "family": family, "level": "family", "condition": "all",
                            "scenario": "all", **_group_metrics(rows, rng, n_boot)})
            for condition in dict.fromkeys(rows["condition"]):
                sub = rows[rows["condition"] == condition]
                records.append({**base, "family": family, "level": "condition",
                                "condition": condition, "scenario": "all",
                                **_group_metrics(sub, rng, n_boot)})
            for scenario in dict.fromkeys(rows["scenario"]):
                sub = rows[rows["scenario"] == scenario]
                records.append({**base, "family": family, "level": "scenario",
                                "condition": sub["condition"].iloc[0], "scenario": scenario,
                                **_group_metrics(sub, rng, n_boot)})
        both = run[run["family"].isin(["unexpected", "transfer"])]
        if set(both["family"]) == {"unexpected", "transfer"}:
            cells = both.groupby(["family", "task_index", "rep", "scenario"])["correct"].all()
            per_rep = 100.0 * cells.groupby(["rep", "family"]).mean().unstack("family")
            avg = per_rep.mean(axis=1)
            records.append({**base, "family": "unexpected+transfer", "level": "family",
                            "condition": "all", "scenario": "all",
                            "reps": len(avg), "reference_percent": float(avg.mean()),
                            "reference_percent_var": float(avg.var(ddof=1)) if len(avg) > 1
                            else 0.0})
    counts = {c: "Int64" for c in ("n_tasks", "reps", "n_prompts", "n_cells")}
    return pd.DataFrame.from_records(records).reindex(columns=METRIC_COLUMNS).astype(counts)


def format_metrics(metrics: pd.DataFrame, levels=("family", "condition")) -> str:
    """A compact text table of the metrics for the terminal."""
    rows = metrics[metrics["level"].isin(levels)]
    cols = ["family", "condition", "n_tasks", "reps", "prompt_accuracy", "scenario_accuracy",
            "reference_percent", "strict_score", "chance_scenario", "mean_margin"]
    shown = rows[cols].copy()
    ci = rows.apply(lambda r: f"[{r.scenario_ci_low:.2f}, {r.scenario_ci_high:.2f}]"
                    if pd.notna(r.scenario_ci_low) else "", axis=1)
    shown.insert(shown.columns.get_loc("scenario_accuracy") + 1, "scenario_95ci", ci)
    if shown["mean_margin"].isna().all():
        shown = shown.drop(columns=["mean_margin"])
    return shown.to_string(index=False, float_format=lambda v: f"{v:.3f}")


# ---------------------------------------------------------------- CLI

def cmd_eval(args) -> int:
    """``tomsparse eval --model M --tasks SPEC --scoring S --reps N --seed S --batch-size B
    --out DIR --device D --dtype T [--limit N] [--backend hf|vllm|auto]
    [--answer-span word|full]``."""
    from .models import load_model
    from .tasks import load_tasks

    scoring = getattr(args, "scoring", None) or "likelihood"
    reps = getattr(args, "reps", None)
    if reps is None:
        reps = DEFAULT_REPS if scoring == "generate" else 1
    taskset = load_tasks(getattr(args, "tasks", None) or "builtin")
    taskset = taskset.head(getattr(args, "limit", None))
    options = dict(device=getattr(args, "device", None) or "auto",
                   dtype=getattr(args, "dtype", None) or "float32")
    if getattr(args, "device_map", None):
        options["device_map"] = args.device_map
    lm = load_model(args.model, **options)
    print(f"evaluating {lm.name} on {taskset.summary()} ({len(taskset.prompts())} prompts), "
          f"scoring={scoring}, reps={reps if scoring == 'generate' else 1}", file=sys.stderr)
    result = evaluate(lm.model, lm.tokenizer, taskset, scoring=scoring, reps=reps,
                      seed=getattr(args, "seed", None) or 0,
                      batch_size=getattr(args, "batch_size", None) or 16,
                      m=getattr(args, "m", None) or 0.0, model_name=lm.name,
                      backend=getattr(args, "backend", None) or "hf",
                      answer_span=getattr(args, "answer_span", None) or "word", progress=True)
    result.meta["fingerprint"] = getattr(lm, "fingerprint", None)
    print(format_metrics(result.metrics))
    out = getattr(args, "out", None)
    if out:
        paths = result.write(out)
        print(f"wrote {paths['prompts']}, {paths['metrics']} and "
              f"{len(paths['reference'])} reference results.csv under {Path(out) / 'tom'}",
              file=sys.stderr)
    return 0
