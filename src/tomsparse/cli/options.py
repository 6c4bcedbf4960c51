"""What several commands share: the model, sweep and list options, the presets of
``tomsparse run``, and turning parsed options into the library's typed configurations.

List values and numbers are parsed by argparse ``type=`` functions that raise
``ArgumentTypeError`` naming the valid range (``positive_int``, ``nonneg_int``, ``seed_int``,
``window_len``, ``finite_float``, ``parse_m_list``, ...), so a bad value ends in argparse's
one-line usage error with exit code 2 before any work. The library's configurations keep
their own checks, for library users.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Callable

from tomsparse.data.corpora import DEFAULT_EVAL, DEFAULT_GENERIC
from tomsparse.data.tasks.loaders import SCORE_PROMPTS
from tomsparse.errors import UserError
from tomsparse.evaluate.perplexity import PROTOCOLS as PPL_PROTOCOLS
from tomsparse.evaluate.tom import ANSWER_RULES
from tomsparse.lm.registry import DEFAULT_MODEL, LoadedModel, load_model
from tomsparse.masks import DEFAULT_RANDOM_SEEDS, check_m_values, parse_mode
from tomsparse.sweep.matched import MATCHABLE
from tomsparse.sweep.runner import SweepConfig, m_grid
from tomsparse.sweep.verdicts import VerdictRules

# Sweep options whose default depends on the command (run's presets) are None in the parser.
SWEEP_DEFAULTS = dict(scoring="likelihood", reps=1, random_seeds=list(DEFAULT_RANDOM_SEEDS),
                      controls=["difference", "random", "tom-only"],
                      matched_controls=["generic-only", "random-fraction"], match_seeds=3,
                      match_search_tokens=4096, ppl_seqlen=2048)

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


def int_at_least(low: int, meaning: str = "") -> Callable[[str], int]:
    """An argparse ``type=``: a whole number ``>= low`` (``meaning`` says what the number is,
    e.g. " (a seed)"), else argparse's usage error naming the valid range and the value."""

    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a whole number{meaning}, {low} or more, got {text!r}") from None
        if value < low:
            at_least = "0 or more" if low == 0 else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {at_least}{meaning}, got {value}")
        return value

    parse.__name__ = f"int_at_least_{low}"
    return parse


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)
# numpy's generators (bootstrap, random masks) take seeds >= 0 only
seed_int = int_at_least(0, " (a seed)")
# a generic or perplexity window: a token and the one it predicts, at least
window_len = int_at_least(2, " (tokens per window)")


def finite_float(text: str) -> float:
    """An argparse ``type=``: a finite number (not nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def parse_controls(text: str) -> list[str]:
    """``--controls random,tom-only`` -> the mask modes of a sweep (difference always first).
    Variants of the mask family are accepted too: ``difference-p4``, ``difference-p4-x3``."""
    wanted = [c.strip() for c in (text or "").split(",") if c.strip() and c.strip() != "none"]
    for c in wanted:
        try:
            parse_mode(c)
        except UserError as exc:
            raise argparse.ArgumentTypeError(f"{exc} (in {text!r}; or none)") from None
    return ["difference"] + [c for c in dict.fromkeys(wanted) if c != "difference"]


def parse_matched(text: str) -> list[str]:
    """``--matched-controls generic-only,random-fraction`` (or ``none``)."""
    wanted = [c.strip() for c in (text or "").split(",") if c.strip() and c.strip() != "none"]
    bad = [c for c in wanted if c not in MATCHABLE]
    if bad:
        raise argparse.ArgumentTypeError(
            f"{bad[0]!r} in {text!r} cannot be size-matched; choose from "
            f"{', '.join(MATCHABLE)} (comma-separated) or none")
    return list(dict.fromkeys(wanted))


def resolve_m_values(args: argparse.Namespace) -> list[float]:
    """``--m_list`` or the reference's ``--m_start/--m_end/--m_step`` grid, not both."""
    m_list = args.m_list
    grid = [args.m_start, args.m_end, args.m_step]
    if m_list is not None and any(g is not None for g in grid):
        raise UserError("give either --m_list or --m_start/--m_end/--m_step, not both")
    if m_list is not None:
        return check_m_values(m_list)
    if any(g is not None for g in grid):
        if any(g is None for g in grid):
            raise UserError("--m_start, --m_end and --m_step go together (e.g. --m_start 0 "
                            "--m_end 5e-5 --m_step 2e-6, the reference's grid)")
        return check_m_values(m_grid(*grid))
    raise UserError("no m values: give --m_list 0,1e-5,3e-5 or --m_start 0 --m_end 5e-5 "
                    "--m_step 2e-6")


def sweep_config(args: argparse.Namespace, m_values: list[float]) -> SweepConfig:
    """The sweep the options describe (shared by ``tomsparse sweep`` and ``tomsparse run``)."""
    return SweepConfig(m_values=list(m_values), modes=list(args.controls),
                       random_seeds=list(args.random_seeds), perturbation=args.perturbation,
                       scale=args.scale, reference_ties=args.reference_ties,
                       scoring=args.scoring, reps=args.reps, seed=args.seed, tasks=args.tasks,
                       task_limit=args.task_limit, corpus=args.corpus,
                       cluster_limit=getattr(args, "clusters", None),
                       secondary_seeds=getattr(args, "secondary_seeds", None),
                       ppl_max_tokens=args.ppl_max_tokens, ppl_protocol=args.ppl_protocol,
                       answer_rule=args.answer_rule,
                       batch_size=args.eval_batch_size,
                       matched_controls=list(args.matched_controls),
                       match_tolerance=args.match_tolerance, match_steps=args.match_steps,
                       match_m=None if args.match_m is None else list(args.match_m),
                       allow_overlap=bool(getattr(args, "allow_overlap", False)),
                       **{k: SWEEP_DEFAULTS[k] if getattr(args, k, None) is None
                          else getattr(args, k)
                          for k in ("match_seeds", "match_search_tokens", "ppl_seqlen")})


# What `tomsparse frontier` evaluates each member on unless told: the default run's tasks and
# perplexity tokens (so its points are comparable with the run's).
FRONTIER_DEFAULTS = dict(clusters=20, ppl_max_tokens=32768, ppl_seqlen=1024)

# Defaults sized so `make run` finishes in about 20 minutes on 2 CPU cores, with the points the
# verdicts use: at the primary m (the largest, 1e-4) the difference mask, 5 random masks and
# the damage-matched controls (generic-only; random-fraction with 3 seeds), at 3e-5 the
# difference mask and one random mask (for the dose-response claim). The mask family members
# are `tomsparse frontier`'s. 20 clusters per family (irony: 20 story scenarios); the
# perplexity over 32 windows of 1024 tokens (32,768: an interval for claim d and for every
# control's damage), the size searches on the next 4096 tokens, held apart.
DEFAULTS = dict(nsamples_tom=24, nsamples_generic=24, seqlen=128,
                m_list=[0.0, 3e-5, 1e-4], random_seeds=list(DEFAULT_RANDOM_SEEDS),
                secondary_seeds=1, **FRONTIER_DEFAULTS, analysis_prompts=16,
                controls=["difference", "random"],
                matched_controls=["generic-only", "random-fraction"], match_m=[1e-4],
                match_seeds=3, match_search_tokens=4096, score_replicates=2)


QUICK = dict(nsamples_tom=8, nsamples_generic=8, seqlen=128, m_list=[0.0, 1e-4],
             random_seeds=[0, 1], task_limit=4, ppl_max_tokens=2048, analysis_prompts=8,
             matched_controls=["random-fraction"], match_seeds=2,
             # 4 windows of 512 tokens: an interval for the perplexity claim at the same cost
             ppl_seqlen=512, match_search_tokens=2048, score_replicates=1)


# The reference's protocol, end to end (a GPU job): its options (FAITHFUL), 100 + 100
# samples, its m grid (numpy.arange(0, 5e-5 + 2e-6, 2e-6): 27 values, the last 5.2e-05),
# every task, the whole perplexity corpus. Beyond the reference: the random control's 5 seeds
# and the damage-matched controls, only at m = 5e-5 (each search costs up to 8 perplexity
# evaluations of the whole corpus).
REFERENCE = dict(FAITHFUL, nsamples_tom=100, nsamples_generic=100, seqlen=128, m_start=0.0,
                 m_end=5e-5, m_step=2e-6, random_seeds=list(DEFAULT_RANDOM_SEEDS), task_limit=None,
                 ppl_max_tokens=None, analysis_prompts=64,
                 matched_controls=["generic-only", "random-fraction"], match_m=[5e-5],
                 # the reference's perplexity is over the whole corpus: nothing can be held
                 # apart from it, so the searches use the reported tokens
                 match_search_tokens=0, score_replicates=1)


# The default run's design sized for a 7B model on one GPU (`tomsparse run --preset paper-7b`):
# the paper's m range with the primary m at its 5e-5, 100 + 100 score samples in 2 replicates,
# every task of the bank (200 contents and transfer tasks, irony's 26 scenarios), 5 random
# masks and the damage-matched controls (random-fraction with 3 seeds) at the primary m, the
# perplexity over 32k tokens with 8k held apart for the searches. `benchmarks/bench_sweep.py`
# projects its cost.
PAPER_7B = dict(nsamples_tom=100, nsamples_generic=100, seqlen=128,
                m_list=[0.0, 1e-5, 3e-5, 5e-5], random_seeds=list(DEFAULT_RANDOM_SEEDS),
                secondary_seeds=1, analysis_prompts=64, controls=["difference", "random"],
                matched_controls=["generic-only", "random-fraction"], match_m=[5e-5],
                match_seeds=3, ppl_max_tokens=32768, ppl_seqlen=2048,
                match_search_tokens=8192, score_replicates=2)
PRESETS = {"default": DEFAULTS, "quick": QUICK, "reference-protocol": REFERENCE,
           "paper-7b": PAPER_7B}


def fill_unset(args: argparse.Namespace, preset: dict) -> None:
    """Set every option of ``args`` the user left unset (argparse's None) from ``preset``;
    options the command does not have are skipped, the user's m values are kept whole."""
    m_given = any(getattr(args, k, None) is not None for k in M_OPTIONS)
    sized = any(getattr(args, k, None) is not None for k in ("task_limit", "clusters"))
    for key, value in preset.items():
        if key in (*M_OPTIONS, "match_m") and m_given:
            continue  # the user's m values replace the preset's, whichever way given
        if key in ("task_limit", "clusters") and sized:
            continue  # the user's task count replaces the preset's, whichever way given
        if hasattr(args, key) and getattr(args, key) is None:
            setattr(args, key, value)


def apply_presets(args: argparse.Namespace) -> list[float]:
    """Fill the options the user left unset from the preset (default, --quick or
    --reference-protocol); returns the sweep's m values."""

    chosen = [name for name, on in (("quick", args.quick),
                                    ("reference-protocol", args.reference_protocol),
                                    (getattr(args, "preset", None), True)) if name and on]
    if len(set(chosen)) > 1:
        flags = " and ".join(f"--{c}" if c != chosen[-1] or not getattr(args, "preset", None)
                             else f"--preset {c}" for c in dict.fromkeys(chosen))
        raise UserError(f"{flags} contradict each other; pick one")
    name = chosen[0] if chosen else "default"
    args.preset = name
    fill_unset(args, {**SWEEP_DEFAULTS, **OURS, **PRESETS[name]})  # REFERENCE holds FAITHFUL
    return resolve_m_values(args)


M_OPTIONS = ("m_list", "m_start", "m_end", "m_step")


def parse_m_list(text: str) -> list[float]:
    """``--m_list 0,1e-5,3e-5`` -> [0.0, 1e-05, 3e-05]."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give comma-separated numbers, e.g. 0,1e-5,3e-5") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give finite numbers (no nan or inf), e.g. 0,1e-5,3e-5")
    return values


def seed_list(text: str) -> list[int]:
    """``--random-seeds 0,1,2`` -> [0, 1, 2]."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers, e.g. 0,1") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: seeds are whole numbers >= 0, e.g. 0,1")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:  # a repeated seed would count one random mask twice as two replicates
        raise argparse.ArgumentTypeError(
            f"{text!r}: seed {', '.join(map(str, repeated))} is given more than once; each "
            "seed is one replicate, so give distinct seeds, e.g. 0,1")
    return values


def add_model_args(p: argparse.ArgumentParser, dtype_default: str | None = "float32") -> None:
    """``dtype_default=None``: the command's preset decides (float16 under
    --reference-protocol, else float32)."""
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"registered offline model, local folder or hub id (default: {DEFAULT_MODEL})")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--dtype", default=dtype_default, choices=["float32", "bfloat16", "float16"],
                   help="weights dtype (default: float32"
                        + ("; float16 with --reference-protocol)" if dtype_default is None
                           else ")"))
    p.add_argument("--device-map", dest="device_map", default=None,
                   help="passed to from_pretrained, e.g. 'auto' to spread a big model over GPUs")
    p.add_argument("--revision", default=None,
                   help="hub id only: the branch, tag or commit to load (default: main)")
    p.add_argument("--cache-dir", dest="cache_dir", default=None,
                   help="hub id only: the Hugging Face hub cache (default: $HF_HUB_CACHE)")


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--m_list", "--m-list", dest="m_list", type=parse_m_list, default=None,
                   help="comma-separated m values (fraction of each matrix), e.g. 0,1e-5,3e-5")
    p.add_argument("--m_start", "--m-start", dest="m_start", type=finite_float, default=None,
                   help="the reference's grid: m_start, m_start + m_step, ..., m_end")
    p.add_argument("--m_end", "--m-end", dest="m_end", type=finite_float, default=None)
    p.add_argument("--m_step", "--m-step", dest="m_step", type=finite_float, default=None)
    p.add_argument("--controls", type=parse_controls, default=None,
                   help="masks run beside the difference mask: random, tom-only, generic-only, "
                        "random-fraction, or a variant of the mask family such as "
                        "difference-p4 (generic set = top 4m) or difference-x3 (3 massive-"
                        "activation channels left out); comma-separated, or none (default: "
                        "random,tom-only; tomsparse run: random, the members of the mask "
                        "family are tomsparse frontier's)")
    p.add_argument("--secondary-seeds", dest="secondary_seeds", type=positive_int,
                   default=None,
                   help="random masks at the m values below the largest get only the first "
                        "this many of --random-seeds (the largest m, where the verdicts are "
                        "decided, gets them all; default: all at every m)")
    p.add_argument("--random-seeds", dest="random_seeds",
                   type=seed_list, default=None,
                   help="seeds of the random control (default: "
                        f"{','.join(map(str, DEFAULT_RANDOM_SEEDS))})")
    p.add_argument("--matched-controls", dest="matched_controls", type=parse_matched,
                   default=None,
                   help="damage-matched controls: for each difference point, the size of these "
                        "masks whose perplexity change matches it is searched, then evaluated "
                        "(default: generic-only,random-fraction; none to skip)")
    p.add_argument("--match-tolerance", dest="match_tolerance", type=finite_float, default=0.10,
                   help="a control is matched when its perplexity change is within this "
                        "fraction of the target's (default 0.10)")
    p.add_argument("--match-steps", dest="match_steps", type=positive_int, default=8,
                   help="perplexity evaluations per search at most (>= 1; default 8)")
    p.add_argument("--match-seeds", dest="match_seeds", type=positive_int, default=None,
                   help="seeds each matched random-fraction control is evaluated with at its "
                        "matched size, so its seed-to-seed variance enters the claims (>= 1; "
                        "default 3)")
    p.add_argument("--match-search-tokens", dest="match_search_tokens", type=nonneg_int,
                   default=None,
                   help="tokens of the perplexity corpus after the reported ones, held apart "
                        "for the matched searches so that a control is not matched on the "
                        "numbers it is judged by (0: search on the reported tokens; default "
                        "4096)")
    p.add_argument("--ppl-seqlen", dest="ppl_seqlen", type=positive_int, default=None,
                   help="tokens per perplexity window (>= 1; default 2048, or the model's "
                        "context when shorter); the perplexity interval is over windows")
    p.add_argument("--match-m", dest="match_m", type=parse_m_list, default=None,
                   help="match only the difference points at these m values (default: all)")
    p.add_argument("--take-over", dest="take_over", action="store_true",
                   help="take over at once the sweep folder's claims of other processes (use "
                        "when their holders are known to be gone; otherwise a claim is taken "
                        "over once its heartbeat is 3 minutes old)")
    p.add_argument("--scale", type=finite_float, default=0.0,
                   help="s in mean + s * (w - mean)")
    p.add_argument("--reference-ties", dest="reference_ties",
                   action=argparse.BooleanOptionalAction, default=None,
                   help="the reference's strict-threshold top-k (ties dropped; the "
                        "--reference-protocol default)")
    p.add_argument("--answer-rule", dest="answer_rule", choices=list(ANSWER_RULES), default=None,
                   help="generated first word vs the answer: tomsparse (default: punctuation "
                        "removed from both) or reference (only . , ' \" ; removed, "
                        "case-sensitive; the --reference-protocol default)")
    p.add_argument("--ppl-protocol", dest="ppl_protocol", choices=list(PPL_PROTOCOLS),
                   default=None,
                   help="perplexity: tomsparse (default: blank rows dropped, no special tokens, "
                        "mean over windows) or reference (every row, special tokens, mean over "
                        "batches of 2 windows; the --reference-protocol default)")
    p.add_argument("--scoring", default=None, choices=["likelihood", "generate", "greedy"],
                   help="ToM scoring (default: likelihood)")
    p.add_argument("--reps", type=positive_int, default=None,
                   help="repetitions of generate scoring (>= 1; default: 1, 5 with "
                        "--reference-protocol)")
    add_evaluation_args(p)
    p.add_argument("--export-model", dest="export_model", type=finite_float, default=None,
                   help="write the perturbed model (difference mask) for this m")
    p.add_argument("--allow-overlap", dest="allow_overlap", action="store_true",
                   help="evaluate on tasks whose stories the ToM scores were computed on (refused "
                        "by default: the verdicts would judge the mask on the stories it was "
                        "chosen on); recorded in the sweep manifest")
    add_verdict_args(p)


def add_score_prompts_arg(p: argparse.ArgumentParser) -> None:
    """``--score-prompts``: which rendered ToM prompts the ToM scores draw from (``run`` and
    ``scores``)."""
    p.add_argument("--score-prompts", dest="score_prompts", choices=list(SCORE_PROMPTS),
                   default="all",
                   help="ToM scores: draw the samples from all rendered prompts (default; the "
                        "reference's) or only the false-belief ones (the belief probes under "
                        "false belief, the ironic remarks, ToMi's false-belief questions)")


def add_verdict_args(p: argparse.ArgumentParser) -> None:
    """The decision rules of the verdicts (``sweep.verdicts.VerdictRules``); left unset, a
    sweep folder keeps the ones its last verdicts used (else the defaults)."""
    p.add_argument("--alpha", type=finite_float, default=None,
                   help="family-wise error rate of the verdicts, Holm-corrected over every "
                        f"claim of the run (default {VerdictRules.alpha})")
    p.add_argument("--equivalence-nats", dest="margin_nats", type=finite_float, default=None,
                   help="a claim is 'ruled out' when the effect lies within +- this many nats "
                        f"of margin (two one-sided tests; default {VerdictRules.margin_nats})")
    p.add_argument("--equivalence-accuracy", dest="margin_accuracy", type=finite_float,
                   default=None,
                   help="the same margin for accuracy under generation scoring, as a fraction "
                        f"(default {VerdictRules.margin_accuracy}: 5 points)")
    p.add_argument("--ppl-threshold", dest="ppl_threshold", type=finite_float, default=None,
                   help="claim (d) holds when the perplexity ratio's upper bound is below "
                        f"this (default {VerdictRules.ppl_threshold}: +10%%)")


def verdict_rules(args: argparse.Namespace) -> VerdictRules | None:
    """The rules given on the command line (unset ones at their defaults), or None when
    none was given."""
    given = {k: getattr(args, k) for k in VerdictRules.__dataclass_fields__
             if getattr(args, k, None) is not None}
    return VerdictRules(**given) if given else None


def add_evaluation_args(p: argparse.ArgumentParser) -> None:
    """What each point evaluates and how it perturbs: shared by ``sweep``, ``run`` and
    ``frontier`` (their defaults are filled by ``fill_unset`` from OURS and the presets)."""
    p.add_argument("--perturbation", choices=["mean", "reference-mean", "zero"], default=None,
                   help="mean (default): masked entries become the mean of the matrix's other "
                        "entries; reference-mean: the reference's (W * not mask).mean() over all "
                        "entries (the --reference-protocol default); zero")
    p.add_argument("--tasks", default="builtin")
    p.add_argument("--task-limit", dest="task_limit", type=positive_int, default=None,
                   help="evaluate the first N >= 1 tasks per family (default: all)")
    p.add_argument("--clusters", dest="clusters", type=positive_int, default=None,
                   help="evaluate the first tasks of each family that cover N >= 1 clusters, "
                        "the unit the verdicts resample (a task; for irony the story scenario "
                        "its tasks share); instead of --task-limit (tomsparse run: 20)")
    p.add_argument("--corpus", default=None,
                   help=f"perplexity corpus (default: {DEFAULT_EVAL}; wikitext2 with "
                        "--reference-protocol)")
    p.add_argument("--ppl-max-tokens", dest="ppl_max_tokens", type=positive_int, default=None,
                   help="perplexity on the first N tokens of the corpus only, at least one "
                        "window (2048 tokens, or the model's context if shorter) (default: the "
                        "whole corpus; tomsparse run: 32768, --quick 2048)")


def load_model_from(args: argparse.Namespace, **overrides) -> LoadedModel:
    """The model ``--model/--device/--dtype/--device-map`` name (``overrides`` win)."""
    options = dict(device=args.device, dtype=args.dtype or "float32",
                   device_map=args.device_map)
    # --revision / --cache-dir, where the command has them (add_model_args)
    options.update({k: getattr(args, k) for k in ("revision", "cache_dir")
                    if getattr(args, k, None) is not None})
    options.update(overrides)
    return load_model(args.model, **options)


def recorded_options(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed options as a manifest records them (paths as text, the handler left out)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())
            if not callable(v)}


# ------------------------------------------------------------------ batch sizes
# Each batch size has its own name, the same in every subcommand: --score-batch-size (samples
# per backward pass of the scores), --eval-batch-size (prompts per forward pass of the ToM
# evaluation), --probe-batch-size (prompts per pass of the analyses' probe),
# --ppl-batch-size (perplexity windows per pass). The old --batch-size, which meant a different
# one in each subcommand, is still accepted where the subcommand has only one of them.
OLD_BATCH_SIZE = "--batch-size"


class RenamedOption(argparse.Action):
    """Stores the value; given by an old spelling, it says so in one line on stderr."""

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.old_spellings:
            print(f"note: {option_string} is now {self.option_strings[0]} (the old spelling "
                  "still works, for now)", file=sys.stderr)
        setattr(namespace, self.dest, values)

    old_spellings: tuple = (OLD_BATCH_SIZE,)


def add_batch_size(p: argparse.ArgumentParser, kind: str, dest: str, default, help: str,
                   old: bool = True) -> None:
    """``--<kind>-batch-size`` (kind: score, eval, probe, ppl), with the old ``--batch-size``
    as a deprecated spelling when ``old``."""
    names = [f"--{kind}-batch-size"] + ([OLD_BATCH_SIZE] if old else [])
    p.add_argument(*names, dest=dest, type=positive_int, default=default, action=RenamedOption,
                   help=help)
