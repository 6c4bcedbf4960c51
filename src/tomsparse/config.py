"""Every option of a sweep and a run, its default and its check, written once.

The command line and Python build the same frozen configurations from here:

- ``SweepConfig`` (what a sweep evaluates), ``VerdictRules`` (how its claims are judged) and
  ``RunConfig`` (the main job: score samples, sweep, analyses). Each checks its values once,
  when it is made, and cannot be changed afterwards (``dataclasses.replace`` makes a new,
  checked one), so nothing downstream checks them again.
- The protocols ``OURS`` and ``FAITHFUL`` (tomsparse's choices and the reference's; README,
  "tomsparse and the reference") and the presets of ``tomsparse run`` (``PRESETS``), plus the
  defaults of the ``sweep`` and ``frontier`` commands (``SWEEP_DEFAULTS`` and ``FRONTIER_DEFAULTS``): plain dicts of
  option names (the command line's ``dest`` names) to values.
- ``resolve(given, preset)`` fills the options a user left unset from a preset, and
  ``SweepConfig.from_options`` / ``SweepConfig.from_preset`` turn resolved options into a
  configuration. The command line parses text into values (``cli.options``) and calls these.

m values travel as given (``--m_list``, or the reference's ``--m_start/--m_end/--m_step``
grid: ``m_values_from``) and are checked once, by ``SweepConfig``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from tomsparse.data.corpora import DEFAULT_EVAL, DEFAULT_GENERIC
from tomsparse.data.score_samples import SWAPPED_SETS, ScoreDataConfig
from tomsparse.errors import UserError
from tomsparse.evaluate.perplexity import PROTOCOLS as PPL_PROTOCOLS
from tomsparse.evaluate.tom import ANSWER_RULES, SCORINGS
from tomsparse.lm.registry import DEFAULT_MODEL
from tomsparse.masks import (DEFAULT_RANDOM_SEEDS, SEEDED_MODES, check_m_values, parse_mode,
                             swapped_name)
from tomsparse.perturb import PERTURBATIONS
from tomsparse.scores.compute import METHODS, SCORES, check_score
from tomsparse.stats import MARGIN_ACCURACY, MARGIN_NATS, PERPLEXITY_THRESHOLD
from tomsparse.stats.controls import TARGET_NULLS
from tomsparse.stats.intervals import METHODS as INTERVAL_METHODS
from tomsparse.stats.intervals import check_level

# Controls whose size can be searched so that they do the difference mask's damage
# (``sweep.matched``), with the search's first size (a multiple of the target's m) and its
# upper bound (a fraction of each matrix).
MATCHABLE = {"generic-only": (1.0, 0.05), "random-fraction": (100.0, 0.5)}

M_OPTIONS = ("m_list", "m_start", "m_end", "m_step")


def m_grid(m_start: float, m_end: float, m_step: float) -> list[float]:
    """The reference's grid, value for value: ``numpy.arange(start, end + step, step)``.

    Floating-point arange keeps its drift and may overshoot ``end``: 0, 5e-5, 2e-6 gives 27
    values, 9.999999999999999e-06 among them and 5.2e-05 last. The reference names its m
    folders with ``str()`` of these values, so they are kept exactly, not rounded."""
    if not m_step > 0:
        raise UserError(f"--m_step must be positive, got {m_step}")
    if m_end < m_start:
        raise UserError(f"--m_end {m_end:g} is below --m_start {m_start:g}")
    return [float(x) for x in np.arange(m_start, m_end + m_step, m_step)]


def m_values_from(m_list=None, m_start=None, m_end=None, m_step=None) -> list[float]:
    """``--m_list`` or the reference's ``--m_start/--m_end/--m_step`` grid, not both (the
    values are checked by ``SweepConfig``)."""
    grid = [m_start, m_end, m_step]
    if m_list is not None and any(g is not None for g in grid):
        raise UserError("give either --m_list or --m_start/--m_end/--m_step, not both")
    if m_list is not None:
        return list(m_list)
    if any(g is not None for g in grid):
        if any(g is None for g in grid):
            raise UserError("--m_start, --m_end and --m_step go together (e.g. --m_start 0 "
                            "--m_end 5e-5 --m_step 2e-6, the reference's grid)")
        return m_grid(*grid)
    raise UserError("no m values: give --m_list 0,1e-5,3e-5 or --m_start 0 --m_end 5e-5 "
                    "--m_step 2e-6")


def _set(obj, name: str, value) -> None:
    """Normalise a field of a frozen configuration while it is being made."""
    object.__setattr__(obj, name, value)


@dataclass(frozen=True)
class SweepConfig:
    """What a sweep evaluates. Its field defaults are the library's (``tomsparse sweep`` and
    ``tomsparse run`` start from ``SWEEP_DEFAULTS`` and ``FRONTIER_DEFAULTS`` and ``PRESETS`` instead)."""

    m_values: list[float]
    modes: list[str] = field(default_factory=lambda: ["difference", "random", "tom-only"])
    random_seeds: list[int] = field(default_factory=lambda: list(DEFAULT_RANDOM_SEEDS))
    perturbation: str = "mean"
    scale: float = 0.0
    reference_ties: bool = False
    scoring: str = "likelihood"
    reps: int = 1
    seed: int = 0
    tasks: str = "builtin"
    task_limit: int | None = None
    # tasks of each family until this many clusters (irony: story scenarios); None: task_limit
    cluster_limit: int | None = None
    corpus: str = DEFAULT_EVAL
    ppl_seqlen: int = 2048
    ppl_max_tokens: int | None = 4096
    # evaluate.perplexity.PROTOCOLS: tomsparse (default) or the reference's
    ppl_protocol: str = "tomsparse"
    # how a generated first word is matched (generate/greedy scorings): tomsparse or reference
    answer_rule: str = "tomsparse"
    batch_size: int = 16
    # Damage-matched controls (sweep.matched): for every difference point, the size of each of
    # these masks whose perplexity change matches it, found in at most match_steps
    # perplexity evaluations, then evaluated in full.
    matched_controls: list[str] = field(default_factory=list)
    match_tolerance: float = 0.10
    match_steps: int = 8
    match_m: list[float] | None = None  # the difference points to match (None: all)
    # seeds of the random masks at the m values below the largest (the primary m gets every
    # one of random_seeds); None: every seed at every m
    secondary_seeds: int | None = None
    # seeds each matched random-fraction control is evaluated with (its mask-to-mask variance)
    match_seeds: int = 3
    # tokens of the perplexity corpus after the reported ones, held apart for the matched
    # searches (so a control is not matched on the numbers it is then judged by); 0 = search
    # on the reported tokens themselves (folders written before the split)
    match_search_tokens: int = 4096
    # perplexity tokens of a random-mask point (the first whole windows of the reported ones,
    # paired window by window with the baseline's): a random mask of the difference mask's
    # count moves perplexity by about 0.1%, so its perplexity is a check, and the tokens it
    # saves pay for more masks; None: the reported tokens, like every other point
    random_ppl_tokens: int | None = None
    # evaluate on tasks that share stories with the ToM score prompts (data.overlap)
    allow_overlap: bool = False

    def __post_init__(self) -> None:
        for name in ("modes", "random_seeds", "matched_controls"):
            _set(self, name, list(getattr(self, name)))
        if self.match_m is not None:
            _set(self, "match_m", list(self.match_m))
        for mode in self.modes:
            parse_mode(mode)  # a clear error for an unknown mode or variant
            if swapped_name(mode) is not None:
                raise UserError(f"--controls {mode}: a task-swapped mask comes with its store, "
                                "--scores-swapped NAME=DIR (tomsparse sweep), not from "
                                "--controls")
        for mode in self.matched_controls:
            if mode not in MATCHABLE:
                raise UserError(f"--matched-controls: {mode!r} cannot be size-matched; choose "
                                f"from {', '.join(MATCHABLE)}")
        for value, known, what in ((self.perturbation, PERTURBATIONS, "perturbation"),
                                   (self.scoring, SCORINGS, "scoring"),
                                   (self.ppl_protocol, PPL_PROTOCOLS, "perplexity protocol"),
                                   (self.answer_rule, ANSWER_RULES, "answer rule")):
            if value not in known:
                raise UserError(f"unknown {what} {value!r}; choose from {', '.join(known)}")
        options = {"reps": "--reps", "batch_size": "--batch-size",
                   "ppl_seqlen": "--ppl-seqlen", "match_steps": "--match-steps",
                   "match_seeds": "--match-seeds"}
        if self.match_search_tokens < 0:
            raise UserError(f"--match-search-tokens must be 0 or more, got "
                            f"{self.match_search_tokens}")
        for name, option in options.items():
            if getattr(self, name) < 1:
                raise UserError(f"{option} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.match_tolerance < 1:
            raise UserError(f"--match-tolerance must lie in (0, 1) (a fraction of the "
                            f"perplexity change), got {self.match_tolerance}")
        if self.task_limit is not None and self.cluster_limit is not None:
            raise UserError("give --task-limit or --clusters, not both (--clusters counts "
                            "irony's story scenarios, --task-limit its tasks)")
        for name in ("task_limit", "ppl_max_tokens", "cluster_limit", "secondary_seeds",
                     "random_ppl_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1 (or left out for "
                                f"all), got {value}")
        if self.seed < 0 or any(x < 0 for x in self.random_seeds):
            raise UserError(f"seeds must be 0 or more (numpy refuses negative seeds), got "
                            f"--seed {self.seed}, --random-seeds {self.random_seeds}")
        seeded = [m for m in self.modes if parse_mode(m).base in SEEDED_MODES]
        if seeded and not self.random_seeds:
            raise UserError(f"the random control {seeded[0]} needs at least one seed "
                            "(--random-seeds 0,1)")
        _set(self, "m_values", check_m_values(self.m_values))  # the one check of m
        if self.matched_controls and self.match_m is not None:
            positive = [m for m in self.m_values if m > 0]
            missing = [x for x in self.match_m if not any(math.isclose(x, m) for m in positive)]
            if missing:
                raise UserError(f"--match-m {', '.join(f'{x:g}' for x in missing)} is not "
                                f"among the sweep's m values > 0 "
                                f"({', '.join(f'{m:g}' for m in positive)})")

    @classmethod
    def from_options(cls, options: dict) -> "SweepConfig":
        """The sweep resolved options describe (the command line's names: ``controls``,
        ``clusters``, ``eval_batch_size``, ``m_list`` / the grid; options the sweep does not
        have are ignored, unset ones keep the field defaults)."""
        names = {f.name for f in fields(cls)}
        renamed = {"controls": "modes", "clusters": "cluster_limit",
                   "eval_batch_size": "batch_size"}
        values = {renamed.get(k, k): v for k, v in options.items()
                  if renamed.get(k, k) in names and v is not None}
        # None means "all" here, not "unset"
        for name in ("ppl_max_tokens", "match_m", "random_ppl_tokens"):
            if name in options:
                values[name] = options[name]
        values["m_values"] = m_values_from(*(options.get(k) for k in M_OPTIONS))
        values["allow_overlap"] = bool(values.get("allow_overlap", False))
        return cls(**values)

    @classmethod
    def from_preset(cls, preset: str = "default", **given) -> "SweepConfig":
        """The sweep of a ``tomsparse run`` preset (``PRESETS``), with ``given`` options (the
        command line's names) replacing the preset's."""
        return cls.from_options(resolve(given, preset))

    def check_export(self, export_m: float | None) -> None:
        """``--export-model`` must name one of the sweep's m values > 0."""
        ms = self.m_values
        if export_m is not None and not any(m > 0 and abs(m - export_m) <= 1e-12 * max(m, 1e-30)
                                            for m in ms):
            raise UserError(f"--export-model {export_m:g} is not one of the sweep's m values "
                            f"> 0 ({', '.join(f'{m:g}' for m in ms if m > 0) or 'none'})")

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# Options added after sweep folders already existed, with the value those folders ran with:
# a folder whose recorded config lacks one of them resumes as if it had recorded it.
ADDED_SWEEP_OPTIONS = {"ppl_protocol": "tomsparse", "answer_rule": "tomsparse",
                       "allow_overlap": False, "match_seeds": 1, "match_search_tokens": 0,
                       "cluster_limit": None, "secondary_seeds": None,
                       "random_ppl_tokens": None}


# measured by the calibration suite (benchmarks/bench_verdicts.py, scenario
# no_effect_exchangeable, 1,000 runs; docs/statistics.md): the share of runs with a false
# outcome when the difference mask is one more random mask and judged as a fixed one
EXCHANGEABLE_UNDER_FIXED = "12.5%"
# the same for skewed mask effects (scenario skewed_masks_10: each random mask catastrophic
# with probability 0.1; 10 random masks at the primary m and 3 at the smaller, the default's
# size), and with 39 random masks at each m (skewed_masks_39_each_m)
SKEWED_MASKS_RATE = "40.0%"
SKEWED_MASKS_39_RATE = "3.3%"
# claim (f) (issue 37): the share of runs with a false outcome among all claims when two
# task-swapped masks are built like the target (no_effect_swapped, 300 runs), and the share
# of its instances at the primary m shown when the target alone removes 1 nat of ToM
# (tom_effect_swapped_spared, 300 runs)
SWAPPED_NULL_RATE = "3.3%"
SWAPPED_POWER = "97.5%"


@dataclass(frozen=True)
class VerdictRules:
    """The numbers the verdicts are decided by: ``alpha`` the family-wise error rate (Holm);
    ``margin_nats`` / ``margin_accuracy`` the equivalence margins of "ruled out" (likelihood
    margins in nats; accuracy as a fraction); ``ppl_threshold`` the perplexity ratio claim
    (d) must stay below. ``describe`` says them in plain words (the report prints it)."""

    alpha: float = 0.05
    margin_nats: float = MARGIN_NATS
    margin_accuracy: float = MARGIN_ACCURACY
    ppl_threshold: float = PERPLEXITY_THRESHOLD
    # claim (c)'s equivalence margin: its relative belief gap is a share of the baseline
    # margins, so its margin is one too
    margin_relative: float = 0.1
    # a family is judged when the one-sided lower confidence bound of its cluster pass rate
    # (all false-belief and true-belief prompts right) is above this
    gate_floor: float = 0.5
    # the intervals over clusters: "skew" (the t-interval widened on the side a skewed sample
    # points to, out to Hall's skewness-corrected bound: it holds its one-tailed rate under
    # skewed cluster effects) or "t" (the plain t-interval)
    interval_method: str = "skew"
    # what a single target mask is compared as against masks of a kind (random masks, seeded
    # matched controls) and in the dose slope: "fixed" (does this mask's effect differ from
    # their mean?) or "exchangeable" (is it unlike one more mask of that kind? its own draw's
    # variance added: a prediction interval, far less power with few masks)
    target_null: str = "fixed"

    def __post_init__(self):
        check_level(self.alpha, "alpha")
        for name, option in (("margin_nats", "--equivalence-nats"),
                             ("margin_accuracy", "--equivalence-accuracy"),
                             ("margin_relative", "--equivalence-relative")):
            if not getattr(self, name) > 0:
                raise UserError(f"{option} must be positive (got {getattr(self, name)}); "
                                f"the defaults are {MARGIN_NATS} nats and {MARGIN_ACCURACY}")
        if self.interval_method not in INTERVAL_METHODS:
            raise UserError(f"--interval-method must be one of {', '.join(INTERVAL_METHODS)} "
                            f"(got {self.interval_method!r})")
        if self.target_null not in TARGET_NULLS:
            raise UserError(f"--target-null must be one of {', '.join(TARGET_NULLS)} "
                            f"(got {self.target_null!r})")
        if not 0 <= self.gate_floor < 1:
            raise UserError(f"--gate-floor is a pass rate and must lie in [0, 1) (got "
                            f"{self.gate_floor}); e.g. 0.5")
        if not self.ppl_threshold > 1:
            raise UserError(f"--ppl-threshold is a perplexity ratio and must exceed 1 (got "
                            f"{self.ppl_threshold}); e.g. {PERPLEXITY_THRESHOLD} for +10%")

    @classmethod
    def from_options(cls, options: dict) -> "VerdictRules | None":
        """The rules given (unset ones at their defaults), or None when none was given."""
        given = {f.name: options[f.name] for f in fields(cls)
                 if options.get(f.name) is not None}
        return cls(**given) if given else None

    @classmethod
    def from_kept(cls, kept: dict) -> "VerdictRules":
        """The rules a sweep folder kept (``verdict_rules.json``); rules it predates keep
        their defaults."""
        types = {f.name: f.type for f in fields(cls)}
        return cls(**{k: (str(v) if types[k] in ("str", str) else float(v))
                      for k, v in kept.items() if k in types})

    def as_dict(self) -> dict:
        return asdict(self)

    def _target_null_text(self) -> str:
        if self.target_null == "exchangeable":
            return ("The difference mask is compared as one more draw of the masks it stands "
                    "against (--target-null exchangeable): its own draw's variance is added, "
                    "estimated by their spread (a prediction interval), so a target that is "
                    "just another random mask is not \u201cshown\u201d; with few masks this "
                    "costs much power (docs/statistics.md).")
        return ("The difference mask is compared as a fixed mask (--target-null fixed): does "
                "its effect differ from the random masks' mean? If it were just one more "
                "random mask, its own draw would count as a difference (measured: "
                f"{EXCHANGEABLE_UNDER_FIXED} of runs with a false outcome; --target-null "
                "exchangeable asks the other question; docs/statistics.md).")

    def describe(self, n_tests: int | None = None, swapped: bool = False) -> str:
        """The decision rules and their error rates, in plain words (``swapped``: with claim
        (f)'s, for a sweep with task-swapped masks)."""
        count = f" ({n_tests} of them in this run)" if n_tests is not None else ""
        shape = ("skew-aware t-intervals (the t-interval widened on the side a skewed sample "
                 "points to, out to Hall's skewness-corrected bound)"
                 if self.interval_method == "skew" else "Student t-intervals")
        return (f"A family is judged only when the model passes its own controls: the "
                f"one-sided 95% lower bound (Clopper-Pearson) of the share of its clusters "
                f"with every false-belief prompt and every true-belief control right is above "
                f"{self.gate_floor:.0%}, and then only on those clusters (an ability cannot be "
                f"removed where the model lacks it). Every judged claim, and its equivalence "
                f"test, is one test{count}; together they are one family, corrected by Holm's "
                f"method: the family-wise error rate, the chance that any \u201cshown\u201d, "
                f"\u201copposite direction\u201d or \u201cruled out\u201d in this run is "
                f"wrong, is at most {self.alpha:.0%}. A claim is \u201cshown\u201d when its Holm-adjusted interval "
                f"lies wholly on the claimed side of zero, \u201copposite direction\u201d when it "
                f"lies wholly on the other side, \u201cruled out\u201d when two one-sided tests "
                f"put the effect within \u00b1{self.margin_nats:g} nats "
                f"(\u00b1{self.margin_accuracy * 100:g} accuracy points under generation "
                f"scoring; \u00b1{self.margin_relative:.0%} of the baseline margins for claim "
                f"(c)), and \u201cnot shown\u201d otherwise: an interval that covers zero is not "
                f"evidence of no effect, and beside each claim stands the smallest effect it "
                f"could have shown with 80% power. Intervals are {shape} over clusters (tasks; "
                f"story scenarios for irony), with the mask-to-mask variance added where several "
                f"masks stand behind a control; a comparison with masks drawn at random needs at "
                f"least 2 of a kind. The comparison with random masks assumes their effects are "
                f"not heavy-tailed: it estimates the masks' mean from the masks drawn, so a rare "
                f"catastrophic mask that none of them happens to be is not in it (measured: with "
                f"10 masks (3 at the smaller m), each catastrophic with probability 0.1, "
                f"{SKEWED_MASKS_RATE} of runs have a false outcome; with 39 masks at each m, "
                f"--random-seeds 0-38 --secondary-seeds 39, {SKEWED_MASKS_39_RATE}; "
                f"docs/statistics.md). "
                f"{self._target_null_text()} "
                f"Claim (c) compares changes relative to each role's baseline "
                f"margin, so the same proportional damage to every prompt cannot fake or "
                f"reverse it; ToM changes are adjusted for a shift between the two answers "
                f"where a cluster's prompts share one answer pair (under generation scoring, "
                f"where accuracy cannot be adjusted exactly, a claim whose mask moved that "
                f"answer bias is \u201ccannot be measured\u201d). Claim (d) holds when the "
                f"upper bound of the perplexity ratio is below {self.ppl_threshold:g}; claim (e) "
                f"is the mean per-cluster slope on log m of the ToM change beyond the random "
                f"masks'. "
                + (f"Claim (f) sets the difference mask against one task-swapped mask, a "
                   f"fixed mask, at the same m and, where controls are damage-matched, at the "
                   f"size whose perplexity matched the target's; it is judged as claim (a), "
                   f"over clusters, in the same Holm family (measured with two swapped masks "
                   f"built like the target: {SWAPPED_NULL_RATE} of runs with a false outcome "
                   f"among all claims; (f) shown in {SWAPPED_POWER} of its instances when the "
                   f"target alone removes 1 nat). " if swapped else "")
                + "The measured error rates and power of these rules are in "
                "docs/statistics.md (the calibration suite).")


@dataclass(frozen=True)
class RunConfig:
    """Everything the main job needs, resolved (presets applied, m values known).

    ``options`` is what the manifest records as the run's options (the command line's, as
    resolved); it does not steer anything.
    """

    out: Path
    tom_data: ScoreDataConfig
    generic_data: ScoreDataConfig
    sweep: SweepConfig
    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "float32"
    device_map: str | None = None
    revision: str | None = None  # a hub id's branch, tag or commit (None: main)
    cache_dir: str | None = None  # a hub id's cache (None: $HF_HUB_CACHE)
    score_batch_size: int = 8
    score_method: str = "batched"
    score_reference_fp16: bool = False  # the reference's fp16 squares and sums (scores.compute)
    score: str = SCORES[0]  # the attribution score of both score sets: fisher, snip or wanda
    export_m: float | None = None
    analysis_prompts: int = 16  # 0: no analyses
    take_over: bool = False  # the sweep folder's locks held by other processes (sweep.locks)
    rules: VerdictRules | None = None  # the verdicts' decision rules (None: defaults)
    score_replicates: int = 1  # independent score sets (judge.replicates); 1 = none
    # task-swapped score sets swept as controls (tom-nobelief, format-control; claim f)
    swapped: tuple = ()
    # attribution scores compared with the run's own (judge.methods); the run's own among
    # them is skipped
    methods: tuple = ()
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _set(self, "out", Path(self.out))
        if self.tom_data.dataset != "tom" or self.generic_data.dataset != "generic":
            raise UserError("RunConfig needs a tom and a generic score data configuration")
        if self.score_method not in METHODS:
            raise UserError(f"unknown score method {self.score_method!r}; use one of "
                            f"{', '.join(METHODS)}")
        check_score(self.score, self.score_reference_fp16)
        if self.score_batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.score_batch_size} "
                            "(--score-batch-size)")
        if self.analysis_prompts < 0:
            raise UserError(f"--analysis-prompts must be 0 or more, got {self.analysis_prompts}")
        if self.score_replicates < 1:
            raise UserError(f"--score-replicates must be at least 1, got "
                            f"{self.score_replicates}")
        _set(self, "swapped", tuple(dict.fromkeys(self.swapped)))
        for name in self.swapped:
            if name not in SWAPPED_SETS:
                raise UserError(f"--swapped-controls {name}: unknown task-swapped set; use "
                                f"{' or '.join(SWAPPED_SETS)} (or none)")
        _set(self, "methods", tuple(dict.fromkeys(self.methods)))
        for method in self.methods:
            check_score(method, False)
        if self.methods and self.score_reference_fp16:
            raise UserError("--methods compares attribution scores computed as tomsparse "
                            "computes them; --reference-fp16 applies to Fisher only: leave "
                            "one of them out")

    @property
    def other_methods(self) -> tuple:
        """The attribution scores compared with the run's own (``--methods`` less ``score``)."""
        return tuple(m for m in self.methods if m != self.score)

    @classmethod
    def from_options(cls, options: dict) -> "RunConfig":
        """The main job resolved options describe (``resolve``; the command line's names)."""
        o = options
        common = dict(seed=o.get("seed", 0), supervision=o["supervision"])
        windows = "reference" if o["reference_windows"] else "tomsparse"
        return cls(
            out=o["out"], model=o.get("model", DEFAULT_MODEL), device=o.get("device", "auto"),
            dtype=o["dtype"], device_map=o.get("device_map"), revision=o.get("revision"),
            cache_dir=o.get("cache_dir"),
            # seqlen 0: ToM prompts are scored whole (up to the model's context).
            tom_data=ScoreDataConfig(dataset="tom", nsamples=o["nsamples_tom"], seqlen=0,
                                     prompts=o.get("data_path") or "builtin",
                                     corpus=o["generic_corpus"],
                                     select=o.get("score_prompts", "all"), **common),
            generic_data=ScoreDataConfig(dataset="generic", nsamples=o["nsamples_generic"],
                                         seqlen=o["seqlen"], corpus=o["generic_corpus"],
                                         windows=windows, **common),
            sweep=SweepConfig.from_options(o),
            score_batch_size=o.get("batch_size", 8), score_method=o.get("method", "batched"),
            score_reference_fp16=o["reference_fp16"], score=o.get("score") or SCORES[0],
            export_m=o.get("export_model"),
            take_over=bool(o.get("take_over", False)), rules=VerdictRules.from_options(o),
            score_replicates=o["score_replicates"],
            swapped=tuple(o.get("swapped_controls") or ()),
            methods=tuple(o.get("methods") or ()),
            analysis_prompts=o["analysis_prompts"] if o.get("analysis", True) else 0,
            options=dict(o.get("recorded", {})))


# ------------------------------------------------------------------ protocols and presets
# Where tomsparse's defaults and the reference's protocol part (README, "tomsparse and the
# reference"). --reference-protocol fills every option the user left unset from FAITHFUL;
# otherwise they come from OURS. A command fills only the options it has.
OURS = dict(dtype="float32", reference_fp16=False, supervision="answer",
            reference_windows=False, generic_corpus=DEFAULT_GENERIC, corpus=DEFAULT_EVAL,
            reference_ties=False, perturbation="mean", answer_rule="tomsparse",
            ppl_protocol="tomsparse")
FAITHFUL = dict(
    dtype="float16",            # the reference loads its model in fp16
    reference_fp16=True,        # per-sample squares in fp16, summed in fp16, one per backward
    supervision="last-token",   # ToM scores: the loss of the prompt's own last token
    reference_windows=True,     # its C4 window recipe (data.score_samples)
    generic_corpus="c4",        # allenai/c4 shard 00000 (needs the hub)
    corpus="wikitext2",         # WikiText-2 raw test split (needs the hub)
    reference_ties=True,        # strict-threshold top-k: ties at the k-th value dropped
    perturbation="reference-mean",
    answer_rule="reference",    # first word with only . , ' " ; removed, case-sensitive
    ppl_protocol="reference",   # every row, special tokens, mean over batches of 2 windows
    scoring="generate", reps=5,  # T 0.6, top-p 0.9, 5 new tokens, 5 reps
)

# `tomsparse sweep`'s defaults where they differ from SweepConfig's: the controls and both
# damage-matched controls, perplexity over the whole corpus (--ppl-max-tokens unset)
SWEEP_DEFAULTS = dict(scoring="likelihood", reps=1, random_seeds=list(DEFAULT_RANDOM_SEEDS),
                     controls=["difference", "random", "tom-only"],
                     matched_controls=["generic-only", "random-fraction"], match_seeds=3,
                     match_search_tokens=4096, ppl_seqlen=2048)

# What `tomsparse frontier` evaluates each member on unless told: the default run's tasks and
# perplexity tokens (so its points are comparable with the run's).
FRONTIER_DEFAULTS = dict(clusters=20, ppl_max_tokens=32768, ppl_seqlen=1024)

# The options of `tomsparse run` that every preset sets (the score samples, the analyses)
_RUN_BASE = dict(seqlen=128, score_replicates=1, analysis_prompts=16, score_prompts="all",
                 swapped_controls=[], methods=[])

# The random masks of the default run and of paper-7b: 9 at the primary m, where claim (a)
# is decided, and the first 3 at the smaller m (claims a and e there carry the masks' draw
# with N - 1 df: 3 masks instead of 2 took the pooled power of (e) from 73% to 94% at the
# same 12 points; docs/statistics.md); their perplexity on the first 4 windows only (a
# check: random masks of the difference mask's count move it by about 0.1%), which pays for
# the extra masks.
RUN_RANDOM_SEEDS = tuple(range(9))
RUN_SECONDARY_SEEDS = 3

# Defaults sized so `make run` finishes in about 20 minutes on 2 CPU cores, with the points the
# verdicts use: at the primary m (the largest, 1e-4) the difference mask, 9 random masks and
# the damage-matched controls (generic-only; random-fraction with 3 seeds), at 3e-5 the
# difference mask and 3 random masks (for the dose-response claim). The mask family members
# are `tomsparse frontier`'s. 20 clusters per family (irony: 20 story scenarios); the
# perplexity over 32 windows of 1024 tokens (32,768: an interval for claim d and for every
# control's damage; random masks on the first 4,096), the size searches on the next 4096
# tokens, held apart.
DEFAULTS = dict(_RUN_BASE, nsamples_tom=24, nsamples_generic=24,
               m_list=[0.0, 3e-5, 1e-4], random_seeds=list(RUN_RANDOM_SEEDS),
               secondary_seeds=RUN_SECONDARY_SEEDS, random_ppl_tokens=4096, **FRONTIER_DEFAULTS,
               controls=["difference", "random"],
               matched_controls=["generic-only", "random-fraction"], match_m=[1e-4],
               match_seeds=3, match_search_tokens=4096, score_replicates=2)

QUICK = dict(_RUN_BASE, nsamples_tom=8, nsamples_generic=8, m_list=[0.0, 1e-4],
             random_seeds=[0, 1], task_limit=4, ppl_max_tokens=2048, analysis_prompts=8,
             matched_controls=["random-fraction"], match_seeds=2,
             # 4 windows of 512 tokens: an interval for the perplexity claim at the same cost
             ppl_seqlen=512, match_search_tokens=2048)

# The reference's protocol, end to end (a GPU job): its options (FAITHFUL), 100 + 100
# samples, its m grid (numpy.arange(0, 5e-5 + 2e-6, 2e-6): 27 values, the last 5.2e-05),
# every task, the whole perplexity corpus. Beyond the reference: the random control's 5 seeds
# and the damage-matched controls, only at m = 5e-5 (each search costs up to 8 perplexity
# evaluations of the whole corpus).
REFERENCE = dict(_RUN_BASE, **FAITHFUL, nsamples_tom=100, nsamples_generic=100, m_start=0.0,
                 m_end=5e-5, m_step=2e-6, random_seeds=list(DEFAULT_RANDOM_SEEDS),
                 task_limit=None, ppl_max_tokens=None, analysis_prompts=64,
                 matched_controls=["generic-only", "random-fraction"], match_m=[5e-5],
                 # the reference's perplexity is over the whole corpus: nothing can be held
                 # apart from it, so the searches use the reported tokens
                 match_search_tokens=0)

# The default run's design sized for a 7B model on one GPU (`tomsparse run --preset paper-7b`):
# the paper's m range with the primary m at its 5e-5, 100 + 100 score samples in 2 replicates,
# every task of the bank (200 contents and transfer tasks, irony's 26 scenarios), 9 random
# masks (3 at each smaller m, their perplexity on 4 windows) and the damage-matched controls (random-fraction with 3 seeds) at the primary m, the
# perplexity over 32k tokens with 8k held apart for the searches. `benchmarks/bench_sweep.py`
# projects its cost.
PAPER_7B = dict(_RUN_BASE, nsamples_tom=100, nsamples_generic=100,
                m_list=[0.0, 1e-5, 3e-5, 5e-5], random_seeds=list(RUN_RANDOM_SEEDS),
                secondary_seeds=RUN_SECONDARY_SEEDS, random_ppl_tokens=8192, analysis_prompts=64, controls=["difference", "random"],
                matched_controls=["generic-only", "random-fraction"], match_m=[5e-5],
                match_seeds=3, ppl_max_tokens=32768, ppl_seqlen=2048,
                match_search_tokens=8192, score_replicates=2)

# The default design with every check of issue 37 (`tomsparse run --preset methods`): the ToM
# scores on the false-belief prompts only (so that the task-swapped set, the same stories'
# prompts that need no belief, is their contrast; the default's all-prompt set is mostly
# no-belief prompts), both task-swapped controls swept at every m (claim f), and the SNIP
# and Wanda difference masks beside Fisher's, evaluated at the primary m and compared (mask
# agreement). One score draw: the methods are the check on the mask here.
METHODS_PRESET = dict(DEFAULTS, score_prompts="false-belief",
                      swapped_controls=list(SWAPPED_SETS), methods=list(SCORES),
                      score_replicates=1)

PRESETS = {"default": DEFAULTS, "quick": QUICK, "reference-protocol": REFERENCE,
           "paper-7b": PAPER_7B, "methods": METHODS_PRESET}


def preset_options(preset: str) -> dict:
    """Every option a ``tomsparse run`` preset sets: the sweep command's defaults, then the
    protocol (``OURS``; the reference preset holds ``FAITHFUL``), then the preset's own."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    return {**SWEEP_DEFAULTS, **OURS, **PRESETS[preset]}


def resolve(given: dict, defaults: str | dict = "default", has=None) -> dict:
    """``given`` with every option left unset (absent or None) filled from ``defaults`` (a
    preset's name, or the dict of options to fill from). ``has``: the options the caller has
    (default: every option of ``given`` and ``defaults``); others are not filled. The user's
    m values replace the preset's whichever way given (a list or the grid), and so does the
    user's task count (``task_limit`` or ``clusters``)."""
    fill = preset_options(defaults) if isinstance(defaults, str) else dict(defaults)
    out = dict(given)
    m_given = any(given.get(k) is not None for k in M_OPTIONS)
    sized = any(given.get(k) is not None for k in ("task_limit", "clusters"))
    for key, value in fill.items():
        if key in (*M_OPTIONS, "match_m") and m_given:
            continue
        if key in ("task_limit", "clusters") and sized:
            continue
        if has is not None and key not in has:
            continue
        if out.get(key) is None:
            out[key] = list(value) if isinstance(value, list) else value
    return out
