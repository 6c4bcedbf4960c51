"""The mechanistic analyses on the real default model (SmolLM2-135M, Llama architecture,
RoPE, 9 query / 3 KV heads), a few short ToM prompts. Under a minute on two CPU cores."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tomsparse.analysis.run import (
    AnalysisConfig,
    analyze,
    select_prompts,
    tokenize_prompts,
)

pytestmark = pytest.mark.integration

LAYERS = (3, 4)


def test_analyze_default_model(default_model, tmp_path):
    lm = default_model
    desc = lm.description
    # Scores only for layers 3 and 4 (random), so the mask and its effects are known to start
    # there: nothing before layer 3 can move.
    sub = dataclasses.replace(desc, matrices=[m for m in desc.matrices if m.layer in LAYERS])
    gen = torch.Generator().manual_seed(0)
    tom = {m.name: torch.rand(m.shape, generator=gen) for m in sub.matrices}
    gnr = {m.name: torch.rand(m.shape, generator=gen) for m in sub.matrices}
    before = {m.name: m.weight().detach().clone() for m in sub.matrices}
    impl = lm.model.config._attn_implementation
    tokenized, info = tokenize_prompts(lm.tokenizer, select_prompts("builtin", 3), 40)
    assert info["prompts"] == 3
    cfg = AnalysisConfig(m=2e-3, modes=["difference", "random"], random_seeds=[0])
    res = analyze(lm.model, lm.tokenizer, sub, tom, gnr, tokenized, cfg, out=tmp_path,
                  log=lambda *_: None)
    for m in sub.matrices:
        assert torch.equal(m.weight(), before[m.name])
    assert lm.model.config._attn_implementation == impl

    sinks = res.tables["attention_sinks"]
    for mode in ("difference", "random"):
        s = sinks[sinks["mode"] == mode]
        assert (s[s["layer"] < LAYERS[0]]["change"] == 0).all()
        assert (s[s["layer"] >= LAYERS[0]]["change"].abs() > 0).any()
        assert len(s) == 30 * 9
    assert sinks["sink_weight"].between(0, 1).all()

    qk = res.tables["mask_anatomy_qk_pairs"]
    assert set(qk["layer"]) <= set(LAYERS)
    assert qk["pair"].between(0, 31).all()
    assert set(qk[qk["role"] == "k"]["head"]) <= {0, 1, 2}        # 3 KV heads
    assert set(qk[qk["role"] == "q"]["head"]) <= set(range(9))

    geo = res.tables["qk_geometry_table"]
    assert set(geo["rope"]) == {"with RoPE", "without RoPE"}
    base = geo[(geo["mode"] == "baseline") & (geo["rope"] == "with RoPE")].iloc[0]
    assert 0 < base["angle_bos"] < 180 and base["norm_q"] > 0
    freq = res.tables["dominant_frequencies"]
    assert len(freq) == 3 * 30 * (9 + 3) * 32
    mass = res.tables["massive_activations"]
    assert (mass["magnitude"] > 0).all()
    html = (tmp_path / "analysis.html").read_text()
    for n in range(1, 6):
        assert f"Analysis {n}:" in html
    assert "does not apply" not in html


def test_scores_of_another_model_are_refused(tmp_path, capsys):
    from tomsparse.cli.main import main
    from tomsparse.lm.adapter import describe, fingerprint
    from tomsparse.scores.store import save_scores
    from tomsparse.testing import tiny_model

    tiny = tiny_model("llama")
    d = describe(tiny)
    save_scores(tmp_path / "s", {m.name: torch.rand(m.shape) for m in d.matrices},
                {"model": "tiny-llama", "fingerprint": fingerprint(tiny, d)})
    code = main(["analyze", "--scores-tom", str(tmp_path / "s"), "--scores-generic",
                 str(tmp_path / "s"), "--m", "1e-4", "--max-prompts", "1",
                 "--out", str(tmp_path / "out")])
    last = capsys.readouterr().err.strip().splitlines()[-1]   # after the loading progress bar
    assert code == 2 and last.startswith("tomsparse: error:") and "fingerprint" in last
