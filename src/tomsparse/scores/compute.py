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

Other attribution scores (``score``, ``SCORES``): "fisher" is the above (the default, and the
reference's); "snip" is S = sum_i |W * g_i|, the same per-sample gradients, each multiplied by
the weight and its absolute value taken before the sum (not |W * sum_i g_i|); "wanda" is
|W| * sqrt(sum over the samples' real tokens of x_j**2), x the matrix's input, from forward
passes only (``scores.wanda``). All three give one fp32 tensor per matrix in the same store
format, whose manifest names the score in ``score_method``.

Data-parallel: when ``torch.distributed`` is initialised (e.g. under ``torchrun``) each rank
takes a contiguous, disjoint shard of the samples and the sums are all-reduced once at the end.
Models spread with ``device_map="auto"`` need nothing special: hooks run, and accumulators live,
on each module's own device.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from tomsparse.data.score_samples import ScoreDataConfig, ScoreDataset, ScoreSample, build_dataset
from tomsparse.errors import UserError
from tomsparse.lm.adapter import describe
from tomsparse.lm.batching import pad_token_id, progress_bar
from tomsparse.lm.head import output_head
from tomsparse.scores.distributed import (
    agree_on_failure,
    all_reduce,
    dist_world,
    shard_of,
)
from tomsparse.scores.methods import Accumulators, run_batched, run_loop
from tomsparse.scores.store import DEFAULT_SCORE, save_scores
from tomsparse.scores.wanda import InputNorms, run_wanda

log = logging.getLogger(__name__)

METHODS = ("batched", "loop")
# the attribution scores (``--score``): fisher (the default, the reference's), snip, wanda
SCORES = (DEFAULT_SCORE, "snip", "wanda")


def check_score(score: str, reference_fp16: bool = False) -> None:
    """A UserError for an unknown score, or a score other than fisher with the reference's
    fp16 sums (which are Fisher sums)."""
    if score not in SCORES:
        raise UserError(f"unknown score {score!r}; use one of {', '.join(SCORES)}")
    if reference_fp16 and score != DEFAULT_SCORE:
        raise UserError(f"--score {score} cannot be combined with --reference-fp16 (the "
                        "reference's fp16 sums are Fisher scores; --reference-protocol sets "
                        "it): add --no-reference-fp16, or use --score fisher")


@dataclass
class ScoreResult:
    """Scores (fp32 tensors on each matrix's device, keyed by Matrix.name, canonical (out, in)
    shape) and the statistics the manifest records."""

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
    score: str = DEFAULT_SCORE  # SCORES: fisher, snip or wanda

    def manifest_fields(self) -> dict:
        return {
            "nsamples": self.nsamples,
            "supervised_tokens": self.supervised_tokens,
            "total_tokens": self.total_tokens,
            "padded_tokens": self.padded_tokens,
            "mean_loss": self.mean_loss,
            "wall_time_s": round(self.wall_time_s, 3),
            "method": self.method,
            "score_method": self.score,
            "batch_size": self.batch_size,
            "accumulation_dtype": self.accumulation_dtype,
            "world_size": self.world_size,
            "zero_counts": self.zero_counts,
        }


# --------------------------------------------------------------------------------------------
# helpers shared by both methods


def _resolve_matrices(model, matrices):

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


# --------------------------------------------------------------------------------------------
# the output layer and the loss


# --------------------------------------------------------------------------------------------
# the two methods


# --------------------------------------------------------------------------------------------
# data parallel


# --------------------------------------------------------------------------------------------
# public entry point


def compute_scores(model, tokenizer, samples, matrices=None, batch_size: int = 8,
                   method: str = "batched", reference_fp16: bool = False,
                   progress: bool = True, score: str = DEFAULT_SCORE) -> ScoreResult:
    """Sensitivity scores of ``matrices`` (default: every target matrix of the model) over
    ``samples`` (a ScoreDataset or a list of ScoreSample).

    ``reference_fp16`` reproduces the reference's fp16 squaring and summation; it always uses
    the plain loop in the samples' order, as the reference does. Returns a ``ScoreResult``
    with fp32 tensors keyed by ``Matrix.name`` in canonical (out, in) shape, each on its
    matrix's device. ``score``: fisher (the default), snip or wanda (module docstring); wanda
    runs forward passes only, ``batch_size`` samples per pass (one with ``method="loop"``).
    """
    check_score(score, reference_fp16)
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
    dist, rank, world = dist_world()
    shard = shard_of(len(items), rank, world)
    local = items[shard]
    pad_id = pad_token_id(tokenizer)
    acc = (InputNorms(matrices) if score == "wanda"
           else Accumulators(matrices, reference_fp16, score))
    # The reference's numbers come from the model's own logits and autograd's rounding.
    head = None if reference_fp16 or score == "wanda" else output_head(model)
    label = method if score == DEFAULT_SCORE else f"{score}, {method}"
    bar = progress_bar(len(local), f"scores ({label})", "sample", progress and rank == 0)
    start = time.perf_counter()
    error = None
    loss_sum, padded = 0.0, 0
    try:
        if score == "wanda":
            loss_sum, padded = run_wanda(model, local, acc, pad_id, bar,
                                         1 if method == "loop" else batch_size, shard.start)
        elif method == "loop":
            loss_sum = run_loop(model, local, matrices, acc, pad_id, bar, head, shard.start)
        else:
            loss_sum, padded = run_batched(model, local, matrices, acc, pad_id, bar, head,
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
        agree_on_failure(dist, error)
        if reference_fp16:
            # fp16 sums are reduced in fp32 so the reduction adds no rounding of its own.
            acc.sums = {k: v.float() for k, v in acc.sums.items()}
        all_reduce(dist, list(acc.sums.values()) + [stats])
    wall = time.perf_counter() - start
    # The sums stay where they were accumulated (each matrix's device): a 7B model's 26 GB
    # of fp32 scores are not copied to the host here; the store is written matrix by matrix.
    # (wanda: |W| * the square root of the all-reduced sums of squares)
    scores = acc.result()
    # Finiteness and zero counts on the device, one synchronisation for all matrices.
    checks = [torch.stack([torch.isfinite(t).all().float(), (t == 0).sum().float()]).cpu()
              for t in scores.values()] if scores else []
    zero_counts = {name: int(c[1]) for name, c in zip(scores, checks)}
    bad = [name for name, c in zip(scores, checks) if not c[0]]
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
        world_size=world, zero_counts=zero_counts, score=score)


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
                      score: str = DEFAULT_SCORE, **manifest_extra) -> ScoreResult:
    """Scores of a loaded model (``tomsparse.models.LoadedModel``) on a dataset, written to
    ``out`` as a score store when given (by rank 0 only under torch.distributed); ``score``:
    fisher (default), snip or wanda, recorded in the manifest's ``score_method``."""

    result = compute_scores(lm.model, lm.tokenizer, dataset, matrices=lm.description.matrices,
                            batch_size=batch_size, method=method,
                            reference_fp16=reference_fp16, progress=progress, score=score)
    _, rank, _ = dist_world()
    if out is not None and rank == 0:
        fields = manifest_fields(lm.name, lm.fingerprint, lm.model, dataset, result,
                                 reference_fp16=reference_fp16, **manifest_extra)
        save_scores(out, result.scores, fields, store_dtype=store_dtype, layout=layout,
                    shard_size_mb=shard_size_mb)
    return result


def score_set(lm, dataset: str = "tom", out=None, score: str = DEFAULT_SCORE,
              **options) -> ScoreResult:
    """Scores of ``lm`` (a ``LoadedModel``) on ``dataset`` ("tom" or "generic", or a
    task-swapped set for the ToM side of a mask: "tom-nobelief" or "format-control",
    ``data.score_samples``): the samples ``ScoreDataConfig(dataset, **options)`` describes (e.g. ``nsamples=100, seqlen=128,
    seed=0``), computed by ``compute_score_set`` (``score``: fisher, snip or wanda) and written
    to ``out`` as a score store when given. ``.scores`` of the result: {matrix name: tensor}."""
    samples = build_dataset(ScoreDataConfig(dataset=dataset, **options), lm.tokenizer, lm.model)
    return compute_score_set(lm, samples, out=out, progress=False, score=score)
