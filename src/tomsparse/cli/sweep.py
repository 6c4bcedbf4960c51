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
from tomsparse.masks import check_swapped_name, swapped_mode
from tomsparse.scores.store import (check_score_methods, check_swapped_store, read_manifest,
                                    scores_identity)
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
    # both stores of one attribution score (fisher, snip, wanda), unless mixing is asked for
    check_score_methods(read_manifest(args.scores_tom), read_manifest(args.scores_generic),
                        allow=args.allow_mixed_scores, tom_where=f"in {args.scores_tom}",
                        generic_where=f"in {args.scores_generic}")
    # task-swapped stores (issue 37): named, of the ToM store's model and score
    swapped_dirs = swapped_stores(args.scores_swapped or [], args.scores_tom)
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
        swapped = {name: stream_scores(lm, path) for name, path in swapped_dirs.items()}
        swapped_ids = {name: scores_identity(store.manifest) for name, store in swapped.items()}

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
                                             "generic": str(args.scores_generic),
                                             **({"swapped": {k: str(v) for k, v in
                                                             swapped_dirs.items()}}
                                                if swapped_dirs else {})},
                                swapped=swapped or None, swapped_ids=swapped_ids or None,
                                tables=rank == 0, take_over=args.take_over,
                                rules=verdict_rules(args),
                                allow_mixed_scores=args.allow_mixed_scores)
        if done is None:
            print(f"rank {rank} of {world}: done; rank 0 writes the tables and report")
            return 0
        summary, report = done
    print()
    print_summary(summary)
    print(f"\nreport: {Path(report).resolve()}  ({time.time() - t0:.0f} s)")
    return 0


def parse_swapped(text: str) -> tuple[str | None, str]:
    """``--scores-swapped [NAME=]DIR`` -> (NAME or None, DIR); the name, when given, as a mask
    mode carries it (``masks.check_swapped_name``)."""
    text = str(text).strip()
    head, sep, tail = text.partition("=")
    if sep and head and "/" not in head and "\\" not in head:
        try:
            return check_swapped_name(head), tail
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    if not text:
        raise argparse.ArgumentTypeError("give a score store folder, or NAME=DIR")
    return None, text


def swapped_stores(given: list[tuple[str | None, str]], tom_dir) -> dict[str, Path]:
    """{name: store folder} of the ``--scores-swapped`` options, checked before the model is
    loaded: a store without a NAME= is named by its manifest's dataset (tom-nobelief,
    format-control); each must hold the ToM store's model and attribution score
    (``check_swapped_store``); two stores of one name are refused."""
    out: dict[str, Path] = {}
    tom_manifest = read_manifest(tom_dir) if given else {}
    for name, path in given:
        manifest = read_manifest(path)
        if name is None:
            dataset = manifest.get("dataset")
            if not isinstance(dataset, str) or not dataset:
                raise UserError(f"--scores-swapped {path}: its manifest names no dataset; "
                                "give a name, --scores-swapped NAME=DIR")
            try:
                name = check_swapped_name(dataset)
            except UserError:
                raise UserError(f"--scores-swapped {path}: its dataset {dataset!r} cannot name "
                                "a mask mode; give a name, --scores-swapped NAME=DIR (e.g. "
                                "format-control=DIR)") from None
        if name in out:
            raise UserError(f"--scores-swapped: two stores named {name!r} ({out[name]} and "
                            f"{path}); name them apart, --scores-swapped NAME=DIR")
        check_swapped_store(tom_manifest, manifest, tom_dir, path)
        out[name] = Path(path)
        swapped_mode(name)
    return out


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
    p.add_argument("--allow-mixed-scores", dest="allow_mixed_scores", action="store_true",
                   help="build the masks from a ToM and a generic store of different "
                        "attribution scores (--score of `tomsparse scores`: fisher, snip, "
                        "wanda); refused by default: the difference mask would then tell the "
                        "scores apart as much as the texts")
    p.add_argument("--scores-swapped", "--scores_swapped", dest="scores_swapped",
                   action="append", type=parse_swapped, default=None, metavar="[NAME=]DIR",
                   help="a task-swapped score store (`tomsparse scores --dataset tom-nobelief` "
                        "or `format-control`), repeatable: its difference mask (top m by its "
                        "scores, not top m by the generic scores) is evaluated at every m > 0 "
                        "as mode swapped-NAME and judged by claim (f) (NAME: the store's "
                        "dataset unless given; docs/swapped.md)")
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
