"""The sweep on a tiny model: resume gives the same tables, changed options are refused,
the model is restored, the reference layout and the report are written."""


import pandas as pd
from dataclasses import replace

import pytest
import torch

from tomsparse.errors import UserError
from tomsparse.evaluate.results import write_reference_results
from tomsparse.lm import adapter
from tomsparse.lm.registry import LoadedModel
from tomsparse.report.sweep_report import write_report
from tomsparse.judge.reference import reference_summary
from tomsparse.config import SweepConfig, m_grid
from tomsparse.pipeline import run_sweep
from tomsparse.testing import CharTokenizer, tiny_model


@pytest.fixture
def setup(tmp_path):
    model = tiny_model("llama")
    desc = adapter.describe(model)
    lm = LoadedModel(model=model, tokenizer=CharTokenizer(), name="tiny-llama", source="memory",
                     fingerprint=adapter.fingerprint(model, desc), description=desc)
    gen = torch.Generator().manual_seed(0)
    tom = {m.name: torch.rand(m.shape, generator=gen) for m in desc.matrices}
    generic = {m.name: torch.rand(m.shape, generator=gen) for m in desc.matrices}
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join("some generic text number %d here" % i for i in range(40)))
    cfg = SweepConfig(m_values=[0.0, 0.05], modes=["difference", "random", "tom-only"],
                      random_seeds=[0, 1], tasks="builtin", task_limit=1, corpus=str(corpus),
                      ppl_seqlen=32, ppl_max_tokens=256, batch_size=8)
    return lm, tom, generic, cfg


def test_sweep_resume_restore_and_outputs(setup, tmp_path):
    lm, tom, generic, cfg = setup
    before = [p.detach().clone() for p in lm.model.parameters()]
    out = tmp_path / "sweep"
    full = run_sweep(lm, tom, generic, cfg, out, progress=False)
    assert all(torch.equal(p, b) for p, b in zip(lm.model.parameters(), before))
    assert len(full) == 1 + 4  # baseline + difference, tom-only, 2 random seeds
    diff = full[full["mode"] == "difference"].set_index("m")
    rnd = full[full["mode"] == "random"].groupby("m")["masked"].first()
    assert (diff["masked"] == rnd).all()  # random control has the same count
    assert (out / "perplexity_results.csv").exists() and (out / "sweep_points.csv").exists()
    assert list((out / "tom" / "1").glob("*/unexpected/results.csv"))
    for path in (out / "tom").rglob("results.csv"):  # the reference's form: an index column
        assert pd.read_csv(path).columns[0].startswith("Unnamed"), path
    # "Kill" the run after some points: delete the later ones, resume, same tables.
    for path in sorted((out / "points").glob("random_s1_*")) + sorted((out / "points").glob("tom-only*")):
        path.unlink()
    resumed = run_sweep(lm, tom, generic, cfg, out, progress=False)
    pd.testing.assert_frame_equal(full.reset_index(drop=True), resumed.reset_index(drop=True))
    page = write_report(out, resumed, {"model": "tiny-llama"})
    text = page.read_text()
    assert "data:image/png;base64" in text and "difference mask" in text


def test_changed_options_are_refused(setup, tmp_path):
    lm, tom, generic, cfg = setup
    out = tmp_path / "sweep"
    cfg = replace(cfg, m_values=[0.05], modes=["difference"])  # configurations are frozen
    run_sweep(lm, tom, generic, cfg, out, progress=False)
    n_files = len(list(out.rglob("*")))
    cfg = replace(cfg, perturbation="zero")
    with pytest.raises(UserError, match="different config.*perturbation"):
        run_sweep(lm, tom, generic, cfg, out, progress=False)
    assert len(list(out.rglob("*"))) == n_files  # nothing written or lost


def test_fingerprint_mismatch_and_bad_m(setup, tmp_path):
    lm, tom, generic, cfg = setup
    with pytest.raises(UserError, match=r"\[0, 1\]"):  # checked once, when the config is made
        run_sweep(lm, tom, generic, replace(cfg, m_values=[0.0, 2.0]), tmp_path / "a",
                  progress=False)
    cfg = replace(cfg, m_values=[0.01])
    del tom["layers.1.down"]
    with pytest.raises(UserError, match="layers.1.down is missing"):
        run_sweep(lm, tom, generic, cfg, tmp_path / "b", progress=False)


def test_m_grid_matches_reference_arange():
    grid = m_grid(0.0, 5e-5, 2e-6)  # numpy.arange overshoots: 27 values, the last 5.2e-05
    assert len(grid) == 27 and grid[0] == 0.0 and grid[-1] == 5.2e-05
    with pytest.raises(UserError, match="below"):
        m_grid(1e-5, 0.0, 1e-6)


def test_export_model(setup, tmp_path):
    """--export-model writes the difference-perturbed model as an ordinary HF folder: the
    masked entries hold the mean of the unmasked ones, every other weight is the original."""
    from transformers import AutoModelForCausalLM

    from tomsparse.masks import build_rankings

    lm, tom, generic, cfg = setup
    cfg = replace(cfg, m_values=[0.05], modes=["difference"])
    with pytest.raises(UserError, match="not one of the sweep's m values"):
        run_sweep(lm, tom, generic, cfg, tmp_path / "bad", export_m=0.02, progress=False)
    assert not (tmp_path / "bad").exists()
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    out = tmp_path / "sweep"
    run_sweep(lm, tom, generic, cfg, out, export_m=0.05, progress=False, log=lambda *_: None)
    assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())
    folder = out / "model_m5.0000e-02"
    assert (folder / "tomsparse-export.json").exists() and not list(out.glob(".*.tmp"))
    exported = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    desc = adapter.describe(exported)
    names = [m.name for m in desc.matrices]
    rankings = build_rankings(tom, generic, names, m_max=0.05)
    changed = 0
    for mat in desc.matrices:
        w = mat.weight().detach().reshape(-1)
        orig = lm.description.by_name()[mat.name].weight().detach().reshape(-1)
        idx = rankings[mat.name].mask(0.05, "difference")
        keep = torch.ones_like(orig, dtype=torch.bool)
        keep[idx] = False
        assert torch.equal(w[keep], orig[keep])
        if idx.numel():
            expected = orig[keep].double().mean().float()
            assert torch.allclose(w[idx], expected.expand(idx.numel()), atol=1e-7)
            changed += idx.numel()
    assert changed > 0


def test_reference_layout_reads_back_as_the_reference_does(tmp_path):
    """A sweep-style tom/ folder from the one writer: pandas read_csv(index_col=0), as the
    reference reads it, gives the percentages reference_summary reports."""
    def frame(rows, columns):  # shaped like EvalResult.reference_results(): a named index
        f = pd.DataFrame(rows, columns=pd.Index(columns, name="scenario"))
        return f.rename_axis(index="task_index")

    results = {
        0.0: {(1, "unexpected"): frame([[1, 0], [1, 1], [0, 1]], ["false belief (F)", "false belief (T)"]),
              (2, "unexpected"): frame([[0, 0], [1, 1], [1, 1]], ["false belief (F)", "false belief (T)"]),
              (1, "transfer"): frame([[1, 0]], ["no transfer (F)", "no transfer (T)"]),
              (2, "transfer"): frame([[1, 1]], ["no transfer (F)", "no transfer (T)"])},
        5e-06: {(1, "unexpected"): frame([[0, 0], [0, 1], [0, 0]], ["false belief (F)", "false belief (T)"]),
                (1, "transfer"): frame([[0, 0]], ["no transfer (F)", "no transfer (T)"])},
    }
    for m, per_m in results.items():
        write_reference_results(tmp_path / "tom", per_m, m)
    summary = reference_summary(tmp_path / "tom").set_index("m")
    for m, per_m in results.items():
        for family in ("unexpected", "transfer"):
            percents = []
            for (rep, fam), written in per_m.items():
                if fam != family:
                    continue
                path = tmp_path / "tom" / str(rep) / str(m) / family / "results.csv"
                back = pd.read_csv(path, index_col=0)
                assert back.values.tolist() == written.values.tolist()
                assert list(back.index) == list(range(len(written)))  # rows = tasks
                percents.append(100 * back.values.sum() / back.size)
            assert summary.loc[m, f"{family}_percent_mean"] == pytest.approx(
                sum(percents) / len(percents))
    assert not list((tmp_path / "tom").rglob("*.tmp"))


def test_random_points_pay_for_fewer_perplexity_windows(setup, tmp_path):
    """--random-ppl-tokens: a random mask's perplexity on the first whole windows only, paired
    with the baseline's same windows in the tables (issue 33: cheaper random masks)."""
    import json
    import math

    import numpy as np

    lm, tom, generic, cfg = setup
    cfg = replace(cfg, random_ppl_tokens=100)             # 3 windows of 32 tokens
    out = tmp_path / "sweep"
    run_sweep(lm, tom, generic, cfg, out, progress=False)
    records = {p.stem: json.loads(p.read_text()) for p in (out / "points").glob("*.json")}
    base = next(r for r in records.values() if r["mode"] == "none")
    rnd = [r for r in records.values() if r["mode"] == "random"]
    other = [r for r in records.values() if r["mode"] in ("difference", "tom-only")]
    assert base["ppl_windows"] == 8 and all(r["ppl_windows"] == 8 for r in other)
    assert len(rnd) == 2 and all(r["ppl_windows"] == 3 for r in rnd)
    points = pd.read_csv(out / "specificity.csv")
    for r in rnd:
        row = points[(points["mode"] == "random") & (points["seed"] == r["seed"])].iloc[0]
        diff = np.asarray(r["ppl_unit_losses"]) - np.asarray(base["ppl_unit_losses"][:3])
        assert row["ppl_windows"] == 3
        assert row["ppl_ratio"] == pytest.approx(math.exp(diff.mean()))
        assert row["ppl_change"] == pytest.approx(math.exp(diff.mean()) - 1)
    # the difference point is compared on every window, as before
    # summary.csv: a random mask's perplexity on the baseline's tokens (the paired estimate)
    summary = pd.read_csv(out / "summary.csv")
    for r in rnd:
        got = summary[(summary["mode"] == "random") & (summary["seed"] == r["seed"])].iloc[0]
        diff = np.asarray(r["ppl_unit_losses"]) - np.asarray(base["ppl_unit_losses"][:3])
        assert got["perplexity"] == pytest.approx(base["perplexity"] * math.exp(diff.mean()))
        assert got["ppl_windows"] == 3
    d = next(r for r in other if r["mode"] == "difference")
    got = summary[summary["mode"] == "difference"].iloc[0]
    assert got["perplexity"] == pytest.approx(d["perplexity"]) and got["ppl_windows"] == 8
    row = points[points["mode"] == "difference"].iloc[0]
    assert row["ppl_change"] == pytest.approx(d["perplexity"] / base["perplexity"] - 1)
    with pytest.raises(UserError, match="random-ppl-tokens"):
        replace(cfg, random_ppl_tokens=0)
