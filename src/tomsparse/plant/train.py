"""Planting a skill: train only the planted set P of a model's weights, then check the ground
truth.

Training. Every weight stays frozen (``requires_grad`` off, so no weight gradient is ever
formed); each target matrix gets a trainable vector ``delta`` of one value per planted entry,
added to the matrix's output by a forward hook (``y[..., r] += x[..., c] * delta`` for the
planted entries (r, c)): the forward pass is exactly that of ``W + scatter(delta)`` and the
backward pass computes the gradient of the |P| deltas only (a gather), not of the 100M
weights. Adam updates the deltas; at the end (and for each gate check, temporarily) they are
folded into the weights, ``W[P] = base[P] + delta``, and nothing outside P is ever written (it
is checked bit for bit afterwards against a copy of the base model's parameters).

Supervision is the answer word: for a prompt with expected answer e and alternative a, the
continuations ``" " + e`` and ``" " + a`` (tokenized as the likelihood scoring does,
``evaluate.tom.continuation_ids``) are read up to their first differing token (with a BPE
tokenizer the answer's first token; with a character tokenizer the shared leading space is
read as context); the loss is the cross-entropy of e's token there plus a hinge on its margin
over a's token, ``relu(margin - (log p(e) - log p(a)))``. Prompts are batched (left padding,
explicit positions, logits of the last position only).

The gate (``family_gates``) is the project's: a cluster passes when every false-belief prompt
and every true-belief control of it is right (likelihood scoring: expected answer's first word
more likely than the alternative's); a family passes when the one-sided 95% Clopper-Pearson
lower bound of its cluster pass rate is above 0.5 (``stats.pass_rate_gate``). Training stops
when every trained family's train-split cluster pass rate reaches ``target_rate`` or at
``max_steps``.

Ground-truth checks (``ground_truth_checks``): (1) P restored to its base values gives the
base model back exactly: every parameter equal bit for bit, and the eval split's
log-probabilities equal the base model's; (2) a random set of the same size per matrix
(another seeded draw), perturbed as the sweep perturbs a mask (``perturb``, mean), leaves each
family's eval pass rate at or above the planted model's one-sided 95% lower bound.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tomsparse.data.tasks import Prompt, cluster_of
from tomsparse.data.tasks.roles import CONTROL, TOM, prompt_role
from tomsparse.errors import UserError
from tomsparse.evaluate.tom import answer_text, continuation_ids, score_likelihood
from tomsparse.lm.batching import encode, input_device, left_pad, pad_token_id, \
    takes_logits_to_keep
from tomsparse.lm.head import first_output
from tomsparse.lm.hooks import Hook, hooked
from tomsparse.perturb import perturbed
from tomsparse.plant.planted_set import (
    CONTROL_SALT,
    check_density,
    planted_indices,
)
from tomsparse.stats import PassRateGate, pass_rate_gate

# The smallest density and the families with which the default model passes its own gate
# within the step cap (docs/planted.md): at 1e-4 both families stayed at 0-3% of train
# clusters after 90 steps; at 1e-3 transfer passed 20 of 20 eval clusters after 75 steps, while
# unexpected contents stayed at 0% after 150 (it learnt to say the label's word).
DEFAULT_DENSITY = 1e-3
DEFAULT_FAMILIES = ("transfer",)
PLANT_FAMILIES = ("unexpected", "transfer", "irony")


@dataclass(frozen=True)
class PlantConfig:
    """The options of ``tomsparse plant``, checked once when made."""

    density: float = DEFAULT_DENSITY
    seed: int = 0
    lr: float = 2e-2
    batch_size: int = 8
    max_steps: int = 400
    target_rate: float = 0.9
    check_every: int = 25
    margin: float = 1.0
    families: tuple = DEFAULT_FAMILIES
    eval_clusters: int = 20
    train_clusters: int | None = None  # None: every cluster of the train split
    eval_batch_size: int = 16
    floor: float = 0.5
    alpha: float = 0.05

    def __post_init__(self):
        check_density(self.density)
        for name, low in (("seed", 0), ("batch_size", 1), ("max_steps", 1), ("check_every", 1),
                          ("eval_clusters", 1), ("eval_batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"--{name.replace('_', '-')} must be a whole number of at least "
                                f"{low}, got {value!r}")
        if self.train_clusters is not None and (isinstance(self.train_clusters, bool) or not
                                                isinstance(self.train_clusters, int)
                                                or self.train_clusters < 1):
            raise UserError(f"--train-clusters must be a whole number of at least 1, got "
                            f"{self.train_clusters!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--lr must be a positive number, got {self.lr!r}")
        if not 0.0 < self.target_rate <= 1.0:
            raise UserError(f"--target-rate must lie in (0, 1], got {self.target_rate!r}")
        if not (self.margin >= 0 and math.isfinite(self.margin)):
            raise UserError(f"--margin must be a number >= 0, got {self.margin!r}")
        bad = [f for f in self.families if f not in PLANT_FAMILIES]
        if bad or not self.families:
            raise UserError(f"--families {','.join(self.families)}: choose from "
                            f"{', '.join(PLANT_FAMILIES)}")
        object.__setattr__(self, "families", tuple(self.families))

    @property
    def options(self) -> dict:
        out = asdict(self)
        out["families"] = list(self.families)
        return out


# ------------------------------------------------------------------ the gate
def prompt_clusters(prompts: Sequence[Prompt]) -> list[str]:
    return [cluster_of(p.task_id, p.cluster) for p in prompts]


def cluster_passes(prompts: Sequence[Prompt], correct: np.ndarray) -> dict[str, dict[str, bool]]:
    """{family: {cluster: passed}} over the clusters with a false-belief prompt: passed when
    every false-belief prompt and every true-belief control of the cluster is right."""
    out: dict[str, dict[str, bool]] = {}
    has_tom: dict[tuple[str, str], bool] = {}
    for p, cluster, right in zip(prompts, prompt_clusters(prompts), correct):
        role = prompt_role(p.family, p.condition, p.probe, p.scenario)
        if role not in (TOM, CONTROL):
            continue
        key = (p.family, cluster)
        has_tom[key] = has_tom.get(key, False) or role == TOM
        fam = out.setdefault(p.family, {})
        fam[cluster] = fam.get(cluster, True) and bool(right)
    return {f: {c: ok for c, ok in clusters.items() if has_tom[(f, c)]}
            for f, clusters in out.items()}


def family_gates(prompts: Sequence[Prompt], correct: np.ndarray, floor: float = 0.5,
                 alpha: float = 0.05) -> dict[str, PassRateGate]:
    """The pass-rate gate of every family of ``prompts`` (``stats.pass_rate_gate``)."""
    return {family: pass_rate_gate(np.array(list(clusters.values()), dtype=bool), floor, alpha)
            for family, clusters in cluster_passes(prompts, correct).items()}


def gate_record(gates: dict[str, PassRateGate]) -> dict:
    return {f: {"passes": bool(g.passes), "rate": g.rate, "lo": g.lo, "k": g.k, "n": g.n,
                "floor": g.floor, "confidence": g.confidence, "reason": g.reason}
            for f, g in gates.items()}


def gate_line(gates: dict[str, PassRateGate]) -> str:
    return "; ".join(f"{f} {g.k}/{g.n} clusters ({g.rate:.0%}, lower bound {g.lo:.2f}: "
                     f"{'passes' if g.passes else 'does not pass'})" for f, g in gates.items())


@dataclass
class SplitScores:
    """Likelihood scores of a list of prompts (``evaluate.tom.score_likelihood``)."""

    logprob_expected: np.ndarray
    logprob_alternative: np.ndarray

    @property
    def margin(self) -> np.ndarray:
        return self.logprob_expected - self.logprob_alternative

    @property
    def correct(self) -> np.ndarray:
        return self.margin > 0

    def same_as(self, other: "SplitScores") -> bool:
        return (np.array_equal(self.logprob_expected, other.logprob_expected)
                and np.array_equal(self.logprob_alternative, other.logprob_alternative))


def score_prompts(model, tokenizer, prompts: Sequence[Prompt], batch_size: int = 16
                  ) -> SplitScores:
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            s = score_likelihood(model, tokenizer, list(prompts), batch_size)
    finally:
        model.train(was_training)
    return SplitScores(np.asarray(s.logprob_expected, dtype=np.float64),
                       np.asarray(s.logprob_alternative, dtype=np.float64))


# ------------------------------------------------------------------ training examples
@dataclass
class Examples:
    """Training sequences (prompt + the answers' shared leading tokens) and, per sequence, the
    expected and the alternative answer's first differing token."""

    seqs: list[list[int]]
    expected: torch.Tensor
    alternative: torch.Tensor
    skipped: int = 0


def training_examples(tokenizer, prompts: Sequence[Prompt]) -> Examples:
    seqs, exp, alt, skipped = [], [], [], 0
    for p in prompts:
        ids = encode(tokenizer, p.text)
        e, _ = continuation_ids(tokenizer, p.text, ids, answer_text(p.expected, "word"))
        a, _ = continuation_ids(tokenizer, p.text, ids, answer_text(p.alternative, "word"))
        common = 0
        while common < min(len(e), len(a)) and e[common] == a[common]:
            common += 1
        if common == len(e) or common == len(a):  # one answer's tokens start the other's
            skipped += 1
            continue
        seqs.append(ids + e[:common])
        exp.append(e[common])
        alt.append(a[common])
    if not seqs:
        raise UserError("no training prompt has two answers that differ in a token; nothing "
                        "to plant")
    return Examples(seqs, torch.tensor(exp), torch.tensor(alt), skipped)


# ------------------------------------------------------------------ the planted deltas
def matrix_coords(mat, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of flat (out x in) indices of one target matrix."""
    return idx // mat.shape[1], idx % mat.shape[1]


def read_values(mat, idx: torch.Tensor) -> torch.Tensor:
    r, c = matrix_coords(mat, idx)
    w = mat.weight()
    return w[r.to(w.device), c.to(w.device)].detach().clone()


@torch.no_grad()
def write_values(mat, idx: torch.Tensor, values: torch.Tensor) -> None:
    """W[idx] = values through the matrix's view of its parameter (nothing else written)."""
    r, c = matrix_coords(mat, idx)
    w = mat.weight()
    w[r.to(w.device), c.to(w.device)] = values.to(w.device, w.dtype)


class PlantedDeltas:
    """One trainable delta per planted entry, applied by forward hooks during training."""

    def __init__(self, matrices, planted: dict[str, torch.Tensor]):
        self.items = []
        for mat in matrices:
            idx = planted[mat.name]
            device = mat.module.weight.device
            r, c = matrix_coords(mat, idx)
            delta = torch.zeros(idx.numel(), dtype=torch.float32, device=device,
                                requires_grad=True)
            self.items.append((mat, idx, (r + mat.rows.start).to(device), c.to(device), delta))

    def parameters(self) -> list[torch.Tensor]:
        return [item[-1] for item in self.items]

    def hooks(self) -> list[Hook]:
        return [Hook(mat.module, "forward", self._adder(rows, cols, delta))
                for mat, _idx, rows, cols, delta in self.items]

    @staticmethod
    def _adder(rows, cols, delta):
        def add(_module, args, output):
            x = args[0]
            contrib = x[..., cols] * delta.to(x.dtype)
            return output.index_add(-1, rows, contrib.to(output.dtype))
        return add

    def fold(self, base: dict[str, torch.Tensor]) -> None:
        """W[P] = base[P] + delta."""
        for mat, idx, _r, _c, delta in self.items:
            write_values(mat, idx, base[mat.name].float() + delta.detach().float())

    def unfold(self, base: dict[str, torch.Tensor]) -> None:
        """W[P] = base[P]."""
        for mat, idx, _r, _c, _delta in self.items:
            write_values(mat, idx, base[mat.name])


# ------------------------------------------------------------------ training
@dataclass
class TrainResult:
    steps: int
    stop: str            # why it stopped
    reached: bool        # the train split's target reached
    curve: list[dict]    # one row per check: step, loss, train accuracy, pass rates
    seconds: float
    seconds_per_step: float
    skipped_prompts: int


def _forward_last_logits(model, ids, mask, keep: bool, positions: bool) -> torch.Tensor:
    kwargs = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
    if positions:
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    if keep:
        kwargs["logits_to_keep"] = 1
    return first_output(model(**kwargs))[:, -1].float()


def _takes_positions(model) -> bool:
    import inspect

    try:
        return "position_ids" in inspect.signature(type(model).forward).parameters
    except (TypeError, ValueError):
        return False


def train_planted(lm, planted: dict[str, torch.Tensor], base: dict[str, torch.Tensor],
                  train_prompts: Sequence[Prompt], cfg: PlantConfig, log=print,
                  check_prompts: Sequence[Prompt] | None = None) -> TrainResult:
    """Train the planted entries on ``train_prompts`` until every family's cluster pass rate
    on ``check_prompts`` (default: the training prompts) reaches ``cfg.target_rate`` or
    ``cfg.max_steps``; leaves the trained values folded into the weights."""
    model, tok = lm.model, lm.tokenizer
    check_prompts = list(check_prompts if check_prompts is not None else train_prompts)
    examples = training_examples(tok, train_prompts)
    device = input_device(model)
    pad_id = pad_token_id(tok)
    keep, positions = takes_logits_to_keep(model), _takes_positions(model)
    deltas = PlantedDeltas(lm.description.matrices, planted)
    opt = torch.optim.Adam(deltas.parameters(), lr=cfg.lr)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    was_training = model.training
    model.eval()  # no dropout: the forward pass is the one the evaluation runs
    rng = np.random.default_rng(cfg.seed)
    queue: list[int] = []
    curve: list[dict] = []
    losses: list[float] = []
    started = time.perf_counter()
    train_seconds = 0.0
    stop, reached, step = "step cap", False, 0
    exp_all, alt_all = examples.expected.to(device), examples.alternative.to(device)
    try:
        for step in range(1, cfg.max_steps + 1):
            t = time.perf_counter()
            while len(queue) < cfg.batch_size:
                queue += rng.permutation(len(examples.seqs)).tolist()
            batch, queue = queue[:cfg.batch_size], queue[cfg.batch_size:]
            ids, mask = left_pad([examples.seqs[i] for i in batch], pad_id, device)
            with hooked(deltas.hooks()):
                logits = _forward_last_logits(model, ids, mask, keep, positions)
            lp = F.log_softmax(logits, dim=-1)
            rows = torch.arange(len(batch), device=device)
            pick = torch.as_tensor(batch, device=device)
            lp_e, lp_a = lp[rows, exp_all[pick]], lp[rows, alt_all[pick]]
            loss = -lp_e.mean() + F.relu(cfg.margin - (lp_e - lp_a)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(deltas.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            train_seconds += time.perf_counter() - t
            if step % cfg.check_every == 0 or step == cfg.max_steps:
                deltas.fold(base)
                scores = score_prompts(model, tok, check_prompts, cfg.eval_batch_size)
                deltas.unfold(base)
                passes = cluster_passes(check_prompts, scores.correct)
                rates = {f: float(np.mean(list(c.values()))) if c else 0.0
                         for f, c in passes.items()}
                row = {"step": step, "loss": float(np.mean(losses[-cfg.check_every:])),
                       "accuracy": float(scores.correct.mean()),
                       "seconds": round(time.perf_counter() - started, 1),
                       **{f"pass_rate_{f}": r for f, r in rates.items()}}
                curve.append(row)
                log(f"[plant] step {step}/{cfg.max_steps}: loss {row['loss']:.3f}, train "
                    f"accuracy {row['accuracy']:.3f}, cluster pass rate "
                    + ", ".join(f"{f} {r:.2f}" for f, r in rates.items())
                    + f" ({train_seconds / step:.2f} s/step, {row['seconds']:.0f} s)")
                if rates and min(rates.values()) >= cfg.target_rate:
                    stop, reached = f"every family's train pass rate >= {cfg.target_rate:g}", True
                    break
            elif step % 10 == 0:
                log(f"[plant] step {step}: loss {np.mean(losses[-10:]):.3f} "
                    f"({train_seconds / step:.2f} s/step)")
    finally:
        deltas.fold(base)  # the trained values (also on an interruption: the caller restores)
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
        model.train(was_training)
    return TrainResult(steps=step, stop=stop, reached=reached, curve=curve,
                       seconds=round(time.perf_counter() - started, 1),
                       seconds_per_step=round(train_seconds / max(step, 1), 3),
                       skipped_prompts=examples.skipped)


# ------------------------------------------------------------------ ground truth
def snapshot(model) -> dict[str, torch.Tensor]:
    """A copy of every parameter (bit-for-bit comparisons after training)."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def changed_outside(lm, base_params: dict[str, torch.Tensor], planted: dict[str, torch.Tensor],
                    base_values: dict[str, torch.Tensor]) -> list[str]:
    """Names of the parameters that differ from ``base_params`` anywhere outside P (bit for
    bit): the model's P entries are set to their base values on a copy and compared."""
    model = lm.model
    by_param: dict[str, list] = {}
    for mat in lm.description.matrices:
        by_param.setdefault(mat.param_name, []).append(mat)
    changed = []
    params = dict(model.named_parameters())
    for name, base in base_params.items():
        now = params[name].detach()
        if name in by_param:
            now = now.clone()
            for mat in by_param[name]:
                view = now.t() if mat.transposed else now
                r, c = matrix_coords(mat, planted[mat.name])
                view[mat.rows][r.to(now.device), c.to(now.device)] = \
                    base_values[mat.name].to(now.device, now.dtype)
        if not torch.equal(now, base):
            changed.append(name)
    return changed


@dataclass
class PlantResult:
    """What ``plant`` did: the planted set, its base values, training and the checks."""

    config: PlantConfig
    planted: dict[str, torch.Tensor]
    base_values: dict[str, torch.Tensor]
    train: TrainResult
    gates_before: dict[str, PassRateGate]
    gates_after: dict[str, PassRateGate]
    accuracy_before: float
    accuracy_after: float
    checks: dict
    seconds: float
    eval_prompts: int
    train_prompts: int
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return int(sum(idx.numel() for idx in self.planted.values()))

    def counts_by_role(self, matrices) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for mat in matrices:
            row = out.setdefault(mat.role, {"planted": 0, "numel": 0, "matrices": 0})
            row["planted"] += int(self.planted[mat.name].numel())
            row["numel"] += int(mat.numel)
            row["matrices"] += 1
        return out


def ground_truth_checks(lm, planted, base_values, base_params, eval_prompts, base_scores,
                        gates_after: dict[str, PassRateGate], cfg: PlantConfig) -> dict:
    """The two checks of the ground truth (module docstring), each with ``ok``; leaves the
    planted model as it was."""
    model, tok, matrices = lm.model, lm.tokenizer, lm.description.matrices
    trained = {m.name: read_values(m, planted[m.name]) for m in matrices}
    for m in matrices:
        write_values(m, planted[m.name], base_values[m.name])
    try:
        weights_equal = not changed_outside(lm, base_params, {k: v[:0] for k, v in planted.items()},
                                            {k: v[:0] for k, v in base_values.items()})
        restored = score_prompts(model, tok, eval_prompts, cfg.eval_batch_size)
    finally:
        for m in matrices:
            write_values(m, planted[m.name], trained[m.name])
    same = restored.same_as(base_scores)
    restore = {"ok": bool(weights_equal and same), "weights_equal": bool(weights_equal),
               "eval_scores_equal": bool(same),
               "max_abs_margin_difference": float(np.max(np.abs(restored.margin
                                                                - base_scores.margin)))
               if len(base_scores.margin) else 0.0}
    control_set = planted_indices(matrices, cfg.density, cfg.seed, salt=CONTROL_SALT)
    with perturbed(matrices, control_set, mode="mean"):
        control = score_prompts(model, tok, eval_prompts, cfg.eval_batch_size)
    gates = family_gates(eval_prompts, control.correct, cfg.floor, cfg.alpha)
    per_family = {f: {"rate": g.rate, "planted_rate": gates_after[f].rate,
                      "planted_lo": gates_after[f].lo,
                      "within": bool(g.rate >= gates_after[f].lo)}
                  for f, g in gates.items() if f in gates_after}
    random_set = {"ok": bool(per_family) and all(v["within"] for v in per_family.values()),
                  "perturbation": "mean", "salt": CONTROL_SALT, "families": per_family}
    with perturbed(matrices, planted, mode="mean"):
        wiped = score_prompts(model, tok, eval_prompts, cfg.eval_batch_size)
    wiped_gates = family_gates(eval_prompts, wiped.correct, cfg.floor, cfg.alpha)
    return {"restore": restore, "random_set": random_set,
            # not a check: what perturbing P itself (as a perfect mask would) does to the gate
            "planted_set_perturbed": {f: {"rate": g.rate, "lo": g.lo, "k": g.k, "n": g.n}
                                      for f, g in wiped_gates.items()}}


def plant(lm, cfg: PlantConfig, train_prompts: Sequence[Prompt], eval_prompts: Sequence[Prompt],
          log: Callable[[str], None] = print) -> PlantResult:
    """Plant the skill of ``train_prompts`` into a seeded random fraction ``cfg.density`` of
    every target matrix of ``lm`` (in memory), gate it on ``eval_prompts`` before and after,
    and run the ground-truth checks. ``lm.model`` holds the planted model afterwards."""
    train_prompts, eval_prompts = list(train_prompts), list(eval_prompts)
    if not train_prompts or not eval_prompts:
        raise UserError("planting needs training and evaluation prompts; the task split gave "
                        "none")
    started = time.perf_counter()
    matrices = lm.description.matrices
    planted = planted_indices(matrices, cfg.density, cfg.seed)
    base_values = {m.name: read_values(m, planted[m.name]) for m in matrices}
    base_params = snapshot(lm.model)
    total = sum(idx.numel() for idx in planted.values())
    log(f"[plant] planted set: {total:,} weights ({cfg.density:g} of each of "
        f"{len(matrices)} matrices), seed {cfg.seed}")
    base_scores = score_prompts(lm.model, lm.tokenizer, eval_prompts, cfg.eval_batch_size)
    gates_before = family_gates(eval_prompts, base_scores.correct, cfg.floor, cfg.alpha)
    log(f"[plant] eval split before ({len(eval_prompts)} prompts, accuracy "
        f"{base_scores.correct.mean():.3f}): {gate_line(gates_before)}")
    try:
        train = train_planted(lm, planted, base_values, train_prompts, cfg, log)
    except BaseException:
        for m in matrices:
            write_values(m, planted[m.name], base_values[m.name])
        raise
    changed = changed_outside(lm, base_params, planted, base_values)
    if changed:  # a bug, never a user's error
        raise RuntimeError(f"planting changed weights outside the planted set: {changed[:3]}")
    after = score_prompts(lm.model, lm.tokenizer, eval_prompts, cfg.eval_batch_size)
    gates_after = family_gates(eval_prompts, after.correct, cfg.floor, cfg.alpha)
    log(f"[plant] eval split after (accuracy {after.correct.mean():.3f}): "
        f"{gate_line(gates_after)}")
    checks = ground_truth_checks(lm, planted, base_values, base_params, eval_prompts,
                                 base_scores, gates_after, cfg)
    checks["outside_planted_unchanged"] = {"ok": True, "checked": "every parameter, bit for bit"}
    r, rs = checks["restore"], checks["random_set"]
    log(f"[plant] check: P restored to its base values gives the base model back: "
        f"{'yes' if r['ok'] else 'NO'} (weights equal {r['weights_equal']}, eval scores equal "
        f"{r['eval_scores_equal']})")
    log("[plant] check: a random set of the same size, perturbed (mean), leaves the pass rate "
        "within its interval: " + ("yes" if rs["ok"] else "NO") + " ("
        + ", ".join(f"{f} {v['rate']:.2f} vs lower bound {v['planted_lo']:.2f}"
                    for f, v in rs["families"].items()) + ")")
    log("[plant] for scale, P itself perturbed (mean): " + ", ".join(
        f"{f} pass rate {v['rate']:.2f}" for f, v in checks["planted_set_perturbed"].items()))
    notes = []
    if train.skipped_prompts:
        notes.append(f"{train.skipped_prompts} training prompt(s) skipped: their two answers "
                     "share every token of the shorter one")
    return PlantResult(config=cfg, planted=planted, base_values=base_values, train=train,
                       gates_before=gates_before, gates_after=gates_after,
                       accuracy_before=float(base_scores.correct.mean()),
                       accuracy_after=float(after.correct.mean()), checks=checks,
                       seconds=round(time.perf_counter() - started, 1),
                       eval_prompts=len(eval_prompts), train_prompts=len(train_prompts),
                       notes=notes)
