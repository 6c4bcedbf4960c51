"""``tomsparse run``: the main job (``make run``), with the default, ``--quick`` or
``--reference-protocol`` preset filling the options left unset."""

from __future__ import annotations

import argparse
import json

from tomsparse.cli.options import (
    add_score_arg,
    add_score_prompts_arg,
    add_method_args,
    add_batch_size,
    add_model_args,
    add_sweep_args,
    apply_presets,
    nonneg_int,
    note_limits,
    positive_int,
    recorded_options,
    seed_int,
    window_len,
)
from tomsparse.config import DEFAULTS, M_OPTIONS, OURS, PRESETS, REFERENCE, RunConfig
from tomsparse.data.corpora import DEFAULT_GENERIC, check_inputs
from tomsparse.data.score_samples import check_prompt_pool
from tomsparse.errors import UserError
from tomsparse.files import check_output_dir
from tomsparse.lm.registry import resolve_device
from tomsparse.pipeline import run_main_job, run_work
from tomsparse.scores.compute import METHODS


def run_config(args: argparse.Namespace) -> RunConfig:
    """Presets applied, then one typed configuration; prints what the preset resolved."""
    m_values = apply_presets(args)
    preset = args.preset
    resolved = {k: getattr(args, k) for k in (*DEFAULTS, *REFERENCE, *OURS)
                if k not in M_OPTIONS}
    print(f"resolved ({preset} preset): m = {m_values} " + json.dumps(resolved, sort_keys=True))
    options = recorded_options(args)
    options["m_list"] = m_values  # recorded resolved, however they were given
    return RunConfig.from_options({**vars(args), "recorded": options})


# Presets sized for a GPU (named as such when they ask for --yes).
GPU_PRESETS = ("paper-7b", "reference-protocol")
# A run longer than this on the CPU (projected with the default model) asks for --yes first.
LONG_CPU_SECONDS = 3600


def check_cost(args: argparse.Namespace, cfg: RunConfig) -> None:
    """Refuse, before anything is loaded, hours of CPU work nobody asked for: on a machine
    without CUDA (or with --device cpu), a run projected at more than ``LONG_CPU_SECONDS``
    (``pipeline.run_work``, with the default model's rates) needs --yes; the message says
    what it would compute and cost. A --device naming CUDA where there is none is refused
    here too."""
    device = resolve_device(cfg.device) if not cfg.device_map else "map"
    if device != "cpu" or args.yes:
        return
    work = run_work(cfg)
    if work.seconds > LONG_CPU_SECONDS:
        why = (f"--preset {args.preset} is sized for a GPU, and this run would use the CPU"
               if args.preset in GPU_PRESETS else "this run is long for a CPU")
        raise UserError(f"{why}: {work.describe()}; add --yes to start it anyway, or use "
                        "--quick or the default preset")


def cmd_run(args: argparse.Namespace) -> int:
    check_output_dir(args.out)  # before anything is resolved, loaded or written
    cfg = run_config(args)
    check_prompt_pool(cfg.tom_data, "--nsamples-tom")
    check_inputs(corpora=[cfg.generic_data.corpus, cfg.sweep.corpus], tasks=[cfg.sweep.tasks],
                 prompts=[cfg.tom_data.prompts])
    check_cost(args, cfg)
    note_limits(cfg.sweep.tasks, clusters=cfg.sweep.cluster_limit,
                task_limit=cfg.sweep.task_limit)
    run_main_job(cfg)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="the main job: scores, sweep, summary, plots and report")
    add_model_args(p, dtype_default=None)
    add_sweep_args(p)
    p.add_argument("--quick", action="store_true",
                   help="a pilot of about 2.5 minutes for a first look (below the sizes the statistics "
                        "need)")
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="the options left unset come from this preset: default (make run), "
                        "quick (= --quick), reference-protocol (= --reference-protocol) or "
                        "paper-7b (the default design sized for a 7B model on one GPU; README) "
                        "or methods (the default design with the task-swapped controls and the "
                        "three attribution scores, ToM scores on false-belief prompts; "
                        "docs/swapped.md)")
    p.add_argument("--no-analysis", dest="analysis", action="store_false",
                   help="skip the mechanistic analyses at the end (see `tomsparse analyze`)")
    p.add_argument("--analysis-prompts", dest="analysis_prompts", type=nonneg_int, default=None,
                   help="ToM prompts the analyses run on (default 16; --quick 8; 0: no "
                        "analyses, as --no-analysis)")
    p.add_argument("--reference-protocol", dest="reference_protocol", action="store_true",
                   help="reproduce the reference end to end (a GPU job): fp16 model, fp16 "
                        "last-token scores on 100 + 100 samples (its C4 windows), strict ties, "
                        "reference-mean perturbation, m = numpy.arange(0, 5e-5 + 2e-6, 2e-6) "
                        "(27 values), sampled generation with 5 reps and its first-word rule, "
                        "its perplexity protocol on wikitext2, c4 for generic text; every "
                        "option given explicitly still wins (README: tomsparse and the "
                        "reference)")
    p.add_argument("--out", default="runs/default", help="output folder (default: runs/default)")
    p.add_argument("--yes", action="store_true",
                   help="start a run projected at more than an hour on this machine's CPU "
                        "(such as --preset paper-7b without CUDA): refused otherwise, with "
                        "what it would compute and cost")
    p.add_argument("--seed", type=seed_int, default=0)
    add_score_prompts_arg(p, default=None)
    add_score_arg(p)
    add_method_args(p)
    p.add_argument("--score-replicates", dest="score_replicates", type=positive_int,
                   default=None,
                   help="independent score sets (replicate r draws its samples with seed + r - "
                        "1); the report gives the overlap of their difference masks and the "
                        "verdicts at the primary m under each (>= 1; tomsparse run: 2, --quick "
                        "and --reference-protocol: 1)")
    p.add_argument("--nsamples-tom", dest="nsamples_tom", type=positive_int, default=None)
    p.add_argument("--nsamples-generic", dest="nsamples_generic", type=positive_int,
                   default=None)
    p.add_argument("--seqlen", type=window_len, default=None,
                   help="generic window length, >= 2 (default 128)")
    p.add_argument("--data_path", "--data-path", dest="data_path", default=None)
    p.add_argument("--generic-corpus", dest="generic_corpus", default=None,
                   help=f"generic text for scores (default: {DEFAULT_GENERIC}; c4 with "
                        "--reference-protocol)")
    p.add_argument("--reference-windows", dest="reference_windows",
                   action=argparse.BooleanOptionalAction, default=None,
                   help="draw the generic windows by the reference's C4 recipe (the "
                        "--reference-protocol default)")
    p.add_argument("--supervision", choices=["answer", "last-token"], default=None,
                   help="ToM scores: supervise the answer (default) or the prompt's last token "
                        "(the --reference-protocol default)")
    p.add_argument("--reference-fp16", dest="reference_fp16",
                   action=argparse.BooleanOptionalAction, default=None,
                   help="scores as the reference computes them: per-sample squares rounded "
                        "to fp16 and summed in fp16, one sample per backward (the "
                        "--reference-protocol default)")
    add_batch_size(p, "score", "batch_size", 8,
                   "samples per backward pass of the batched score method (default 8)")
    p.add_argument("--method", choices=list(METHODS), default="batched",
                   help="score method (see `tomsparse scores --help`)")
    p.add_argument("--eval-batch-size", dest="eval_batch_size", type=positive_int, default=16,
                   help="prompts per forward pass of the ToM evaluation (default 16)")
    p.set_defaults(handler=cmd_run)
