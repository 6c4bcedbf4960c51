"""``tomsparse frontier``: the difference mask's family over a grid of (q, p, channels left
out), each member's ToM-specific damage (belief gap) against its perplexity change, and the
Pareto front (issue 15, part 4; ``tomsparse.judge.frontier``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tomsparse.cli.options import (
    add_batch_size,
    add_evaluation_args,
    add_model_args,
    fill_unset,
    finite_float,
    load_model_from,
    note_limits,
    parse_m_list,
    recorded_options,
    sweep_config,
)
from tomsparse.config import FRONTIER_DEFAULTS, OURS, resolve
from tomsparse.errors import UserError
from tomsparse.files import check_output_dir, read_json_object, write_csv, write_json
from tomsparse.manifest import build_manifest
from tomsparse.pipeline import stream_scores, sweep_and_report
from tomsparse.scores.store import scores_identity
from tomsparse.sweep.folder import RunFolder, SweepFolder
from tomsparse.judge.frontier import family_table, format_front, goal
from tomsparse.judge.tables import specificity_tables
from tomsparse.lm.registry import model_identity


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
        run = RunFolder(args.run)
        manifest = run.manifest
        if not manifest.exists():
            raise UserError(f"{manifest}: missing; --run takes a folder written by `tomsparse "
                            f"run` (with {manifest.name}, scores_tom/, scores_generic/)")
        model = args.model or read_json_object(
            manifest, "give a folder written by `tomsparse run`").get("model")
        return run.scores("tom"), run.scores("generic"), model
    if not (args.scores_tom and args.scores_generic and args.model):
        raise UserError("frontier needs --run RUN_DIR, or --scores-tom DIR --scores-generic DIR "
                        "--model NAME")
    return Path(args.scores_tom), Path(args.scores_generic), args.model


def cmd_frontier(args: argparse.Namespace) -> int:
    t0 = time.time()
    fill_unset(args, {**OURS, **FRONTIER_DEFAULTS})
    # the members over the default run's tasks and perplexity windows (FRONTIER_DEFAULTS,
    # also the ones this command has no option for), no random or matched controls
    cfg = sweep_config(argparse.Namespace(**{
        **resolve(vars(args), FRONTIER_DEFAULTS), "controls": family_modes(args.p_factors,
                                                                           args.left_out),
        "random_seeds": [], "m_list": [0.0] + sorted(set(args.q))}))
    tom_dir, gen_dir, model = _stores(args)
    out = Path(args.out) if args.out else (Path(args.run) / "frontier" if args.run else None)
    if out is None:
        raise UserError("give --out DIR (or --run RUN_DIR, whose frontier/ folder is used)")
    check_output_dir(out)  # before the model is loaded
    note_limits(cfg.tasks, clusters=cfg.cluster_limit, task_limit=cfg.task_limit)
    args.model = model
    lm = load_model_from(args)
    tom, gen = stream_scores(lm, tom_dir), stream_scores(lm, gen_dir)
    ids = (scores_identity(tom.manifest), scores_identity(gen.manifest))
    print(f"[tomsparse] frontier: {len(cfg.modes)} members x {len(args.q)} q values "
          f"+ the baseline, into {out}")
    folder = SweepFolder(out)
    sweep_and_report(lm, tom, gen, cfg, out, scores_ids=ids,
                     scores_info={"tom": str(tom_dir), "generic": str(gen_dir)},
                     finish=lambda _summary: (folder.read_manifest(), ()))
    tables = specificity_tables(out)
    frame = family_table(tables)
    reached = goal(frame, ppl_limit=args.ppl_limit)
    write_csv(folder.frontier_table, frame)
    write_json(folder.frontier_manifest, build_manifest(
        "frontier", **model_identity(lm),
        options=recorded_options(args), goal=reached, seconds=round(time.time() - t0, 1)))
    print()
    print(format_front(frame))
    print(f"\ngoal (a member with at least half the plain difference mask's belief-gap damage "
          f"at perplexity <= {args.ppl_limit:+.0%}): {reached['sentence']}")
    print(f"\nwrote {folder.frontier_table} and {folder.frontier_manifest} "
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
    # the sweep's definitions; unset ones are filled as the default run's (FRONTIER_DEFAULTS)
    add_evaluation_args(p)
    add_batch_size(p, "eval", "eval_batch_size", 16,
                   "prompts per forward pass of the ToM evaluation, >= 1 (default 16)", old=False)
    p.add_argument("--out", default=None, help="folder (an existing one is resumed)")
    p.set_defaults(handler=cmd_frontier)
