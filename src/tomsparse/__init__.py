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
        result = ts.evaluate(lm.model, lm.tokenizer, tasks)

A whole sweep or the main job: ``ts.run_sweep(lm, tom_store, gen_store, ts.SweepConfig(...),
out)`` and ``ts.run_main_job(ts.RunConfig(...))``; their reports are ``report.html`` in the
output folder. ``ts.ENTRY_POINTS`` lists every name with the module it comes from.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module that defines it (the one place that says where the public API lives)
ENTRY_POINTS = {
    # the model
    "load_model": "tomsparse.lm.registry",
    "register_model": "tomsparse.lm.registry",
    "wrap_model": "tomsparse.lm.registry",
    "LoadedModel": "tomsparse.lm.registry",
    "DEFAULT_MODEL": "tomsparse.lm.registry",
    # data
    "load_tasks": "tomsparse.data.tasks.loaders",
    "load_corpus": "tomsparse.data.corpora",
    "ScoreDataConfig": "tomsparse.data.score_samples",
    "build_dataset": "tomsparse.data.score_samples",
    # scores
    "compute_score_set": "tomsparse.scores.compute",
    "compute_scores": "tomsparse.scores.compute",
    "save_scores": "tomsparse.scores.store",
    "open_scores": "tomsparse.scores.store",
    "load_scores": "tomsparse.scores.store",
    # masks and perturbation
    "build_rankings": "tomsparse.masks",
    "masks_for": "tomsparse.masks",
    "perturbed": "tomsparse.perturb",
    # evaluation
    "evaluate": "tomsparse.evaluate.tom",
    "perplexity": "tomsparse.evaluate.perplexity",
    # a sweep, its statistics, the main job
    "SweepConfig": "tomsparse.sweep.runner",
    "run_sweep": "tomsparse.sweep.runner",
    "SweepFolder": "tomsparse.sweep.folder",
    "RunFolder": "tomsparse.sweep.folder",
    "RunConfig": "tomsparse.pipeline",
    "run_main_job": "tomsparse.pipeline",
    "AnalysisConfig": "tomsparse.analysis",
    "analyze": "tomsparse.analysis",
}

__all__ = sorted(ENTRY_POINTS) + ["score_set", "matrix_names", "ENTRY_POINTS", "__version__"]


def __getattr__(name: str):
    module = ENTRY_POINTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tomsparse' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value          # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


def score_set(lm, dataset: str = "tom", out=None, **options):
    """Scores of ``lm`` (a ``LoadedModel``) on ``dataset`` ("tom" or "generic"): the samples
    ``ScoreDataConfig(dataset, **options)`` describes (e.g. ``nsamples=100, seqlen=128,
    seed=0``), computed by ``compute_score_set`` and written to ``out`` as a score store when
    given. Returns the ``ScoreResult`` (``.scores``: {matrix name: tensor})."""
    from tomsparse.data.score_samples import ScoreDataConfig, build_dataset
    from tomsparse.scores.compute import compute_score_set

    samples = build_dataset(ScoreDataConfig(dataset=dataset, **options), lm.tokenizer, lm.model)
    return compute_score_set(lm, samples, out=out, progress=False)


def matrix_names(lm) -> list[str]:
    """The names of the weight matrices tomsparse scores and masks (q k v o gate up down of
    every block), in order."""
    return [m.name for m in lm.description.matrices]
