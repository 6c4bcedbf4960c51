"""The main job, top to bottom: scores -> masks -> perturbation -> evaluation -> report.

``tomsparse run`` computes ToM and generic sensitivity scores on the default model, sweeps
a handful of m values with the difference mask, the random control and the ToM-only mask
(perplexity and ToM likelihood at each point), then writes the summary, plots and report.
Every stage reuses what an earlier, identical run left in the output folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from tomsparse.analysis.run import (
    AnalysisConfig,
    analyze_loaded,
    matched_at,
    select_prompts,
)
from tomsparse.config import RunConfig, SweepConfig, VerdictRules
from tomsparse.data.corpora import check_inputs
from tomsparse.data.tasks import load_tasks
from tomsparse.data.score_samples import ScoreDataConfig, build_dataset
from tomsparse.lm.registry import load_model, model_identity, print_model_facts
from tomsparse.files import write_csv, write_json
from tomsparse.manifest import build_manifest
from tomsparse.masks import swapped_mode
from tomsparse.report.sweep_report import write_report
from tomsparse.scores.compute import compute_score_set
from tomsparse.scores.store import (StoredScores, existing_store, load_scores, open_scores,
                                    read_manifest, score_method, with_score_method)
from tomsparse.sweep.folder import RunFolder, SweepFolder
from tomsparse.sweep.runner import is_random_point, run_points, sweep_points
from tomsparse.judge.agreement import agreement_lines, difference_agreement
from tomsparse.judge.methods import method_agreement, method_section, method_verdicts
from tomsparse.judge.replicates import mask_overlap, replicate_section, replicate_verdicts
from tomsparse.judge.summary import collect, print_summary
from tomsparse.judge.recovery import planted_recovery, recovery_lines
from tomsparse.plant.folder import read_planted


# The default run's stage times on 2 CPU cores with the default model (README: scores 22 s
# for 48 samples, each sweep point about 56 s for 730 prompts and 32,768 perplexity tokens):
# the rates ``RunWork`` projects a run's time from.
SCORE_SAMPLE_SECONDS = 0.45
SECONDS_PER_UNIT = 56 / (730 * 60 + 32768)   # a point reads ~60 tokens a prompt, shared
# Tokens a perplexity evaluation reads when the whole corpus is asked for (ppl_max_tokens
# None), as a rough size of the corpora.
_WHOLE_CORPUS_TOKENS = 250_000


@dataclass(frozen=True)
class RunWork:
    """What a run will compute, counted before anything is loaded: score samples, sweep
    points and matched-control evaluations, prompts and perplexity tokens per point, and the
    time the default model would take on 2 CPU cores (``seconds``; a larger model takes
    longer, a GPU far less)."""

    score_samples: int
    points: int
    matched_evaluations: int
    prompts: int
    ppl_tokens: int
    seconds: float
    # random-mask points on fewer perplexity tokens (--random-ppl-tokens): count, tokens
    random_points: int = 0
    random_ppl_tokens: int = 0

    def describe(self) -> str:
        hours = self.seconds / 3600
        span = (f"about {hours:.0f} hours" if hours >= 2
                else f"about {max(self.seconds / 60, 1):.0f} minutes")
        return (f"{self.score_samples:,} score samples, {self.points:,} sweep points and "
                f"{self.matched_evaluations:,} matched-control evaluations, each over "
                f"{self.prompts:,} prompts and {self.ppl_tokens:,} perplexity tokens"
                + (f" ({self.random_points:,} random-mask points on {self.random_ppl_tokens:,})"
                   if self.random_points and self.random_ppl_tokens < self.ppl_tokens else "")
                + f": {span} on 2 CPU cores with the default model (longer with a larger one)")


def _prompt_count(sweep: SweepConfig) -> int:
    tasks = load_tasks(sweep.tasks)
    tasks = (tasks.head_clusters(sweep.cluster_limit) if sweep.cluster_limit
             else tasks.head(sweep.task_limit) if sweep.task_limit else tasks)
    return len(tasks.prompts())


def run_work(cfg: RunConfig) -> RunWork:
    """What ``run_main_job(cfg)`` will compute and about how long the default model takes
    for it on 2 CPU cores; reads only the task bank."""
    sweep = cfg.sweep
    samples = ((cfg.tom_data.nsamples + cfg.generic_data.nsamples)
               * (cfg.score_replicates + len(cfg.other_methods))
               + cfg.tom_data.nsamples * len(cfg.swapped) * (1 + len(cfg.other_methods)))
    prompts = _prompt_count(sweep)
    ppl = sweep.ppl_max_tokens or _WHOLE_CORPUS_TOKENS
    points = (len(sweep_points(sweep, cfg.swapped)) + (cfg.score_replicates - 1) * 2
              + len(cfg.other_methods) * (1 + len(cfg.swapped)))
    targets = [m for m in sweep.m_values if m > 0 and "difference" in sweep.modes
               and (sweep.match_m is None or any(abs(m - x) <= 1e-12 * max(x, 1e-30)
                                                 for x in sweep.match_m))]
    # the task-swapped masks are searched to each target's damage too (claim (f))
    matched_swapped = len(cfg.swapped) if sweep.matched_controls else 0
    evaluated = len(targets) * (sum(sweep.match_seeds if c == "random-fraction" else 1
                                    for c in sweep.matched_controls) + matched_swapped)
    searched = (len(targets) * (len(sweep.matched_controls) + matched_swapped)
                * sweep.match_steps)
    # random-mask points pay for their --random-ppl-tokens only
    random_points = sum(1 for mode, _, _ in sweep_points(sweep, cfg.swapped)
                        if is_random_point(mode))
    random_ppl = min(ppl, sweep.random_ppl_tokens or ppl)
    units = ((points + evaluated) * (prompts * 60 + ppl)
             - random_points * (ppl - random_ppl)
             + searched * (sweep.match_search_tokens or ppl))
    seconds = samples * SCORE_SAMPLE_SECONDS + units * SECONDS_PER_UNIT
    return RunWork(score_samples=samples, points=points, matched_evaluations=evaluated,
                   prompts=prompts, ppl_tokens=ppl, seconds=seconds,
                   random_points=random_points, random_ppl_tokens=random_ppl)


def stream_scores(lm, store: str | Path) -> StoredScores:
    """A score store opened for the sweep: read one matrix at a time, onto that weight's
    device, as the rankings need them (never two full score sets in host memory)."""
    devices = {m.name: m.module.weight.device if m.module.weight.device.type != "meta"
               else "cpu" for m in lm.description.matrices}
    return open_scores(store, model=lm, device=devices)


def run_sweep(lm, tom_scores: dict, gen_scores: dict, cfg: SweepConfig, out: str | Path, *,
              tables: bool = True, rules: VerdictRules | None = None, **point_options
              ) -> pd.DataFrame | None:
    """Run (or resume) a sweep (``sweep.runner.run_points``: its points, matched controls and
    export; ``point_options`` go there), then judge it (``judge.summary.collect``): returns
    the per-point summary frame, written with the tables when ``tables``; without, None:
    another process of the same sweep writes them. ``rules``: the verdicts' decision rules
    (None: the folder's kept ones, else the defaults)."""
    run_points(lm, tom_scores, gen_scores, cfg, out, **point_options)
    return collect(out, rules=rules) if tables else None


def sweep_and_report(lm, tom, gen, cfg: SweepConfig, out: str | Path, *,
                     finish: Callable[[pd.DataFrame], tuple[dict, Sequence[tuple[str, str]]]],
                     log=print, **sweep_options) -> tuple[pd.DataFrame, Path] | None:
    """Run (or resume) a sweep into ``out``, write its tables (``run_sweep``) and its report.
    ``finish(summary)`` gives the manifest the report shows and the extra sections it embeds
    (a run writes its manifest and analyses there first). ``sweep_options`` go to
    ``run_sweep``; with ``tables=False`` (a torchrun rank other than 0) nothing is written
    and the result is None."""
    summary = run_sweep(lm, tom, gen, cfg, out, log=log, **sweep_options)
    if summary is None:
        return None
    record_recovery(lm, tom, gen, cfg, out, log=log)
    record_agreement(lm, tom, gen, sweep_options.get("swapped"), cfg, out, log=log)
    manifest, sections = finish(summary)
    return summary, write_report(out, summary, manifest, sections)


def record_recovery(lm, tom, gen, cfg: SweepConfig, out: str | Path, log=print) -> None:
    """On a planted model (its folder carries planted.json: ``tomsparse plant``), how the
    sweep's masks recover the planted set (``judge.recovery``), written into the sweep folder
    for its report; nothing for any other model."""
    planted = read_planted(lm.source, lm.description.matrices)
    if planted is None:
        return
    table = planted_recovery(planted, tom, gen, lm.description.matrices, cfg.m_values,
                             cfg.random_seeds, cfg.reference_ties)
    path = SweepFolder(out).write_planted_recovery(table)
    log(f"[tomsparse] planted ground truth ({planted.total:,} weights, density "
        f"{planted.density:g}): {path}")
    for line in recovery_lines(table):
        log(f"  {line}")


def record_agreement(lm, tom, gen, swapped, cfg: SweepConfig, out: str | Path,
                     log=print) -> None:
    """With task-swapped stores (``swapped``: {name: scores}), the Jaccard agreement of the
    difference mask and each task-swapped mask (and of the swapped masks with each other), per
    m > 0 and role, beside two random masks of the same counts (``judge.agreement``), written
    into the sweep folder for its report; nothing without them."""
    if not swapped:
        return
    sets = {"difference": (tom, gen)}
    sets.update({swapped_mode(name): (store, gen) for name, store in sorted(swapped.items())})
    table = difference_agreement(lm.description.matrices, sets, cfg.m_values,
                                 reference_ties=cfg.reference_ties)
    path = SweepFolder(out).write_mask_agreement(table)
    log(f"[tomsparse] mask agreement: {path}")
    for line in agreement_lines(table):
        log(f"  {line}")


def _scores(lm, cfg: RunConfig, data: ScoreDataConfig, log, replicate: int = 1,
            score: str | None = None) -> tuple[Path, str]:
    """Compute (or reuse, when an earlier run used the same samples and score) one score set:
    its store and its identity (the samples' hash, with the score unless Fisher). Score
    replicate r draws its samples with seed + r - 1; ``score`` another attribution score than
    the run's (``--methods``: its own store, ``RunFolder.method_scores``)."""
    score = score or cfg.score
    run = RunFolder(cfg.out)
    folder = (run.scores(data.dataset, replicate) if score == cfg.score
              else run.method_scores(data.dataset, score))
    data = replace(data, seed=data.seed + replicate - 1)
    samples = build_dataset(data, lm.tokenizer, lm.model)
    wanted = samples.info["samples_sha256"]
    identity = with_score_method(wanted, score)
    old = existing_store(folder)
    if old is not None:
        if (old.get("samples_sha256") == wanted and old.get("fingerprint") == lm.fingerprint
                and bool(old.get("reference_fp16")) == cfg.score_reference_fp16
                and score_method(old) == score):
            log(f"[tomsparse] reusing {data.dataset} scores in {folder}")
            return folder, identity
    log(f"[tomsparse] {data.dataset} scores: {len(samples)} samples"
        + (f" ({score})" if score != "fisher" else ""))
    compute_score_set(lm, samples, out=folder, batch_size=cfg.score_batch_size,
                      method=cfg.score_method, reference_fp16=cfg.score_reference_fp16,
                      score=score)
    return folder, identity  # the store's identity (scores.store.scores_identity)


def _methods(lm, cfg: RunConfig, first: tuple[Path, Path], stores: dict[str, tuple],
             log, swapped: dict | None = None) -> list[tuple[str, str]]:
    """The other attribution scores (``--methods``): the agreement of every method's
    difference mask (``method_agreement.csv``), each other method's difference mask evaluated
    at the primary m (its own small sweep folder, with its own task-swapped masks when
    ``swapped``: {method: {set: (store, identity)}}) and claims (a)-(c) and (f) judged again
    with them (``method_verdicts.csv``); the report section of both (``judge.methods``)."""
    swapped = swapped or {}
    run, sweep = RunFolder(cfg.out), cfg.sweep
    positive = [m for m in sweep.m_values if m > 0]
    if not positive or not stores:
        return []
    sets = {cfg.score: tuple(stream_scores(lm, s) for s in first)}
    sets.update({x: tuple(stream_scores(lm, s) for s in pair) for x, pair in stores.items()})
    agreement = method_agreement(lm.description.matrices, sets, positive)
    write_csv(run.method_agreement, agreement)
    for line in agreement_lines(agreement):
        log(f"[tomsparse] {line}")
    primary = max(positive)
    folders = _difference_points(lm, cfg, primary, {
        method: (pair, run.method_sweep(method).root, method, swapped.get(method))
        for method, pair in stores.items()}, log)
    table = method_verdicts(run.sweep.root, folders, primary, cfg.score)
    write_csv(run.method_verdicts, table)
    body = method_section(agreement, table)
    return [("Attribution methods: do Fisher, SNIP and Wanda find the same weights, and the "
             "same verdict?", body)] if body else []


def _difference_points(lm, cfg: RunConfig, primary: float, sets: dict, log) -> dict:
    """Another score set's difference mask evaluated at the primary m, each into its own
    small sweep folder (``sets``: {key: ((ToM store, generic store), folder, name) or, with
    that score's task-swapped stores, (..., name, {set: (store, identity)})}): the points
    score replicates and other attribution scores are judged by. Returns {key: folder}."""
    rcfg = replace(cfg.sweep, m_values=[primary], modes=["difference"], matched_controls=[],
                   match_m=None)
    folders = {}
    for key, ((tom, gen), folder, name, *rest) in sets.items():
        own = (rest[0] if rest else None) or {}
        log(f"[tomsparse] {name}: its difference mask at m = {primary:g}"
            + (f", and its task-swapped masks ({', '.join(sorted(own))})" if own else ""))
        run_sweep(lm, stream_scores(lm, tom), stream_scores(lm, gen), rcfg, folder,
                  progress=False, log=log, take_over=cfg.take_over,
                  swapped={k: stream_scores(lm, v[0]) for k, v in own.items()} or None,
                  swapped_ids={k: v[1] for k, v in own.items()} or None)
        folders[key] = folder
    return folders


def _replicates(lm, cfg: RunConfig, first: tuple[Path, Path], replicas: dict[int, tuple],
                log) -> list[tuple[str, str]]:
    """Score replicates 2..N: the Jaccard overlap of their difference masks with replicate
    1's (``mask_overlap.csv``), each replicate's difference mask evaluated at the primary m
    (its own small sweep folder) and the claims judged again with it
    (``replicate_verdicts.csv``); the report section of both."""
    run, sweep = RunFolder(cfg.out), cfg.sweep
    positive = [m for m in sweep.m_values if m > 0]
    if not positive:
        return []
    stores = [first, *replicas.values()]
    overlap = mask_overlap(lm, [(stream_scores(lm, t), stream_scores(lm, g)) for t, g in stores],
                           positive)
    write_csv(run.mask_overlap, overlap)
    primary = max(positive)
    folders = _difference_points(lm, cfg, primary, {
        r: (pair, run.replicate_sweep(r).root, f"score replicate {r}")
        for r, pair in replicas.items()}, log)
    table = replicate_verdicts(run.sweep.root, folders, primary)
    write_csv(run.replicate_verdicts, table)
    shown = overlap[(overlap["role"] == "all") & (overlap["m"] == primary)]
    if not shown.empty:
        log("[tomsparse] difference-mask overlap with score replicate 1 at m = "
            f"{primary:g}: " + ", ".join(f"replicate {int(r.replicate)} Jaccard {r.jaccard:.3f}"
                                         for r in shown.itertuples()))
    body = replicate_section(overlap, table)
    return [("Score replicates: is the mask, and the verdict, stable?", body)] if body else []


def _analysis(lm, cfg: RunConfig) -> None:
    """The mechanistic analyses at the sweep's largest m: difference mask vs the random
    control and the damage-matched controls, on a few built-in ToM prompts (``tomsparse
    analyze --run`` does more)."""
    print()
    sweep = cfg.sweep
    m = max(sweep.m_values)
    run = RunFolder(cfg.out)
    acfg = AnalysisConfig(m=m, modes=["difference", "random"],
                          random_seeds=list(sweep.random_seeds), perturbation=sweep.perturbation,
                          scale=sweep.scale, reference_ties=sweep.reference_ties,
                          # the same damage-matched controls as the sweep's, each at its own m
                          matched=matched_at(run.sweep.read_matched(), m, where=run.sweep.matched))
    stores = {k: run.scores(k) for k in ("tom", "generic")}
    # the analyses need every score matrix at once: loaded whole here, after the sweep
    tom, gen = (load_scores(stores[k], model=lm)[0] for k in ("tom", "generic"))
    analyze_loaded(lm, (tom, read_manifest(stores["tom"]), stores["tom"]),
                   (gen, read_manifest(stores["generic"]), stores["generic"]), acfg,
                   select_prompts("builtin", cfg.analysis_prompts), run.analysis_dir,
                   options={"analysis_prompts": cfg.analysis_prompts, "from": "tomsparse run"},
                   run_dir=cfg.out)


class _Stages:
    """Wall-clock seconds per stage of a run (recorded in its manifest, printed at the end)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._open: tuple[str, float] | None = None

    def start(self, name: str) -> None:
        self._open = (name, time.time())

    def stop(self) -> None:
        if self._open is not None:
            name, t = self._open
            self.seconds[name] = round(time.time() - t, 1)
            self._open = None

    def __call__(self, name: str):
        stages = self

        class _Block:
            def __enter__(self):
                stages.start(name)

            def __exit__(self, *exc):
                stages.stop()
                return False
        return _Block()

    def split_sweep(self, folder) -> None:
        """The sweep's point evaluations by kind of point (their records' seconds); the rest
        of the sweep stage is the matched searches, rankings and tables."""
        for record in folder.read_records():
            kind = "sweep: " + ("baseline" if record.mode == "none" else
                                "matched controls" if "matched_to" in record.fields
                                else record.mode)
            secs = float(record.fields.get("seconds", 0.0) or 0.0)
            self.seconds[kind] = round(self.seconds.get(kind, 0.0) + secs, 1)


def run_main_job(cfg: RunConfig, log=print) -> Path:
    """Scores, sweep, manifest, analyses and report into ``cfg.out``; returns the report."""
    check_inputs(corpora=[cfg.generic_data.corpus, cfg.sweep.corpus], tasks=[cfg.sweep.tasks],
                 prompts=[cfg.tom_data.prompts])  # before anything is computed or written
    cfg.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    stages = _Stages()
    with stages("load model"):
        lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, device_map=cfg.device_map,
                        revision=cfg.revision, cache_dir=cfg.cache_dir)
    print_model_facts(lm)
    log("")
    run = RunFolder(cfg.out)
    with stages("ToM scores"):
        tom_store, tom_sha = _scores(lm, cfg, cfg.tom_data, log)
    with stages("generic scores"):
        gen_store, gen_sha = _scores(lm, cfg, cfg.generic_data, log)
    replicas = {}
    if cfg.score_replicates > 1:
        with stages("score replicates"):
            for r in range(2, cfg.score_replicates + 1):
                replicas[r] = (_scores(lm, cfg, cfg.tom_data, log, r)[0],
                               _scores(lm, cfg, cfg.generic_data, log, r)[0])
    swapped = {}
    if cfg.swapped:
        with stages("task-swapped scores"):
            for name in cfg.swapped:
                swapped[name] = _scores(lm, cfg, replace(cfg.tom_data, dataset=name,
                                                         select="all"), log)
    methods, method_swapped = {}, {}
    if cfg.other_methods:
        with stages("other attribution scores"):
            for method in cfg.other_methods:
                methods[method] = tuple(_scores(lm, cfg, data, log, score=method)[0]
                                        for data in (cfg.tom_data, cfg.generic_data))
                # claim (f) per method: the swapped sets scored by the same method
                method_swapped[method] = {
                    name: _scores(lm, cfg, replace(cfg.tom_data, dataset=name, select="all"),
                                  log, score=method) for name in cfg.swapped}
    stages.start("sweep (points, matched searches, tables)")

    def finish(_summary: pd.DataFrame) -> tuple[dict, list[tuple[str, str]]]:
        stages.stop()
        stages.split_sweep(run.sweep)
        extra = []
        if replicas:
            with stages("score replicates: overlap and verdicts"):
                extra = _replicates(lm, cfg, (tom_store, gen_store), replicas, log)
        if methods:
            with stages("other attribution scores: agreement and verdicts"):
                extra += _methods(lm, cfg, (tom_store, gen_store), methods, log,
                                  swapped=method_swapped)
        if cfg.analysis_prompts and any(m > 0 for m in cfg.sweep.m_values):
            with stages("analyses"):
                _analysis(lm, cfg)
        manifest = build_manifest("run", **model_identity(lm),
                                  options=cfg.options, score_method=cfg.score,
                                  scores_tom_sha=tom_sha,
                                  scores_generic_sha=gen_sha,
                                  **({"scores_swapped_sha": {k: v[1] for k, v in
                                                             swapped.items()}}
                                     if swapped else {}),
                                  seconds=round(time.time() - t0, 1),
                                  stage_seconds=stages.seconds)
        write_json(run.manifest, manifest)
        return manifest, extra + run.read_report_sections()  # with the analyses, if run

    summary, report = sweep_and_report(
        lm, stream_scores(lm, tom_store), stream_scores(lm, gen_store), cfg.sweep,
        run.sweep.root, finish=finish, scores_ids=(tom_sha, gen_sha), export_m=cfg.export_m,
        take_over=cfg.take_over, rules=cfg.rules,
        scores_info={"tom": str(tom_store), "generic": str(gen_store),
                     **({"swapped": {k: str(v[0]) for k, v in swapped.items()}}
                        if swapped else {})},
        swapped={k: stream_scores(lm, v[0]) for k, v in swapped.items()} or None,
        swapped_ids={k: v[1] for k, v in swapped.items()} or None)
    log("")
    print_summary(summary, log=log)
    log("\ntime per stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in stages.seconds.items()))
    log(f"\nreport: {report.resolve()}  ({time.time() - t0:.0f} s)")
    return report
