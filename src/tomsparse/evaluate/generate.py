"""Generation backends for the ``generate`` and ``greedy`` scorings: Hugging Face ``generate``
(batched by length, left padding, seeded) and vLLM when installed (the in-memory weights saved
to a temporary folder first). Every setting that shapes the distribution is set explicitly to
the reference protocol's (temperature 0.6, top-p 0.9, no top-k, 5 new tokens)."""

from __future__ import annotations

import torch

from tomsparse.errors import UserError
from tomsparse.lm.batching import (
    batches_by_length,
    encode,
    input_device,
    left_pad,
    pad_token_id,
    progress_bar,
)

# The reference protocol's sampling settings.
TEMPERATURE = 0.6


TOP_P = 0.9


MAX_NEW_TOKENS = 5


def _generation_config(model, tokenizer, sample: bool):
    from transformers import GenerationConfig

    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(tokenizer, "eos_token_id", None)
    # Everything that shapes the distribution is set explicitly, so values from the model's
    # own generation_config (top_k=50, repetition penalties ...) cannot leak in.
    common = dict(max_new_tokens=MAX_NEW_TOKENS, min_new_tokens=0, num_beams=1,
                  repetition_penalty=1.0, no_repeat_ngram_size=0, pad_token_id=pad_token_id(tokenizer),
                  eos_token_id=eos, use_cache=True)
    if sample:
        return GenerationConfig(do_sample=True, temperature=TEMPERATURE, top_p=TOP_P, top_k=0,
                                **common)
    return GenerationConfig(do_sample=False, **common)


def generate_hf(model, tokenizer, texts: list[str], batch_size: int = 16, sample: bool = True,
                seed: int | None = None, device=None, progress: bool = False) -> list[str]:
    """Continuations (``MAX_NEW_TOKENS`` new tokens, decoded) of each text, batched with left
    padding. ``seed`` seeds torch's generator once before the first batch."""
    device = input_device(model, device)
    config = _generation_config(model, tokenizer, sample)
    ids_list = [encode(tokenizer, t) for t in texts]
    if seed is not None:
        torch.manual_seed(seed)
    results: list = [None] * len(texts)
    bar = progress_bar(len(texts), "generate" if sample else "greedy", "prompt", progress)
    for batch in batches_by_length([len(x) for x in ids_list], batch_size):
        ids, mask = left_pad([ids_list[i] for i in batch], config.pad_token_id, device)
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        new = out[:, ids.shape[1]:].tolist()
        for i, tokens in zip(batch, new):
            results[i] = tokenizer.decode(tokens, skip_special_tokens=True)
        bar.update(len(batch))
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
        inputs = [{"prompt_token_ids": encode(self.tokenizer, t)} for t in texts]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        return [o.outputs[0].text for o in outputs]


def vllm_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("vllm") is not None
