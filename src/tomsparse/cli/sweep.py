"""``tomsparse sweep`` (the m-sweep from two score stores) and ``tomsparse summarize`` (the
tables and report of a sweep folder, or the reference's summary of its ``tom/`` folder)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tomsparse.cli.options import (
    add_batch_size,
    add_model_args,
    add_sweep_args,
    add_verdict_args,
    verdict_rules,
    fill_unset,
    load_model_from,
    note_limits,
    positive_int,
    recorded_options,
    seed_int,
    sweep_config,
)
from tomsparse.config import OURS, REFERENCE, SWEEP_DEFAULTS
from tomsparse.data.corpora import check_inputs
from tomsparse.errors import UserError
from tomsparse.evaluate.results import reference_result_files
from tomsparse.files import check_output_dir, check_output_file, write_csv
from tomsparse.manifest import build_manifest
from tomsparse.pipeline import stream_scores, sweep_and_report
from tomsparse.report.sweep_report import write_report
from tomsparse.scores.distributed import dist_world, process_group, rank_device
from tomsparse.scores.store import scores_identity
from tomsparse.sweep.folder import RunFolder, SweepFolder
from tomsparse.judge.reference import reference_summary
from tomsparse.judge.summary import collect, print_summary
from tomsparse.lm.registry import model_identity


def cmd_sweep(args: argparse.Namespace) -> int:
    """``tomsparse sweep --model M --scores-tom DIR --scores-generic DIR (--m_list ... |
    --m_start --m_end --m_step) --controls random,tom-only ... --out DIR``."""

    if not args.scores_tom or not args.scores_generic:
        raise UserError("sweep needs --scores-tom DIR and --scores-generic DIR (score stores "
                        "from `tomsparse scores`, or `tomsparse run`'s scores_tom/ and "
                        "scores_generic/)")
    check_output_dir(args.out)  # before the model is loaded or anything written
    # --reference-protocol: the reference's sweep (grid, ties, perturbation, generation,
    # first-word rule, perplexity) for every option left unset.
    fill_unset(args, {**SWEEP_DEFAULTS, **OURS, **(REFERENCE if args.reference_protocol else {})})
    cfg = sweep_config(args)  # every sweep option checked, before the model is loaded
    check_inputs(corpora=[args.corpus], tasks=[args.tasks])  # before the model is loaded
    note_limits(cfg.tasks, clusters=cfg.cluster_limit, task_limit=cfg.task_limit)
    t0 = time.time()
    # Under torchrun each rank loads the model on its own device and the ranks split the
    # points through the folder's claims; rank 0 writes the tables and report at the end.
    with process_group():
        rank, world = dist_world()[1:]
        lm = load_model_from(args, device=rank_device(args.device))
        tom = stream_scores(lm, args.scores_tom)
        gen = stream_scores(lm, args.scores_generic)
        ids = (scores_identity(tom.manifest), scores_identity(gen.manifest))

        def finish(_summary):
            manifest = build_manifest("sweep", **model_identity(lm),
                                      options=recorded_options(args), scores_tom_sha=ids[0],
                                      scores_generic_sha=ids[1], world_size=world,
                                      seconds=round(time.time() - t0, 1))
            # a sweep folder inside a run folder keeps the run's analyses in its report
            return manifest, RunFolder(Path(args.out).parent).read_report_sections()

        done = sweep_and_report(lm, tom, gen, cfg, args.out, finish=finish, scores_ids=ids,
                                export_m=args.export_model, progress=rank == 0,
                                scores_info={"tom": str(args.scores_tom),
                                             "generic": str(args.scores_generic)},
                                tables=rank == 0, take_over=args.take_over,
                                rules=verdict_rules(args))
        if done is None:
            print(f"rank {rank} of {world}: done; rank 0 writes the tables and report")
            return 0
        summary, report = done
    print()
    print_summary(summary)
    print(f"\nreport: {Path(report).resolve()}  ({time.time() - t0:.0f} s)")
    return 0


def cmd_summarize(args: argparse.Namespace) -> int:
    """``tomsparse summarize DIR``: DIR is a sweep folder (ours: points/ are re-read, the
    tables, side-by-side comparison and report rewritten) or a reference output folder (its
    tom/ results summarised into the reference's summary CSV)."""

    folder = Path(args.root or args.folder or ".")
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder; give a sweep folder (with points/) or the "
                        "reference's tom/ folder")
    sweep = SweepFolder(folder)
    if sweep.points_dir.is_dir():
        # Everything checked before anything is written.
        check_output_dir(folder, "summarize")
        if args.out_csv:
            check_output_file(args.out_csv, "--out_csv", example=SweepFolder.TABLES["summary"])
        manifest = sweep.read_manifest()
        if args.accept_edited:  # judged anyway; the report says which files were edited
            for line in sweep.accept_edits():
                print(f"note: accepted an edited file: {line}", file=sys.stderr)
        summary = collect(folder, rules=verdict_rules(args))
        report = write_report(folder, summary, manifest,
                              RunFolder(folder.parent).read_report_sections())
        if args.out_csv:
            write_csv(args.out_csv, summary)
        print_summary(summary)
        print(f"\nwrote {sweep.table('summary')}, {sweep.table('side_by_side')}, "
              f"{sweep.table('sweep_points')}, {sweep.table('perplexity')}"
              + (f", {args.out_csv}" if args.out_csv else "") + f"\nreport: {report.resolve()}")
        return 0
    root = sweep.tom_dir if sweep.tom_dir.is_dir() else folder
    out_csv = (Path(args.out_csv) if args.out_csv
               else SweepFolder(root.parent).table("tom_summary"))
    check_output_file(out_csv, "--out_csv", example=SweepFolder.TABLES["tom_summary"])
    summary = reference_summary(root)
    if args.reps is not None:
        found = len({rep for rep, _m, _task, _path in reference_result_files(root)})
        if found != args.reps:
            print(f"note: --reps {args.reps}, but {root} holds {found} rep folder(s); "
                  "summarised what is there", file=sys.stderr)
    write_csv(out_csv, summary)
    print(summary.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"\nwrote {out_csv}")
    return 0


def add_sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="the m-sweep from two score stores: masks, perturbation, "
                                     "ToM evaluation and perplexity per point (resumable)")
    add_model_args(p, dtype_default=None)
    p.add_argument("--scores-tom", "--scores_tom", dest="scores_tom", default=None,
                   help="ToM score store (from `tomsparse scores --dataset tom`)")
    p.add_argument("--scores-generic", "--scores_generic", dest="scores_generic", default=None,
                   help="generic score store (from `tomsparse scores --dataset generic`)")
    add_sweep_args(p)
    p.add_argument("--seed", type=seed_int, default=0, help="seed of generate scoring (>= 0)")
    add_batch_size(p, "eval", "eval_batch_size", 16,
                   "prompts per forward pass of the ToM evaluation, >= 1 (default 16)")
    p.add_argument("--reference-protocol", dest="reference_protocol", action="store_true",
                   help="the reference's sweep for every option left unset: fp16 model, its "
                        "m grid (27 values), strict ties, reference-mean perturbation, sampled "
                        "generation with 5 reps and its first-word rule, its perplexity "
                        "protocol on wikitext2 (README: tomsparse and the reference)")
    p.add_argument("--out", required=True, help="sweep folder (an existing one is resumed)")
    p.set_defaults(handler=cmd_sweep)


def add_summarize_parser(sub) -> None:
    p = sub.add_parser("summarize", help="re-read a sweep folder (or the reference's tom/ "
                                         "folder) and write the summary tables and report")
    p.add_argument("folder", nargs="?", default=None,
                   help="a sweep folder (with points/) or a reference output folder (with tom/)")
    p.add_argument("--root", default=None, help="the reference's spelling of the folder")
    p.add_argument("--reps", type=positive_int, default=None,
                   help="expected reps, >= 1 (checked, reference layout)")
    p.add_argument("--out_csv", "--out-csv", dest="out_csv", default=None,
                   help="also write the summary here (reference layout default: "
                        f"<folder>/{SweepFolder.TABLES['tom_summary']})")
    p.add_argument("--accept-edited", dest="accept_edited", action="store_true",
                   help="judge point files that differ from the sha256 the sweep recorded when "
                        "it wrote them (refused otherwise); the files are listed in "
                        f"{SweepFolder.EDITS_ACCEPTED} and the report warns that the verdicts "
                        "rest on edited results. Values out of range or inconsistent (a "
                        "perplexity its window losses do not give, a margin that is not its "
                        "log-probabilities' difference) are refused even so")
    add_verdict_args(p)
    p.set_defaults(handler=cmd_summarize)
