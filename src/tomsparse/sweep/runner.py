"""The m-sweep in memory: for each m and mask mode, perturb, evaluate ToM and perplexity,
undo; then the summary tables.

Each point (mode, seed, m) is written to ``points/`` atomically as soon as it is done, so a
killed sweep run again with the same options skips what it has and ends with the same
tables. A sweep folder remembers its options; running it with different ones is refused
rather than mixing results.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tomsparse.data.corpora import load_corpus
from tomsparse.data.tasks import load_tasks
from tomsparse.errors import UserError
from tomsparse.evaluate.perplexity import perplexity, tokenize_corpus
from tomsparse.evaluate.results import write_reference_results
from tomsparse.evaluate.tom import SCORINGS, evaluate
from tomsparse.manifest import build_manifest, write_csv, write_json
from tomsparse.masks import MODES, build_rankings, check_m_values, mask_stats, masks_for
from tomsparse.perturb import PERTURBATIONS, perturbed
from tomsparse.sweep.summary import collect


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

    def __post_init__(self) -> None:
        unknown = [m for m in self.modes if m not in MODES]
        if unknown:
            raise UserError(f"unknown mask mode {unknown[0]!r}; choose from {', '.join(MODES)}")
        if self.perturbation not in PERTURBATIONS:
            raise UserError(f"unknown perturbation {self.perturbation!r}; choose from "
                            f"{', '.join(PERTURBATIONS)}")
        if self.scoring not in SCORINGS:
            raise UserError(f"unknown scoring {self.scoring!r}; choose from {', '.join(SCORINGS)}")
        for name in ("reps", "batch_size", "ppl_seqlen"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got "
                                f"{getattr(self, name)}")
        for name in ("task_limit", "ppl_max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1 (or left out for "
                                f"all), got {value}")
        if "random" in self.modes and not self.random_seeds:
            raise UserError("the random control needs at least one seed (--random-seeds 0,1)")

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
              progress: bool = True, log=print, scores_info: dict | None = None) -> pd.DataFrame:
    """Run (or resume) a sweep; returns the per-point summary frame."""

    out = Path(out)
    ms = check_m_values(cfg.m_values)
    cfg.m_values = ms
    if export_m is not None and not any(m > 0 and abs(m - export_m) <= 1e-12 * max(m, 1e-30)
                                        for m in ms):
        raise UserError(f"--export-model {export_m:g} is not one of the sweep's m values > 0 "
                        f"({', '.join(f'{m:g}' for m in ms if m > 0) or 'none'})")
    manifest = build_manifest("sweep", model=lm.name, model_fingerprint=lm.fingerprint,
                              config=cfg.as_dict(), scores_tom_sha=scores_ids[0],
                              scores_generic_sha=scores_ids[1], scores=scores_info or {})
    _check_folder(out, manifest)
    (out / "points").mkdir(parents=True, exist_ok=True)
    for stale in out.rglob(".*.tmp"):  # left by a killed run mid-write (see atomic_path)
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()
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
        masks = masks_for(rankings, m, mode, seed=seed, reference_ties=cfg.reference_ties)
        t_mask = time.time()
        with perturbed(desc.matrices, masks, mode=cfg.perturbation, scale=cfg.scale,
                       totals=matrix_sums):
            t_apply = time.time() - t_mask
            result = evaluate(lm.model, lm.tokenizer, taskset, scoring=cfg.scoring, reps=cfg.reps,
                              seed=cfg.seed, batch_size=cfg.batch_size, m=m, model_name=lm.name)
            ppl = perplexity(lm.model, lm.tokenizer, corpus, seqlen=cfg.ppl_seqlen,
                             token_ids=ppl_ids, batch_size=2)
            t_r = time.time()
        t_restore = time.time() - t_r
        stats = pd.DataFrame(mask_stats(masks, rankings, m)) if masks else pd.DataFrame()
        # The prompt text is the same at every point: only the baseline keeps it.
        table = result.table if mode == "none" else result.table.drop(columns=["prompt"],
                                                                      errors="ignore")
        write_csv(out / "points" / f"{name}_prompts.csv", table)
        write_csv(out / "points" / f"{name}_metrics.csv", result.metrics)
        if not stats.empty:
            write_csv(out / "points" / f"{name}_masks.csv", stats)
        if mode in ("difference", "none"):
            # The reference's layout, for its summarize step: tom/<rep>/<m>/<task>/results.csv
            write_reference_results(out / "tom", result.reference_results(), m)
        write_json(done, {"mode": mode, "seed": seed, "m": m, "perplexity": ppl.perplexity,
                          "ppl_windows": ppl.windows, "masked": int(sum(x.numel() for x in masks.values())),
                          "seconds": round(time.time() - t0, 2),
                          "mask_seconds": round(t_mask - t0, 4),
                          "apply_restore_seconds": round(t_apply + t_restore, 4)})
    if export_m is not None:
        m = min((x for x in ms if x > 0), key=lambda x: abs(x - export_m))
        export_perturbed_model(lm, rankings, cfg, m, out / f"model_m{m:.4e}", matrix_sums, log)
    return collect(out)


def export_perturbed_model(lm, rankings, cfg: SweepConfig, m: float, folder: Path,
                           matrix_sums: dict | None = None, log=print) -> Path:
    """Write the model perturbed with the difference mask at ``m`` as an ordinary Hugging
    Face folder (written beside, then renamed: never half a model), with a record of what was
    done to it; the model in memory is restored. An existing export is kept."""
    folder = Path(folder)
    if (folder / "tomsparse-export.json").exists():
        return folder
    masks = masks_for(rankings, m, "difference", reference_ties=cfg.reference_ties)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        with perturbed(lm.description.matrices, masks, mode=cfg.perturbation, scale=cfg.scale,
                       totals=matrix_sums):
            lm.model.save_pretrained(tmp)
            if hasattr(lm.tokenizer, "save_pretrained"):
                lm.tokenizer.save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_json(tmp / "tomsparse-export.json", build_manifest(
        "perturbed-model", model=lm.name, model_fingerprint=lm.fingerprint, m=m,
        mode="difference", perturbation=cfg.perturbation, scale=cfg.scale,
        reference_ties=cfg.reference_ties,
        masked=int(sum(x.numel() for x in masks.values()))))
    if folder.exists():
        shutil.rmtree(folder)  # an export interrupted before its record was written
    tmp.rename(folder)
    log(f"[tomsparse] wrote the perturbed model (difference mask, m = {m:g}) to {folder}")
    return folder


# --------------------------------------------------------------------------------------------
# options from the command line (shared by `tomsparse sweep` and `tomsparse run`)


# --------------------------------------------------------------------------------------------
# summaries: controls side by side, and the reference's summary of a tom/ folder


