"""Damage-matched controls in the mechanistic analyses (issue 15): extra conditions, each at
its own m, in every table, plot and headline; ``--matched`` and the sweep's matched.json.

Expected masks are computed independently (torch.topk sets on the raw scores) or with
``masks_for`` on rankings built for exactly the control's own m.
"""

import json

import pandas as pd
import pytest
import torch
from helpers import tom_and_generic_scores, write_run_folder

from tomsparse.analysis.page import headline_lines
from tomsparse.analysis.probe import measure
from tomsparse.analysis.run import (
    AnalysisConfig,
    analyze,
    build_masks,
    conditions,
    matched_at,
    ranking_depth,
)
from tomsparse.cli.analyze import parse_matched
from tomsparse.errors import UserError
from tomsparse.lm.adapter import describe
from tomsparse.masks import build_rankings, k_for, masks_for
from tomsparse.perturb import perturbed
from tomsparse.sweep import folder
from tomsparse.testing import CharTokenizer, tiny_model

PROMPTS = [[5, 9, 14, 3, 22, 7, 31], [8, 2, 40, 11], [17, 6, 25, 12, 4, 19, 27, 33, 2]]
M = 0.02
MATCHED = [("generic-only", 0.05, 0), ("random-fraction", 0.1, 0), ("random-fraction", 0.1, 1)]
GEN_LABEL = "generic-only (matched, m=5.00e-02)"
RF_LABEL = "random-fraction (matched, m=1.00e-01)"


def _topk_set(score, k):
    return set(torch.topk(score.reshape(-1), k).indices.tolist()) if k else set()


# ------------------------------------------------------------------ configuration
def test_config_validates_matched_triples():
    cfg = AnalysisConfig(m=M, matched=[("generic-only", "2.31e-4", 0), ["random-fraction", 1, 2],
                                       ("generic-only", 2.31e-4, 0), ("difference-p4.0", 0.1, 0)])
    assert cfg.matched == [("generic-only", 2.31e-4, 0), ("random-fraction", 1.0, 2),
                           ("difference-p4", 0.1, 0)]        # duplicates dropped, names normal
    assert AnalysisConfig(m=M).matched == []
    for bad, message in [([("bogus", 1e-4, 0)], "unknown mask mode 'bogus'"),
                         ([("generic-only", 0, 0)], "(0, 1]"),
                         ([("generic-only", 1.5, 0)], "(0, 1]"),
                         ([("generic-only", float("nan"), 0)], "(0, 1]"),
                         ([("generic-only", "x", 0)], "must be a number"),
                         ([("generic-only", 1e-4, 1.5)], "seed must be an integer"),
                         ([("generic-only", 1e-4, True)], "seed must be an integer"),
                         ([("generic-only", 1e-4)], "(mode, m, seed) triple"),
                         (["generic-only:1e-4"], "(mode, m, seed) triple"),
                         ("generic-only", "list of (mode, m, seed) triples")]:
        with pytest.raises(UserError) as info:
            AnalysisConfig(m=M, matched=bad)
        assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError, match="unknown mask mode 'banana'"):
        AnalysisConfig(m=M, modes=["difference", "banana"])


def test_conditions_labels_and_ranking_depth():
    cfg = AnalysisConfig(m=M, modes=["difference", "random"], random_seeds=[0, 1],
                         matched=MATCHED + [("generic-only-p2", 0.03, 0)])
    conds = conditions(cfg)
    assert [(c.label, c.seed, c.m, c.matched) for c in conds] == [
        ("difference", 0, M, False), ("random", 0, M, False), ("random", 1, M, False),
        (GEN_LABEL, 0, 0.05, True), (RF_LABEL, 0, 0.1, True), (RF_LABEL, 1, 0.1, True),
        ("generic-only-p2 (matched, m=3.00e-02)", 0, 0.03, True)]
    # random-fraction needs no ranking; the -p2 generic set reaches 2 * 0.03
    assert ranking_depth(conds, M) == (0.05, 2.0)
    # close m values of one mode still get distinct labels
    close = AnalysisConfig(m=M, modes=["difference"],
                           matched=[("generic-only", 2.3101e-4, 0), ("generic-only", 2.3102e-4, 0)])
    labels = [c.label for c in conditions(close) if c.matched]
    assert len(set(labels)) == 2 and labels[0] == "generic-only (matched, m=2.3101e-04)"


def test_matched_masks_are_those_of_their_own_m():
    """Each matched control's masks equal an independent top-k computation (generic-only) or
    masks_for on rankings built for exactly its m, not the analysis m."""
    model = tiny_model("llama")
    desc = describe(model)
    tom, gen = tom_and_generic_scores(desc)
    cfg = AnalysisConfig(m=M, modes=["difference", "random"], random_seeds=[0], matched=MATCHED)
    masks = build_masks(desc, tom, gen, cfg)
    assert list(masks) == [("difference", 0), ("random", 0), (GEN_LABEL, 0), (RF_LABEL, 0),
                           (RF_LABEL, 1)]
    names = [m.name for m in desc.matrices]
    for name in names:
        numel = tom[name].numel()
        k = k_for(numel, 0.05)
        expected = _topk_set(gen[name], k) - _topk_set(tom[name], k)
        assert set(masks[GEN_LABEL, 0][name].tolist()) == expected
        k_d = k_for(numel, M)
        assert set(masks["difference", 0][name].tolist()) == (
            _topk_set(tom[name], k_d) - _topk_set(gen[name], k_d))
    for seed in (0, 1):
        own = masks_for(build_rankings(tom, gen, names, 0.1), 0.1, "random-fraction", seed=seed)
        for name in names:
            assert torch.equal(masks[RF_LABEL, seed][name], own[name])
            assert masks[RF_LABEL, seed][name].numel() == k_for(tom[name].numel(), 0.1)
    assert not torch.equal(masks[RF_LABEL, 0]["layers.0.up"], masks[RF_LABEL, 1]["layers.0.up"])


# ------------------------------------------------------------------ end to end
def test_matched_conditions_in_every_table_plot_and_headline(tmp_path):
    model = tiny_model("llama", seed=1)
    desc = describe(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tom, gen = tom_and_generic_scores(desc)
    cfg = AnalysisConfig(m=M, modes=["difference", "random"], random_seeds=[0, 1],
                         matched=MATCHED)
    res = analyze(model, CharTokenizer(), desc, tom, gen, PROMPTS, cfg, out=tmp_path,
                  log=lambda *_: None)
    for k, v in model.state_dict().items():        # restored bit for bit
        assert torch.equal(v, state[k]), k
    m_of = {"baseline": 0.0, "difference": M, "random": M, GEN_LABEL: 0.05, RF_LABEL: 0.1}
    with_mode = [n for n, f in res.tables.items() if "mode" in f.columns]
    assert len(with_mode) == len(res.tables) - 1    # all but dominant_pairs (baseline only)
    for name in with_mode:
        frame = res.tables[name]
        assert "m" in frame.columns, name
        modes = set(frame["mode"])
        assert {GEN_LABEL, RF_LABEL} <= modes, name
        for mode, g in frame.groupby("mode"):
            assert set(g["m"]) == {m_of[mode]}, (name, mode)
        if "seed" in frame.columns:
            assert set(frame[frame["mode"] == RF_LABEL]["seed"]) == {0, 1}, name
        # the CSV carries the same rows and the m column
        csv = pd.read_csv(tmp_path / f"{name}.csv")
        assert GEN_LABEL in set(csv["mode"]) and "m" in csv.columns, name
    # masked counts per matrix: each control at its own m
    mats = res.tables["mask_anatomy_matrices"].set_index(["mode", "seed", "matrix"])
    for mat in desc.matrices:
        assert mats.loc[(RF_LABEL, 1, mat.name), "masked"] == k_for(mat.numel, 0.1)
        k = k_for(mat.numel, 0.05)
        expected = len(_topk_set(gen[mat.name], k) - _topk_set(tom[mat.name], k))
        assert mats.loc[(GEN_LABEL, 0, mat.name), "masked"] == expected
    # the sinks reported for the matched control are those measured under its own masks
    names = [m.name for m in desc.matrices]
    own = masks_for(build_rankings(tom, gen, names, 0.05), 0.05, "generic-only")
    with perturbed(desc.matrices, own, mode=cfg.perturbation, scale=cfg.scale):
        sink = measure(model, desc, PROMPTS, pad_id=0).sink_means()
    base = measure(model, desc, PROMPTS, pad_id=0).sink_means()
    rows = res.tables["attention_sinks"]
    got = rows[rows["mode"] == GEN_LABEL].set_index(["layer", "head"])
    for (layer, head), r in got.iterrows():
        assert r["sink_weight"] == pytest.approx(float(sink[layer, head]), abs=1e-6)
        assert r["change"] == pytest.approx(float(sink[layer, head] - base[layer, head]), abs=1e-6)
    # the headline reports the matched controls beside difference and random
    h = res.headline
    for key in ("displaced_sink_share", "angle_q_kbos_change_deg",
                "top_pair_share_of_norm_change", "masked_total", "top_channels"):
        assert list(h[key]) == ["difference", "random", GEN_LABEL, RF_LABEL], key
    assert set(h["massive_top"]) >= {GEN_LABEL, f"{RF_LABEL}_s0", f"{RF_LABEL}_s1"}
    assert h["conditions"][RF_LABEL] == {"mask": "random-fraction", "m": 0.1, "matched": True,
                                         "seeds": [0, 1]}
    lines = headline_lines(h)
    assert lines[1].startswith("damage-matched controls") and "generic-only m=0.05 seed 0" in lines[1]
    assert "random-fraction m=0.1 seeds 0, 1" in lines[1]
    sinks_line = next(x for x in lines if x.startswith("displaced-sink share"))
    assert "random " in sinks_line and "(2 seeds)" in sinks_line
    assert f"{GEN_LABEL} " in sinks_line and f"{RF_LABEL} " in sinks_line
    page = (tmp_path / "analysis.html").read_text()
    assert "Damage-matched controls" in page and "generic-only (matched, m=5.00e-02)" in page
    for png in tmp_path.glob("plot_*.png"):
        assert png.stat().st_size > 1000


def test_plot_colours_give_each_matched_control_its_own():
    from tomsparse.analysis.plots import condition_colors
    from tomsparse.report.style import MODE_COLORS

    colors = condition_colors(["baseline", "difference", "random", GEN_LABEL, RF_LABEL,
                               "generic-only"])
    assert colors["difference"] == MODE_COLORS["difference"]
    assert colors["generic-only"] == MODE_COLORS["generic-only"]
    assert len(set(colors.values())) == len(colors)


# ------------------------------------------------------------------ matched.json
def _matched_json(path, m=M):
    data = {"tolerance": 0.1, "targets": {
        f"difference_s0_m{m:.4e}": {
            "mode": "difference", "m": m * (1 + 1e-12), "seed": 0, "perplexity": 41.2,
            "controls": [
                {"mode": "generic-only", "m": 0.05, "seed": 0, "label": "g", "perplexity": 40.1,
                 "matched": True},
                {"mode": "random-fraction", "m": 0.1, "seed": 0, "label": "r0",
                 "perplexity": 43.0, "matched": True},
                {"mode": "random-fraction", "m": 0.9, "seed": 1, "label": "r1",
                 "perplexity": 90.0, "matched": False}]},
        "difference_s0_m1.0000e-03": {
            "mode": "difference", "m": 1e-3, "seed": 0, "perplexity": 30.0,
            "controls": [{"mode": "generic-only", "m": 0.004, "seed": 0, "matched": True}]},
        "tom-only_s0": {
            "mode": "tom-only", "m": m, "seed": 0, "perplexity": 50.0,
            "controls": [{"mode": "generic-only", "m": 0.3, "seed": 0, "matched": True}]}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def read_matched(path, m):
    """The damage-matched controls of a matched.json at m, as the analyses read them."""
    return matched_at(folder.read_matched(path), m, where=path)


def test_read_matched(tmp_path):
    path = _matched_json(tmp_path / "matched.json")
    assert read_matched(path, M) == [("generic-only", 0.05, 0), ("random-fraction", 0.1, 0)]
    assert read_matched(path, 1e-3) == [("generic-only", 0.004, 0)]
    assert read_matched(path, 0.5) == []
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_matched(bad, M)
    bad.write_text(json.dumps({"tolerance": 0.1}))
    with pytest.raises(UserError, match="targets"):
        read_matched(bad, M)
    bad.write_text(json.dumps({"targets": {"t": {"mode": "difference", "m": M,
                                                 "controls": [{"mode": "x", "matched": True}]}}}))
    with pytest.raises(UserError, match="malformed"):
        read_matched(bad, M)


# ------------------------------------------------------------------ command line
def test_parse_matched():
    assert parse_matched("generic-only:2.31e-4,random-fraction:1.2e-2:3") == [
        ("generic-only", 2.31e-4, 0), ("random-fraction", 1.2e-2, 3)]
    assert parse_matched("none") == []


@pytest.mark.parametrize("value, message", [
    ("generic-only", "mode:m"), ("generic-only:1e-4:0:1", "mode:m"),
    ("bogus:1e-4", "unknown mask mode 'bogus'"), ("generic-only:2", "(0, 1]"),
    ("generic-only:0", "(0, 1]"), ("generic-only:abc", "must be a number"),
    ("generic-only:1e-4:x", "seed an integer"), (",", "no matched controls")])
def test_cli_bad_matched_is_a_one_line_usage_error(value, message, capsys):
    from tomsparse.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(["analyze", "--scores-tom", "a", "--scores-generic", "b", "--m", "1e-3",
              f"--matched={value}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("tomsparse analyze: error: argument --matched:") and message in last


def test_cli_run_folder_reads_matched_json(tmp_path, capsys):
    """`analyze --run DIR` measures the controls DIR/sweep/matched.json matched to the
    difference mask at the analysis m; --matched replaces them, --matched none drops them."""
    from tomsparse.cli.main import main
    from tomsparse.lm.registry import wrap_model
    from tomsparse.testing import registered_model

    tiny = tiny_model("llama")
    # no sweep/summary.csv: the report is not redrawn
    run = write_run_folder(tmp_path / "run", tiny, m_list=[0.0, 1e-3, M], random_seeds=[0])
    _matched_json(run / "sweep" / "matched.json")
    with registered_model("tiny", lambda **_: wrap_model(tiny, CharTokenizer(), "tiny")):
        assert main(["analyze", "--run", str(run), "--max-prompts", "2"]) == 0
        out = capsys.readouterr().out
        assert "2 damage-matched control(s) for the difference mask at m = 0.02" in out
        assert "damage-matched controls (perplexity change matched" in out
        man = json.loads((run / "analysis" / "analysis_manifest.json").read_text())
        assert man["resolved"]["matched"] == [["generic-only", 0.05, 0],
                                              ["random-fraction", 0.1, 0]]
        mats = pd.read_csv(run / "analysis" / "mask_anatomy_matrices.csv")
        assert set(mats["mode"]) == {"difference", "random", GEN_LABEL, RF_LABEL}
        assert set(mats[mats["mode"] == RF_LABEL]["m"]) == {0.1}

        # an explicit list wins over the file; m = 1e-3 has its own target in the file
        out_dir = tmp_path / "explicit"
        assert main(["analyze", "--run", str(run), "--max-prompts", "1", "--m", "1e-3",
                     "--matched", "tom-only:0.03:0", "--modes", "difference",
                     "--out", str(out_dir)]) == 0
        man = json.loads((out_dir / "analysis_manifest.json").read_text())
        assert man["resolved"]["matched"] == [["tom-only", 0.03, 0]]
        capsys.readouterr()

        out_dir = tmp_path / "none"
        assert main(["analyze", "--run", str(run), "--max-prompts", "1", "--matched", "none",
                     "--modes", "difference", "--out", str(out_dir)]) == 0
        man = json.loads((out_dir / "analysis_manifest.json").read_text())
        assert man["resolved"]["matched"] == []
        assert "damage-matched" not in capsys.readouterr().out
