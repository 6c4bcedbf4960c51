"""Generation backends for the ``generate`` and ``greedy`` scorings: our own decoding loop on
the Hugging Face model (batched by length, left padding, the reps sharing one prefill, one
seeded generator per rep) and vLLM when installed (one engine per model, built from the
in-memory weights saved to a temporary folder and kept in step with them: ``VLLMGenerator``).
The distribution is the reference protocol's (temperature 0.6, top-p 0.9, no top-k, no
repetition penalty, 5 new tokens), whatever the model's own generation_config says."""

from __future__ import annotations

from pathlib import Path

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
    takes_logits_to_keep,
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
    keep_last = {"logits_to_keep": 1} if takes_logits_to_keep(model) else {}
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
            rep, b = divmod(row, len(batch))
            results[rep][batch[b]] = decode_continuation(tokenizer, tokens, eos)
        bar.update(len(batch))
    bar.close()
    return results


def decode_continuation(tokenizer, tokens: list[int], eos: set[int]) -> str:
    """The new tokens as text, cut before the first end-of-sequence token (both backends
    decode through this, so their words can be compared token for token)."""
    cut = next((j for j, t in enumerate(tokens) if t in eos), len(tokens))
    return tokenizer.decode(tokens[:cut], skip_special_tokens=True)


def next_tokens(logits: torch.Tensor, generators: list, per_rep: int) -> torch.Tensor:
    """One token per row: greedy, or sampled, each rep's rows with that rep's generator."""
    if generators[0] is None:
        return logits.argmax(-1)
    probs = sampling_filter(logits).softmax(-1)
    return torch.cat([torch.multinomial(probs[r * per_rep:(r + 1) * per_rep], 1, generator=g)
                      for r, g in enumerate(generators)])[:, 0]


class VLLMGenerator:
    """Generation through vLLM (optional), on an engine that mirrors the in-memory HF model.

    The engine is built once, from the model and tokenizer saved to a temporary folder. vLLM
    then holds its own copy of the weights (on the CPU it even repacks each linear layer's
    weight for its GEMM kernel and drops the original), so a later in-place change of the HF
    model, a sweep point's perturbation or its restore, would not reach it by itself: before
    every ``generate`` the decoder blocks whose parameters changed since the engine last saw
    them are sent to its workers through vLLM's in-place reload (``Worker.reload_weights``,
    which reruns each reloaded layer's weight processing; the tensors go through a
    safetensors file in the engine's folder, read by ``vllm_worker.WeightPush`` in each
    worker), and the prefix cache is dropped,
    since its KV blocks were computed with the old weights. A block is sent whole because vLLM
    fuses several HF matrices into one layer (q, k and v into ``qkv_proj``, gate and up into
    ``gate_up_proj``) and reloads a layer only from all of its parts.

    A change is seen through each parameter's version counter (bumped by every in-place write
    through the parameter or a view of it, which is how ``tomsparse.perturb`` writes) and its
    data pointer. A write through ``param.data`` bypasses the counter: call
    ``sync_weights(force=True)`` after one.
    """

    def __init__(self, model, tokenizer, dtype: str | None = None):
        try:
            import vllm
        except ImportError:
            raise UserError("--backend vllm needs the vllm package (pip install "
                            "'tomsparse[vllm]'); use --backend hf") from None
        import tempfile
        self._vllm = vllm
        self.model = model
        self.tokenizer = tokenizer
        self._eos = _eos_ids(model, tokenizer)
        # The HF model's own dtype unless asked otherwise, so greedy words agree with it.
        dtype = dtype or str(next(model.parameters()).dtype).removeprefix("torch.")
        # Kept while the engine lives: vLLM may read the folder's configs again later.
        self._dir = tempfile.TemporaryDirectory(prefix="tomsparse-vllm-")
        try:
            model.save_pretrained(self._dir.name)
            tokenizer.save_pretrained(self._dir.name)
        except Exception as exc:  # noqa: BLE001 - any save failure means vLLM cannot load it
            raise UserError(f"cannot hand the model to vLLM: saving it failed ({exc})") from None
        self._synced = parameter_states(model)
        self.llm = vllm.LLM(model=self._dir.name, tokenizer=self._dir.name, dtype=dtype,
                            enforce_eager=True, gpu_memory_utilization=0.5,
                            worker_extension_cls="tomsparse.evaluate.vllm_worker.WeightPush")
        self.tensors_sent = 0  # parameters pushed to the engine since it was built

    def sync_weights(self, force: bool = False) -> int:
        """Send the engine every decoder block holding a parameter changed since the last
        sync (all of them when ``force``); returns how many parameters were sent."""
        states = parameter_states(self.model)
        changed = {block_of(n) for n, state in states.items()
                   if force or self._synced.get(n) != state}
        if not changed:
            return 0
        from safetensors.torch import save_file

        named = {n: p.detach().to("cpu").contiguous()
                 for n, p in self.model.named_parameters() if block_of(n) in changed}
        # through a file: vLLM's RPC would turn tensor arguments into lists (vllm_worker)
        path = Path(self._dir.name) / "tomsparse-push.safetensors"
        save_file(named, str(path))
        try:
            self.llm.collective_rpc("tomsparse_reload", args=(str(path),))
        finally:
            path.unlink(missing_ok=True)
        self.llm.reset_prefix_cache()
        self._synced = states
        self.tensors_sent += len(named)
        return len(named)

    def generate(self, texts: list[str], sample: bool, seed: int | None) -> list[str]:
        """One rep: ``MAX_NEW_TOKENS`` new tokens after each text, decoded as the HF backend
        decodes them. Sampled at the reference protocol's settings, request i seeded with
        ``seed * 1_000_003 + i`` (vLLM draws per request, so a request's words depend on its
        seed only, not on what runs beside it), or greedy when not ``sample``."""
        self.sync_weights()
        base = 0 if seed is None else seed * 1_000_003
        params = [self._vllm.SamplingParams(
            max_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE if sample else 0.0,
            top_p=TOP_P if sample else 1.0, top_k=0, seed=base + i if sample else None,
            detokenize=False) for i in range(len(texts))]
        # Token ids, so vLLM sees exactly the tokens the HF backend would.
        inputs = [{"prompt_token_ids": encode(self.tokenizer, t)} for t in texts]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        return [decode_continuation(self.tokenizer, list(o.outputs[0].token_ids), self._eos)
                for o in outputs]

    def close(self) -> None:
        """Stop the engine's processes now (they stop at exit otherwise)."""
        engine = getattr(getattr(self, "llm", None), "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None:
            core.shutdown()
        self._dir.cleanup()


def parameter_states(model) -> dict[str, tuple[int, int]]:
    """(data pointer, version counter) of each parameter: what changes when it is written."""
    return {n: (p.data_ptr(), p._version) for n, p in model.named_parameters()}


def block_of(name: str) -> str:
    """The decoder block a parameter belongs to (``model.layers.3`` for
    ``model.layers.3.mlp.up_proj.weight``): its name up to the first numeric part, or the
    whole name outside the numbered blocks (embeddings, final norm)."""
    parts = name.split(".")
    numbered = next((i for i, part in enumerate(parts) if part.isdigit()), None)
    return name if numbered is None else ".".join(parts[:numbered + 1])


_SHARED: list[VLLMGenerator] = []  # the one live engine: vLLM engines are too big to keep two


def vllm_generator(model, tokenizer) -> VLLMGenerator:
    """The ``VLLMGenerator`` for ``model``: built on first use (an engine takes minutes to
    start) and reused by every later evaluation of the same model object, such as a sweep's
    points, its weights synced before each generate. A different model replaces it."""
    if _SHARED and _SHARED[0].model is model and _SHARED[0].tokenizer is tokenizer:
        return _SHARED[0]
    while _SHARED:
        _SHARED.pop().close()
    _SHARED.append(VLLMGenerator(model, tokenizer))
    return _SHARED[0]


def close_vllm_generator() -> None:
    """Stop the engine ``vllm_generator`` keeps, if any."""
    while _SHARED:
        _SHARED.pop().close()


def vllm_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("vllm") is not None
