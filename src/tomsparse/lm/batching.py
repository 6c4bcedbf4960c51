"""Helpers every stage that feeds a model batches shares: where the inputs go, the padding
id, left padding, length-sorted batches, the model's context length and progress bars."""

from __future__ import annotations

import functools
import sys

import torch


def input_device(model, device=None) -> torch.device:
    """Where a model's inputs go: ``device`` when given, else the input embeddings' device
    (with ``device_map`` spreading a model, that is the first module's), else the first
    parameter's."""
    if device is not None:
        return torch.device(device)
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None:
        return emb.weight.device
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def pad_token_id(tokenizer) -> int:
    """The id put in padded positions. Padded positions are masked out of attention, of every
    loss and of every per-sample gradient, so the id only has to be a valid token."""
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, attr, None) if tokenizer is not None else None
        if value is not None:
            return int(value)
    return 0


def left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) with every sequence right-aligned, so the last position of each
    row is its last real token (what generation and next-token scoring read)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def batches_by_length(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), to waste little
    compute on padding; callers put results back in the original order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def context_length(model) -> int | None:
    """The longest sequence the model's positions allow (a multimodal config's text part is
    read where it has one), or None when the config does not say."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True):
    """A tqdm bar on stderr, or an object with the same ``update``/``close`` doing nothing."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)


def encode(tokenizer, text: str, add_special_tokens: bool = True) -> list[int]:
    """Token ids of ``text`` as plain ints (``add_special_tokens`` as the tokenizer defines
    it: a BOS for Llama tokenizers, nothing for GPT-2's)."""
    out = tokenizer(text, add_special_tokens=add_special_tokens)
    ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
    return [int(t) for t in ids]


@functools.lru_cache(maxsize=None)
def class_takes_logits_to_keep(model_class: type) -> bool:
    """Whether ``model_class.forward`` takes ``logits_to_keep`` (an int: the last n positions;
    a 1-D tensor: those positions), so logits can be computed only where they are read.
    Looked up once per class, not on every forward pass."""
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(model_class.forward).parameters
    except (TypeError, ValueError):
        return False


def takes_logits_to_keep(model) -> bool:
    return class_takes_logits_to_keep(type(model))


# transformers renamed the KV cache between 5.17 and 5.24: the forward keyword and the output
# field ``past_key_values`` became ``cache``. Both spellings are supported (pyproject admits
# transformers >= 5.0; tests/compat runs the evaluation on the oldest).
def cache_keyword(model) -> str:
    """The keyword ``model.forward`` takes its KV cache under."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(output):
    """The KV cache a forward pass with ``use_cache=True`` returned."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values
