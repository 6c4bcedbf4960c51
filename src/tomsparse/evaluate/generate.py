"""Generation backends for the ``generate`` and ``greedy`` scorings: our own decoding loop on
the Hugging Face model (batched by length, left padding, the reps sharing one prefill, one
seeded generator per rep) and vLLM when installed (the in-memory weights saved to a temporary
folder first). The distribution is the reference protocol's (temperature 0.6, top-p 0.9, no
top-k, no repetition penalty, 5 new tokens), whatever the model's own generation_config says."""

from __future__ import annotations

import torch

from tomsparse.errors import UserError
from tomsparse.lm.batching import (
    batches_by_length,
    cache_keyword,
    encode,
    input_device,
    left_pad,
    output_cache,
    pad_token_id,
    progress_bar,
)

# The reference protocol's sampling settings.
TEMPERATURE = 0.6


TOP_P = 0.9


MAX_NEW_TOKENS = 5


def generate_hf(model, tokenizer, texts: list[str], batch_size: int = 16, sample: bool = True,
                seed: int | None = None, device=None, progress: bool = False) -> list[str]:
    """Continuations (``MAX_NEW_TOKENS`` new tokens, decoded) of each text: one rep of
    ``generate_reps``."""
    return generate_reps(model, tokenizer, texts, [seed], batch_size, sample, device,
                         progress)[0]


def sampling_filter(logits: torch.Tensor) -> torch.Tensor:
    """The reference protocol's sampling distribution as logits: divided by the temperature,
    then nucleus (top-p) filtered: the least likely tokens whose probabilities add up to at
    most 1 - TOP_P are set to -inf (the most likely token always stays), as Hugging Face's
    TopPLogitsWarper does."""
    scaled = logits.float() / TEMPERATURE
    ordered, order = scaled.sort(dim=-1)  # ascending
    tail = ordered.softmax(-1).cumsum(-1) <= 1 - TOP_P
    tail[..., -1] = False
    return scaled.masked_fill(tail.scatter(-1, order, tail), float("-inf"))


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(tokenizer, "eos_token_id", None)
    return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}


def generate_reps(model, tokenizer, texts: list[str], seeds: list[int | None],
                  batch_size: int = 16, sample: bool = True, device=None,
                  progress: bool = False) -> list[list[str]]:
    """``MAX_NEW_TOKENS`` new tokens after each text, decoded, once per seed (one rep each):
    ``[rep][text]``. Sampled at the reference protocol's settings (``sampling_filter``), or
    greedy when not ``sample``.

    The reps share the prompts' prefill: each batch of ``batch_size`` prompts (grouped by
    length, left-padded) is run once, its KV cache is repeated for every rep, and only the new
    tokens run per rep. Rep r draws with its own generator seeded with ``seeds[r]``, so its
    words depend on its seed and the batching, not on how many reps run beside it. Tokens
    after an end-of-sequence token are dropped, as ``generate`` drops them."""
    device = input_device(model, device)
    pad = pad_token_id(tokenizer)
    eos = _eos_ids(model, tokenizer)
    ids_list = [encode(tokenizer, t) for t in texts]
    reps = len(seeds)
    generators = [torch.Generator(device=device).manual_seed(s) if sample and s is not None
                  else None for s in seeds]
    keep_last = _keeps_last_logits(model)
    results: list = [[None] * len(texts) for _ in range(reps)]
    bar = progress_bar(len(texts), "generate" if sample else "greedy", "prompt", progress)
    for batch in batches_by_length([len(x) for x in ids_list], batch_size):
        ids, mask = left_pad([ids_list[i] for i in batch], pad, device)
        out = model(input_ids=ids, attention_mask=mask, use_cache=True,
                    position_ids=(mask.cumsum(-1) - 1).clamp(min=0), **keep_last)
        # rows rep-major: row r * len(batch) + b is prompt b of rep r
        index = torch.arange(len(batch), device=device).repeat(reps)
        cache = output_cache(out)
        cache.reorder_cache(index)
        logits, mask = out.logits[index, -1], mask[index]
        position = mask.sum(-1, keepdim=True)
        steps = []
        for step in range(MAX_NEW_TOKENS):
            steps.append(next_tokens(logits, generators, len(batch)))
            if step + 1 == MAX_NEW_TOKENS:
                break
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
            out = model(input_ids=steps[-1][:, None], attention_mask=mask,
                        position_ids=position + step, use_cache=True,
                        **{cache_keyword(model): cache}, **keep_last)
            cache, logits = output_cache(out), out.logits[:, -1]
        new = torch.stack(steps, 1).tolist()
        for row, tokens in enumerate(new):
            cut = next((j for j, t in enumerate(tokens) if t in eos), len(tokens))
            rep, b = divmod(row, len(batch))
            results[rep][batch[b]] = tokenizer.decode(tokens[:cut], skip_special_tokens=True)
        bar.update(len(batch))
    bar.close()
    return results


def next_tokens(logits: torch.Tensor, generators: list, per_rep: int) -> torch.Tensor:
    """One token per row: greedy, or sampled, each rep's rows with that rep's generator."""
    if generators[0] is None:
        return logits.argmax(-1)
    probs = sampling_filter(logits).softmax(-1)
    return torch.cat([torch.multinomial(probs[r * per_rep:(r + 1) * per_rep], 1, generator=g)
                      for r, g in enumerate(generators)])[:, 0]


def _keeps_last_logits(model) -> dict:
    """Only the last position's logits where the model can (no (batch, length, vocab) tensor
    at the prefill)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


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
        inputs = [{"prompt_token_ids": encode(self.tokenizer, t)} for t in texts]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        return [o.outputs[0].text for o in outputs]


def vllm_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("vllm") is not None
