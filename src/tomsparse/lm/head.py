"""A causal LM split at its output layer, where that is exact: the body gives the final hidden
states and the logits are ``F.linear(hidden, weight, bias)``. Losses can then form logits a
chunk of positions at a time (scores, perplexity) instead of the full (batch, width, vocab)
tensor."""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tomsparse.lm.batching import input_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputHead:
    """A causal LM split at its output layer: ``body`` maps ids to the final hidden states and
    the logits are exactly ``F.linear(hidden, weight, bias)``."""

    body: torch.nn.Module
    weight: torch.Tensor
    bias: torch.Tensor | None


# Per model: whether its logits are its output layer's (structure does not change with weights).
_PLAIN_HEAD: "weakref.WeakKeyDictionary[torch.nn.Module, bool]" = weakref.WeakKeyDictionary()


def output_head(model) -> OutputHead | None:
    """The model's body and output layer when its logits are the output layer applied to the
    body's last hidden state and nothing else, or None (then the loss takes the model's own
    logits). Checked once per model on a short probe, because some families transform the
    logits after the output layer (soft-capping, scaling), which only a comparison reveals."""
    body = getattr(model, "base_model", None)
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if (body is None or body is model or not isinstance(out, torch.nn.Linear)
            or out.weight.device.type == "meta"):
        return None
    head = OutputHead(body, out.weight, out.bias)
    if model not in _PLAIN_HEAD:
        _PLAIN_HEAD[model] = _head_gives_thefirst_output(model, head)
    return head if _PLAIN_HEAD[model] else None


def _head_gives_thefirst_output(model, head: OutputHead) -> bool:
    ids = (torch.arange(8) * 7 + 3).remainder(head.weight.shape[0])[None]  # any valid ids
    ids = ids.to(input_device(model))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            expected = first_output(model(input_ids=ids, use_cache=False))
            hidden = first_output(head.body(input_ids=ids, use_cache=False))
            got = F.linear(hidden.to(head.weight.device), head.weight, head.bias)
        return got.shape == expected.shape and torch.allclose(
            got.float(), expected.to(got.device).float(), rtol=1e-4, atol=1e-5)
    except (TypeError, ValueError, RuntimeError) as exc:
        log.debug("scoring through the model's own logits: %s", exc)
        return False
    finally:
        model.train(was_training)


def first_output(out) -> torch.Tensor:
    """A model output's logits or a body output's last hidden state: the first field."""
    return out[0] if not isinstance(out, torch.Tensor) else out




# Rows of fp32 logits formed at a time: a few tens of MB whatever the batch and vocabulary,
# instead of the (batch, width, vocab) logits and their fp32 copy.
LOGIT_CHUNK_BYTES = 32 * 2 ** 20


def token_losses(head: OutputHead, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (fp32) of each row of ``hidden`` (rows x width) against ``targets`` (rows),
    the output layer applied ``LOGIT_CHUNK_BYTES`` of logits at a time (no gradient)."""
    device = head.weight.device
    hidden, targets = hidden.to(device), targets.to(device)
    losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=device)
    step = max(1, LOGIT_CHUNK_BYTES // (4 * head.weight.shape[0]))
    for start in range(0, hidden.shape[0], step):
        end = start + step
        logits = F.linear(hidden[start:end], head.weight, head.bias).float()
        losses[start:end] = F.cross_entropy(logits, targets[start:end], reduction="none")
    return losses
