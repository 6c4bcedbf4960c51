"""``tomsparse run``: the presets resolve as documented, and the whole pipeline (scores ->
masks -> perturbation -> evaluation -> report) runs on a tiny stand-in model, then reuses
its scores and finished points when run again."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tomsparse.cli.main import build_parser, main
from tomsparse.cli.options import apply_presets, sweep_config
from tomsparse.config import DEFAULTS, QUICK
from tomsparse.data.score_samples import ScoreDataConfig
from tomsparse.errors import UserError
from tomsparse.config import RunConfig
from tomsparse.stats import OUTCOMES
from tomsparse.config import SweepConfig, m_grid
from tomsparse.sweep.runner import sweep_points
from tomsparse.testing import registered_model


def builtin_clusters(n: int) -> dict:
    """Clusters per family in the first tasks of the built-in bank covering ``n``."""
    from tomsparse.data.tasks import load_tasks

    prompts = load_tasks("builtin").head_clusters(n).prompts()
    out: dict = {}
    for p in prompts:
        out.setdefault(p.family, set()).add(p.cluster or p.task_index)
    return {family: len(ids) for family, ids in out.items()}


def _args(*extra):
    return build_parser().parse_args(["run", *extra])


def test_presets():
    args = _args()
    assert apply_presets(args) == DEFAULTS["m_list"]
    assert (args.nsamples_tom, args.scoring, args.reps, args.random_seeds) == (
        DEFAULTS["nsamples_tom"], "likelihood", 1, DEFAULTS["random_seeds"])
    assert len(args.random_seeds) >= 5  # issue 15: at least 5 seeds in the default run
    assert args.matched_controls == ["generic-only", "random-fraction"]
    # issue 23: the points the verdicts use; the mask family is `tomsparse frontier`'s
    assert args.controls == ["difference", "random"]
    # issue 33: at least 2 random masks at every m (a mask-to-mask variance for claims a
    # and e): 9 at the primary m and 3 at the smaller one (the same 12 points as 10 + 2, and
    # more power for claims a and e at the smaller m), their perplexity on the first 4 windows
    assert (args.clusters, args.task_limit, args.secondary_seeds, args.match_seeds,
            args.match_m, args.random_ppl_tokens) == (20, None, 3, 3, [1e-4], 4096)
    # issue 23: 20 clusters per family (a built-in family has them) and 32k reported
    # perplexity tokens, the searches on 4096 more held apart
    assert (args.ppl_max_tokens, args.ppl_seqlen, args.match_search_tokens) == (32768, 1024, 4096)
    assert all(n >= 20 for n in builtin_clusters(20).values())
    cfg = sweep_config(args, DEFAULTS["m_list"])
    points = sweep_points(cfg)
    assert sum(1 for mode, _s, m in points if mode == "random" and m == 1e-4) == 9
    assert sum(1 for mode, _s, m in points if mode == "random" and m == 3e-5) == 3
    assert cfg.random_ppl_tokens == 4096
    args = _args("--controls", "random,tom-only")  # the user's controls replace the preset's
    apply_presets(args)
    assert args.controls == ["difference", "random", "tom-only"]
    args = _args("--task-limit", "3")       # the user's task count replaces the preset's
    apply_presets(args)
    assert (args.task_limit, args.clusters) == (3, None)
    args = _args("--quick")
    assert apply_presets(args) == QUICK["m_list"] and args.task_limit == QUICK["task_limit"]
    args = _args("--reference-protocol")
    ms = apply_presets(args)
    assert len(ms) == 27 and ms == m_grid(0.0, 5e-5, 2e-6)
    assert (args.nsamples_tom, args.nsamples_generic, args.scoring, args.reps) == (
        100, 100, "generate", 5)
    assert args.task_limit is None and args.ppl_max_tokens is None
    # the user's own values win over the preset's, including an m grid given another way
    args = _args("--reference-protocol", "--reps", "2", "--m_list", "0,1e-5")
    assert apply_presets(args) == [0.0, 1e-5] and args.reps == 2
    args = _args("--quick", "--m_start", "0", "--m_end", "2e-5", "--m_step", "1e-5")
    assert apply_presets(args) == pytest.approx([0.0, 1e-5, 2e-5])
    with pytest.raises(UserError, match="contradict"):
        apply_presets(_args("--quick", "--reference-protocol"))


@pytest.fixture
def tiny():
    """``--model tiny`` loads a tiny Llama with a character tokenizer."""
    with registered_model("tiny"):
        yield


def test_run_end_to_end_on_a_tiny_model(tmp_path, tiny, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"plain generic text, paragraph number {i}." for i in range(60)))
    out = tmp_path / "run"
    argv = ["run", "--model", "tiny", "--device", "cpu", "--out", str(out), "--nsamples-tom", "3",
            "--nsamples-generic", "3", "--seqlen", "32", "--generic-corpus", str(corpus),
            "--corpus", str(corpus), "--m_list", "0,0.05", "--random-seeds", "0",
            "--task-limit", "1", "--ppl-max-tokens", "256", "--analysis-prompts", "3",
            "--controls", "random,tom-only,difference-p16,difference-x3"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and "tom scores: 3 samples" in printed
    summary = pd.read_csv(out / "sweep" / "summary.csv")
    # the controls asked for: random, tom-only, two members of the mask family, and the
    # default damage-matched controls that could be matched (random-fraction: 3 seeds)
    matched = json.loads((out / "sweep" / "matched.json").read_text())
    found = [c["mode"] for t in matched["targets"].values() for c in t["controls"]
             if c["matched"] for _ in c["seeds"]]
    assert sorted(summary["mode"]) == sorted(["difference", "none", "random", "tom-only",
                                              "difference-p16", "difference-x3", *found])
    assert (out / "sweep" / "massive_channels.json").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["nsamples_tom"] == 3 and manifest["options"]["m_list"] == [0.0, 0.05]
    stages = manifest["stage_seconds"]       # issue 23: where the time goes, per stage
    assert {"load model", "ToM scores", "generic scores", "sweep (points, matched searches, "
            "tables)", "analyses", "sweep: baseline", "sweep: difference"} <= set(stages)
    assert all(v >= 0 for v in stages.values())
    for kind in ("tom", "generic"):
        store = json.loads((out / f"scores_{kind}" / "manifest.json").read_text())
        assert store["nsamples"] == 3 and store["model_type"] == "llama"
        assert store["samples_sha256"] == manifest[f"scores_{kind}_sha"]
    page = (out / "sweep" / "report.html").read_text()
    assert "(the paper's Table 1)" in page and "ToM change against m" in page
    assert "Damage-matched controls" in page and "The mask family" in page
    assert (out / "sweep" / "plot_specificity.png").exists()
    # the report leads with the specificity verdicts, written from the sweep's tables
    assert page.index("bottom-line") < page.index("Gate: does the model") < page.index("Claims")
    assert page.index("Claims") < page.index("id='table-1'") < page.index("id='tom-vs-m'")
    assert "Holm" in page and "family-wise" in page      # the error rate, stated once
    verdicts = pd.read_csv(out / "sweep" / "specificity_verdicts.csv")
    assert set(verdicts["claim"]) == {"a", "b", "c", "d", "e"}
    assert set(verdicts["status"]) <= set(OUTCOMES)
    for i in range(1, 6):  # the mechanistic analyses at the largest m
        assert f"Analysis {i}:" in page
    headline = json.loads((out / "analysis" / "analysis_manifest.json").read_text())
    assert headline["resolved"]["m"] == 0.05 and headline["resolved"]["random_seeds"] == [0]

    # Run again: both score sets and every point are reused, the tables are unchanged.
    before = (out / "sweep" / "summary.csv").read_text()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "reusing tom scores" in printed and "reusing generic scores" in printed
    assert (out / "sweep" / "summary.csv").read_text() == before


def test_library_configs_refuse_bad_values():
    """The typed configurations check their values themselves, so a library user gets the
    command line's errors (and the command line no longer swaps a bad value for a default)."""
    for bad, message in [(dict(batch_size=0), "--batch-size must be at least 1, got 0"),
                         (dict(reps=0), "--reps must be at least 1"),
                         (dict(task_limit=0), "--task-limit must be at least 1"),
                         (dict(modes=["difference", "banana"]), "unknown mask mode 'banana'"),
                         (dict(perturbation="scramble"), "unknown perturbation"),
                         (dict(random_seeds=[]), "at least one seed")]:
        with pytest.raises(UserError, match=message):
            SweepConfig(m_values=[0.0, 1e-4], **bad)
    for bad, message in [(dict(nsamples=0), "--nsamples must be a positive number"),
                         (dict(dataset="chat"), "unknown --dataset"),
                         (dict(supervision="all"), "unknown --supervision"),
                         (dict(seqlen=-2), "--seqlen must be 0 or more")]:
        with pytest.raises(UserError, match=message):
            ScoreDataConfig(**bad)
    ok = dict(out="x", tom_data=ScoreDataConfig(dataset="tom"),
              generic_data=ScoreDataConfig(dataset="generic"), sweep=SweepConfig(m_values=[0.0]))
    with pytest.raises(UserError, match="--batch-size must be at least 1"):
        RunConfig(**ok, score_batch_size=0)
    with pytest.raises(UserError, match="a tom and a generic"):
        RunConfig(**{**ok, "tom_data": ScoreDataConfig(dataset="generic")})
