"""The two ways the scores are accumulated: ``run_loop`` (one sample per forward/backward, the
weight gradient from autograd; the definition) and ``run_batched`` (several samples per pass,
each sample's weight gradient rebuilt by ``GradientCapture`` hooks from the module's input and
output gradient over its real tokens only), with the padding (``collate``), the scoring state
of the model and the per-matrix ``Accumulators`` (fp32, or the reference's fp16). What is
accumulated per sample is the Fisher's square g**2 (the default) or SNIP's |w * g|."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from tomsparse.data.score_samples import IGNORE, ScoreSample
from tomsparse.errors import UserError
from tomsparse.lm.batching import batches_by_length, input_device
from tomsparse.lm.hooks import Hook, hooked
from tomsparse.scores.losses import check_finite, sample_losses


def collate(batch: list[ScoreSample], pad_id: int, device):
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


@contextmanager
def scoring_state(model, grad_params: set):
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


class Accumulators:
    """One accumulator per matrix, on that matrix's device: fp32 sums, or the reference's fp16
    running sum. Each sample's canonical weight gradient g is added as g**2 (``score``
    "fisher", the default) or as |w * g| ("snip"; w the matrix's current weight)."""

    def __init__(self, matrices, reference_fp16: bool, score: str = "fisher"):
        if score not in ("fisher", "snip"):
            raise ValueError(f"gradient scores are fisher or snip, not {score!r}")
        if reference_fp16 and score != "fisher":
            raise UserError("the reference's fp16 sums are Fisher scores; --reference-fp16 "
                            f"cannot be combined with --score {score}")
        self.reference_fp16 = reference_fp16
        self.score = score
        self.matrices = {m.name: m for m in matrices}
        dtype = torch.float16 if reference_fp16 else torch.float32
        self.sums = {m.name: torch.zeros(m.shape, dtype=dtype, device=m.module.weight.device)
                     for m in matrices}

    def add(self, name: str, grad: torch.Tensor) -> None:
        acc = self.sums[name]
        if self.reference_fp16:
            # The reference's update: fp16 gradient, squared in fp16, added in fp16.
            g = grad.to(torch.float16)
            self.sums[name] = acc + torch.pow(g, 2)
        elif self.score == "snip":
            # |w * g| of this sample, in fp32 (w: the canonical (out, in) view of this role)
            w = self.matrices[name].weight().detach()
            acc.add_(torch.mul(w.float(), grad.float()).abs_())
        else:
            g = grad.float()
            acc.addcmul_(g, g)

    def result(self) -> dict[str, torch.Tensor]:
        """The scores: the sums in fp32, keyed by matrix name."""
        return {name: t.float() for name, t in self.sums.items()}


def run_loop(model, samples, matrices, acc: Accumulators, pad_id, bar, head, first: int = 0):
    """One sample per forward/backward; g from autograd's weight gradient."""
    device = input_device(model)
    params = {id(m.module.weight): m.module.weight for m in matrices}
    by_param: dict[int, list] = {}
    for m in matrices:
        by_param.setdefault(id(m.module.weight), []).append(m)
    loss_sum = 0.0
    with scoring_state(model, set(params)), torch.enable_grad():
        for i, sample in enumerate(samples):
            ids, mask, labels = collate([sample], pad_id, device)
            loss = sample_losses(model, ids, mask, labels, head)
            check_finite(loss, [sample], [first + i])
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


class GradientCapture:
    """Hooks (``hooks()``, installed with ``lm.hooks.hooked``) that rebuild per-sample weight
    gradients from each target module's input and output gradient. ``lengths`` holds the real
    (unpadded) length of each sample of the current batch."""

    def __init__(self, matrices, acc: Accumulators):
        self.acc = acc
        self.lengths: list[int] = []
        self.width = 0  # padded length of the current batch
        self.roles: dict[int, list] = {}
        self.modules = {}
        for m in matrices:
            self.roles.setdefault(id(m.module), []).append(m)
            self.modules[id(m.module)] = m.module
        self.pending = 0
        self.scratch: dict = {}

    def hooks(self) -> list[Hook]:
        """One forward hook (with kwargs) per target module, for ``lm.hooks.hooked``."""
        return [Hook(module, "forward", self._capture, with_kwargs=True)
                for module in self.modules.values()]

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
        """Free the scratch matrices (the hooks are removed by ``hooked``)."""
        self.scratch = {}


def run_batched(model, samples, matrices, acc, pad_id, bar, head, batch_size,
                 first: int = 0):
    device = input_device(model)
    capture = GradientCapture(matrices, acc)
    loss_sum = 0.0
    padded = 0
    try:
        with hooked(capture.hooks()), scoring_state(model, set()), torch.enable_grad():
            # Longest first (stable among equal lengths, so the order of summation is fixed),
            # neighbours by length: little padding, and an out-of-memory error, if any, comes
            # with the first batch.
            for index in batches_by_length([len(s) for s in samples], batch_size):
                batch = [samples[i] for i in index]
                ids, mask, labels = collate(batch, pad_id, device)
                padded += int(mask.numel() - mask.sum())
                capture.lengths = [len(s) for s in batch]
                capture.pending = 0
                capture.width = ids.shape[1]
                losses = sample_losses(model, ids, mask, labels, head)
                check_finite(losses, batch, [first + i for i in index])
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
