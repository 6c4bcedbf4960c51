"""The m-sweep in memory: for each m and mask mode, perturb, evaluate ToM and perplexity,
undo; then the summary tables.

Each point (mode, seed, m) is written to ``points/`` atomically as soon as it is done, so a
killed sweep run again with the same options skips what it has and ends with the same
tables. A sweep folder remembers its options; running it with different ones is refused
rather than mixing results (a folder with no finished point is re-initialised). Several
processes may share one folder (two shells, or the ranks of ``torchrun``): each point and each
damage-matched search is claimed before it is computed (``sweep.claims``), so every one is
computed once and each process ends with the same tables.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tomsparse.data.corpora import load_corpus
from tomsparse.data.overlap import check_overlap
from tomsparse.data.tasks import load_tasks
from tomsparse.errors import UserError
from tomsparse.evaluate.perplexity import PROTOCOLS as PPL_PROTOCOLS
from tomsparse.evaluate.perplexity import PerplexityResult, perplexity, tokenize_corpus
from tomsparse.evaluate.results import write_reference_results
from tomsparse.evaluate.tom import ANSWER_RULES, SCORINGS, evaluate
from tomsparse.lm.activations import massive_channels
from tomsparse.lm.batching import context_length, pad_token_id, progress_bar
from tomsparse.manifest import build_manifest, write_csv, write_json
from tomsparse.masks import (
    DEFAULT_RANDOM_SEEDS,
    SEEDED_MODES,
    build_rankings,
    check_m_values,
    mask_stats,
    masks_for,
    mode_seeds,
    parse_mode,
)
from tomsparse.perturb import PERTURBATIONS, perturbed
from tomsparse.scores.store import story_hashes
from tomsparse.sweep.claims import Claims
from tomsparse.sweep.folder import BASELINE_MODE, SweepFolder, point_label
from tomsparse.sweep.matched import MATCHABLE, match_controls
from tomsparse.sweep.summary import collect
from tomsparse.lm.registry import model_identity


@dataclass
class SweepConfig:
    m_values: list[float]
    modes: list[str] = field(default_factory=lambda: ["difference", "random", "tom-only"])
    random_seeds: list[int] = field(default_factory=lambda: list(DEFAULT_RANDOM_SEEDS))
    perturbation: str = "mean"
    scale: float = 0.0
    reference_ties: bool = False
    scoring: str = "likelihood"
    reps: int = 1
    seed: int = 0
    tasks: str = "builtin"
    task_limit: int | None = None
    # tasks of each family until this many clusters (irony: story scenarios); None: task_limit
    cluster_limit: int | None = None
    corpus: str = "wiki-offline:eval"
    ppl_seqlen: int = 2048
    ppl_max_tokens: int | None = 4096
    # evaluate.perplexity.PROTOCOLS: tomsparse (default) or the reference's
    ppl_protocol: str = "tomsparse"
    # how a generated first word is matched (generate/greedy scorings): tomsparse or reference
    answer_rule: str = "tomsparse"
    batch_size: int = 16
    # Damage-matched controls (sweep.matched): for every difference point, the size of each of
    # these masks whose perplexity change matches it, found in at most match_steps
    # perplexity evaluations, then evaluated in full.
    matched_controls: list[str] = field(default_factory=list)
    match_tolerance: float = 0.10
    match_steps: int = 8
    match_m: list[float] | None = None  # the difference points to match (None: all)
    # seeds of the random masks at the m values below the largest (the primary m gets every
    # one of random_seeds); None: every seed at every m
    secondary_seeds: int | None = None
    # seeds each matched random-fraction control is evaluated with (its mask-to-mask variance)
    match_seeds: int = 3
    # tokens of the perplexity corpus after the reported ones, held apart for the matched
    # searches (so a control is not matched on the numbers it is then judged by); 0 = search
    # on the reported tokens themselves (folders written before the split)
    match_search_tokens: int = 4096
    # evaluate on tasks that share stories with the ToM score prompts (data.overlap)
    allow_overlap: bool = False

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
        if self.ppl_protocol not in PPL_PROTOCOLS:
            raise UserError(f"unknown perplexity protocol {self.ppl_protocol!r}; choose from "
                            f"{', '.join(PPL_PROTOCOLS)}")
        if self.answer_rule not in ANSWER_RULES:
            raise UserError(f"unknown answer rule {self.answer_rule!r}; choose from "
                            f"{', '.join(ANSWER_RULES)}")
        options = {"reps": "--reps", "batch_size": "--batch-size",
                   "ppl_seqlen": "--ppl-seqlen", "match_steps": "--match-steps",
                   "match_seeds": "--match-seeds"}
        if self.match_search_tokens < 0:
            raise UserError(f"--match-search-tokens must be 0 or more, got "
                            f"{self.match_search_tokens}")
        for name, option in options.items():
            if getattr(self, name) < 1:
                raise UserError(f"{option} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.match_tolerance < 1:
            raise UserError(f"--match-tolerance must lie in (0, 1) (a fraction of the "
                            f"perplexity change), got {self.match_tolerance}")
        if self.task_limit is not None and self.cluster_limit is not None:
            raise UserError("give --task-limit or --clusters, not both (--clusters counts "
                            "irony's story scenarios, --task-limit its tasks)")
        for name in ("task_limit", "ppl_max_tokens", "cluster_limit", "secondary_seeds"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1 (or left out for "
                                f"all), got {value}")
        if self.seed < 0 or any(x < 0 for x in self.random_seeds):
            raise UserError(f"seeds must be 0 or more (numpy refuses negative seeds), got "
                            f"--seed {self.seed}, --random-seeds {self.random_seeds}")
        seeded = [m for m in self.modes if parse_mode(m).base in SEEDED_MODES]
        if seeded and not self.random_seeds:
            raise UserError(f"the random control {seeded[0]} needs at least one seed "
                            "(--random-seeds 0,1)")
        self.m_values = check_m_values(self.m_values)
        if self.matched_controls and self.match_m is not None:
            positive = [m for m in self.m_values if m > 0]
            missing = [x for x in self.match_m if not any(math.isclose(x, m) for m in positive)]
            if missing:
                raise UserError(f"--match-m {', '.join(f'{x:g}' for x in missing)} is not "
                                f"among the sweep's m values > 0 "
                                f"({', '.join(f'{m:g}' for m in positive)})")

    def check_export(self, export_m: float | None) -> None:
        """``--export-model`` must name one of the sweep's m values > 0."""
        ms = self.m_values
        if export_m is not None and not any(m > 0 and abs(m - export_m) <= 1e-12 * max(m, 1e-30)
                                            for m in ms):
            raise UserError(f"--export-model {export_m:g} is not one of the sweep's m values "
                            f"> 0 ({', '.join(f'{m:g}' for m in ms if m > 0) or 'none'})")

    def as_dict(self) -> dict:
        return dict(self.__dict__)


# Options added after sweep folders already existed, with the value those folders ran with:
# a folder whose recorded config lacks one of them resumes as if it had recorded it.
_ADDED_OPTIONS = {"ppl_protocol": "tomsparse", "answer_rule": "tomsparse",
                  "allow_overlap": False, "match_seeds": 1, "match_search_tokens": 0,
                  "cluster_limit": None, "secondary_seeds": None}



def m_grid(m_start: float, m_end: float, m_step: float) -> list[float]:
    """The reference's grid, value for value: ``numpy.arange(start, end + step, step)``.

    Floating-point arange keeps its drift and may overshoot ``end``: 0, 5e-5, 2e-6 gives 27
    values, 9.999999999999999e-06 among them and 5.2e-05 last. The reference names its m
    folders with ``str()`` of these values, so they are kept exactly, not rounded."""
    if not m_step > 0:
        raise UserError(f"--m_step must be positive, got {m_step}")
    if m_end < m_start:
        raise UserError(f"--m_end {m_end:g} is below --m_start {m_start:g}")
    return [float(x) for x in np.arange(m_start, m_end + m_step, m_step)]


def sweep_points(cfg: SweepConfig) -> list[tuple[str, int, float]]:
    """Every (mode, seed, m) of the sweep: the baseline, then per m > 0 each mode with its
    seeds (``secondary_seeds`` of them below the largest m, the primary one)."""
    pts = [(BASELINE_MODE, 0, 0.0)] if 0.0 in cfg.m_values else []
    positive = [m for m in cfg.m_values if m > 0]
    for m in positive:
        for mode in cfg.modes:
            seeds = mode_seeds(mode, cfg.random_seeds)
            if cfg.secondary_seeds is not None and m < max(positive):
                seeds = seeds[:cfg.secondary_seeds]
            pts += [(mode, s, m) for s in seeds]
    return pts


def _check_folder(out: Path, manifest: dict, claims: Claims, log=print) -> bool:
    """Whether the folder's manifest must be (re)written: refuses a folder written with other
    options, unless it holds no finished point and nobody is working in it."""
    path = SweepFolder(out).manifest
    if not path.exists():
        return True
    try:
        old = json.loads(path.read_text())
        if not isinstance(old, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        if _unused(out, claims):
            log(f"[tomsparse] {path} is unreadable ({exc}) and no point is finished: "
                "re-initialising the folder")
            return True
        raise UserError(f"{path}: not a readable sweep manifest ({exc}); the folder holds "
                        "finished points, so use a new --out folder (or restore the file)") from None
    if isinstance(old.get("config"), dict):
        old["config"] = {**_ADDED_OPTIONS, **old["config"]}
    keys = ("config", "model_fingerprint", "scores_tom_sha", "scores_generic_sha")
    diff = [k for k in keys if old.get(k) != manifest.get(k)]
    if diff:
        detail = ""
        if "config" in diff:
            changed = sorted(k for k in set(old["config"]) | set(manifest["config"])
                             if old["config"].get(k) != manifest["config"].get(k))
            detail = f" (options changed: {', '.join(changed)})"
        if _unused(out, claims):
            log(f"[tomsparse] {out} was started with different {', '.join(diff)}{detail} but "
                "holds no finished point: re-initialising it")
            return True
        raise UserError(f"sweep folder {out} was written with different "
                        f"{', '.join(diff)}{detail}; use a new --out folder, or the same "
                        "options to resume it")
    return False


def _unused(out: Path, claims: Claims) -> bool:
    """No finished point and no other live process: the folder may start afresh."""
    return not SweepFolder(out).has_points() and not claims.any_live_other()


class _Sweep:
    """What every point of one sweep shares: the model, the tasks, the perplexity tokens, the
    rankings (deepened on demand), the massive-activation channels and the matrices' sums."""

    def __init__(self, lm, tom_scores: dict, gen_scores: dict, cfg: SweepConfig, out: Path,
                 log=print, take_over: bool = False):
        self.lm, self.cfg, self.out, self.log = lm, cfg, out, log
        self.folder = SweepFolder(out)
        self.claims = Claims(self.folder.claims_dir, take_over=take_over, log=log)
        self.tom_scores, self.gen_scores = tom_scores, gen_scores
        self.names = [m.name for m in lm.description.matrices]
        self.factor = max([parse_mode(x).generic_factor for x in cfg.modes] + [1.0])
        self.depth = max(cfg.m_values)
        self.rankings = build_rankings(tom_scores, gen_scores, self.names, m_max=self.depth,
                                       reference_ties=cfg.reference_ties,
                                       generic_factor=self.factor)
        taskset = load_tasks(cfg.tasks)
        self.taskset = (taskset.head_clusters(cfg.cluster_limit) if cfg.cluster_limit
                        else taskset.head(cfg.task_limit) if cfg.task_limit else taskset)
        # score prompts and evaluation prompts must not share a story (refused unless allowed)
        manifest = getattr(tom_scores, "manifest", None)
        self.overlap = check_overlap(story_hashes(manifest) if isinstance(manifest, dict)
                                     else None, self.taskset.prompts(),
                                     allow=cfg.allow_overlap,
                                     where=f"--tasks {cfg.tasks} vs the ToM score store")
        self.corpus = load_corpus(cfg.corpus)
        self.ppl_ids, self.search_ids = _perplexity_splits(lm, self.corpus, cfg, log)
        window = min(cfg.ppl_seqlen, context_length(lm.model) or cfg.ppl_seqlen)
        if self.ppl_ids.numel() < window:
            raise UserError(f"perplexity corpus {self.corpus.name!r} gives "
                            f"{self.ppl_ids.numel()} tokens"
                            f"{' with --ppl-max-tokens' if cfg.ppl_max_tokens else ''}, fewer "
                            f"than one window of {window}; raise --ppl-max-tokens (or leave it "
                            "out for the whole corpus) or use a longer --corpus")
        self.sums: dict = {}  # reused by every point: weights are restored after each
        self.channels = None

    def prepare(self) -> None:
        """What needs the sweep folder: the massive-activation channels of -x masks."""
        n = max([parse_mode(x).exclude_channels for x in self.cfg.modes] + [0])
        self.channels = (cached_massive_channels(self.lm, self.ppl_ids,
                                                 self.folder.massive_channels, n, self.log)
                         if n else None)

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

    def perplexity(self, masks: dict, split: str = "report") -> PerplexityResult:
        """The perplexity of the model perturbed with ``masks`` (restored afterwards), on the
        reported tokens or on the ``"search"`` split the matched searches use."""
        lm, cfg = self.lm, self.cfg
        with perturbed(lm.description.matrices, masks, mode=cfg.perturbation, scale=cfg.scale,
                       totals=self.sums):
            return self._perplexity_as_is(split)

    def _perplexity_as_is(self, split: str = "report") -> PerplexityResult:
        """The one perplexity call of a sweep: the model as it is now."""
        lm, cfg = self.lm, self.cfg
        ids = self.search_ids if split == "search" else self.ppl_ids
        return perplexity(lm.model, lm.tokenizer, self.corpus, seqlen=cfg.ppl_seqlen,
                          token_ids=ids, batch_size=2, protocol=cfg.ppl_protocol)

    def point(self, mode: str, seed: int, m: float, extra: dict | None = None,
              wait: bool = True) -> dict | None:
        """One point's record: read when it exists, else computed under a claim. A point
        another process holds is waited for (``wait``) or skipped (None)."""
        name = point_label(mode, seed, m)
        done = self.folder.point_record(name)
        return self.claims.compute_once(
            name, done, lambda: self._compute_point(mode, seed, m, done, extra), wait)

    def _compute_point(self, mode: str, seed: int, m: float, done: Path,
                       extra: dict | None) -> dict:
        lm, cfg = self.lm, self.cfg
        name = done.stem
        t0 = time.time()
        masks = self.masks(mode, seed, m)
        t_mask = time.time()
        with perturbed(lm.description.matrices, masks, mode=cfg.perturbation, scale=cfg.scale,
                       totals=self.sums):
            t_apply = time.time() - t_mask
            result = evaluate(lm.model, lm.tokenizer, self.taskset, scoring=cfg.scoring,
                              reps=cfg.reps, seed=cfg.seed, batch_size=cfg.batch_size, m=m,
                              model_name=lm.name, answer_rule=cfg.answer_rule)
            ppl = self._perplexity_as_is()
            t_r = time.time()
        t_restore = time.time() - t_r
        stats = (pd.DataFrame(mask_stats(masks, self.rankings, m,
                                         parse_mode(mode).generic_factor))
                 if masks else pd.DataFrame())
        # The prompt text is the same at every point: only the baseline keeps it.
        table = (result.table if mode == BASELINE_MODE
                 else result.table.drop(columns=["prompt"], errors="ignore"))
        write_csv(self.folder.point_prompts(name), table)
        write_csv(self.folder.point_metrics(name), result.metrics)
        if not stats.empty:
            write_csv(self.folder.point_masks(name), stats)
        if mode in ("difference", BASELINE_MODE):
            # The reference's layout, for its summarize step: tom/<rep>/<m>/<task>/results.csv
            write_reference_results(self.folder.tom_dir, result.reference_results(), m)
        record = {"mode": mode, "seed": seed, "m": m, "perplexity": ppl.perplexity,
                  "ppl_windows": ppl.windows, "ppl_unit_losses": ppl.unit_losses,
                  "masked": int(sum(x.numel() for x in masks.values())),
                  "seconds": round(time.time() - t0, 2),
                  "mask_seconds": round(t_mask - t0, 4),
                  "apply_restore_seconds": round(t_apply + t_restore, 4),
                  "worker": f"{self.claims.me['host']}:{self.claims.me['pid']}", **(extra or {})}
        write_json(done, record)
        return record


def _perplexity_splits(lm, corpus, cfg: SweepConfig, log=print):
    """(reported token ids, held-apart search token ids): the first ``ppl_max_tokens`` of the
    corpus are reported, up to ``match_search_tokens`` after them are only searched on. When
    the whole corpus is reported (``ppl_max_tokens`` None), its last quarter at most is held
    apart instead. Too little text for one window apart (or 0, or no matched controls): the
    searches use the reported tokens, and the log and ``matched.json`` say so."""
    search = cfg.match_search_tokens if cfg.matched_controls else 0
    wanted = None if cfg.ppl_max_tokens is None else cfg.ppl_max_tokens + search
    ids = tokenize_corpus(lm.tokenizer, corpus, wanted, cfg.ppl_protocol)
    if not search:
        return ids, ids
    window = min(cfg.ppl_seqlen, context_length(lm.model) or cfg.ppl_seqlen)
    if cfg.ppl_max_tokens is None:
        apart = min(search, ids.numel() // 4)
        report, held = ids[:ids.numel() - apart], ids[ids.numel() - apart:]
    else:
        report, held = ids[:cfg.ppl_max_tokens], ids[cfg.ppl_max_tokens:wanted]
    if held.numel() < window:
        log(f"[tomsparse] perplexity corpus {corpus.name!r}: {held.numel()} tokens left to hold "
            f"apart for the matched searches, less than one window of {window}; the searches "
            "use the reported tokens")
        return report, report
    return report, held


def cached_massive_channels(lm, ppl_ids, path: Path, n: int, log=print) -> list[int]:
    """The ``n`` massive-activation channels, found once per sweep folder (a forward pass over
    8 windows of the perplexity tokens) and kept in ``path`` beside the points."""
    if path.exists():
        found = json.loads(path.read_text())["channels"]
        if len(found) >= n:
            return [c["channel"] for c in found][:n]
    ids = ppl_ids.tolist()
    bos = getattr(lm.tokenizer, "bos_token_id", None)
    windows = [([bos] if bos is not None else []) + ids[i:i + 255]
               for i in range(0, min(len(ids), 8 * 255), 255)]
    found = massive_channels(lm.model, lm.description, windows,
                             pad_token_id(lm.tokenizer), n)
    write_json(path, {"channels": found, "windows": len(windows), "tokens_per_window": 256,
                      "how": "largest |h| of a channel over tokens / the block's median "
                             "|h|, maximum over blocks (lm.activations)"})
    log("[tomsparse] massive-activation channels left out by -x masks: "
        + ", ".join(f"{c['channel']} ({c['score']:.0f}x median)" for c in found))
    return [c["channel"] for c in found]


def run_sweep(lm, tom_scores: dict, gen_scores: dict, cfg: SweepConfig, out: str | Path,
              scores_ids: tuple[str, str] = ("", ""), export_m: float | None = None,
              progress: bool = True, log=print, scores_info: dict | None = None,
              tables: bool = True, take_over: bool = False, rules=None
              ) -> pd.DataFrame | None:
    """Run (or resume) a sweep; returns the per-point summary frame (written with the tables
    when ``tables``; without, None: another process of the same sweep writes them).
    ``rules``: the verdicts' decision rules (``sweep.verdicts.VerdictRules``; None: the
    folder's kept ones, else the defaults)."""

    out = Path(out)
    ms = cfg.m_values = check_m_values(cfg.m_values)  # a config changed after it was made
    cfg.check_export(export_m)
    manifest = build_manifest("sweep", **model_identity(lm),
                              config=cfg.as_dict(), scores_tom_sha=scores_ids[0],
                              scores_generic_sha=scores_ids[1], scores=scores_info or {})
    # Every input is read and checked (tasks, corpus, rankings) before anything is written.
    sweep = _Sweep(lm, tom_scores, gen_scores, cfg, out, log=log, take_over=take_over)
    manifest["overlap"] = sweep.overlap
    claims = sweep.claims
    fresh = _check_folder(out, manifest, claims, log)
    sweep.folder.points_dir.mkdir(parents=True, exist_ok=True)
    if not claims.any_live_other():  # else their temporaries are in use
        for stale in out.rglob(".*.tmp"):  # left by a killed run mid-write (see atomic_path)
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink()
    if fresh:
        write_json(sweep.folder.manifest, manifest)
    sweep.prepare()
    points = sweep_points(cfg)
    bar = progress_bar(len(points), "sweep", "point", enabled=progress)
    records, held = {}, []
    try:
        for key in points:  # points other processes hold are skipped, then waited for
            records[key] = sweep.point(*key, wait=False)
            if records[key] is None:
                held.append(key)
            else:
                bar.update()
        claims.wait_for([point_label(*key) for key in held], log)
        for key in held:
            records[key] = sweep.point(*key)
            bar.update()
    finally:  # an error line must not land on the bar's line
        bar.close()
    targets = [r for (mode, _s, m), r in records.items() if mode == "difference" and m > 0
               and (cfg.match_m is None or any(math.isclose(m, x) for x in cfg.match_m))]
    if cfg.matched_controls and targets and 0.0 not in ms:
        log("[tomsparse] no damage-matched controls: they are matched to the baseline's "
            "perplexity change, and the m values have no 0 (the baseline)")
    elif cfg.matched_controls and targets:
        match_controls(sweep, targets)
    if export_m is not None and claims.acquire("export"):
        try:
            m = min((x for x in ms if x > 0), key=lambda x: abs(x - export_m))
            export_perturbed_model(lm, sweep.rankings, cfg, m, sweep.folder.export_dir(m),
                                   sweep.sums, log)
        finally:
            claims.release("export")
    return collect(out, rules=rules) if tables else None


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
        "perturbed-model", **model_identity(lm), m=m,
        mode="difference", perturbation=cfg.perturbation, scale=cfg.scale,
        reference_ties=cfg.reference_ties,
        masked=int(sum(x.numel() for x in masks.values()))))
    if folder.exists():
        shutil.rmtree(folder)  # an export interrupted before its record was written
    tmp.rename(folder)
    log(f"[tomsparse] wrote the perturbed model (difference mask, m = {m:g}) to {folder}")
    return folder


