"""``tomsparse sweep`` (the m-sweep from two score stores) and ``tomsparse summarize`` (the
tables and report of a sweep folder, or the reference's summary of its ``tom/`` folder)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tomsparse.cli.options import (
    SWEEP_DEFAULTS,
    add_model_args,
    add_sweep_args,
    load_model_from,
    recorded_options,
    resolve_m_values,
    sweep_config,
)
from tomsparse.errors import UserError
from tomsparse.manifest import build_manifest, write_csv
from tomsparse.report.sweep_report import write_report
from tomsparse.scores.store import load_scores, scores_identity
from tomsparse.sweep.reference import reference_summary
from tomsparse.sweep.runner import run_sweep
from tomsparse.sweep.summary import collect, print_summary


def cmd_sweep(args: argparse.Namespace) -> int:
    """``tomsparse sweep --model M --scores-tom DIR --scores-generic DIR (--m_list ... |
    --m_start --m_end --m_step) --controls random,tom-only ... --out DIR``."""

    if not args.scores_tom or not args.scores_generic:
        raise UserError("sweep needs --scores-tom DIR and --scores-generic DIR (score stores "
                        "from `tomsparse scores`, or `tomsparse run`'s scores_tom/ and "
                        "scores_generic/)")
    ms = resolve_m_values(args)
    for key, value in SWEEP_DEFAULTS.items():
        if getattr(args, key) is None:  # argparse's None: the user left it unset
            setattr(args, key, value)
    t0 = time.time()
    lm = load_model_from(args)
    tom, tom_manifest = load_scores(args.scores_tom, model=lm)
    gen, gen_manifest = load_scores(args.scores_generic, model=lm)
    cfg = sweep_config(args, ms)
    ids = (scores_identity(tom_manifest), scores_identity(gen_manifest))
    summary = run_sweep(lm, tom, gen, cfg, args.out, scores_ids=ids,
                        export_m=args.export_model,
                        scores_info={"tom": str(args.scores_tom), "generic": str(args.scores_generic)})
    manifest = build_manifest("sweep", model=lm.name, model_fingerprint=lm.fingerprint,
                              options=recorded_options(args), scores_tom_sha=ids[0],
                              scores_generic_sha=ids[1], seconds=round(time.time() - t0, 1))
    report = write_report(args.out, summary, manifest)
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
    if (folder / "points").is_dir():
        summary = collect(folder)
        manifest_path = folder / "sweep_manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        report = write_report(folder, summary, manifest)
        if args.out_csv:
            write_csv(args.out_csv, summary)
        print_summary(summary)
        print(f"\nwrote {folder / 'summary.csv'}, {folder / 'summary_side_by_side.csv'}, "
              f"{folder / 'sweep_points.csv'}, {folder / 'perplexity_results.csv'}"
              + (f", {args.out_csv}" if args.out_csv else "") + f"\nreport: {report.resolve()}")
        return 0
    root = folder / "tom" if (folder / "tom").is_dir() else folder
    summary = reference_summary(root)
    if args.reps is not None:
        found = len({p.parts[-4] for p in root.glob("*/*/*/results.csv")})
        if found != args.reps:
            print(f"note: --reps {args.reps}, but {root} holds {found} rep folder(s); "
                  "summarised what is there", file=sys.stderr)
    out_csv = Path(args.out_csv) if args.out_csv else root.parent / "tom_summary.csv"
    write_csv(out_csv, summary)
    print(summary.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"\nwrote {out_csv}")
    return 0


def add_sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="the m-sweep from two score stores: masks, perturbation, "
                                     "ToM evaluation and perplexity per point (resumable)")
    add_model_args(p)
    p.add_argument("--scores-tom", "--scores_tom", dest="scores_tom", default=None,
                   help="ToM score store (from `tomsparse scores --dataset tom`)")
    p.add_argument("--scores-generic", "--scores_generic", dest="scores_generic", default=None,
                   help="generic score store (from `tomsparse scores --dataset generic`)")
    add_sweep_args(p)
    p.add_argument("--seed", type=int, default=0, help="seed of generate scoring")
    p.add_argument("--batch-size", dest="eval_batch_size", type=int, default=16,
                   help="evaluation batch size")
    p.add_argument("--out", required=True, help="sweep folder (an existing one is resumed)")
    p.set_defaults(handler=cmd_sweep)


def add_summarize_parser(sub) -> None:
    p = sub.add_parser("summarize", help="re-read a sweep folder (or the reference's tom/ "
                                         "folder) and write the summary tables and report")
    p.add_argument("folder", nargs="?", default=None,
                   help="a sweep folder (with points/) or a reference output folder (with tom/)")
    p.add_argument("--root", default=None, help="the reference's spelling of the folder")
    p.add_argument("--reps", type=int, default=None, help="expected reps (checked, reference layout)")
    p.add_argument("--out_csv", "--out-csv", dest="out_csv", default=None,
                   help="also write the summary here (reference layout default: "
                        "<folder>/tom_summary.csv)")
    p.set_defaults(handler=cmd_summarize)
