"""``tomsparse frontier``: the difference mask's family over a grid of (q, p, channels left
out), each member's ToM-specific damage (belief gap) against its perplexity change, and the
Pareto front (issue 15, part 4; ``tomsparse.sweep.frontier``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tomsparse.cli.options import (
    add_model_args,
    finite_float,
    load_model_from,
    parse_m_list,
    positive_int,
    recorded_options,
)
from tomsparse.data.corpora import DEFAULT_EVAL
from tomsparse.errors import UserError
from tomsparse.manifest import (
    build_manifest,
    check_output_dir,
    read_json_object,
    write_csv,
    write_json,
)
from tomsparse.scores.store import load_scores, scores_identity
from tomsparse.sweep.frontier import family_table, format_front, goal
from tomsparse.sweep.runner import SweepConfig, run_sweep
from tomsparse.sweep.specificity import specificity_tables


def family_modes(p_factors: list[float], left_out: list[int]) -> list[str]:
    """Every (p/q, channels) pair as a mask mode: difference, difference-p4, difference-x3..."""
    modes = []
    for f in p_factors:
        for n in left_out:
            mode = "difference" + (f"-p{f:g}" if f != 1 else "") + (f"-x{n}" if n else "")
            modes.append(mode)
    return list(dict.fromkeys(modes))


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers, e.g. 0,3") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give integers >= 0, e.g. 0,3")
    return values


def _factor_list(text: str) -> list[float]:
    values = parse_m_list(text)
    if not values or any(not v >= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: p/q factors must be >= 1, e.g. 1,4,16")
    return values


def _stores(args) -> tuple[Path, Path, str]:
    """Score stores and model: from --run RUN_DIR, or --scores-tom/--scores-generic/--model."""
    if args.run:
        run = Path(args.run)
        manifest = run / "manifest.json"
        if not manifest.exists():
            raise UserError(f"{manifest}: missing; --run takes a folder written by `tomsparse "
                            "run` (with manifest.json, scores_tom/, scores_generic/)")
        model = args.model or read_json_object(
            manifest, "give a folder written by `tomsparse run`").get("model")
        return run / "scores_tom", run / "scores_generic", model
    if not (args.scores_tom and args.scores_generic and args.model):
        raise UserError("frontier needs --run RUN_DIR, or --scores-tom DIR --scores-generic DIR "
                        "--model NAME")
    return Path(args.scores_tom), Path(args.scores_generic), args.model


def cmd_frontier(args: argparse.Namespace) -> int:
    t0 = time.time()
    tom_dir, gen_dir, model = _stores(args)
    out = Path(args.out) if args.out else (Path(args.run) / "frontier" if args.run else None)
    if out is None:
        raise UserError("give --out DIR (or --run RUN_DIR, whose frontier/ folder is used)")
    check_output_dir(out)  # before the model is loaded
    args.model = model
    lm = load_model_from(args)
    tom, tom_manifest = load_scores(tom_dir, model=lm)
    gen, gen_manifest = load_scores(gen_dir, model=lm)
    cfg = SweepConfig(m_values=[0.0] + sorted(set(args.q)),
                      modes=family_modes(args.p_factors, args.left_out), random_seeds=[],
                      perturbation=args.perturbation, tasks=args.tasks,
                      task_limit=args.task_limit, corpus=args.corpus,
                      ppl_max_tokens=args.ppl_max_tokens, batch_size=args.eval_batch_size)
    ids = (scores_identity(tom_manifest), scores_identity(gen_manifest))
    print(f"[tomsparse] frontier: {len(cfg.modes)} members x {len(args.q)} q values "
          f"+ the baseline, into {out}")
    run_sweep(lm, tom, gen, cfg, out, scores_ids=ids,
              scores_info={"tom": str(tom_dir), "generic": str(gen_dir)})
    tables = specificity_tables(out)
    frame = family_table(tables)
    reached = goal(frame, ppl_limit=args.ppl_limit)
    write_csv(out / "frontier.csv", frame)
    write_json(out / "frontier.json", build_manifest(
        "frontier", model=lm.name, model_fingerprint=lm.fingerprint,
        options=recorded_options(args), goal=reached, seconds=round(time.time() - t0, 1)))
    print()
    print(format_front(frame))
    print(f"\ngoal (a member with at least half the plain difference mask's belief-gap damage "
          f"at perplexity <= {args.ppl_limit:+.0%}): {reached['sentence']}")
    print(f"\nwrote {out / 'frontier.csv'} and {out / 'frontier.json'} "
          f"({time.time() - t0:.0f} s)")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("frontier", help="the difference mask's family over a (q, p, massive "
                                        "channels) grid: belief gap against perplexity, Pareto "
                                        "front")
    add_model_args(p)
    p.set_defaults(model=None)
    p.add_argument("--run", default=None,
                   help="a `tomsparse run` folder: its scores and model are used, output goes "
                        "to RUN/frontier unless --out is given")
    p.add_argument("--scores-tom", dest="scores_tom", default=None)
    p.add_argument("--scores-generic", dest="scores_generic", default=None)
    p.add_argument("--q", type=parse_m_list, default=[1e-5, 3e-5, 1e-4],
                   help="fractions q of each matrix taken by ToM score (default 1e-5,3e-5,1e-4)")
    p.add_argument("--p-factors", dest="p_factors", type=_factor_list, default=[1.0, 4.0, 16.0],
                   help="p/q: the generic set is the top p = factor * q (default 1,4,16)")
    p.add_argument("--left-out", dest="left_out", type=_int_list, default=[0, 3],
                   help="massive-activation channels left out of the mask (default 0,3)")
    p.add_argument("--ppl-limit", dest="ppl_limit", type=finite_float, default=0.05,
                   help="perplexity change allowed by the goal (default 0.05 = +5%%)")
    p.add_argument("--perturbation", choices=["mean", "reference-mean", "zero"], default="mean")
    p.add_argument("--tasks", default="builtin")
    p.add_argument("--task-limit", dest="task_limit", type=positive_int, default=6,
                   help="tasks per family, >= 1 (default 6, as the default run)")
    p.add_argument("--corpus", default=DEFAULT_EVAL, help="perplexity corpus")
    p.add_argument("--ppl-max-tokens", dest="ppl_max_tokens", type=positive_int, default=4096,
                   help="perplexity on the first N tokens of the corpus, at least one window "
                        "(default 4096)")
    p.add_argument("--eval-batch-size", dest="eval_batch_size", type=positive_int, default=16,
                   help="prompts per forward pass of the ToM evaluation, >= 1 (default 16)")
    p.add_argument("--out", default=None, help="folder (an existing one is resumed)")
    p.set_defaults(handler=cmd_frontier)
