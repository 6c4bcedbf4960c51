"""Sensitivity scores: S = sum over samples of (per-sample gradient)^2, element-wise.

For every target matrix W (from the architecture adapter) and every sample i with loss L_i
(mean cross-entropy over that sample's supervised tokens), g_i = dL_i/dW and S = sum_i g_i**2,
accumulated in fp32 whatever the model's dtype. The square is taken per sample, never of a
gradient summed over a batch.

Two implementations:

* ``method="loop"``: one sample per forward/backward, the weight gradient from autograd. This is
  the definition the other one is tested against.
* ``method="batched"``: B samples per forward/backward. No weight gradient is formed at all;
  instead a forward hook keeps each target module's input x and a hook on its output receives
  the output gradient gy, and each sample's weight gradient is rebuilt as
  g_i = gy_i[:, rows]^T @ x_i over that sample's real tokens only (so padding cannot leak),
  which is the canonical (out, in) gradient for ``nn.Linear`` and GPT-2's ``Conv1D`` alike.

The loss: where a model's logits are its output layer applied to its body's last hidden state
(checked once per model, ``output_head``), the output layer runs on the supervised positions
only and its gradient is formed chunk by chunk in the forward pass, so neither method keeps
(batch, width, vocab) logits for backward; other models go through their own logits.

``reference_fp16=True`` reproduces the reference code: per-sample gradients rounded to fp16,
squared and summed in fp16 (|g| below ~2.4e-4 squares to 0), in the samples' given order.

Data-parallel: when ``torch.distributed`` is initialised (e.g. under ``torchrun``) each rank
takes a contiguous, disjoint shard of the samples and the sums are all-reduced once at the end.
Models spread with ``device_map="auto"`` need nothing special: hooks run, and accumulators live,
on each module's own device.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
import torch
import torch.nn.functional as F

from .errors import UserError
from .score_data import IGNORE, ScoreDataset, ScoreSample

log = logging.getLogger(__name__)

METHODS = ("batched", "loop")


@dataclass
class ScoreResult:
    """Scores (fp32 CPU tensors keyed by Matrix.name, canonical (out, in) shape) and the
    statistics the manifest records."""

    scores: dict[str, torch.Tensor]
    nsamples: int
    supervised_tokens: int
    total_tokens: int
    padded_tokens: int
    mean_loss: float
    wall_time_s: float
    method: str
    batch_size: int
    accumulation_dtype: str
    world_size: int = 1
    zero_counts: dict[str, int] = field(default_factory=dict)

    def manifest_fields(self) -> dict:
        return {
            "nsamples": self.nsamples,
            "supervised_tokens": self.supervised_tokens,
            "total_tokens": self.total_tokens,
            "padded_tokens": self.padded_tokens,
            "mean_loss": self.mean_loss,
            "wall_time_s": round(self.wall_time_s, 3),
            "method": self.method,
            "batch_size": self.batch_size,
            "accumulation_dtype": self.accumulation_dtype,
            "world_size": self.world_size,
            "zero_counts": self.zero_counts,
        }


# --------------------------------------------------------------------------------------------
# helpers shared by both methods


def _resolve_matrices(model, matrices):
    from .adapter import describe

    if matrices is None:
        return list(describe(model).matrices)
    matrices = list(matrices)
    if matrices and isinstance(matrices[0], str):
        by_name = describe(model).by_name()
        unknown = [n for n in matrices if n not in by_name]
        if unknown:
            raise UserError(f"unknown matrix name(s) {unknown[:3]}; names look like "
                            f"{next(iter(by_name))}")
        matrices = [by_name[n] for n in matrices]
    if not matrices:
        raise UserError("no target matrices to compute scores for")
    return matrices


def _sample_list(samples) -> list[ScoreSample]:
    items = list(samples.samples if isinstance(samples, ScoreDataset) else samples)
    if not items:
        raise UserError("no samples to compute scores on (empty dataset)")
    for s in items:
        if s.supervised_tokens == 0:
            raise UserError(f"{s.source}: the sample has no supervised token")
    return items


def _input_device(model) -> torch.device:
    emb = model.get_input_embeddings()
    return emb.weight.device if emb is not None else next(model.parameters()).device


def _pad_id(tokenizer) -> int:
    # Padded positions are cut off from every per-sample gradient, so the id only has to be a
    # valid token.
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, attr, None) if tokenizer is not None else None
        if value is not None:
            return int(value)
    return 0


def _collate(batch: list[ScoreSample], pad_id: int, device):
    """Right-padded ids, attention mask and labels. Right padding keeps every real token at
    the position it has alone, and causal attention never lets it see a pad."""
    width = max(len(s) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for b, s in enumerate(batch):
        n = len(s)
        ids[b, :n] = torch.tensor(s.input_ids)
        labels[b, :n] = torch.tensor(s.labels)
        mask[b, :n] = 1
    return ids.to(device), mask.to(device), labels.to(device)


# Fewest positions whose logits are computed. CPU BLAS runs products with fewer than 4 rows on
# a path that sums the vocabulary-long contraction of the output layer's backward with about 13x
# the rounding error of the blocked kernel (measured in fp32 over a 49K vocabulary), which the
# squares carry into the scores: on the default model with last-token supervision, 6e-4
# relative max error against fp64 instead of fp32's usual 2e-4, and the loop and the batched
# method 6e-4 apart instead of 1e-5. A few more rows cost little next to every position's.
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


def _check_finite(losses: torch.Tensor, batch: list[ScoreSample], indices: list[int]) -> None:
    """Stop at the first sample whose loss is NaN or infinite, naming it."""
    bad = (~torch.isfinite(losses.detach())).nonzero().flatten().tolist()
    if bad:
        b = bad[0]
        raise UserError(f"non-finite loss ({losses[b].item()}) on sample {indices[b]} "
                        f"({batch[b].source}); stopping. Check the model's dtype (try "
                        "--dtype float32) and the sample")


@functools.lru_cache(maxsize=None)
def _accepts_logits_to_keep(model_class: type) -> bool:
    # Once per class, not on every forward pass.
    try:
        return "logits_to_keep" in inspect.signature(model_class.forward).parameters
    except (TypeError, ValueError):
        return False


def _forward(model, ids, mask, positions: torch.Tensor | None = None):
    """Logits at every position, or at ``positions`` only: through the model's
    ``logits_to_keep`` where it has one (so the output layer runs on those positions only),
    otherwise by slicing the full logits."""
    kwargs = {}
    if positions is not None and _accepts_logits_to_keep(type(model)):
        kwargs["logits_to_keep"] = positions.to(ids.device)
        positions = None
    out = model(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs)
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits if positions is None else logits[:, positions.to(logits.device)]


# --------------------------------------------------------------------------------------------
# the output layer and the loss


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
        _PLAIN_HEAD[model] = _head_gives_the_logits(model, head)
    return head if _PLAIN_HEAD[model] else None


def _head_gives_the_logits(model, head: OutputHead) -> bool:
    ids = (torch.arange(8) * 7 + 3).remainder(head.weight.shape[0])[None]  # any valid ids
    ids = ids.to(_input_device(model))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            expected = _logits(model(input_ids=ids, use_cache=False))
            hidden = _logits(head.body(input_ids=ids, use_cache=False))
            got = F.linear(hidden.to(head.weight.device), head.weight, head.bias)
        return got.shape == expected.shape and torch.allclose(
            got.float(), expected.to(got.device).float(), rtol=1e-4, atol=1e-5)
    except (TypeError, ValueError, RuntimeError) as exc:
        log.debug("scoring through the model's own logits: %s", exc)
        return False
    finally:
        model.train(was_training)


def _logits(out) -> torch.Tensor:
    # Model outputs (logits) and body outputs (last hidden state) alike: the first field.
    return out[0] if not isinstance(out, torch.Tensor) else out


# Rows of fp32 logits the fused loss forms at a time: a few tens of MB whatever the batch and
# vocabulary, instead of the (batch, width, vocab) logits, their log-softmax and its gradient.
LOGIT_CHUNK_BYTES = 32 * 2 ** 20


class _HeadLoss(torch.autograd.Function):
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
    hidden = _logits(head.body(input_ids=ids, attention_mask=mask, use_cache=False))
    targets = labels[:, 1:].to(hidden.device)
    rows, cols = (targets != IGNORE).nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=labels.shape[0]).clamp_min(1).float()
    device = head.weight.device
    return _HeadLoss.apply(hidden[rows, cols].to(device), head.weight, head.bias,
                           targets[rows, cols].to(device), rows.to(device), counts.to(device))


def sample_losses(model, ids, mask, labels, head: OutputHead | None = None) -> torch.Tensor:
    """Forward pass and each sample's mean loss over its supervised tokens: (B,). With
    ``head`` (see ``output_head``) the output layer runs on the supervised positions only and
    no logits are kept for backward; otherwise through the model's own logits."""
    if head is not None and not head.weight.requires_grad:
        return _fused_losses(head, ids, mask, labels)
    positions = supervised_positions(labels)
    return per_sample_losses(_forward(model, ids, mask, positions), labels, positions)


@contextmanager
def _scoring_state(model, grad_params: set):
    """Eval mode and requires_grad only on ``grad_params`` while scoring (so autograd keeps
    no state for anything else); the previous flags and mode are restored afterwards."""
    saved = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    was_training = model.training
    try:
        model.eval()
        for p, _, _ in saved:
            p.requires_grad_(id(p) in grad_params)
            p.grad = None
        yield
    finally:
        for p, flag, grad in saved:
            p.requires_grad_(flag)
            p.grad = grad
        model.train(was_training)


class _Accumulators:
    """One accumulator per matrix, on that matrix's device: fp32 sums, or the reference's fp16
    running sum."""

    def __init__(self, matrices, reference_fp16: bool):
        self.reference_fp16 = reference_fp16
        dtype = torch.float16 if reference_fp16 else torch.float32
        self.sums = {m.name: torch.zeros(m.shape, dtype=dtype, device=m.module.weight.device)
                     for m in matrices}

    def add(self, name: str, grad: torch.Tensor) -> None:
        acc = self.sums[name]
        if self.reference_fp16:
            # The reference's update: fp16 gradient, squared in fp16, added in fp16.
            g = grad.to(torch.float16)
            self.sums[name] = acc + torch.pow(g, 2)
        else:
            g = grad.float()
            acc.addcmul_(g, g)


def _progress(total: int, enabled: bool, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        enabled = False
    if not enabled:
        class _Null:
            def update(self, n=1):
                pass

            def close(self):
                pass
        return _Null()
    return tqdm(total=total, desc=desc, unit="sample", file=sys.stderr, leave=False)


# --------------------------------------------------------------------------------------------
# the two methods


def _run_loop(model, samples, matrices, acc: _Accumulators, pad_id, bar, head, first: int = 0):
    """One sample per forward/backward; g from autograd's weight gradient."""
    device = _input_device(model)
    params = {id(m.module.weight): m.module.weight for m in matrices}
    by_param: dict[int, list] = {}
    for m in matrices:
        by_param.setdefault(id(m.module.weight), []).append(m)
    loss_sum = 0.0
    with _scoring_state(model, set(params)), torch.enable_grad():
        for i, sample in enumerate(samples):
            ids, mask, labels = _collate([sample], pad_id, device)
            loss = sample_losses(model, ids, mask, labels, head)
            _check_finite(loss, [sample], [first + i])
            loss.sum().backward()
            for key, weight in params.items():
                grad = weight.grad
                if grad is not None:
                    for m in by_param[key]:
                        # Canonical (out, in) view of this role's rows.
                        canonical = grad.t() if m.transposed else grad
                        acc.add(m.name, canonical[m.rows])
                weight.grad = None
            loss_sum += float(loss.detach().sum())
            bar.update(1)
    return loss_sum


class _GradientCapture:
    """Hooks that rebuild per-sample weight gradients from each target module's input and
    output gradient. ``lengths`` holds the real (unpadded) length of each sample of the
    current batch."""

    def __init__(self, model, matrices, acc: _Accumulators):
        self.acc = acc
        self.lengths: list[int] = []
        self.width = 0  # padded length of the current batch
        self.roles: dict[int, list] = {}
        self.modules = {}
        for m in matrices:
            self.roles.setdefault(id(m.module), []).append(m)
            self.modules[id(m.module)] = m.module
        self.handles = []
        self.pending = 0
        self.scratch: dict = {}
        for key, module in self.modules.items():
            self.handles.append(module.register_forward_hook(self._capture, with_kwargs=True))

    def _capture(self, module, args, kwargs, output):
        x = args[0] if args else next(iter(kwargs.values()))
        if not isinstance(output, torch.Tensor):
            raise UserError(f"{type(module).__name__} returned {type(output).__name__}, not a "
                            "tensor; use --method loop")
        if not output.requires_grad:
            # No parameter requires grad in this method, so the graph starts at the first
            # target outputs (layer 0's projections): backward then reaches every target
            # module and stops there, without forming any weight gradient or the gradient
            # of the embeddings.
            output.requires_grad_(True)
        held = [x.detach()]  # released as soon as this call's gradients are accumulated
        roles = self.roles[id(module)]
        lengths, width = list(self.lengths), self.width
        self.pending += 1

        def on_output_grad(gy: torch.Tensor):
            self._accumulate(roles, held.pop(), gy, lengths, width)
            self.pending -= 1

        output.register_hook(on_output_grad)

    def _accumulate(self, roles, x, gy, lengths, width):
        # Some blocks flatten (batch, time) before their MLP (OPT); view both back.
        x = x.reshape(len(lengths), width, x.shape[-1])
        gy = gy.reshape(len(lengths), width, gy.shape[-1])
        # One (out_full, in) fp32 matrix per shape, reused by every sample and call: a fresh
        # one per product would cost the allocator (and the OS its page faults) ~10% of the
        # products' time on CPU.
        key = (gy.shape[-1], x.shape[-1], x.device)
        full = self.scratch.get(key)
        if full is None:
            full = self.scratch[key] = torch.empty(key[:2], dtype=torch.float32, device=key[2])
        for b, n in enumerate(lengths):
            # This sample's real tokens only: its weight gradient, in fp32. One sample at a
            # time (not a (B, out, in) stack): the extra memory is one matrix however large B is.
            torch.mm(gy[b, :n].float().t(), x[b, :n].float(), out=full)
            for m in roles:
                self.acc.add(m.name, full[m.rows])

    def close(self):
        for h in self.handles:
            h.remove()
        self.handles = []
        self.scratch = {}


def _batches(samples: list[ScoreSample], batch_size: int) -> list[list[int]]:
    # Longest first, neighbours by length: little padding, and an out-of-memory error, if any,
    # comes with the first batch.
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i]))
    return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]


def _run_batched(model, samples, matrices, acc, pad_id, bar, head, batch_size,
                 first: int = 0):
    device = _input_device(model)
    capture = _GradientCapture(model, matrices, acc)
    loss_sum = 0.0
    padded = 0
    try:
        with _scoring_state(model, set()), torch.enable_grad():
            for index in _batches(samples, batch_size):
                batch = [samples[i] for i in index]
                ids, mask, labels = _collate(batch, pad_id, device)
                padded += int(mask.numel() - mask.sum())
                capture.lengths = [len(s) for s in batch]
                capture.pending = 0
                capture.width = ids.shape[1]
                losses = sample_losses(model, ids, mask, labels, head)
                _check_finite(losses, batch, [first + i for i in index])
                # The sum's gradient w.r.t. sample b's activations is that sample's own
                # gradient: samples do not interact in a causal LM with padding masked.
                losses.sum().backward()
                if capture.pending:
                    raise RuntimeError(f"{capture.pending} target module call(s) received no "
                                       "output gradient")
                loss_sum += float(losses.detach().sum())
                bar.update(len(batch))
    finally:
        capture.close()
    return loss_sum, padded


# --------------------------------------------------------------------------------------------
# data parallel


def _dist_world():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist, dist.get_rank(), dist.get_world_size()
    return None, 0, 1


def _shard(n: int, rank: int, world: int) -> slice:
    return slice(n * rank // world, n * (rank + 1) // world)


def _reduce_device(dist) -> str:
    # Gloo reduces host tensors, NCCL device tensors.
    return "cpu" if dist.get_backend() == "gloo" else "cuda"


def _all_reduce(dist, tensors: list[torch.Tensor]) -> None:
    """Sum every tensor over the ranks, in place; a tensor on the wrong side for the backend
    makes a round trip."""
    where = _reduce_device(dist)
    for t in tensors:
        if t.device.type != where:
            moved = t.to(where)
            dist.all_reduce(moved)
            t.copy_(moved)
        else:
            dist.all_reduce(t)


def _agree_on_failure(dist, error: BaseException | None) -> None:
    """Every rank learns whether any rank failed before the big reduction, so a failure on
    one rank stops all of them instead of leaving the others waiting."""
    flag = torch.tensor([1.0 if error is not None else 0.0], device=_reduce_device(dist))
    dist.all_reduce(flag)
    if error is not None:
        raise error
    if flag.item() > 0:
        raise UserError("another rank failed while computing scores; see its message")


# --------------------------------------------------------------------------------------------
# public entry point


def compute_scores(model, tokenizer, samples, matrices=None, batch_size: int = 8,
                   method: str = "batched", reference_fp16: bool = False,
                   progress: bool = True) -> ScoreResult:
    """Sensitivity scores of ``matrices`` (default: every target matrix of the model) over
    ``samples`` (a ScoreDataset or a list of ScoreSample).

    ``reference_fp16`` reproduces the reference's fp16 squaring and summation; it always uses
    the plain loop in the samples' order, as the reference does. Returns a ``ScoreResult``
    with fp32 CPU tensors keyed by ``Matrix.name`` in canonical (out, in) shape.
    """
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if batch_size is None or batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if reference_fp16 and method != "loop":
        log.info("reference fp16 mode runs the plain loop (one sample per backward)")
        method = "loop"
    matrices = _resolve_matrices(model, matrices)
    offloaded = [m.name for m in matrices if m.module.weight.device.type == "meta"]
    if offloaded:
        raise UserError(f"{offloaded[0]} and {len(offloaded) - 1} other target weights are "
                        "offloaded (on the meta device); scores need every target weight in "
                        "memory: use a device_map that fits the model on the devices")
    items = _sample_list(samples)
    dist, rank, world = _dist_world()
    shard = _shard(len(items), rank, world)
    local = items[shard]
    pad_id = _pad_id(tokenizer)
    acc = _Accumulators(matrices, reference_fp16)
    # The reference's numbers come from the model's own logits and autograd's rounding.
    head = None if reference_fp16 else output_head(model)
    bar = _progress(len(local), progress and rank == 0, f"scores ({method})")
    start = time.perf_counter()
    error = None
    loss_sum, padded = 0.0, 0
    try:
        if method == "loop":
            loss_sum = _run_loop(model, local, matrices, acc, pad_id, bar, head, shard.start)
        else:
            loss_sum, padded = _run_batched(model, local, matrices, acc, pad_id, bar, head,
                                            batch_size, shard.start)
    except UserError as exc:
        if dist is None:
            raise
        error = exc
    finally:
        bar.close()
    stats = torch.tensor([float(sum(s.supervised_tokens for s in local)),
                          float(sum(len(s) for s in local)), float(padded), loss_sum,
                          float(len(local))], dtype=torch.float64)
    if dist is not None:
        _agree_on_failure(dist, error)
        if reference_fp16:
            # fp16 sums are reduced in fp32 so the reduction adds no rounding of its own.
            acc.sums = {k: v.float() for k, v in acc.sums.items()}
        _all_reduce(dist, list(acc.sums.values()) + [stats])
    wall = time.perf_counter() - start
    scores = {name: t.float().cpu() for name, t in acc.sums.items()}
    bad = [name for name, t in scores.items() if not torch.isfinite(t).all()]
    if bad:
        message = (f"scores of {bad[0]} (and {len(bad) - 1} other matrices) are not finite: the "
                   "gradients overflowed the accumulation dtype")
        if not reference_fp16:
            raise UserError(message + "; check the model and its dtype")
        log.warning("%s (the reference's fp16 sums overflow the same way)", message)
    supervised, total, padded_all, loss_total, n = stats.tolist()
    return ScoreResult(
        scores=scores, nsamples=int(n), supervised_tokens=int(supervised),
        total_tokens=int(total), padded_tokens=int(padded_all),
        mean_loss=loss_total / max(n, 1), wall_time_s=wall, method=method,
        batch_size=1 if method == "loop" else batch_size,
        accumulation_dtype="float16 (reference)" if reference_fp16 else "float32",
        world_size=world, zero_counts={k: int((v == 0).sum()) for k, v in scores.items()})


# --------------------------------------------------------------------------------------------
# computing and storing one score set (library entry point and CLI)


def manifest_fields(model_name: str, fingerprint: str | None, model, dataset: ScoreDataset,
                    result: ScoreResult, reference_fp16: bool = False, **extra) -> dict:
    """What a score store's manifest records about a computed score set."""
    info = dict(dataset.info) if isinstance(dataset, ScoreDataset) else {}
    config = getattr(model, "config", None)
    weight = next(model.parameters(), None) if model is not None else None
    fields = {
        "model": model_name,
        "fingerprint": fingerprint,
        "model_type": getattr(config, "model_type", None),
        "model_dtype": str(weight.dtype).replace("torch.", "") if weight is not None else None,
        "dataset": info.get("dataset"),
        "dataset_source": info.get("source"),
        "dataset_sha256": info.get("source_sha256"),
        "samples_sha256": info.get("samples_sha256"),
        "nsamples_requested": info.get("nsamples_requested"),
        "seqlen": info.get("seqlen"),
        "max_length": info.get("max_length"),
        "seed": info.get("seed"),
        "supervision": info.get("supervision"),
        "truncated": info.get("truncated", 0),
        "reference_fp16": bool(reference_fp16),
        "data": info,
    }
    fields.update(result.manifest_fields())
    fields.update(extra)
    return fields


def compute_score_set(lm, dataset: ScoreDataset, out=None, method: str = "batched",
                      batch_size: int = 8, reference_fp16: bool = False,
                      store_dtype: str = "float32", layout: str = "per-layer",
                      shard_size_mb: int = 2048, progress: bool = True,
                      **manifest_extra) -> ScoreResult:
    """Scores of a loaded model (``tomsparse.models.LoadedModel``) on a dataset, written to
    ``out`` as a score store when given (by rank 0 only under torch.distributed)."""
    from .score_store import save_scores

    result = compute_scores(lm.model, lm.tokenizer, dataset, matrices=lm.description.matrices,
                            batch_size=batch_size, method=method,
                            reference_fp16=reference_fp16, progress=progress)
    _, rank, _ = _dist_world()
    if out is not None and rank == 0:
        fields = manifest_fields(lm.name, lm.fingerprint, lm.model, dataset, result,
                                 reference_fp16=reference_fp16, **manifest_extra)
        save_scores(out, result.scores, fields, store_dtype=store_dtype, layout=layout,
                    shard_size_mb=shard_size_mb)
    return result


def _context_length(model) -> int | None:
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _init_distributed() -> bool:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on
    GPUs). Returns True when this call created it."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        # One GPU per process; "cuda" then means this rank's own GPU.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def _summary(result: ScoreResult, dataset: ScoreDataset, out) -> str:
    zeros = sum(result.zero_counts.values())
    total = sum(t.numel() for t in result.scores.values())
    return (f"scores: {len(result.scores)} matrices, {result.nsamples} samples "
            f"({dataset.info.get('dataset')}, supervision {dataset.info.get('supervision')}), "
            f"{result.supervised_tokens} supervised tokens, mean loss {result.mean_loss:.4f}, "
            f"{result.method} method, {result.accumulation_dtype} sums, "
            f"{zeros:,} of {total:,} entries exactly zero ({100 * zeros / max(total, 1):.3f}%), "
            f"{result.wall_time_s:.1f} s on {result.world_size} process(es)"
            + (f"; wrote {out}" if out else ""))


def _cmd_compute(args) -> int:
    from .models import load_model

    out = getattr(args, "out", None)
    if not out:
        raise UserError("scores needs --out DIR (the score store to write)")
    reference = bool(getattr(args, "reference_fp16", False))
    created = _init_distributed()
    try:
        import torch.distributed as dist

        _, rank, world = _dist_world()
        device = getattr(args, "device", None) or "auto"
        if world > 1 and torch.cuda.is_available() and device in ("auto", "cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
        # The reference runs its model in fp16; that is part of reproducing its numbers.
        dtype = getattr(args, "dtype", None) or ("float16" if reference else "float32")
        lm = load_model(args.model, device=device, dtype=dtype,
                        device_map=getattr(args, "device_map", None))
        dataset = build_dataset(args, lm.tokenizer, lm.model)
        method = getattr(args, "method", None) or "batched"
        if reference and method != "loop":
            print("--reference-fp16: using the plain loop (one sample per backward), as the "
                  "reference does", file=sys.stderr)
            method = "loop"
        result = compute_score_set(
            lm, dataset, out=out, method=method, batch_size=getattr(args, "batch_size", None) or 8,
            reference_fp16=reference, store_dtype=getattr(args, "store_dtype", None) or "float32",
            layout=getattr(args, "store_layout", None) or "per-layer",
            shard_size_mb=getattr(args, "shard_size_mb", None) or 2048, progress=rank == 0,
            device=str(lm.device) if hasattr(lm, "device") else device,
            device_map=getattr(args, "device_map", None))
        if rank == 0:
            print(_summary(result, dataset, out))
        if world > 1:
            dist.barrier()
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


def build_dataset(args, tokenizer, model) -> ScoreDataset:
    """The dataset the CLI options describe (``--dataset tom|generic`` and friends)."""
    from .score_data import build_generic_samples, build_tom_samples

    dataset = getattr(args, "dataset", None) or "tom"
    nsamples = getattr(args, "nsamples", None) or 100
    seed = getattr(args, "seed", None) or 0
    seqlen = getattr(args, "seqlen", None)
    context = _context_length(model)
    if dataset == "tom":
        from .tasks import gradient_prompts

        spec = getattr(args, "data_path", None) or "builtin"
        supervision = getattr(args, "supervision", None) or (
            "last-token" if getattr(args, "reference_fp16", False) else "answer")
        # --seqlen 0 (the reference's value for ToM) keeps prompts whole, up to the context.
        limit = seqlen if seqlen and seqlen > 0 else context
        dataset = build_tom_samples(tokenizer, gradient_prompts(spec), nsamples=nsamples,
                                    seed=seed, supervision=supervision, max_length=limit,
                                    source=spec)
        dataset.info["seqlen"] = seqlen or 0
        return dataset
    if dataset == "generic":
        from .corpora import DEFAULT_GENERIC, load_corpus

        corpus = load_corpus(getattr(args, "corpus", None) or DEFAULT_GENERIC)
        return build_generic_samples(tokenizer, corpus, nsamples=nsamples,
                                     seqlen=seqlen if seqlen else 128, seed=seed,
                                     max_length=context)
    raise UserError(f"unknown --dataset {dataset!r}; use tom or generic")


def _model_for_import(name: str, dtype: str | None):
    """A model's description and fingerprint for import, loaded with its real weights (the
    fingerprint is defined on the loaded model)."""
    from .models import load_model

    return load_model(name, device="cpu", dtype=dtype or "float32")


def _cmd_import(args) -> int:
    from .score_store import import_reference_chunks

    src, out = getattr(args, "src", None), getattr(args, "out", None)
    if not src or not out:
        raise UserError("scores import needs --from REFERENCE_CHUNKS and --out DIR")
    lm = _model_for_import(args.model, getattr(args, "dtype", None))
    path = import_reference_chunks(src, out, lm, model_name=lm.name,
                                   store_dtype=getattr(args, "store_dtype", None) or "float32",
                                   layout=getattr(args, "store_layout", None) or "per-layer")
    print(f"imported {src} for {lm.name} into {out} ({path.name})")
    return 0


def _cmd_export(args) -> int:
    from .score_store import export_reference_chunks

    src, out = getattr(args, "src", None), getattr(args, "out", None)
    if not src or not out:
        raise UserError("scores export needs --from SCORE_STORE and --out DIR")
    export_reference_chunks(src, out)
    print(f"exported {src} as reference chunks (layer_<i>.pt, fp16) into {out}")
    return 0


def cmd_scores(args) -> int:
    """Handler of ``tomsparse scores [compute|import|export]``:

    compute: ``--model M --dataset tom|generic [--data_path FILE] [--corpus C] --nsamples N
    --seqlen L --seed S --supervision answer|last-token [--reference-fp16] --batch-size B
    --method batched|loop --dtype D --device D [--device-map auto] --store-dtype float32|bfloat16
    [--store-layout per-layer|sharded] --out DIR``; runs data-parallel under ``torchrun``.
    import: ``--from REFERENCE_CHUNKS --model M --out DIR``. export: ``--from DIR --out DIR``.
    """
    action = getattr(args, "action", None) or "compute"
    if action == "import":
        return _cmd_import(args)
    if action == "export":
        return _cmd_export(args)
    if action == "compute":
        return _cmd_compute(args)
    raise UserError(f"unknown scores action {action!r}; use compute, import or export")
