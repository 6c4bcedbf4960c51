"""Per-sample losses for the sensitivity scores: mean cross-entropy over each sample's
supervised tokens, in fp32. Where a model's logits are its output layer applied to its body's
last hidden state (``output_head``), the output layer runs on the supervised positions only
and its gradient is formed chunk by chunk in the forward pass (``HeadLoss``), so no
(batch, width, vocab) logits are kept for backward; other models go through their own
logits."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from tomsparse.data.score_samples import IGNORE, ScoreSample
from tomsparse.errors import UserError
from tomsparse.lm.batching import takes_logits_to_keep
from tomsparse.lm.head import LOGIT_CHUNK_BYTES, OutputHead, first_output

# Fewest positions whose logits are computed. CPU BLAS runs products with fewer than 4 rows on
# a path that sums the vocabulary-long contraction of the output layer's backward with about 13x
# the rounding error of the blocked kernel (measured in fp32 over a 49K vocabulary), which the
# squares carry into the scores: on the default model with last-token supervision, 6e-4
# relative max error against fp64 instead of fp32's usual 2e-4, and the loop and the batched
# method 6e-4 apart instead of 1e-5. A few more rows cost little next to every position's.
log = logging.getLogger(__name__)

MIN_KEPT_POSITIONS = 8


def supervised_positions(labels: torch.Tensor) -> torch.Tensor | None:
    """Positions whose logits the losses need (position t predicts ``labels[:, t + 1]``), or
    None when at least half of them are needed (generic windows): then every position's logits
    are computed. ToM prompts supervise a few answer tokens (one with last-token supervision),
    so projecting only those positions onto the vocabulary saves most of the output layer's
    work and its (batch, width, vocab) logits. At least ``MIN_KEPT_POSITIONS`` are kept (the
    last ones make up the number; the loss ignores them)."""
    width = labels.shape[1] - 1
    supervised = (labels[:, 1:] != IGNORE).any(0)
    if 2 * int(supervised.sum()) >= width:
        return None
    short = MIN_KEPT_POSITIONS - int(supervised.sum())
    if short > 0:
        free = (~supervised).nonzero().flatten()
        supervised[free[-short:]] = True
    return supervised.nonzero().flatten()


def per_sample_losses(logits: torch.Tensor, labels: torch.Tensor,
                      positions: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over each sample's supervised tokens, computed in fp32: (B,).

    ``labels[b, t]`` is predicted from position t - 1 (-100 = not supervised). ``logits`` hold
    every position, or, with ``positions``, only those positions (in that order), which must
    include every supervised one.
    """
    if positions is not None:
        targets = labels[:, positions.to(labels.device) + 1].to(logits.device)
    else:
        targets = labels[:, 1:].to(logits.device)
    batch, width, vocab = logits.shape
    supervised = targets != IGNORE
    counts = supervised.sum(1).clamp_min(1).float()
    if (positions is None and logits.dtype == torch.float32
            and 2 * int(supervised.sum()) >= supervised.numel()):
        # Mostly supervised (generic windows): the loss over all positions of the logits as
        # they are, with no copy of a (batch, width, vocab) tensor; the last position and
        # unsupervised ones are ignored.
        padded = torch.full((batch, width), IGNORE, dtype=targets.dtype, device=logits.device)
        padded[:, :-1] = targets
        token_losses = F.cross_entropy(logits.reshape(batch * width, vocab), padded.reshape(-1),
                                       ignore_index=IGNORE, reduction="none")
        return token_losses.view(batch, width).sum(1) / counts
    # Few supervised positions (ToM prompts), or half-precision logits: upcast only the
    # supervised positions' logits.
    rows, cols = supervised.nonzero(as_tuple=True)
    picked = (logits if positions is not None else logits[:, :-1])[rows, cols]
    picked = picked.to(torch.promote_types(picked.dtype, torch.float32))
    token_losses = F.cross_entropy(picked, targets[rows, cols], reduction="none")
    sums = torch.zeros(batch, dtype=token_losses.dtype, device=logits.device)
    return sums.index_add(0, rows, token_losses) / counts


def check_finite(losses: torch.Tensor, batch: list[ScoreSample], indices: list[int]) -> None:
    """Stop at the first sample whose loss is NaN or infinite, naming it."""
    bad = (~torch.isfinite(losses.detach())).nonzero().flatten().tolist()
    if bad:
        b = bad[0]
        raise UserError(f"non-finite loss ({losses[b].item()}) on sample {indices[b]} "
                        f"({batch[b].source}); stopping. Check the model's dtype (try "
                        "--dtype float32) and the sample")


def _forward(model, ids, mask, positions: torch.Tensor | None = None):
    """Logits at every position, or at ``positions`` only: through the model's
    ``logits_to_keep`` where it has one (so the output layer runs on those positions only),
    otherwise by slicing the full logits."""
    kwargs = {}
    if positions is not None and takes_logits_to_keep(model):
        kwargs["logits_to_keep"] = positions.to(ids.device)
        positions = None
    out = model(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs)
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits if positions is None else logits[:, positions.to(logits.device)]



class HeadLoss(torch.autograd.Function):
    """Each sample's mean cross-entropy of the output layer applied to ``hidden`` rows, with the
    gradient w.r.t. those rows formed in the forward pass, chunk by chunk, so no logits are kept
    for backward. The gradient is what autograd forms through log-softmax: per row,
    (softmax - onehot) / (its sample's supervised count), cast to the weight's dtype, times the
    weight; backward only scales each row by its sample's incoming gradient (1 for a sum of
    losses, which leaves it bit for bit)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, sample_of_row, counts):
        rows, vocab = hidden.shape[0], weight.shape[0]
        scale = (1.0 / counts)[sample_of_row]
        token_losses = torch.empty(rows, dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden)
        step = max(MIN_KEPT_POSITIONS, LOGIT_CHUNK_BYTES // (4 * vocab))
        precision = torch.promote_types(weight.dtype, torch.float32)
        for start in range(0, rows, step):
            end = min(start + step, rows)
            # log_softmax, not logits - logsumexp: it subtracts the row's maximum before the
            # log of the sum, so the small differences keep their low bits (on the default
            # model, hidden-state gradients as accurate as autograd's instead of 5x less).
            log_probs = torch.log_softmax(F.linear(hidden[start:end], weight, bias)
                                          .to(precision), 1)
            target = targets[start:end, None]
            token_losses[start:end] = -log_probs.gather(1, target).squeeze(1)
            # d(loss)/d(logits) in place: softmax * s, then - s at the target.
            s = scale[start:end, None].to(precision)
            dlogits = log_probs.exp_().mul_(s)
            dlogits.scatter_add_(1, target, -s)
            dlogits = dlogits.to(weight.dtype)
            if dlogits.shape[0] < MIN_KEPT_POSITIONS:
                # Few rows would take the less accurate small-product path
                # (MIN_KEPT_POSITIONS).
                dlogits = torch.cat([dlogits, dlogits.new_zeros(
                    MIN_KEPT_POSITIONS - dlogits.shape[0], vocab)])
            grad[start:end] = (dlogits @ weight)[:end - start]
        losses = torch.zeros(counts.shape[0], dtype=torch.float32, device=hidden.device)
        losses.index_add_(0, sample_of_row, token_losses)
        ctx.save_for_backward(grad, sample_of_row)
        return losses / counts

    @staticmethod
    def backward(ctx, grad_losses):
        grad, sample_of_row = ctx.saved_tensors
        return grad * grad_losses[sample_of_row, None].to(grad.dtype), None, None, None, None, None


def _fused_losses(head: OutputHead, ids, mask, labels) -> torch.Tensor:
    hidden = first_output(head.body(input_ids=ids, attention_mask=mask, use_cache=False))
    targets = labels[:, 1:].to(hidden.device)
    rows, cols = (targets != IGNORE).nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=labels.shape[0]).clamp_min(1).float()
    device = head.weight.device
    return HeadLoss.apply(hidden[rows, cols].to(device), head.weight, head.bias,
                           targets[rows, cols].to(device), rows.to(device), counts.to(device))


def sample_losses(model, ids, mask, labels, head: OutputHead | None = None) -> torch.Tensor:
    """Forward pass and each sample's mean loss over its supervised tokens: (B,). With
    ``head`` (see ``output_head``) the output layer runs on the supervised positions only and
    no logits are kept for backward; otherwise through the model's own logits."""
    if head is not None and not head.weight.requires_grad:
        return _fused_losses(head, ids, mask, labels)
    positions = supervised_positions(labels)
    return per_sample_losses(_forward(model, ids, mask, positions), labels, positions)
