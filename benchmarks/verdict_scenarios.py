"""Simulated sweeps with a known truth, for the calibration of the verdicts (issue 33, item 6).

A simulated data set is what a real sweep leaves: the point infos and per-prompt tables of
``SweepFolder.read_sweep`` (and, written to disk by ``write_sweep_folder``, a sweep folder
that ``tomsparse summarize`` / ``judge.tables.write_specificity`` judges), built on the bank's
real prompt structure (``load_tasks("builtin").head_clusters(20)``: 20 clusters per family;
unexpected contents and transfer 2 false-belief, 6 true-belief and 8 fact prompts a task,
irony 45 tasks in 20 story scenarios). The design is the default run's (``config.DEFAULTS``):

* the baseline (mode ``none``);
* the difference mask at the primary m = 1e-4 and at the secondary m = 3e-5;
* ``n_random`` random masks at the primary m and ``n_random_secondary`` at the secondary m
  (the default run: 10 and 2);
* the damage-matched controls of the primary target: generic-only (deterministic: one mask)
  and random-fraction (3 seeds), listed in ``matched.json``;
* with ``swapped`` > 0 (claim (f), issue 37): that many task-swapped masks
  (``swapped-<name>``, names from ``SWAPPED_SETS``) at each target m and, searched to the primary target's damage, at
  ``M_SWAPPED_MATCHED`` (listed in ``matched.json`` as a swapped control);
* per-window perplexity losses (32 windows; a random mask's on the first 4, as the default
  run's ``--random-ppl-tokens 4096`` of 32 windows of 1024) whose exp-mean is the recorded
  perplexity.

The model, per point p and prompt i of family f, role r and cluster c (nats; likelihood
scoring writes margin = logprob_expected - logprob_alternative, correct = margin > 0)::

    baseline margin_i = mu_{f,r} + u_{f,c} + e_i           (cluster effect u, prompt noise e)
    change_{p,i}      = -s_p x margin_i                      (general damage: proportional shrink)
                        + tau_p [r = ToM]                    (the scenario's ToM-specific effect)
                        +/- beta_p on two-answer prompts     (a Yes/No answer-bias shift)
                        + A_{p,f,r}                          (the mask's own effect, mask to mask)
                        + B_{p,c,r}                          (mask x cluster effects)
                        + eps_{p,i}                          (prompt noise)

At the secondary m every scenario effect (s, tau, beta, the log perplexity ratio) is
``secondary_scale`` (0.5) of the primary's; the mask effects A, B and the noise are drawn
afresh. Under generation scoring (``reps`` > 1) the margins are not recorded: each rep of a
prompt is right with probability sigmoid(its margin).

A scenario states its truth per claim as a sign relative to the claim's null: -1 the claimed
side (every claim claims "below": a ToM change more negative, a perplexity ratio below 1.10,
a negative slope), 0 at the null, +1 the other side. A "shown" is false when the truth is
not -1, an "opposite direction" when it is not +1.
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tomsparse.config import VerdictRules
from tomsparse.data.tasks import load_tasks
from tomsparse.data.tasks.roles import CONTROL, FACT, TOM, prompt_role
from tomsparse.judge.specificity import POOL_ABOVE, VERDICT_METRICS, compute_specificity
from tomsparse.judge.tables import matched_controls
from tomsparse.judge.verdicts import verdicts
from tomsparse.masks import swapped_mode
from tomsparse.stats import OPPOSITE, PERPLEXITY_THRESHOLD, SHOWN
from tomsparse.sweep.folder import BASELINE_MODE, SweepFolder, point_label

M_PRIMARY, M_SECONDARY = 1e-4, 3e-5
M_GENERIC, M_FRACTION = 6e-5, 4e-4          # the matched controls' searched sizes
M_SWAPPED_MATCHED = 1.3e-4                  # a swapped mask's size at the target's damage
SWAPPED_SETS = ("tom-nobelief", "format-control", "third-set")
N_CLUSTERS = 20
PPL_WINDOWS = 32
RANDOM_PPL_WINDOWS = 4                      # --random-ppl-tokens 4096 at 1024 a window
CLAIM_NAMES = ("a", "b", "c", "d", "e")   # (f) only in scenarios with swapped masks
FAMILY_NAMES = ("unexpected", "transfer", "irony")
SCOPES = (*FAMILY_NAMES, POOL_ABOVE)
KEY = ("family", "task_id", "task_index", "condition", "reversed", "scenario", "probe", "cell",
       "cluster", "expected", "alternative")


@dataclass(frozen=True)
class Scenario:
    """One simulated world. Effects in nats (margins are log-odds of the two answers)."""

    name: str
    title: str
    truth: dict = field(default_factory=dict)   # claim -> -1 / 0 / +1 (default 0)
    # (claim, scope) or (claim, "secondary") -> sign, where it differs from ``truth``
    truth_overrides: dict = field(default_factory=dict)
    reps: int = 1                               # > 1: generation scoring
    n_random: int = 9
    n_random_secondary: int = 3
    n_fraction: int = 3
    clusters: int = N_CLUSTERS
    # baseline margin means per role (ToM, control, fact), cluster and prompt sd
    base_tom: float = 3.0
    base_control: float = 3.0
    base_fact: float = 3.0
    base_cluster_sd: float = 0.5
    base_prompt_sd: float = 0.5
    # the scenario's effects at the primary m
    target_tom: float = 0.0                     # ToM-specific shift of the target (negative: loss)
    target_bias: float = 0.0                    # irony's log P(Yes) - log P(No) shift
    shrink_target: float = 0.0
    shrink_matched: float = 0.0
    shrink_random: float = 0.0
    ppl_target: float = 1.10                    # perplexity ratio to the baseline
    ppl_matched: float | None = None            # None: the target's
    ppl_random: float = 1.0
    ppl_target_secondary: float | None = None   # None: ppl_target ** secondary_scale
    secondary_scale: float = 0.5
    # the masks' own effects: "normal" (sd mask_sd per family and role) or "catastrophic"
    # (per family, cat_size on every prompt with probability cat_p, else 0)
    mask_model: str = "normal"
    mask_sd: float = 0.1
    cat_p: float = 0.1
    cat_size: float = -2.0
    # True: the target's own mask effect is drawn like a random mask's (exchangeable); False:
    # it sits at the random masks' population mean (as does the generic-only control's)
    target_draws: bool = False
    # mask x cluster effects: "normal" or "exponential" (mean 0, sd cluster_sd, long tail on
    # the damage side)
    cluster_model: str = "normal"
    cluster_sd: float = 0.3
    prompt_sd: float = 0.3
    window_sd: float = 0.03                     # per-window noise of the loss change
    # verdict rules other than the defaults (VerdictRules fields), e.g. target_null
    rules: dict = field(default_factory=dict)
    # task-swapped masks (claim f): how many sets; each is built like the target (its
    # general damage, answer-bias shift, perplexity and fixed mask effect), with its own
    # ToM-specific shift (None: the target's, so that (f) is at its null)
    swapped: int = 0
    swapped_tom: float | None = None

    def verdict_rules(self, rules: VerdictRules | None = None) -> VerdictRules:
        """``rules`` (default: the defaults) with this scenario's own overrides."""
        rules = rules or VerdictRules()
        return VerdictRules(**{**rules.as_dict(), **self.rules}) if self.rules else rules

    @property
    def generation(self) -> bool:
        return self.reps > 1

    def target_ppl(self, which: str) -> float:
        """The target's true perplexity ratio at the ``primary`` or ``secondary`` m."""
        if which == "primary":
            return self.ppl_target
        if self.ppl_target_secondary is not None:
            return self.ppl_target_secondary
        return self.ppl_target ** self.secondary_scale

    def truth_of(self, claim: str, which: str, scope: str) -> int:
        """The sign of the truth of ``claim`` at the ``primary`` / ``secondary`` target (""
        for the dose claim) in ``scope``; claim (d) from the target's perplexity ratio
        against the rules' threshold."""
        for key in ((claim, scope, which), (claim, scope), (claim, which)):
            if key in self.truth_overrides:
                return int(self.truth_overrides[key])
        if claim == "d":
            gap = math.log(self.target_ppl(which)) - math.log(PERPLEXITY_THRESHOLD)
            return 0 if abs(gap) < 1e-12 else int(np.sign(gap))
        return int(self.truth.get(claim, 0))


NULL = {c: 0 for c in CLAIM_NAMES}
# general damage: the target hurts ToM more than random masks of its count and its damage
# grows with m (claims a and e true), no more than the damage-matched controls (b, c null);
# its perplexity ratio 1.3 is above 1.10 (d: the other side)
SHRINK_TRUTH = {"a": -1, "b": 0, "c": 0, "e": -1}


def no_effect(name: str, title: str, **kw) -> Scenario:
    """A scenario where every claim is at its null: the target's ToM effect at the random
    masks' and the matched controls' population mean, its perplexity ratio 1.10 at both m."""
    return Scenario(name, title, truth=NULL, ppl_target=1.10, ppl_target_secondary=1.10, **kw)


def scenarios(skewed_masks=(5, 10, 20)) -> list[Scenario]:
    """The named scenarios of the calibration (``bench_verdicts.py`` and its unit test)."""
    out = [
        no_effect("no_effect", "no effect (target at the masks' mean; ppl ratio 1.10)"),
        no_effect("no_effect_exchangeable", "no effect, the target one more random mask "
                  "(its own mask effect drawn)", target_draws=True),
        no_effect("no_effect_exchangeable_judged", "no effect, the target one more random "
                  "mask, judged with --target-null exchangeable", target_draws=True,
                  rules={"target_null": "exchangeable"}),
        no_effect("no_effect_5_each_m", "no effect, 5 random masks at each m",
                  n_random=5, n_random_secondary=5),
        no_effect("weak_model", "no effect, weak model (15-16 of 20 clusters pass: the gate "
                  "passes a family 70-85% of the time)", base_tom=1.0, base_control=1.4,
                  base_fact=2.0, base_cluster_sd=0.4, base_prompt_sd=0.6),
        no_effect("skewed_clusters", "no effect, exponential mask x cluster effects (sd 0.5, "
                  "long tail on the damage side)", cluster_model="exponential",
                  cluster_sd=0.5, prompt_sd=0.2),
        no_effect("one_random_mask", "no effect, 1 random mask at each m", n_random=1,
                  n_random_secondary=1),
        no_effect("irony_bias_generation", "no ToM effect; the target shifts irony's Yes/No "
                  "bias by 2 logits (1 at m = 3e-5); generation scoring, 5 reps", reps=5,
                  target_bias=2.0),
    ]
    out += [no_effect(f"skewed_masks_{n}", f"no effect, skewed mask effects, {n} random "
                      "masks (each catastrophic, -2 nats, with p = 0.1; the target at their "
                      "mean, -0.2)", mask_model="catastrophic", n_random=n)
            for n in skewed_masks]
    # the same skewed masks under the other question, "is the target unlike one more random
    # mask?": the target at their mean (a fixed mask), and the target one more draw (so now
    # and then catastrophic itself); docs/statistics.md explains why no rule holds the fixed
    # question's rate with 10 masks
    out += [
        no_effect("skewed_masks_10_exchangeable_judged", "no effect, skewed mask effects, "
                  "10 random masks, the target at their mean, judged with --target-null "
                  "exchangeable", mask_model="catastrophic", n_random=10,
                  rules={"target_null": "exchangeable"}),
        no_effect("skewed_masks_10_drawn_exchangeable_judged", "no effect, skewed mask "
                  "effects, 10 random masks, the target one more draw (catastrophic with "
                  "p = 0.1), judged with --target-null exchangeable",
                  mask_model="catastrophic", n_random=10, target_draws=True,
                  rules={"target_null": "exchangeable"}),
        # the design that can afford it (a GPU's): 39 random masks at each m
        no_effect("skewed_masks_39_each_m", "no effect, skewed mask effects, 39 random masks "
                  "at each m (the target at their mean)", mask_model="catastrophic",
                  n_random=39, n_random_secondary=39),
    ]
    # claim (f): the task-swapped masks (2 sets, at each m and at matched damage)
    out += [
        no_effect("no_effect_swapped", "no effect, 2 task-swapped masks built like the "
                  "target (f at its null)", swapped=2),
        Scenario("tom_effect_swapped_alike", "ToM-specific effect -1 nat shared by the "
                 "target and 2 task-swapped masks (the format, not belief: f at its null)",
                 truth={c: -1 for c in CLAIM_NAMES}, target_tom=-1.0, ppl_target=1.03,
                 swapped=2),
        Scenario("tom_effect_swapped_spared", "ToM-specific effect -1 nat of the target "
                 "alone; 2 task-swapped masks without it (f claimed)",
                 truth={**{c: -1 for c in CLAIM_NAMES}, "f": -1}, target_tom=-1.0,
                 ppl_target=1.03, swapped=2, swapped_tom=0.0),
    ]
    out += [
        Scenario("shrink_tom_above", "proportional shrink 30% (target and matched controls), "
                 "false-belief baselines 4 above the controls' 2; ppl ratio 1.3",
                 truth=SHRINK_TRUTH, base_tom=4.0, base_control=2.0, shrink_target=0.3,
                 shrink_matched=0.3, ppl_target=1.3),
        Scenario("shrink_tom_below", "proportional shrink 30%, false-belief baselines 2 "
                 "below the controls' 4; ppl ratio 1.3", truth=SHRINK_TRUTH, base_tom=2.0,
                 base_control=4.0, shrink_target=0.3, shrink_matched=0.3, ppl_target=1.3),
        Scenario("tom_effect", "ToM-specific effect: -1 nat on false-belief margins "
                 "(-0.5 at m = 3e-5); ppl ratio 1.03",
                 truth={c: -1 for c in CLAIM_NAMES}, target_tom=-1.0, ppl_target=1.03),
        Scenario("tom_effect_exchangeable", "the ToM-specific effect judged with "
                 "--target-null exchangeable (the target one more mask plus the effect)",
                 truth={c: -1 for c in CLAIM_NAMES}, target_tom=-1.0, ppl_target=1.03,
                 target_draws=True, rules={"target_null": "exchangeable"}),
    ]
    return out


def scenario(name: str) -> Scenario:
    found = [s for s in scenarios() if s.name == name]
    if not found:
        raise KeyError(name)
    return found[0]


# ----------------------------------------------------------------------------- prompts
@functools.lru_cache(maxsize=4)
def prompt_frame(clusters: int = N_CLUSTERS) -> pd.DataFrame:
    """The bank's prompts at ``clusters`` clusters per family: the key columns of a per-prompt
    table, with each prompt's role, its cluster index within the family and its answer sign
    (+1 when it expects "Yes" in a two-answer family, -1 for "No", 0 otherwise)."""
    prompts = load_tasks("builtin").head_clusters(clusters).prompts()
    frame = pd.DataFrame([{k: getattr(p, k) for k in KEY} for p in prompts])
    for col in KEY:
        frame[col] = frame[col].astype(str)
    frame["role"] = [prompt_role(p.family, p.condition, p.probe, p.scenario) for p in prompts]
    frame = frame[frame["role"] != ""].reset_index(drop=True)
    unit = np.where(frame["cluster"] != "", frame["cluster"], "task " + frame["task_id"])
    frame["unit"] = [f"{f}|{u}" for f, u in zip(frame["family"], unit)]
    frame["unit_index"] = pd.factorize(frame["unit"])[0]
    frame["answer_sign"] = np.where(frame["expected"] == "Yes", 1.0,
                                    np.where(frame["expected"] == "No", -1.0, 0.0))
    return frame


@dataclass(frozen=True)
class Layout:
    """Index arrays of the prompt frame, computed once."""

    frame: pd.DataFrame
    family: np.ndarray        # family index per prompt
    role: np.ndarray          # 0 ToM, 1 control, 2 fact
    unit: np.ndarray          # cluster index (over all families)
    answer: np.ndarray        # +1 Yes, -1 No, 0 other
    n_units: int


@functools.lru_cache(maxsize=4)
def layout(clusters: int = N_CLUSTERS) -> Layout:
    frame = prompt_frame(clusters)
    fam = frame["family"].map({f: i for i, f in enumerate(FAMILY_NAMES)}).to_numpy()
    role = frame["role"].map({TOM: 0, CONTROL: 1, FACT: 2}).to_numpy()
    return Layout(frame, fam, role, frame["unit_index"].to_numpy(),
                  frame["answer_sign"].to_numpy(float), int(frame["unit_index"].max()) + 1)


# ----------------------------------------------------------------------------- one data set
@dataclass(frozen=True)
class PointSpec:
    label: str
    mode: str
    seed: int
    m: float
    kind: str                 # baseline, target, random, matched, swapped
    scale: float              # the scenario effects' scale (1 at the primary m)


def design(sc: Scenario) -> list[PointSpec]:
    """The points of a simulated sweep (the default run's design, with the scenario's mask
    counts)."""
    specs = [PointSpec(point_label(BASELINE_MODE, 0, 0.0), BASELINE_MODE, 0, 0.0, "baseline",
                       0.0)]
    for m, scale, n in ((M_PRIMARY, 1.0, sc.n_random),
                        (M_SECONDARY, sc.secondary_scale, sc.n_random_secondary)):
        specs.append(PointSpec(point_label("difference", 0, m), "difference", 0, m, "target",
                               scale))
        specs += [PointSpec(point_label("random", s, m), "random", s, m, "random", scale)
                  for s in range(n)]
    specs.append(PointSpec(point_label("generic-only", 0, M_GENERIC), "generic-only", 0,
                           M_GENERIC, "matched", 1.0))
    specs += [PointSpec(point_label("random-fraction", s, M_FRACTION), "random-fraction", s,
                        M_FRACTION, "matched", 1.0) for s in range(sc.n_fraction)]
    for i in range(sc.swapped):
        mode = swapped_mode(SWAPPED_SETS[i])
        specs += [PointSpec(point_label(mode, 0, m), mode, 0, m, "swapped", scale)
                  for m, scale in ((M_PRIMARY, 1.0), (M_SECONDARY, sc.secondary_scale),
                                   (M_SWAPPED_MATCHED, 1.0))]
    return specs


@dataclass
class DataSet:
    """One simulated sweep: point infos, per-prompt tables, the matched controls and the
    ``matched.json`` content a sweep folder holds."""

    scenario: Scenario
    seed: int
    infos: pd.DataFrame
    prompts: dict[str, pd.DataFrame]
    matched: dict[str, list[str]]
    matched_json: dict


def _mask_effects(sc: Scenario, rng: np.random.Generator, fixed: bool) -> np.ndarray:
    """A mask's own effect per (family, role): drawn, or at the population mean (fixed)."""
    shape = (len(FAMILY_NAMES), 3)
    if sc.mask_model == "normal":
        return np.zeros(shape) if fixed else sc.mask_sd * rng.standard_normal(shape)
    if sc.mask_model == "catastrophic":
        if fixed:
            return np.full(shape, sc.cat_p * sc.cat_size)
        hit = rng.random(len(FAMILY_NAMES)) < sc.cat_p
        return np.repeat(np.where(hit, sc.cat_size, 0.0)[:, None], 3, axis=1)
    raise ValueError(sc.mask_model)


def _cluster_effects(sc: Scenario, rng: np.random.Generator, n_units: int) -> np.ndarray:
    """Mask x cluster effects per (cluster, role), mean 0, sd ``cluster_sd``."""
    if sc.cluster_model == "normal":
        return sc.cluster_sd * rng.standard_normal((n_units, 3))
    if sc.cluster_model == "exponential":
        return -sc.cluster_sd * (rng.exponential(1.0, (n_units, 3)) - 1.0)
    raise ValueError(sc.cluster_model)


def _table(lay: Layout, margin: np.ndarray, sc: Scenario, rng: np.random.Generator
           ) -> pd.DataFrame:
    """A per-prompt table: likelihood (margins and log-probabilities that give them) or
    generation (``reps`` rows a prompt, right with probability sigmoid(margin))."""
    base = lay.frame[list(KEY)]
    if not sc.generation:
        out = base.copy()
        # log P(alternative) somewhere below 0, log P(expected) = it + margin; margin = their
        # difference as the reader recomputes it
        alt = -2.0 - np.abs(margin) - rng.random(len(margin))
        exp = alt + margin
        out["logprob_expected"] = exp
        out["logprob_alternative"] = alt
        out["margin"] = exp - alt
        out["correct"] = out["margin"] > 0
        out["rep"] = 1
        return out
    p = 1.0 / (1.0 + np.exp(-margin))
    right = rng.random((sc.reps, len(margin))) < p[None, :]
    out = pd.concat([base] * sc.reps, ignore_index=True)
    out["logprob_expected"] = np.nan
    out["logprob_alternative"] = np.nan
    out["margin"] = np.nan
    out["correct"] = right.ravel()
    out["rep"] = np.repeat(np.arange(1, sc.reps + 1), len(margin))
    return out


def simulate(sc: Scenario, seed: int) -> DataSet:
    """One simulated sweep of scenario ``sc`` (reproducible from ``seed``)."""
    rng = np.random.default_rng([seed, zlib.crc32(sc.name.encode())])
    lay = layout(sc.clusters)
    n = len(lay.role)
    mu = np.array([sc.base_tom, sc.base_control, sc.base_fact])
    u = sc.base_cluster_sd * rng.standard_normal(lay.n_units)
    margin0 = mu[lay.role] + u[lay.unit] + sc.base_prompt_sd * rng.standard_normal(n)
    # irony's ToM prompts expect "No" and its controls "Yes": the same baseline model holds
    windows0 = 3.0 + 0.3 * rng.standard_normal(PPL_WINDOWS)
    specs = design(sc)
    infos, prompts = [], {}
    ppl_matched = sc.ppl_matched if sc.ppl_matched is not None else sc.ppl_target
    for spec in specs:
        if spec.kind == "baseline":
            margin, losses = margin0, windows0
        else:
            like = "target" if spec.kind == "swapped" else spec.kind  # built like it
            shrink = {"target": sc.shrink_target, "random": sc.shrink_random,
                      "matched": sc.shrink_matched}[like] * spec.scale
            tom = (sc.target_tom if spec.kind == "target" or sc.swapped_tom is None
                   else sc.swapped_tom) * spec.scale if like == "target" else 0.0
            bias = sc.target_bias * spec.scale if like == "target" else 0.0
            fixed = ((like == "target" and not sc.target_draws)
                     or spec.mode == "generic-only")
            a = _mask_effects(sc, rng, fixed)
            b = _cluster_effects(sc, rng, lay.n_units)
            change = (-shrink * margin0 + tom * (lay.role == 0) + bias * lay.answer
                      + a[lay.family, lay.role] + b[lay.unit, lay.role]
                      + sc.prompt_sd * rng.standard_normal(n))
            margin = margin0 + change
            ratio = {"target": sc.ppl_target, "random": sc.ppl_random,
                     "matched": ppl_matched}[like]
            if like == "target":
                ratio = sc.target_ppl("primary" if spec.scale == 1.0 else "secondary")
            else:
                ratio = ratio ** spec.scale
            losses = (windows0 + math.log(ratio)
                      + sc.window_sd * rng.standard_normal(PPL_WINDOWS))
            if spec.kind == "random":
                losses = losses[:RANDOM_PPL_WINDOWS]
        losses = [float(x) for x in losses]
        infos.append(dict(label=spec.label, mode=spec.mode, seed=spec.seed, m=spec.m,
                          perplexity=float(math.exp(sum(losses) / len(losses))),
                          masked=0 if spec.kind == "baseline" else 1000,
                          ppl_windows=len(losses), ppl_unit_losses=losses))
        prompts[spec.label] = _table(lay, margin, sc, rng)
    target = point_label("difference", 0, M_PRIMARY)
    generic = [s.label for s in specs if s.mode == "generic-only"]
    fraction = [s.label for s in specs if s.mode == "random-fraction"]
    info = {i["label"]: i for i in infos}
    swapped = [s.label for s in specs if s.kind == "swapped" and s.m == M_SWAPPED_MATCHED]
    controls = []
    for mode, labels, m, seeds in (("generic-only", generic, M_GENERIC, [0]),
                                   ("random-fraction", fraction, M_FRACTION,
                                    list(range(sc.n_fraction))),
                                   *((swapped_mode(SWAPPED_SETS[i]), [label], M_SWAPPED_MATCHED,
                                      [0]) for i, label in enumerate(swapped))):
        ppl = info[labels[0]]["perplexity"]
        controls.append({"mode": mode, "m": m, "seed": 0, "label": labels[0],
                         "labels": labels, "seeds": seeds, "perplexity": ppl,
                         "ppl_change": ppl / info[specs[0].label]["perplexity"] - 1,
                         "matched": True, "search": [[m, ppl]]})
    matched_json = {"tolerance": 0.1, "floor": 0.0, "targets": {target: {
        "mode": "difference", "m": M_PRIMARY, "seed": 0,
        "perplexity": info[target]["perplexity"], "controls": controls}}}
    return DataSet(sc, seed, pd.DataFrame(infos), prompts,
                   {target: generic + fraction + swapped}, matched_json)


def write_sweep_folder(ds: DataSet, root: str | Path) -> SweepFolder:
    """The data set as a sweep folder (points with their integrity records, matched.json),
    through the folder's owner, as a sweep writes it."""
    folder = SweepFolder(root)
    folder.points_dir.mkdir(parents=True, exist_ok=True)
    for info in ds.infos.to_dict("records"):
        label = info.pop("label")
        table = ds.prompts[label]
        metrics = pd.DataFrame({"level": ["overall"], "family": ["all"],
                                "accuracy": [float(table["correct"].mean())]})
        folder.write_point(label, info, table, metrics)
    folder.write_matched(ds.matched_json)
    return folder


# ----------------------------------------------------------------------------- judging
def judge(ds: DataSet, rules: VerdictRules | None = None) -> list[dict]:
    """The verdicts of a data set in memory: ``compute_specificity`` + ``verdicts``, with the
    rules' gate floor, interval method and target null (as ``judge.tables.write_specificity``
    passes them; ``rules`` default to the defaults with the scenario's own ``rules``), on the metrics the verdicts read (``VERDICT_METRICS``: the same verdicts as every
    metric's tables, bit for bit, which tests/unit/test_calibration.py checks against the
    folder path)."""
    rules = ds.scenario.verdict_rules(rules)
    tables = compute_specificity(ds.infos, ds.prompts, matched=ds.matched,
                                 gate_floor=rules.gate_floor, method=rules.interval_method,
                                 target_null=rules.target_null, metrics=VERDICT_METRICS)
    tables["matched"] = matched_controls(ds.matched_json["targets"])[1]  # its searches
    return verdicts(tables, rules=rules)


def which_target(label: str) -> str:
    """``primary`` / ``secondary`` for a target's label, "" for the dose claim."""
    if not isinstance(label, str) or not label:
        return ""
    return "primary" if label == point_label("difference", 0, M_PRIMARY) else "secondary"


def outcomes(sc: Scenario, vs: list[dict]) -> list[dict]:
    """Per verdict: claim, target (primary / secondary / ""), scope, status, truth sign, and
    whether its outcome is a false direction."""
    rows = []
    for v in vs:
        claim = str(v["claim"])
        which = which_target(v["label"]) if claim != "e" else ""
        scope = str(v["family"]) if claim != "d" else ""
        truth = sc.truth_of(claim, which, scope)
        status = str(v["status"])
        false = (status == SHOWN and truth != -1) or (status == OPPOSITE and truth != 1)
        if claim == "f" and str(v["reference"]).endswith("at matched damage"):
            claim = "f, matched damage"   # its own row: the swapped mask at the target's damage
        rows.append({"claim": claim, "target": which, "scope": scope, "status": status,
                     "truth": truth, "false_direction": bool(false)})
    return rows


def run_one(args) -> list[dict]:
    """Judge data set ``seed`` of a scenario (a worker of the benchmark's pool)."""
    sc, seed, rules = args
    return [dict(r, seed=seed) for r in outcomes(sc, judge(simulate(sc, seed), rules))]
