"""``tomsparse analyze``: the mechanistic analyses at one m, from a finished run's folder
(model, scores and perturbation options taken from it) or from two score stores."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tomsparse.analysis.run import (
    AnalysisConfig,
    analyze_loaded,
    check_matched,
    matched_at,
    select_prompts,
)
from tomsparse.analysis.folder import AnalysisFolder
from tomsparse.cli.options import (
    add_batch_size,
    add_model_args,
    finite_float,
    nonneg_int,
    positive_int,
    recorded_options,
    seed_list,
    window_len,
)
from tomsparse.errors import UserError
from tomsparse.lm.registry import DEFAULT_MODEL, load_model
from tomsparse.files import check_output_dir, read_csv_checked, read_json_object
from tomsparse.report.sweep_report import write_report
from tomsparse.scores.store import load_scores
from tomsparse.sweep.folder import RunFolder, SweepFolder



def parse_matched(text: str) -> list[tuple[str, float, int]]:
    """``--matched generic-only:2.31e-4,random-fraction:1.2e-2:1`` -> [("generic-only",
    0.000231, 0), ("random-fraction", 0.012, 1)] (seed 0 unless given); ``none`` -> []."""
    if text.strip().lower() == "none":
        return []
    out = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        parts = item.split(":")
        if len(parts) not in (2, 3):
            raise argparse.ArgumentTypeError(
                f"{item!r}: give mode:m or mode:m:seed, comma-separated, e.g. "
                "generic-only:2.31e-4,random-fraction:1.2e-2 (or none)")
        try:
            m = float(parts[1])
            seed = int(parts[2]) if len(parts) == 3 else 0
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{item!r}: m must be a number and the seed an integer, e.g. "
                "generic-only:2.31e-4:0") from None
        out.append((parts[0].strip(), m, seed))
    if not out:
        raise argparse.ArgumentTypeError(f"{text!r}: no matched controls; give mode:m[:seed] "
                                         "or none")
    try:
        return check_matched(out)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(sub) -> None:
    p = sub.add_parser("analyze", help="mechanistic analyses at one m: mask anatomy, dominant "
                                       "rotary frequencies, attention sinks, q-k geometry, "
                                       "massive activations")
    add_model_args(p)
    p.set_defaults(model=None, dtype=None)  # with --run, taken from the run
    p.add_argument("--run", default=None,
                   help="a finished `tomsparse run` folder: model, scores and options from it")
    p.add_argument("--scores-tom", "--scores_tom", dest="scores_tom", default=None)
    p.add_argument("--scores-generic", "--scores_generic", dest="scores_generic", default=None)
    p.add_argument("--m", type=float, default=None,  # checked by AnalysisConfig: (0, 1]
                   help="fraction of each matrix to perturb (default with --run: its largest m)")
    p.add_argument("--modes", default="difference,random",
                   help="mask modes compared with the baseline, comma-separated: difference, "
                        "random, tom-only, generic-only, random-fraction, or a family variant "
                        "such as difference-p16 (default: difference,random)")
    p.add_argument("--random-seeds", dest="random_seeds",
                   type=seed_list, default=None,
                   help="seeds of the random control (default: the run's, else 0)")
    p.add_argument("--matched", type=parse_matched, default=None,
                   help="damage-matched controls, each at its own m: mode:m[:seed], comma-"
                        "separated, e.g. generic-only:2.31e-4,random-fraction:1.2e-2 (seed 0 "
                        "unless given); none for no matched controls (default with --run: the "
                        f"controls RUN_DIR/sweep/{SweepFolder.MATCHED} matched to the difference "
                        "mask at "
                        "this m, else none)")
    p.add_argument("--perturbation", choices=["mean", "reference-mean", "zero"], default=None,
                   help="default: the run's, else mean")
    p.add_argument("--scale", type=finite_float, default=None,
                   help="s in mean + s * (w - mean)")
    p.add_argument("--reference-ties", dest="reference_ties", action="store_true")
    p.add_argument("--prompts", default="builtin",
                   help="ToM prompts: builtin (eval split), tomi, or a task file")
    p.add_argument("--max-prompts", dest="max_prompts", type=nonneg_int, default=32,
                   help="ToM prompts the analyses run on (default 32; 0: all)")
    p.add_argument("--max-length", dest="max_length", type=window_len, default=256,
                   help="keep the first N >= 2 tokens of each prompt (default 256)")
    p.add_argument("--sink-threshold", dest="sink_threshold", type=finite_float, default=0.01)
    p.add_argument("--top-pairs", dest="top_pairs", type=positive_int, default=4,
                   help="dominant rotary pairs per (layer, head), >= 1 (default 4)")
    add_batch_size(p, "probe", "batch_size", 8, "prompts per forward pass, >= 1 (default 8)")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/analysis)")
    p.set_defaults(handler=cmd_analyze)


def _run_options(run_dir: Path) -> dict:
    if not run_dir.is_dir():
        raise UserError(f"--run {run_dir}: no such folder (give the --out folder of a finished "
                        "`tomsparse run`)")
    path = RunFolder(run_dir).manifest
    if not path.is_file():
        raise UserError(f"--run {run_dir}: no {path.name}; not a finished `tomsparse run` folder")
    fix = "restore it, or give the scores with --scores-tom and --scores-generic instead of --run"
    manifest = read_json_object(path, fix)
    options = manifest.get("options") or {}
    m_list = options.get("m_list") if isinstance(options, dict) else None
    if not isinstance(options, dict) or not (m_list is None or (
            isinstance(m_list, list) and all(isinstance(x, (int, float)) for x in m_list))):
        raise UserError(f"{path}: its \"options\" should be an object whose m_list is a list "
                        f"of numbers; the file is damaged: {fix}")
    return manifest


def cmd_analyze(args: argparse.Namespace) -> int:
    t0 = time.time()
    run_dir = Path(args.run) if args.run else None
    run_manifest, run_opts = {}, {}
    if run_dir is not None:
        run_manifest = _run_options(run_dir)
        run_opts = run_manifest.get("options") or {}
    run = RunFolder(run_dir) if run_dir else None
    out = Path(args.out) if args.out else (run.analysis_dir if run else Path("runs/analysis"))
    check_output_dir(out)  # before the model is loaded
    pick = lambda name, default: (getattr(args, name) if getattr(args, name) is not None  # noqa: E731
                                  else run_opts.get(name, default))
    model_name = args.model or run_manifest.get("model") or DEFAULT_MODEL
    scores_tom = args.scores_tom or (run.scores("tom") if run else None)
    scores_gen = args.scores_generic or (run.scores("generic") if run else None)
    if scores_tom is None or scores_gen is None:
        raise UserError("give --run RUN_DIR, or both --scores-tom and --scores-generic")
    m = args.m
    if m is None:
        ms = [float(x) for x in run_opts.get("m_list") or [] if float(x) > 0]
        if not ms:
            raise UserError("give --m (the fraction of each matrix to perturb)")
        m = max(ms)
    matched = args.matched
    if matched is None and run is not None and run.sweep.matched.is_file():
        matched = matched_at(run.sweep.read_matched(), float(m), where=run.sweep.matched)
        print(f"[analyze] {run.sweep.matched}: " + (
            f"{len(matched)} damage-matched control(s) for the difference mask at m = "
            f"{float(m):g}" if matched else
            f"no damage-matched controls for the difference mask at m = {float(m):g}"))
    cfg = AnalysisConfig(
        m=m, matched=list(matched or []),
        modes=[x.strip() for x in args.modes.split(",") if x.strip()],
        random_seeds=list(args.random_seeds if args.random_seeds is not None
                          else run_opts.get("random_seeds") or [0]),
        perturbation=pick("perturbation", "mean"), scale=float(pick("scale", 0.0)),
        reference_ties=bool(args.reference_ties or run_opts.get("reference_ties", False)),
        sink_threshold=args.sink_threshold, top_pairs=args.top_pairs, batch_size=args.batch_size)
    texts = select_prompts(args.prompts, args.max_prompts)

    hub = {}
    if "/" in model_name and not Path(model_name).exists():
        # a hub id: the revision given, else the very commit the run's model was read from
        same = model_name == run_manifest.get("model")
        hub = {"revision": args.revision or (run_manifest.get("model_commit")
                                             or run_opts.get("revision") if same else None),
               "cache_dir": args.cache_dir or (run_opts.get("cache_dir") if same else None)}
    lm = load_model(model_name, device=args.device, dtype=pick("dtype", "float32"),
                    device_map=args.device_map, attn_implementation="eager", **hub)
    tom, tom_manifest = load_scores(scores_tom, model=lm)
    gen, gen_manifest = load_scores(scores_gen, model=lm)
    analyze_loaded(lm, (tom, tom_manifest, scores_tom), (gen, gen_manifest, scores_gen), cfg,
                   texts, out, prompts_spec=args.prompts, max_length=args.max_length,
                   options=recorded_options(args), run_dir=run_dir)
    if run_dir is not None:
        _add_to_run_report(run_dir, run_manifest)
    print(f"\nanalysis: {AnalysisFolder(out).page.resolve()}  ({time.time() - t0:.0f} s)")
    return 0


def _add_to_run_report(run_dir: Path, run_manifest: dict) -> None:
    """Re-render the run's report: it picks up the sections written to RUN_DIR/analysis."""

    run = RunFolder(run_dir)
    summary_csv = run.sweep.table("summary")
    if not summary_csv.is_file():
        print(f"[analyze] {summary_csv} missing: the run's report was not re-rendered")
        return
    try:  # the analysis is written: a damaged table costs the re-render only
        summary = read_csv_checked(summary_csv, ("mode", "m"), "the sweep's summary table",
                                   f"run `tomsparse summarize {run.sweep.root}`")
    except UserError as exc:
        print(f"[analyze] {exc}; the run's report was not re-rendered")
        return
    path = write_report(run.sweep.root, summary, run_manifest, run.read_report_sections())
    print(f"[analyze] added the analyses to {path}")
