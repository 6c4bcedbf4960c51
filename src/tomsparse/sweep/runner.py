"""The m-sweep in memory: for each m and mask mode, perturb, evaluate ToM and perplexity,
undo. It computes points and nothing else: the tables and verdicts are the judge's
(``judge.summary.collect``), and ``pipeline.run_sweep`` runs both.

Each point (mode, seed, m) is written to ``points/`` atomically as soon as it is done, so a
killed sweep run again with the same options skips what it has and ends with the same
tables. A sweep folder remembers its options; running it with different ones is refused
rather than mixing results (a folder with no finished point is re-initialised). Several
processes may share one folder (two shells, or the ranks of ``torchrun``): each point and each
damage-matched search is locked before it is computed (``sweep.locks``), so every one is
computed once.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import pandas as pd

from tomsparse.config import ADDED_SWEEP_OPTIONS, SweepConfig
from tomsparse.data.corpora import load_corpus
from tomsparse.data.overlap import check_overlap
from tomsparse.data.tasks import load_tasks
from tomsparse.errors import UserError
from tomsparse.evaluate.perplexity import PerplexityResult, perplexity
from tomsparse.evaluate.results import write_reference_results
from tomsparse.evaluate.tom import evaluate
from tomsparse.lm.batching import context_length, progress_bar
from tomsparse.lm.registry import model_identity
from tomsparse.files import write_json
from tomsparse.manifest import build_manifest
from tomsparse.masks import (build_rankings, mask_stats, masks_for, mode_seeds, parse_mode,
                             swapped_mode, swapped_name)
from tomsparse.perturb import perturbed
from tomsparse.scores.store import (check_score_methods, check_swapped_store, scores_identity,
                                    story_hashes)
from tomsparse.sweep.export import export_perturbed_model
from tomsparse.sweep.folder import BASELINE_MODE, INTEGRITY, SweepFolder, point_label
from tomsparse.sweep.inputs import cached_massive_channels, perplexity_splits
from tomsparse.sweep.locks import PointLocks
from tomsparse.sweep.matched import match_controls


def sweep_points(cfg: SweepConfig, swapped=()) -> list[tuple[str, int, float]]:
    """Every (mode, seed, m) of the sweep: the baseline, then per m > 0 each mode with its
    seeds (``secondary_seeds`` of them below the largest m, the primary one), then the
    task-swapped difference mask of each set named in ``swapped`` (``swapped-<name>``, seed 0:
    at every m > 0, the difference mask's m values)."""
    pts = [(BASELINE_MODE, 0, 0.0)] if 0.0 in cfg.m_values else []
    positive = [m for m in cfg.m_values if m > 0]
    for m in positive:
        for mode in cfg.modes:
            seeds = mode_seeds(mode, cfg.random_seeds)
            if cfg.secondary_seeds is not None and m < max(positive):
                seeds = seeds[:cfg.secondary_seeds]
            pts += [(mode, s, m) for s in seeds]
        pts += [(swapped_mode(name), 0, m) for name in swapped]
    return pts


def _check_folder(out: Path, manifest: dict, locks: PointLocks, log=print) -> bool:
    """Whether the folder's manifest must be (re)written: refuses a folder written with other
    options, unless it holds no finished point and nobody is working in it."""
    path = SweepFolder(out).manifest
    if not path.exists():
        return True
    try:
        old = json.loads(path.read_text())
        if not isinstance(old, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError, RecursionError) as exc:
        if _unused(out, locks):
            log(f"[tomsparse] {path} is unreadable ({exc}) and no point is finished: "
                "re-initialising the folder")
            return True
        raise UserError(f"{path}: not a readable sweep manifest ({exc}); the folder holds "
                        "finished points, so use a new --out folder (or restore the file)") from None
    if isinstance(old.get("config"), dict):
        old["config"] = {**ADDED_SWEEP_OPTIONS, **old["config"]}
    keys = ("config", "model_fingerprint", "scores_tom_sha", "scores_generic_sha",
            "scores_swapped_sha")  # the last absent (None) in a sweep without swapped stores
    diff = [k for k in keys if old.get(k) != manifest.get(k)]
    old_swapped, new_swapped = old.get("scores_swapped_sha"), manifest.get("scores_swapped_sha")
    if diff == ["scores_swapped_sha"] and _adds_swapped(old_swapped, new_swapped):
        # task-swapped stores added to a folder (the ones it had, unchanged): their points
        # join the finished ones, which do not depend on them
        added = sorted(set(new_swapped) - set(old_swapped or {}))
        log(f"[tomsparse] {out}: adding the task-swapped store(s) {', '.join(added)} to the "
            "sweep")
        return True
    if diff:
        detail = ""
        if "config" in diff:
            changed = sorted(k for k in set(old["config"]) | set(manifest["config"])
                             if old["config"].get(k) != manifest["config"].get(k))
            detail = f" (options changed: {', '.join(changed)})"
        if _unused(out, locks):
            log(f"[tomsparse] {out} was started with different {', '.join(diff)}{detail} but "
                "holds no finished point: re-initialising it")
            return True
        raise UserError(f"sweep folder {out} was written with different "
                        f"{', '.join(diff)}{detail}; use a new --out folder, or the same "
                        "options to resume it")
    return False


def _adds_swapped(old, new) -> bool:
    """Whether the swapped stores ``new`` ({name: identity}) are the folder's ``old`` ones
    (None: none) unchanged, plus at least one more."""
    old = old or {}
    return (isinstance(old, dict) and isinstance(new, dict) and len(new) > len(old)
            and all(new.get(name) == value for name, value in old.items()))


def _unused(out: Path, locks: PointLocks) -> bool:
    """No finished point and no other live process: the folder may start afresh."""
    return not SweepFolder(out).has_points() and not locks.any_live_other()


class _Sweep:
    """What every point of one sweep shares: the model, the tasks, the perplexity tokens, the
    rankings (deepened on demand), the massive-activation channels and the matrices' sums."""

    def __init__(self, lm, tom_scores: dict, gen_scores: dict, cfg: SweepConfig, out: Path,
                 log=print, take_over: bool = False, allow_mixed_scores: bool = False,
                 swapped: dict | None = None):
        self.lm, self.cfg, self.out, self.log = lm, cfg, out, log
        # both stores must hold the same attribution score (refused unless allowed)
        self.score_methods = score_methods(tom_scores, gen_scores, allow_mixed_scores, log)
        # task-swapped stores ({name: scores}): the ToM store's model and score, each
        self.swapped = dict(swapped or {})
        for name, store in self.swapped.items():
            swapped_mode(name)  # a name a mask mode can carry
            check_swapped(tom_scores, store)
        self.folder = SweepFolder(out)
        self.locks = PointLocks(self.folder.claims_dir, take_over=take_over, log=log)
        self.tom_scores, self.gen_scores = tom_scores, gen_scores
        self.names = [m.name for m in lm.description.matrices]
        self.factor = max([parse_mode(x).generic_factor for x in cfg.modes] + [1.0])
        self.depth = max(cfg.m_values)
        self.rankings = build_rankings(tom_scores, gen_scores, self.names, m_max=self.depth,
                                       reference_ties=cfg.reference_ties,
                                       generic_factor=self.factor)
        self.swapped_rankings = {name: self._swapped_ranking(name) for name in self.swapped}
        taskset = load_tasks(cfg.tasks)
        self.taskset = (taskset.head_clusters(cfg.cluster_limit) if cfg.cluster_limit
                        else taskset.head(cfg.task_limit) if cfg.task_limit else taskset)
        # score prompts and evaluation prompts must not share a story (refused unless allowed)
        manifest = getattr(tom_scores, "manifest", None)
        self.overlap = check_overlap(story_hashes(manifest) if isinstance(manifest, dict)
                                     else None, self.taskset.prompts(),
                                     allow=cfg.allow_overlap,
                                     where=f"--tasks {cfg.tasks} vs the ToM score store")
        # the task-swapped prompts must not share a story with the evaluation either
        self.swapped_overlap = {}
        for name, store in self.swapped.items():
            smanifest = getattr(store, "manifest", None)
            self.swapped_overlap[name] = check_overlap(
                story_hashes(smanifest) if isinstance(smanifest, dict) else None,
                self.taskset.prompts(), allow=cfg.allow_overlap,
                where=f"--tasks {cfg.tasks} vs the task-swapped store {name}")
        self.corpus = load_corpus(cfg.corpus)
        self.ppl_ids, self.search_ids = perplexity_splits(lm, self.corpus, cfg, log)
        window = min(cfg.ppl_seqlen, context_length(lm.model) or cfg.ppl_seqlen)
        if self.ppl_ids.numel() < window:
            raise UserError(f"perplexity corpus {self.corpus.name!r} gives "
                            f"{self.ppl_ids.numel()} tokens"
                            f"{' with --ppl-max-tokens' if cfg.ppl_max_tokens else ''}, fewer "
                            f"than one window of {window}; raise --ppl-max-tokens (or leave it "
                            "out for the whole corpus) or use a longer --corpus")
        self.random_ids = self.ppl_ids[:random_point_tokens(cfg, window,
                                                            self.ppl_ids.numel())]
        self.sums: dict = {}  # reused by every point: weights are restored after each
        self.channels = None

    def prepare(self) -> None:
        """What needs the sweep folder: the massive-activation channels of -x masks."""
        n = max([parse_mode(x).exclude_channels for x in self.cfg.modes] + [0])
        self.channels = (cached_massive_channels(self.lm, self.ppl_ids,
                                                 self.folder.massive_channels, n, self.log)
                         if n else None)

    def rankings_for(self, m: float, mode: str = "difference") -> dict:
        """The rankings ``mode``'s masks at ``m`` are cut from: the ToM store's against the
        generic one, or a task-swapped store's (``swapped-<name>``)."""
        if m > self.depth:  # a damage-matched search went past the sweep's m values
            self.depth = m * 2
            self.rankings = build_rankings(self.tom_scores, self.gen_scores, self.names,
                                           m_max=self.depth, reference_ties=self.cfg.reference_ties,
                                           generic_factor=self.factor)
            self.swapped_rankings = {}
        name = swapped_name(mode) if mode != BASELINE_MODE else None
        if name is None:
            return self.rankings
        if name not in self.swapped:
            raise UserError(f"mask mode {mode}: no task-swapped store named {name!r}; give it "
                            f"with --scores-swapped {name}=DIR")
        if name not in self.swapped_rankings:
            self.swapped_rankings[name] = self._swapped_ranking(name)
        return self.swapped_rankings[name]

    def _swapped_ranking(self, name: str) -> dict:
        """The rankings of task-swapped store ``name`` against the generic store, as deep as
        the ToM store's."""
        return build_rankings(self.swapped[name], self.gen_scores, self.names, m_max=self.depth,
                              reference_ties=self.cfg.reference_ties, generic_factor=self.factor)

    def masks(self, mode: str, seed: int, m: float) -> dict:
        return masks_for(self.rankings_for(m, mode), m, mode, seed=seed,
                         reference_ties=self.cfg.reference_ties, channels=self.channels)

    def perplexity(self, masks: dict, split: str = "report") -> PerplexityResult:
        """The perplexity of the model perturbed with ``masks`` (restored afterwards), on the
        reported tokens or on the ``"search"`` split the matched searches use."""
        lm, cfg = self.lm, self.cfg
        with perturbed(lm.description.matrices, masks, mode=cfg.perturbation, scale=cfg.scale,
                       totals=self.sums):
            return self._perplexity_as_is(split)

    def _perplexity_as_is(self, split: str = "report") -> PerplexityResult:
        """The one perplexity call of a sweep: the model as it is now, on the reported tokens,
        the held-apart ``"search"`` ones, or the ``"random"`` points' first windows of the
        reported ones."""
        lm, cfg = self.lm, self.cfg
        ids = (self.search_ids if split == "search" else
               self.random_ids if split == "random" else self.ppl_ids)
        return perplexity(lm.model, lm.tokenizer, self.corpus, seqlen=cfg.ppl_seqlen,
                          token_ids=ids, batch_size=2, protocol=cfg.ppl_protocol)

    def point(self, mode: str, seed: int, m: float, extra: dict | None = None,
              wait: bool = True) -> dict | None:
        """One point's record: read when it exists, else computed under a claim. A point
        another process holds is waited for (``wait``) or skipped (None)."""
        name = point_label(mode, seed, m)
        done = self.folder.point_record(name)
        return self.locks.compute_once(
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
            ppl = self._perplexity_as_is("random" if is_random_point(mode) else "report")
            t_r = time.time()
        t_restore = time.time() - t_r
        stats = (pd.DataFrame(mask_stats(masks, self.rankings_for(m, mode), m,
                                         parse_mode(mode).generic_factor))
                 if masks else pd.DataFrame())
        # The prompt text is the same at every point: only the baseline keeps it.
        table = (result.table if mode == BASELINE_MODE
                 else result.table.drop(columns=["prompt"], errors="ignore"))
        if mode in ("difference", BASELINE_MODE):
            # The reference's layout, for its summarize step: tom/<rep>/<m>/<task>/results.csv
            write_reference_results(self.folder.tom_dir, result.reference_results(), m)
        record = {"mode": mode, "seed": seed, "m": m, "perplexity": ppl.perplexity,
                  "ppl_windows": ppl.windows, "ppl_unit_losses": ppl.unit_losses,
                  "masked": int(sum(x.numel() for x in masks.values())),
                  "seconds": round(time.time() - t0, 2),
                  "mask_seconds": round(t_mask - t0, 4),
                  "apply_restore_seconds": round(t_apply + t_restore, 4),
                  "worker": f"{self.locks.me['host']}:{self.locks.me['pid']}", **(extra or {})}
        # the tables, their sha256 (points/<label>.sha256), then the record, last
        return self.folder.write_point(name, record, table, result.metrics, stats)


def score_methods(tom_scores, gen_scores, allow: bool = False, log=print) -> dict | None:
    """The attribution scores of the two stores ({"tom": ..., "generic": ...}; None for scores
    given without their manifests): refused when they differ (``scores.store.
    check_score_methods``) unless ``allow``, then said in the log."""
    manifests = [getattr(s, "manifest", None) for s in (tom_scores, gen_scores)]
    if not all(isinstance(m, dict) for m in manifests):
        return None
    where = [f"in {s.directory}" if getattr(s, "directory", None) is not None else "given"
             for s in (tom_scores, gen_scores)]
    methods = check_score_methods(*manifests, allow=allow, tom_where=where[0],
                                  generic_where=where[1])
    if methods["tom"] != methods["generic"]:
        log(f"[tomsparse] mixing {methods['tom']} ToM scores with {methods['generic']} generic "
            "scores (--allow-mixed-scores)")
    return methods


def check_swapped(tom_scores, swapped_scores) -> None:
    """A task-swapped store against the ToM store (``scores.store.check_swapped_store``: the
    same model and attribution score), where both carry their manifests."""
    manifests = [getattr(s, "manifest", None) for s in (tom_scores, swapped_scores)]
    if all(isinstance(m, dict) for m in manifests):
        dirs = [getattr(s, "directory", None) or "(given)" for s in (tom_scores, swapped_scores)]
        check_swapped_store(manifests[0], manifests[1], dirs[0], dirs[1])


def swapped_identity(store, given: str | None = None) -> str:
    """What identifies a task-swapped store in the folder's manifest: ``given``, else its
    manifest's identity (``scores.store.scores_identity``), else "" (scores given in memory)."""
    if given:
        return str(given)
    manifest = getattr(store, "manifest", None)
    return scores_identity(manifest) if isinstance(manifest, dict) else ""


def is_random_point(mode: str) -> bool:
    """A random-mask point (its perplexity on ``--random-ppl-tokens``), not the baseline."""
    return mode != BASELINE_MODE and parse_mode(mode).base == "random"


def random_point_tokens(cfg: SweepConfig, window: int, reported: int) -> int:
    """How many of the reported perplexity tokens a random-mask point is evaluated on: the
    whole windows within ``--random-ppl-tokens`` (at least 2, for an interval; an even number
    under the reference protocol, whose unit is a batch of 2 windows), all when unset."""
    if cfg.random_ppl_tokens is None:
        return reported
    windows = max(2, cfg.random_ppl_tokens // window)
    if cfg.ppl_protocol == "reference":
        windows += windows % 2
    return min(reported, windows * window)


def run_points(lm, tom_scores: dict, gen_scores: dict, cfg: SweepConfig, out: str | Path,
               scores_ids: tuple[str, str] = ("", ""), export_m: float | None = None,
               progress: bool = True, log=print, scores_info: dict | None = None,
               take_over: bool = False, allow_mixed_scores: bool = False,
               swapped: dict | None = None, swapped_ids: dict | None = None) -> None:
    """Compute (or resume) every point of a sweep, its damage-matched controls and its
    export into ``out``; the tables are the judge's (``pipeline.run_sweep`` does both).
    Score stores of different attribution scores (fisher, snip, wanda) are refused unless
    ``allow_mixed_scores``. ``swapped``: {name: task-swapped score store} (issue 37), each
    evaluated as the mode ``swapped-<name>`` at every m > 0 (``swapped_ids``: their
    identities, kept in the folder's manifest so a resumed folder uses the same stores)."""

    out = Path(out)
    ms = cfg.m_values
    cfg.check_export(export_m)
    manifest = build_manifest("sweep", **model_identity(lm),
                              config=cfg.as_dict(), scores_tom_sha=scores_ids[0],
                              scores_generic_sha=scores_ids[1], scores=scores_info or {})
    # Every input is read and checked (tasks, corpus, rankings) before anything is written.
    sweep = _Sweep(lm, tom_scores, gen_scores, cfg, out, log=log, take_over=take_over,
                   allow_mixed_scores=allow_mixed_scores, swapped=swapped)
    manifest["overlap"] = sweep.overlap
    if sweep.swapped:   # absent without swapped stores: such a folder's manifest is unchanged
        manifest["scores_swapped_sha"] = {name: swapped_identity(sweep.swapped[name],
                                                                 (swapped_ids or {}).get(name))
                                          for name in sorted(sweep.swapped)}
        manifest["swapped_overlap"] = sweep.swapped_overlap
    if sweep.score_methods is not None:
        manifest["score_methods"] = sweep.score_methods
    manifest["integrity"] = INTEGRITY  # every point carries its sha256 record (SweepFolder)
    locks = sweep.locks
    fresh = _check_folder(out, manifest, locks, log)
    sweep.folder.points_dir.mkdir(parents=True, exist_ok=True)
    if not locks.any_live_other():  # else their temporaries are in use
        for stale in out.rglob(".*.tmp"):  # left by a killed run mid-write (see atomic_path)
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink()
    if fresh:
        write_json(sweep.folder.manifest, manifest)
    sweep.prepare()
    points = sweep_points(cfg, sorted(sweep.swapped))
    bar = progress_bar(len(points), "sweep", "point", enabled=progress)
    records, held = {}, []
    try:
        for key in points:  # points other processes hold are skipped, then waited for
            records[key] = sweep.point(*key, wait=False)
            if records[key] is None:
                held.append(key)
            else:
                bar.update()
        locks.wait_for([point_label(*key) for key in held], log)
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
    if export_m is not None and locks.acquire("export"):
        try:
            m = min((x for x in ms if x > 0), key=lambda x: abs(x - export_m))
            export_perturbed_model(lm, sweep.rankings, cfg, m, sweep.folder.export_dir(m),
                                   sweep.sums, log)
        finally:
            locks.release("export")


