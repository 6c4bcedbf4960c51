"""Wanda scores (Sun et al. 2023): |W| times the L2 norm of each weight's input feature over
the samples' tokens, from forward passes only (no backward).

For a target matrix W (canonical (out, in)) with input x (the input of its Linear/Conv1D
module), score[i, j] = |W[i, j]| * sqrt(sum over tokens of x_j**2). The tokens are every real
token of every sample, as the Fisher path sees them: the batches are right-padded
(``methods.collate``) and the padded positions are left out, so a sample's contribution does
not depend on the batch it lands in. The squares are summed in fp32, per input feature, one
vector per matrix (the roles of a fused module share their module's input); under
torch.distributed those sums are all-reduced before the square root (``compute``)."""

from __future__ import annotations

import torch

from tomsparse.lm.batching import batches_by_length, input_device
from tomsparse.lm.hooks import Hook, hooked
from tomsparse.scores.losses import check_finite, sample_losses
from tomsparse.scores.methods import collate, scoring_state


class InputNorms:
    """Per target matrix, the fp32 sum over real tokens of its input's squares (``sums``,
    one (in,) vector per matrix, on its module's device), filled by forward hooks
    (``hooks()``, installed with ``lm.hooks.hooked``); ``lengths`` and ``width`` describe the
    current batch. ``result()`` turns the sums into the scores |W| * sqrt(sum)."""

    def __init__(self, matrices):
        self.matrices = {m.name: m for m in matrices}
        self.roles: dict[int, list] = {}
        self.modules = {}
        for m in matrices:
            self.roles.setdefault(id(m.module), []).append(m)
            self.modules[id(m.module)] = m.module
        self.sums = {m.name: torch.zeros(m.shape[1], dtype=torch.float32,
                                         device=m.module.weight.device) for m in matrices}
        self.lengths: list[int] = []
        self.width = 0

    def hooks(self) -> list[Hook]:
        return [Hook(module, "forward", self._capture, with_kwargs=True)
                for module in self.modules.values()]

    def _capture(self, module, args, kwargs, output):
        x = args[0] if args else next(iter(kwargs.values()))
        # Some blocks flatten (batch, time) before their MLP (OPT); view it back.
        x = x.detach().reshape(len(self.lengths), self.width, x.shape[-1])
        total = torch.zeros(x.shape[-1], dtype=torch.float32, device=x.device)
        for b, n in enumerate(self.lengths):
            # this sample's real tokens only
            total += x[b, :n].float().pow(2).sum(0)
        for m in self.roles[id(module)]:
            acc = self.sums[m.name]
            acc += total.to(acc.device)

    def result(self) -> dict[str, torch.Tensor]:
        """score[i, j] = |W[i, j]| * ||x_j||_2, fp32, keyed by matrix name."""
        return {name: self.matrices[name].weight().detach().float().abs()
                * sums.sqrt().to(self.matrices[name].module.weight.device)[None, :]
                for name, sums in self.sums.items()}


def run_wanda(model, samples, norms: InputNorms, pad_id, bar, batch_size: int,
              first: int = 0) -> tuple[float, int]:
    """Forward passes over ``samples`` in batches of ``batch_size`` (longest first, as the
    batched Fisher method), the input norms gathered by ``norms``; the per-sample losses are
    computed too (no gradient), for the manifest's mean loss and the finiteness check.
    Returns (sum of the losses, padded positions)."""
    device = input_device(model)
    loss_sum, padded = 0.0, 0
    with hooked(norms.hooks()), scoring_state(model, set()), torch.no_grad():
        for index in batches_by_length([len(s) for s in samples], batch_size):
            batch = [samples[i] for i in index]
            ids, mask, labels = collate(batch, pad_id, device)
            padded += int(mask.numel() - mask.sum())
            norms.lengths = [len(s) for s in batch]
            norms.width = ids.shape[1]
            losses = sample_losses(model, ids, mask, labels, None)
            check_finite(losses, batch, [first + i for i in index])
            loss_sum += float(losses.sum())
            bar.update(len(batch))
    return loss_sum, padded
