"""What several commands share: the model, sweep and list options, and turning parsed
options into the library's typed configurations (the presets, defaults and checks are
``tomsparse.config``'s; this module only parses text and fills a namespace from them).

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

from tomsparse.config import (M_OPTIONS, MATCHABLE, SweepConfig, VerdictRules, m_values_from,
                              resolve)
from tomsparse.data.corpora import DEFAULT_EVAL
from tomsparse.data.score_samples import SWAPPED_SETS
from tomsparse.data.tasks.loaders import SCORE_PROMPTS, load_tasks
from tomsparse.errors import UserError
from tomsparse.evaluate.perplexity import PROTOCOLS as PPL_PROTOCOLS
from tomsparse.evaluate.tom import ANSWER_RULES
from tomsparse.lm.registry import DEFAULT_MODEL, LoadedModel, load_model
from tomsparse.masks import DEFAULT_RANDOM_SEEDS, parse_mode
from tomsparse.scores.compute import SCORES

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


def fill_unset(args: argparse.Namespace, defaults: str | dict) -> None:
    """Set every option of ``args`` the user left unset (argparse's None) from ``defaults`` (a
    preset's name or a dict of options; ``config.resolve``: options the command does not
    have are skipped, the user's m values and task count are kept whole)."""
    options = vars(args)
    for key, value in resolve(options, defaults, has=set(options)).items():
        setattr(args, key, value)


def m_values(args: argparse.Namespace) -> list[float]:
    """The m values ``--m_list`` or ``--m_start/--m_end/--m_step`` give (checked, with every
    other sweep option, when the ``SweepConfig`` is made)."""
    return m_values_from(*(getattr(args, k, None) for k in M_OPTIONS))


def apply_presets(args: argparse.Namespace) -> list[float]:
    """Fill the options the user left unset from the preset (default, --quick,
    --reference-protocol or --preset NAME); returns the sweep's m values."""

    chosen = [name for name, on in (("quick", args.quick),
                                    ("reference-protocol", args.reference_protocol),
                                    (getattr(args, "preset", None), True)) if name and on]
    if len(set(chosen)) > 1:
        flags = " and ".join(f"--{c}" if c != chosen[-1] or not getattr(args, "preset", None)
                             else f"--preset {c}" for c in dict.fromkeys(chosen))
        raise UserError(f"{flags} contradict each other; pick one")
    args.preset = chosen[0] if chosen else "default"
    fill_unset(args, args.preset)
    return m_values(args)


def sweep_config(args: argparse.Namespace, m_list: list[float] | None = None) -> SweepConfig:
    """The sweep the (resolved) options describe: ``sweep``, ``run`` and ``frontier``."""
    options = vars(args)
    if m_list is not None:
        options = {**options, "m_list": list(m_list), "m_start": None, "m_end": None,
                   "m_step": None}
    return SweepConfig.from_options(options)


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
    """``--random-seeds 0,1,2`` -> [0, 1, 2]; a range ``0-38`` is every seed from 0 to 38
    (the 39 masks a rank comparison needs: docs/statistics.md)."""
    values = []
    try:
        for part in (x.strip() for x in text.split(",")):
            if not part:
                continue
            first, dash, last = part.partition("-")
            if dash and first.strip() and last.strip():
                lo, hi = int(first), int(last)
                if hi < lo:
                    raise ValueError
                values += range(lo, hi + 1)
            else:
                values.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers or ranges "
                                         f"low-high, e.g. 0,1 or 0-38") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: seeds are whole numbers >= 0, e.g. 0,1")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:  # a repeated seed would count one random mask twice as two replicates
        raise argparse.ArgumentTypeError(
            f"{text!r}: seed {', '.join(map(str, repeated))} is given more than once; each "
            "seed is one replicate, so give distinct seeds, e.g. 0,1")
    return values


def note_limits(spec: str, clusters: int | None = None, task_limit: int | None = None,
                option: str | None = None) -> None:
    """One line on stderr when ``--clusters`` / ``--task-limit`` (``option``: the command's
    own spelling, e.g. ``--limit``) asks for more than the task source has, so that it has no
    effect there: every task of those families is used."""
    if clusters is None and task_limit is None:
        return
    unit, wanted = ("clusters", clusters) if clusters is not None else ("tasks", task_limit)
    option = option or ("--clusters" if clusters is not None else "--task-limit")
    sizes = load_tasks(spec).sizes(unit)
    short = {f: n for f, n in sizes.items() if n < wanted}
    if short:
        which = ("every family" if len(short) == len(sizes)
                 else ", ".join(short))
        print(f"note: {option} {wanted}: {spec} has fewer {unit} ("
              + ", ".join(f"{f} {n}" for f, n in short.items())
              + f"), so every task of {which} is used", file=sys.stderr)


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
                   help="seeds of the random control, comma-separated, a range such as 0-38 "
                        "among them (default: "
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
    p.add_argument("--random-ppl-tokens", dest="random_ppl_tokens", type=positive_int,
                   default=None,
                   help="perplexity tokens of each random-mask point: the first whole windows "
                        "of the reported ones (at least 2), paired with the baseline's; a "
                        "random mask of the difference mask's count barely moves perplexity, "
                        "so this is a check, and the time saved pays for more masks (default: "
                        "all reported tokens; tomsparse run: 4096)")
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


def add_score_prompts_arg(p: argparse.ArgumentParser, default: str | None = "all") -> None:
    """``--score-prompts``: which rendered ToM prompts the ToM scores draw from (``run`` and
    ``scores``; ``run`` leaves it to its preset)."""
    p.add_argument("--score-prompts", dest="score_prompts", choices=list(SCORE_PROMPTS),
                   default=default,
                   help="ToM scores: draw the samples from all rendered prompts (default; the "
                        "reference's) or only the false-belief ones (the belief probes under "
                        "false belief, the ironic remarks, ToMi's false-belief questions)")


def add_score_arg(p: argparse.ArgumentParser) -> None:
    """``--score``: which attribution score the score sets are (``run`` and ``scores``)."""
    p.add_argument("--score", dest="score", choices=list(SCORES), default="fisher",
                   help="fisher (default, the reference's): per weight the sum over samples "
                        "of the squared per-sample gradient; snip: the sum over samples of "
                        "|w * per-sample gradient|; wanda: |w| times the L2 norm of the "
                        "weight's input feature over the samples' tokens (forward passes "
                        "only); recorded in the store's manifest (score_method)")


def name_list(choices):
    """An argparse type: a comma-separated list of names from ``choices`` (``none``: the empty
    list), each once, in the order given."""
    def parse(text: str) -> list[str]:
        names = [x.strip() for x in text.split(",") if x.strip()]
        if names == ["none"]:
            return []
        unknown = [x for x in names if x not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give comma-separated names from {', '.join(choices)} (or none)")
        return list(dict.fromkeys(names))
    return parse


def add_method_args(p: argparse.ArgumentParser) -> None:
    """``--swapped-controls`` and ``--methods`` of ``run`` (issue 37; their preset: methods)."""
    p.add_argument("--swapped-controls", dest="swapped_controls", default=None,
                   type=name_list(SWAPPED_SETS), metavar="NAMES",
                   help="task-swapped score sets to compute and sweep as controls at every m "
                        f"({', '.join(SWAPPED_SETS)}; judged by claim (f); default none, "
                        "--preset methods: both; docs/swapped.md)")
    p.add_argument("--methods", dest="methods", default=None,
                   type=name_list(SCORES), metavar="SCORES",
                   help="attribution scores to compare with the run's --score: each one's "
                        "difference mask is evaluated at the primary m and judged with the "
                        "run's controls, and the masks' agreement tabled "
                        f"({', '.join(SCORES)}; default none, --preset methods: all)")


def add_verdict_args(p: argparse.ArgumentParser) -> None:
    """The decision rules of the verdicts (``config.VerdictRules``); left unset, a
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
    p.add_argument("--equivalence-relative", dest="margin_relative", type=finite_float,
                   default=None,
                   help="claim (c)'s margin for 'ruled out': its relative belief gap is a share "
                        f"of the baseline margins (default {VerdictRules.margin_relative})")
    p.add_argument("--interval-method", dest="interval_method", choices=["skew", "t"],
                   default=None,
                   help="intervals over clusters: skew (default; holds its one-tailed error "
                        "rate under skewed cluster effects, docs/statistics.md) or t")
    p.add_argument("--target-null", dest="target_null", choices=["fixed", "exchangeable"],
                   default=None,
                   help="compare the difference mask with masks of a kind as a fixed mask "
                        "(default: does it differ from their mean?) or as one more draw of "
                        "that kind (exchangeable: a prediction interval; far less power with "
                        "few masks; docs/statistics.md)")
    p.add_argument("--gate-floor", dest="gate_floor", type=finite_float, default=None,
                   help="a family is judged when the one-sided 95%% lower bound of its cluster "
                        "pass rate (every false-belief and true-belief prompt of a cluster "
                        f"right) is above this (default {VerdictRules.gate_floor})")
    p.add_argument("--ppl-threshold", dest="ppl_threshold", type=finite_float, default=None,
                   help="claim (d) holds when the perplexity ratio's upper bound is below "
                        f"this (default {VerdictRules.ppl_threshold}: +10%%)")


def verdict_rules(args: argparse.Namespace) -> VerdictRules | None:
    """The rules given on the command line (unset ones at their defaults), or None when
    none was given."""
    return VerdictRules.from_options(vars(args))


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
