"""The main job, top to bottom: scores -> masks -> perturbation -> evaluation -> report.

``tomsparse run`` computes ToM and generic sensitivity scores on the default model, sweeps
a handful of m values with the difference mask, the random control and the ToM-only mask
(perplexity and ToM likelihood at each point), then writes the summary, plots and report.
Every stage reuses what an earlier, identical run left in the output folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .errors import UserError
from .manifest import build_manifest, options_dict, write_json

# Defaults sized so `make run` finishes within ~20 minutes on 2 CPU cores.
DEFAULTS = dict(nsamples_tom=24, nsamples_generic=24, seqlen=128,
                m_list=[0.0, 3e-5, 1e-4], random_seeds=[0, 1], task_limit=6,
                ppl_max_tokens=4096, analysis_prompts=16)
QUICK = dict(nsamples_tom=8, nsamples_generic=8, seqlen=128, m_list=[0.0, 1e-4],
             random_seeds=[0], task_limit=4, ppl_max_tokens=2048, analysis_prompts=8)
# The reference's protocol sizes (a GPU job): 100 + 100 samples, its 26-value m grid,
# sampled generation with 5 reps, every task, the whole perplexity corpus.
REFERENCE = dict(nsamples_tom=100, nsamples_generic=100, seqlen=128, m_start=0.0, m_end=5e-5,
                 m_step=2e-6, random_seeds=[0, 1, 2], scoring="generate", reps=5,
                 task_limit=None, ppl_max_tokens=None, analysis_prompts=64)


def _scores(lm, out: Path, dataset: str, args, log) -> tuple[dict, str]:
    """Compute (or reuse, when an earlier run used the same samples) one score set."""
    from argparse import Namespace

    from .score_store import load_scores, read_manifest
    from .scores import build_dataset, compute_score_set

    folder = out / f"scores_{dataset}"
    options = Namespace(
        dataset=dataset, seed=args.seed, data_path=args.data_path, supervision=args.supervision,
        corpus=args.generic_corpus,
        nsamples=args.nsamples_tom if dataset == "tom" else args.nsamples_generic,
        seqlen=0 if dataset == "tom" else args.seqlen)
    samples = build_dataset(options, lm.tokenizer, lm.model)
    wanted = samples.info["samples_sha256"]
    if (folder / "manifest.json").exists():
        old = read_manifest(folder)
        if old.get("samples_sha256") == wanted and old.get("fingerprint") == lm.fingerprint:
            log(f"[tomsparse] reusing {dataset} scores in {folder}")
            return load_scores(folder, model=lm)[0], wanted
    log(f"[tomsparse] {dataset} scores: {len(samples)} samples")
    result = compute_score_set(lm, samples, out=folder, batch_size=args.batch_size,
                               method=getattr(args, "method", None) or "batched")
    return result.scores, wanted  # the store's identity (score_store.scores_identity)


def _analysis(lm, out: Path, tom: dict, gen: dict, cfg, args) -> None:
    """The mechanistic analyses at the sweep's largest m: difference mask vs the random
    control, on a few built-in ToM prompts (``tomsparse analyze --run`` does more)."""
    from .analysis.run import AnalysisConfig, select_prompts, analyze_loaded
    from .score_store import read_manifest

    print()
    acfg = AnalysisConfig(m=max(cfg.m_values), modes=["difference", "random"],
                          random_seeds=list(cfg.random_seeds), perturbation=cfg.perturbation,
                          scale=cfg.scale, reference_ties=cfg.reference_ties)
    stores = {k: out / f"scores_{k}" for k in ("tom", "generic")}
    analyze_loaded(lm, (tom, read_manifest(stores["tom"]), stores["tom"]),
                   (gen, read_manifest(stores["generic"]), stores["generic"]), acfg,
                   select_prompts("builtin", args.analysis_prompts), out / "analysis",
                   options={"analysis_prompts": args.analysis_prompts, "from": "tomsparse run"},
                   run_dir=out)


def apply_presets(args) -> list[float]:
    """Fill the options the user left unset from the preset (default, --quick or
    --reference-protocol); returns the sweep's m values."""
    from .sweep import SWEEP_DEFAULTS, resolve_m_values

    if args.quick and args.reference_protocol:
        raise UserError("--quick and --reference-protocol contradict each other; pick one")
    preset = REFERENCE if args.reference_protocol else QUICK if args.quick else DEFAULTS
    m_given = args.m_list is not None or any(
        getattr(args, k, None) is not None for k in ("m_start", "m_end", "m_step"))
    for key, value in {**SWEEP_DEFAULTS, **preset}.items():
        if key in ("m_list", "m_start", "m_end", "m_step") and m_given:
            continue  # the user's m values replace the preset's, whichever way given
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return resolve_m_values(args)


def run_main_job(args) -> int:
    from .models import load_model
    from .report import write_report
    from .sweep import config_from_args, print_summary, run_sweep

    m_values = apply_presets(args)
    preset = "reference-protocol" if args.reference_protocol else "quick" if args.quick else "default"
    resolved = {k: getattr(args, k) for k in (*DEFAULTS, *REFERENCE, "scoring", "reps")
                if k not in ("m_list", "m_start", "m_end", "m_step")}
    print(f"resolved ({preset} preset): m = {m_values} " + json.dumps(resolved, sort_keys=True))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    lm = load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)
    from .cli import print_model_facts
    print_model_facts(lm)
    print()
    tom, tom_sha = _scores(lm, out, "tom", args, print)
    gen, gen_sha = _scores(lm, out, "generic", args, print)
    cfg = config_from_args(args, m_values)
    summary = run_sweep(lm, tom, gen, cfg, out / "sweep", scores_ids=(tom_sha, gen_sha),
                        export_m=args.export_model,
                        scores_info={"tom": str(out / "scores_tom"),
                                     "generic": str(out / "scores_generic")})
    args.m_list = m_values  # recorded resolved, however they were given
    manifest = build_manifest("run", model=lm.name, model_fingerprint=lm.fingerprint,
                              options=options_dict(args), scores_tom_sha=tom_sha,
                              scores_generic_sha=gen_sha, seconds=round(time.time() - t0, 1))
    write_json(out / "manifest.json", manifest)
    if args.analysis and any(m > 0 for m in m_values):
        _analysis(lm, out, tom, gen, cfg, args)
    report = write_report(out / "sweep", summary, manifest)  # with the analyses, if run
    print()
    print_summary(summary)
    print(f"\nreport: {report.resolve()}  ({time.time() - t0:.0f} s)")
    return 0


def parse_m_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--m_list {text!r}: give comma-separated numbers, e.g. 0,1e-5,3e-5") from None
