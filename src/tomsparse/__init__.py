"""tomsparse: sparse Theory-of-Mind parameter patterns in causal language models.

Pipeline: scores -> masks -> perturbation -> evaluation -> report, with the model adapter
(``lm``) and the data sources (``data``: tasks, corpora, score samples) beside it.

The entry points a notebook needs are importable from the package itself; each is loaded on
first use, so ``import tomsparse`` stays cheap (no torch until one is touched)::

    import tomsparse as ts

    lm = ts.load_model("smollm2-135m")                       # or a hub id / local folder
    tom = ts.score_set(lm, "tom", nsamples=4)                # per-sample squared gradients
    gen = ts.score_set(lm, "generic", nsamples=4)
    rankings = ts.build_rankings(tom.scores, gen.scores, ts.matrix_names(lm), m_max=1e-4)
    masks = ts.masks_for(rankings, m=1e-4, mode="difference")
    tasks = ts.load_tasks("builtin").head_clusters(2)
    with ts.perturbed(lm.description.matrices, masks):       # undone bit for bit on leaving
        result = ts.evaluate_tom(lm.model, lm.tokenizer, tasks)

A whole sweep or the main job: ``ts.run_sweep(lm, tom_store, gen_store, ts.SweepConfig(...),
out)`` and ``ts.run_main_job(ts.RunConfig(...))``; their reports are ``report.html`` in the
output folder. ``ts.ENTRY_POINTS`` lists every name with the module it comes from.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module that defines it, ":attribute" where the names differ (the one place
# that says where the public API lives)
ENTRY_POINTS = {
    # the model
    "load_model": "tomsparse.lm.registry",
    "register_model": "tomsparse.lm.registry",
    "wrap_model": "tomsparse.lm.registry",
    "LoadedModel": "tomsparse.lm.registry",
    "DEFAULT_MODEL": "tomsparse.lm.registry",
    "matrix_names": "tomsparse.lm.registry",
    # data
    "load_tasks": "tomsparse.data.tasks.loaders",
    "load_corpus": "tomsparse.data.corpora",
    "ScoreDataConfig": "tomsparse.data.score_samples",
    "build_dataset": "tomsparse.data.score_samples",
    # scores
    "compute_score_set": "tomsparse.scores.compute",
    "compute_scores": "tomsparse.scores.compute",
    "score_set": "tomsparse.scores.compute",
    "save_scores": "tomsparse.scores.store",
    "open_scores": "tomsparse.scores.store",
    "load_scores": "tomsparse.scores.store",
    # masks and perturbation
    "build_rankings": "tomsparse.masks",
    "masks_for": "tomsparse.masks",
    "perturbed": "tomsparse.perturb",
    # evaluation
    # (not "evaluate": that name is the tomsparse.evaluate subpackage)
    "evaluate_tom": "tomsparse.evaluate.tom:evaluate",
    "perplexity": "tomsparse.evaluate.perplexity",
    # the configurations (every option's default and check), a sweep, its judging, the main job
    "SweepConfig": "tomsparse.config",
    "RunConfig": "tomsparse.config",
    "VerdictRules": "tomsparse.config",
    "run_sweep": "tomsparse.pipeline",
    "SweepFolder": "tomsparse.sweep.folder",
    "RunFolder": "tomsparse.sweep.folder",
    "run_main_job": "tomsparse.pipeline",
    "AnalysisConfig": "tomsparse.analysis",
    "analyze": "tomsparse.analysis",
}

__all__ = sorted(ENTRY_POINTS) + ["ENTRY_POINTS", "__version__"]


def __getattr__(name: str):
    where = ENTRY_POINTS.get(name)
    if where is None:
        raise AttributeError(f"module 'tomsparse' has no attribute {name!r}")
    module, _, attribute = where.partition(":")
    value = getattr(importlib.import_module(module), attribute or name)
    globals()[name] = value          # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
