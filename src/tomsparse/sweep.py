"""The m-sweep in memory: for each m and mask mode, perturb, evaluate ToM and perplexity,
undo; then the summary tables.

Each point (mode, seed, m) is written to ``points/`` atomically as soon as it is done, so a
killed sweep run again with the same options skips what it has and ends with the same
tables. A sweep folder remembers its options; running it with different ones is refused
rather than mixing results.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .errors import UserError
from .manifest import build_manifest, write_csv, write_json
from .masks import build_rankings, check_m_values, mask_stats
from .perturb import apply_perturbation, restore

REFERENCE_TASKS = ("unexpected", "transfer", "irony")


@dataclass
class SweepConfig:
    m_values: list[float]
    modes: list[str] = field(default_factory=lambda: ["difference", "random", "tom-only"])
    random_seeds: list[int] = field(default_factory=lambda: [0, 1])
    perturbation: str = "mean"
    scale: float = 0.0
    reference_ties: bool = False
    scoring: str = "likelihood"
    reps: int = 1
    seed: int = 0
    tasks: str = "builtin"
    task_limit: int | None = None
    corpus: str = "wiki-offline:eval"
    ppl_seqlen: int = 2048
    ppl_max_tokens: int | None = 4096
    batch_size: int = 16

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def m_grid(m_start: float, m_end: float, m_step: float) -> list[float]:
    """The reference's numpy.arange(start, end + step, step), without float drift."""
    if m_step <= 0:
        raise UserError(f"--m_step must be positive, got {m_step}")
    n = int(round((m_end - m_start) / m_step)) + 1
    return [round(m_start + i * m_step, 12) for i in range(max(n, 0))]


def _points(cfg: SweepConfig) -> list[tuple[str, int, float]]:
    pts = [("none", 0, 0.0)] if 0.0 in cfg.m_values else []
    for m in (m for m in cfg.m_values if m > 0):
        for mode in cfg.modes:
            seeds = cfg.random_seeds if mode == "random" else [0]
            pts += [(mode, s, m) for s in seeds]
    return pts


def _point_name(mode: str, seed: int, m: float) -> str:
    return f"{mode}_s{seed}_m{m:.4e}"


def _check_folder(out: Path, manifest: dict) -> None:
    path = out / "sweep_manifest.json"
    if not path.exists():
        return
    old = json.loads(path.read_text())
    keys = ("config", "model_fingerprint", "scores_tom_sha", "scores_generic_sha")
    diff = [k for k in keys if old.get(k) != manifest.get(k)]
    if diff:
        detail = ""
        if "config" in diff:
            changed = sorted(k for k in set(old["config"]) | set(manifest["config"])
                             if old["config"].get(k) != manifest["config"].get(k))
            detail = f" (options changed: {', '.join(changed)})"
        raise UserError(f"sweep folder {out} was written with different "
                        f"{', '.join(diff)}{detail}; use a new --out folder, or the same "
                        "options to resume it")


def run_sweep(lm, tom_scores: dict, gen_scores: dict, cfg: SweepConfig, out: str | Path,
              scores_ids: tuple[str, str] = ("", ""), export_m: float | None = None,
              progress: bool = True, log=print) -> pd.DataFrame:
    """Run (or resume) a sweep; returns the per-point summary frame."""
    from .corpora import load_corpus
    from .evaluate import evaluate
    from .perplexity import perplexity, tokenize_corpus
    from .tasks import load_tasks

    out = Path(out)
    ms = check_m_values(cfg.m_values)
    cfg.m_values = ms
    manifest = build_manifest("sweep", model=lm.name, model_fingerprint=lm.fingerprint,
                              config=cfg.as_dict(), scores_tom_sha=scores_ids[0],
                              scores_generic_sha=scores_ids[1])
    _check_folder(out, manifest)
    (out / "points").mkdir(parents=True, exist_ok=True)
    if not (out / "sweep_manifest.json").exists():
        write_json(out / "sweep_manifest.json", manifest)

    desc = lm.description
    names = [m.name for m in desc.matrices]
    rankings = build_rankings(tom_scores, gen_scores, names, m_max=max(ms),
                              reference_ties=cfg.reference_ties)
    taskset = load_tasks(cfg.tasks)
    if cfg.task_limit:
        taskset = taskset.head(cfg.task_limit)
    corpus = load_corpus(cfg.corpus)
    ppl_ids = tokenize_corpus(lm.tokenizer, corpus, cfg.ppl_max_tokens)

    points = _points(cfg)
    matrix_sums: dict = {}  # reused by every point: weights are restored after each
    iterator = points
    if progress:
        from tqdm import tqdm
        iterator = tqdm(points, desc="sweep", unit="point")
    for mode, seed, m in iterator:
        name = _point_name(mode, seed, m)
        done = out / "points" / f"{name}.json"
        if done.exists():
            continue
        t0 = time.time()
        masks = ({} if mode == "none" else
                 {n: rankings[n].mask(m, mode, seed=seed, reference_ties=cfg.reference_ties)
                  for n in names})
        t_mask = time.time()
        saved = apply_perturbation(desc.matrices, masks, mode=cfg.perturbation, scale=cfg.scale,
                                   totals=matrix_sums)
        t_apply = time.time() - t_mask
        try:
            if export_m is not None and mode == "difference" and abs(m - export_m) < 1e-15:
                lm.model.save_pretrained(out / f"model_m{m:.4e}")
                lm.tokenizer.save_pretrained(out / f"model_m{m:.4e}")
            result = evaluate(lm.model, lm.tokenizer, taskset, scoring=cfg.scoring, reps=cfg.reps,
                              seed=cfg.seed, batch_size=cfg.batch_size, m=m, model_name=lm.name)
            ppl = perplexity(lm.model, lm.tokenizer, corpus, seqlen=cfg.ppl_seqlen,
                             token_ids=ppl_ids, batch_size=2)
        finally:
            t_r = time.time()
            restore(saved)
            t_restore = time.time() - t_r
        stats = pd.DataFrame(mask_stats(masks, rankings, m)) if masks else pd.DataFrame()
        write_csv(out / "points" / f"{name}_prompts.csv", result.table)
        write_csv(out / "points" / f"{name}_metrics.csv", result.metrics)
        if not stats.empty:
            write_csv(out / "points" / f"{name}_masks.csv", stats)
        if mode in ("difference", "none"):
            # The reference's layout, for its summarize step: tom/<rep>/<m>/<task>/results.csv
            for (rep, family), frame in result.reference_results().items():
                path = out / "tom" / str(rep) / f"{m}" / family / "results.csv"
                with_index = frame.reset_index(drop=True)
                write_csv(path, with_index)
        write_json(done, {"mode": mode, "seed": seed, "m": m, "perplexity": ppl.perplexity,
                          "ppl_windows": ppl.windows, "masked": int(sum(x.numel() for x in masks.values())),
                          "seconds": round(time.time() - t0, 2),
                          "mask_seconds": round(t_mask - t0, 4),
                          "apply_restore_seconds": round(t_apply + t_restore, 4)})
    return collect(out)


def collect(out: str | Path) -> pd.DataFrame:
    """Read every finished point; write the tidy table, perplexity_results.csv and summary."""
    out = Path(out)
    points, tidy = [], []
    for path in sorted((out / "points").glob("*.json")):
        info = json.loads(path.read_text())
        points.append(info)
        metrics = pd.read_csv(path.with_name(path.stem + "_metrics.csv"))
        fam = metrics[metrics["level"] == "family"]
        for _, row in fam.iterrows():
            for metric in ("reference_percent", "reference_percent_var", "prompt_accuracy",
                           "scenario_accuracy", "strict_score", "mean_margin",
                           "margin_ci_low", "margin_ci_high", "prompt_ci_low", "prompt_ci_high",
                           "n_cells"):
                if metric in row and pd.notna(row[metric]):
                    tidy.append({"m": info["m"], "mode": info["mode"], "seed": info["seed"],
                                 "family": row["family"], "metric": metric,
                                 "value": float(row[metric])})
        tidy.append({"m": info["m"], "mode": info["mode"], "seed": info["seed"],
                     "family": "", "metric": "perplexity", "value": info["perplexity"]})
        tidy.append({"m": info["m"], "mode": info["mode"], "seed": info["seed"],
                     "family": "", "metric": "masked", "value": info["masked"]})
    if not points:
        raise UserError(f"{out} holds no finished sweep points")
    tidy = pd.DataFrame(tidy).sort_values(["mode", "seed", "m", "family", "metric"])
    write_csv(out / "sweep_points.csv", tidy)
    pts = pd.DataFrame(points)
    ref = pts[pts["mode"].isin(["none", "difference"])].sort_values("m")
    write_csv(out / "perplexity_results.csv", ref[["m", "perplexity"]])
    summary = summarize(tidy)
    write_csv(out / "summary.csv", summary)
    return summary


def summarize(tidy: pd.DataFrame) -> pd.DataFrame:
    """One row per (mode, seed, m): the reference's summary columns plus ours."""
    rows = []
    for (mode, seed, m), g in tidy.groupby(["mode", "seed", "m"], sort=True):
        get = {(r.family, r.metric): r.value for r in g.itertuples()}
        row = {"mode": mode, "seed": seed, "m": m, "masked": get.get(("", "masked")),
               "perplexity": get.get(("", "perplexity"))}
        for fam in ("unexpected", "transfer", "irony", "tomi"):
            pct = get.get((fam, "reference_percent"))
            if pct is None:
                continue
            var = get.get((fam, "reference_percent_var"), 0.0)
            cells = get.get((fam, "n_cells"), float("nan"))
            row[f"{fam}_total_mean"] = pct / 100 * cells
            row[f"{fam}_total_var"] = var * (cells / 100) ** 2
            row[f"{fam}_percent_mean"] = pct
            row[f"{fam}_percent_var"] = var
            row[f"{fam}_strict"] = get.get((fam, "strict_score"))
            row[f"{fam}_margin"] = get.get((fam, "mean_margin"))
            row[f"{fam}_margin_ci_low"] = get.get((fam, "margin_ci_low"))
            row[f"{fam}_margin_ci_high"] = get.get((fam, "margin_ci_high"))
            row[f"{fam}_accuracy"] = get.get((fam, "prompt_accuracy"))
        both = get.get(("unexpected+transfer", "reference_percent"))
        if both is not None:
            row["avg_percent_unexpected_transfer"] = both
        rows.append(row)
    return pd.DataFrame(rows)
