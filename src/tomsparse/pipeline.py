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
                ppl_max_tokens=4096)
QUICK = dict(nsamples_tom=8, nsamples_generic=8, seqlen=128, m_list=[0.0, 1e-4],
             random_seeds=[0], task_limit=4, ppl_max_tokens=2048)


def _scores(lm, out: Path, dataset: str, args, log) -> tuple[dict, str]:
    from .corpora import load_corpus
    from .score_data import build_generic_samples, build_tom_samples, samples_sha256
    from .score_store import load_scores, save_scores
    from .scores import compute_scores
    from .tasks import gradient_prompts

    folder = out / f"scores_{dataset}"
    if dataset == "tom":
        prompts = gradient_prompts(args.data_path or "builtin")
        samples = build_tom_samples(lm.tokenizer, prompts, nsamples=args.nsamples_tom,
                                    seed=args.seed, supervision=args.supervision)
    else:
        samples = build_generic_samples(lm.tokenizer, load_corpus(args.generic_corpus),
                                        nsamples=args.nsamples_generic, seqlen=args.seqlen,
                                        seed=args.seed)
    data_sha = samples_sha256(samples)
    if (folder / "manifest.json").exists():
        scores, manifest = load_scores(folder, model=lm)
        if manifest.get("data_sha256") == data_sha:
            log(f"[tomsparse] reusing {dataset} scores in {folder}")
            return scores, data_sha
    log(f"[tomsparse] {dataset} scores: {len(samples)} samples")
    res = compute_scores(lm.model, lm.tokenizer, samples, batch_size=args.batch_size)
    save_scores(folder, res.scores, {"model": lm.name, "fingerprint": lm.fingerprint,
                                     "dataset": dataset, "data_sha256": data_sha,
                                     "data": getattr(samples, "info", {}), "seed": args.seed,
                                     "supervision": args.supervision if dataset == "tom" else "all",
                                     **res.manifest_fields()})
    return res.scores, data_sha


def run_main_job(args) -> int:
    from .models import load_model
    from .report import write_report
    from .sweep import SweepConfig, run_sweep

    preset = QUICK if args.quick else DEFAULTS
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    lm = load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)
    from .cli import print_model_facts
    print_model_facts(lm)
    print()
    tom, tom_sha = _scores(lm, out, "tom", args, print)
    gen, gen_sha = _scores(lm, out, "generic", args, print)
    cfg = SweepConfig(m_values=list(args.m_list), modes=args.modes.split(","),
                      random_seeds=list(args.random_seeds), perturbation=args.perturbation,
                      scale=args.scale, reference_ties=args.reference_ties,
                      scoring=args.scoring, reps=args.reps, seed=args.seed,
                      tasks=args.tasks, task_limit=args.task_limit, corpus=args.corpus,
                      ppl_max_tokens=args.ppl_max_tokens, batch_size=16)
    summary = run_sweep(lm, tom, gen, cfg, out / "sweep", scores_ids=(tom_sha, gen_sha),
                        export_m=args.export_model)
    manifest = build_manifest("run", model=lm.name, model_fingerprint=lm.fingerprint,
                              options=options_dict(args), scores_tom_sha=tom_sha,
                              scores_generic_sha=gen_sha, seconds=round(time.time() - t0, 1))
    write_json(out / "manifest.json", manifest)
    report = write_report(out / "sweep", summary, manifest)
    print()
    cols = [c for c in ("mode", "seed", "m", "masked", "perplexity", "unexpected_margin",
                        "transfer_margin", "irony_margin") if c in summary]
    print(summary[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"\nreport: {report.resolve()}  ({time.time() - t0:.0f} s)")
    return 0


def parse_m_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--m_list {text!r}: give comma-separated numbers, e.g. 0,1e-5,3e-5") from None


def describe_defaults() -> str:
    return json.dumps(DEFAULTS)
