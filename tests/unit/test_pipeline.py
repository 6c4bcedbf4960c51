"""``tomsparse run``: the presets resolve as documented, and the whole pipeline (scores ->
masks -> perturbation -> evaluation -> report) runs on a tiny stand-in model, then reuses
its scores and finished points when run again."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tomsparse import models
from tomsparse.cli import build_parser, main
from tomsparse.errors import UserError
from tomsparse.pipeline import DEFAULTS, QUICK, apply_presets
from tomsparse.sweep import m_grid

from test_sweep_cli import _stand_in


def _args(*extra):
    return build_parser().parse_args(["run", *extra])


def test_presets():
    args = _args()
    assert apply_presets(args) == DEFAULTS["m_list"]
    assert (args.nsamples_tom, args.scoring, args.reps, args.random_seeds) == (
        DEFAULTS["nsamples_tom"], "likelihood", 1, DEFAULTS["random_seeds"])
    args = _args("--quick")
    assert apply_presets(args) == QUICK["m_list"] and args.task_limit == QUICK["task_limit"]
    args = _args("--reference-protocol")
    ms = apply_presets(args)
    assert len(ms) == 26 and ms == m_grid(0.0, 5e-5, 2e-6)
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


def test_run_end_to_end_on_a_tiny_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(models, "load_model", _stand_in)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"plain generic text, paragraph number {i}." for i in range(60)))
    out = tmp_path / "run"
    argv = ["run", "--model", "tiny", "--device", "cpu", "--out", str(out), "--nsamples-tom", "3",
            "--nsamples-generic", "3", "--seqlen", "32", "--generic-corpus", str(corpus),
            "--corpus", str(corpus), "--m_list", "0,0.05", "--random-seeds", "0",
            "--task-limit", "1", "--ppl-max-tokens", "256", "--analysis-prompts", "3"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and "tom scores: 3 samples" in printed
    summary = pd.read_csv(out / "sweep" / "summary.csv")
    assert sorted(summary["mode"]) == ["difference", "none", "random", "tom-only"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["nsamples_tom"] == 3 and manifest["options"]["m_list"] == [0.0, 0.05]
    for kind in ("tom", "generic"):
        store = json.loads((out / f"scores_{kind}" / "manifest.json").read_text())
        assert store["nsamples"] == 3 and store["model_type"] == "llama"
        assert store["samples_sha256"] == manifest[f"scores_{kind}_sha"]
    page = (out / "sweep" / "report.html").read_text()
    assert "Controls side by side" in page
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
