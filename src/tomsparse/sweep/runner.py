"""The m-sweep in memory: for each m and mask mode, perturb, evaluate ToM and perplexity,
undo; then the summary tables.

Each point (mode, seed, m) is written to ``points/`` atomically as soon as it is done, so a
killed sweep run again with the same options skips what it has and ends with the same
tables. A sweep folder remembers its options; running it with different ones is refused
rather than mixing results.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tomsparse.data.corpora import load_corpus
from tomsparse.data.tasks import load_tasks
from tomsparse.errors import UserError
from tomsparse.evaluate.perplexity import PerplexityResult, perplexity, tokenize_corpus
from tomsparse.evaluate.results import write_reference_results
from tomsparse.evaluate.tom import SCORINGS, evaluate
from tomsparse.lm.activations import massive_channels
from tomsparse.lm.batching import pad_token_id, progress_bar
from tomsparse.manifest import build_manifest, write_csv, write_json
from tomsparse.masks import (
    build_rankings,
    check_m_values,
    mask_stats,
    masks_for,
    parse_mode,
)
from tomsparse.perturb import PERTURBATIONS, perturbed
from tomsparse.sweep.matched import FLOOR, search_size
from tomsparse.sweep.summary import collect


@dataclass
class SweepConfig:
    m_values: list[float]
    modes: list[str] = field(default_factory=lambda: ["difference", "random", "tom-only"])
    random_seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
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
    # Damage-matched controls (sweep.matched): for every difference point, the size of each of
    # these masks whose perplexity change matches it, found in at most match_steps
    # perplexity evaluations, then evaluated in full.
    matched_controls: list[str] = field(default_factory=list)
    match_tolerance: float = 0.10
    match_steps: int = 8
    match_m: list[float] | None = None  # the difference points to match (None: all)

    def __post_init__(self) -> None:
        for mode in self.modes:
            parse_mode(mode)  # a clear error for an unknown mode or variant
        for mode in self.matched_controls:
            if mode not in MATCHABLE:
                raise UserError(f"--matched-controls: {mode!r} cannot be size-matched; choose "
                                f"from {', '.join(MATCHABLE)}")
        if self.perturbation not in PERTURBATIONS:
            raise UserError(f"unknown perturbation {self.perturbation!r}; choose from "
                            f"{', '.join(PERTURBATIONS)}")
        if self.scoring not in SCORINGS:
            raise UserError(f"unknown scoring {self.scoring!r}; choose from {', '.join(SCORINGS)}")
        for name in ("reps", "batch_size", "ppl_seqlen", "match_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got "
                                f"{getattr(self, name)}")
        if not 0 < self.match_tolerance < 1:
            raise UserError(f"--match-tolerance must lie in (0, 1) (a fraction of the "
                            f"perplexity change), got {self.match_tolerance}")
        for name in ("task_limit", "ppl_max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1 (or left out for "
                                f"all), got {value}")
        if "random" in self.modes and not self.random_seeds:
            raise UserError("the random control needs at least one seed (--random-seeds 0,1)")

    def as_dict(self) -> dict:
        return dict(self.__dict__)


# Controls whose size can be searched (sweep.matched), with the search's first size (a
# multiple of the target's m) and its bounds (fractions of each matrix).
MATCHABLE = {"generic-only": (1.0, 0.05), "random-fraction": (100.0, 0.5)}


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
            seeds = cfg.random_seeds if parse_mode(mode).base == "random" else [0]
            pts += [(mode, s, m) for s in seeds]
    return pts


def point_name(mode: str, seed: int, m: float) -> str:
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


class _Sweep:
    """What every point of one sweep shares: the model, the tasks, the perplexity tokens, the
    rankings (deepened on demand), the massive-activation channels and the matrices' sums."""

    def __init__(self, lm, tom_scores: dict, gen_scores: dict, cfg: SweepConfig, out: Path,
                 log=print):
        self.lm, self.cfg, self.out, self.log = lm, cfg, out, log
        self.tom_scores, self.gen_scores = tom_scores, gen_scores
        self.names = [m.name for m in lm.description.matrices]
        self.factor = max([parse_mode(x).generic_factor for x in cfg.modes] + [1.0])
        self.depth = max(cfg.m_values)
        self.rankings = build_rankings(tom_scores, gen_scores, self.names, m_max=self.depth,
                                       reference_ties=cfg.reference_ties,
                                       generic_factor=self.factor)
        taskset = load_tasks(cfg.tasks)
        self.taskset = taskset.head(cfg.task_limit) if cfg.task_limit else taskset
        self.corpus = load_corpus(cfg.corpus)
        self.ppl_ids = tokenize_corpus(lm.tokenizer, self.corpus, cfg.ppl_max_tokens)
        self.sums: dict = {}  # reused by every point: weights are restored after each
        n = max([parse_mode(x).exclude_channels for x in cfg.modes] + [0])
        self.channels = self._massive_channels(n) if n else None

    def _massive_channels(self, n: int) -> list[int]:
        """Found once per sweep folder (a forward pass over 8 windows of the perplexity
        tokens) and kept in massive_channels.json beside the points."""
        path = self.out / "massive_channels.json"
        if path.exists():
            found = json.loads(path.read_text())["channels"]
            if len(found) >= n:
                return [c["channel"] for c in found][:n]
        ids = self.ppl_ids.tolist()
        bos = getattr(self.lm.tokenizer, "bos_token_id", None)
        windows = [([bos] if bos is not None else []) + ids[i:i + 255]
                   for i in range(0, min(len(ids), 8 * 255), 255)]
        found = massive_channels(self.lm.model, self.lm.description, windows,
                                 pad_token_id(self.lm.tokenizer), n)
        write_json(path, {"channels": found, "windows": len(windows), "tokens_per_window": 256,
                          "how": "largest |h| of a channel over tokens / the block's median "
                                 "|h|, maximum over blocks (lm.activations)"})
        self.log("[tomsparse] massive-activation channels left out by -x masks: "
                 + ", ".join(f"{c['channel']} ({c['score']:.0f}x median)" for c in found))
        return [c["channel"] for c in found]

    def rankings_for(self, m: float) -> dict:
        if m > self.depth:  # a damage-matched search went past the sweep's m values
            self.depth = m * 2
            self.rankings = build_rankings(self.tom_scores, self.gen_scores, self.names,
                                           m_max=self.depth, reference_ties=self.cfg.reference_ties,
                                           generic_factor=self.factor)
        return self.rankings

    def masks(self, mode: str, seed: int, m: float) -> dict:
        return masks_for(self.rankings_for(m), m, mode, seed=seed,
                         reference_ties=self.cfg.reference_ties, channels=self.channels)

    def perplexity(self, masks: dict) -> PerplexityResult:
        lm, cfg = self.lm, self.cfg
        with perturbed(lm.description.matrices, masks, mode=cfg.perturbation, scale=cfg.scale,
                       totals=self.sums):
            return perplexity(lm.model, lm.tokenizer, self.corpus, seqlen=cfg.ppl_seqlen,
                              token_ids=self.ppl_ids, batch_size=2)

    def point(self, mode: str, seed: int, m: float, extra: dict | None = None) -> dict:
        """Evaluate one point (ToM and perplexity) unless its record exists; its record."""
        lm, cfg, out = self.lm, self.cfg, self.out
        name = point_name(mode, seed, m)
        done = out / "points" / f"{name}.json"
        if done.exists():
            return json.loads(done.read_text())
        t0 = time.time()
        masks = self.masks(mode, seed, m)
        t_mask = time.time()
        with perturbed(lm.description.matrices, masks, mode=cfg.perturbation, scale=cfg.scale,
                       totals=self.sums):
            t_apply = time.time() - t_mask
            result = evaluate(lm.model, lm.tokenizer, self.taskset, scoring=cfg.scoring,
                              reps=cfg.reps, seed=cfg.seed, batch_size=cfg.batch_size, m=m,
                              model_name=lm.name)
            ppl = perplexity(lm.model, lm.tokenizer, self.corpus, seqlen=cfg.ppl_seqlen,
                             token_ids=self.ppl_ids, batch_size=2)
            t_r = time.time()
        t_restore = time.time() - t_r
        stats = (pd.DataFrame(mask_stats(masks, self.rankings, m,
                                         parse_mode(mode).generic_factor))
                 if masks else pd.DataFrame())
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
        record = {"mode": mode, "seed": seed, "m": m, "perplexity": ppl.perplexity,
                  "ppl_windows": ppl.windows,
                  "masked": int(sum(x.numel() for x in masks.values())),
                  "seconds": round(time.time() - t0, 2),
                  "mask_seconds": round(t_mask - t0, 4),
                  "apply_restore_seconds": round(t_apply + t_restore, 4), **(extra or {})}
        write_json(done, record)
        return record

    def matched_control(self, target: dict, mode: str) -> dict:
        """Search the size of ``mode`` whose perplexity change matches ``target``'s (a point
        record), evaluate it in full when matched; the control's entry for matched.json."""
        cfg, out = self.cfg, self.out
        base = json.loads((out / "points" / f"{point_name('none', 0, 0.0)}.json").read_text())
        ppl0 = base["perplexity"]
        start, high = MATCHABLE[mode]
        tlabel = point_name(target["mode"], target["seed"], target["m"])
        cache_dir = out / "search"
        cache_dir.mkdir(exist_ok=True)

        def measure(size: float) -> float:
            path = cache_dir / f"{point_name(mode, 0, size)}.json"
            if path.exists():
                return json.loads(path.read_text())["perplexity"]
            ppl = self.perplexity(self.masks(mode, 0, size)).perplexity
            write_json(path, {"mode": mode, "seed": 0, "m": size, "perplexity": ppl})
            return ppl

        res = search_size(measure, baseline=ppl0, target=target["perplexity"] / ppl0 - 1,
                          start=target["m"] * start, low=target["m"] / 100, high=high,
                          tolerance=cfg.match_tolerance, steps=cfg.match_steps)
        entry = {"mode": mode, "m": res.size, "seed": 0, "label": point_name(mode, 0, res.size),
                 "perplexity": res.perplexity, "ppl_change": res.change,
                 "matched": res.matched, "search": [list(t) for t in res.trace]}
        self.log(f"[tomsparse] damage-matched {mode} for {tlabel} "
                 f"({target['perplexity'] / ppl0 - 1:+.0%} perplexity): m = {res.size:.3g} "
                 f"gives {res.change:+.0%} after {len(res.trace)} perplexity evaluation(s)"
                 + ("" if res.matched else " - not within the tolerance; not evaluated"))
        if res.matched:
            self.point(mode, 0, res.size, extra={"matched_to": tlabel})
        return entry


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
    if cfg.matched_controls and cfg.match_m is not None:
        missing = [x for x in cfg.match_m if not any(math.isclose(x, m) for m in ms if m > 0)]
        if missing:
            raise UserError(f"--match-m {', '.join(f'{x:g}' for x in missing)} is not among "
                            f"the sweep's m values > 0 ({', '.join(f'{m:g}' for m in ms if m > 0)})")
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

    sweep = _Sweep(lm, tom_scores, gen_scores, cfg, out, log=log)
    points = _points(cfg)
    bar = progress_bar(len(points), "sweep", "point", enabled=progress)
    records = {}
    for mode, seed, m in points:
        records[(mode, seed, m)] = sweep.point(mode, seed, m)
        bar.update()
    bar.close()
    targets = [r for (mode, _s, m), r in records.items() if mode == "difference" and m > 0
               and (cfg.match_m is None or any(math.isclose(m, x) for x in cfg.match_m))]
    if cfg.matched_controls and targets and 0.0 not in ms:
        log("[tomsparse] no damage-matched controls: they are matched to the baseline's "
            "perplexity change, and the m values have no 0 (the baseline)")
    elif cfg.matched_controls and targets:
        found = {}
        for target in targets:
            found[point_name("difference", 0, target["m"])] = {
                "mode": "difference", "m": target["m"], "seed": 0,
                "perplexity": target["perplexity"],
                "controls": [sweep.matched_control(target, mode)
                             for mode in cfg.matched_controls]}
        write_json(out / "matched.json", {"tolerance": cfg.match_tolerance,
                                          "floor": FLOOR, "targets": found})
    if export_m is not None:
        m = min((x for x in ms if x > 0), key=lambda x: abs(x - export_m))
        export_perturbed_model(lm, sweep.rankings, cfg, m, out / f"model_m{m:.4e}", sweep.sums,
                               log)
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


