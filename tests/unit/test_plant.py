"""The planted ground truth (issue 34) at a small size: planting a synthetic two-answer skill
into a tiny model (the training reaches its target, nothing outside P changes, restoring P is
exact), the planted folder written and read back (and loaded with --model DIR), and the
recovery figures against a brute-force count from the indices."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from tomsparse.cli.main import main
from tomsparse.data.tasks import Prompt
from tomsparse.errors import UserError
from tomsparse.judge.recovery import planted_recovery, recovery_rows
from tomsparse.lm.registry import load_model
from tomsparse.masks import build_rankings, masks_for, mode_seeds, random_indices
from tomsparse.plant.folder import PlantedFolder, read_planted, write_planted_folder
from tomsparse.plant.planted_set import planted_count, planted_indices
from tomsparse.plant.train import (
    PlantConfig,
    family_gates,
    plant,
    read_values,
    score_prompts,
    snapshot,
)
from tomsparse.report.sweep_report import planted_section
from tomsparse.sweep.folder import SweepFolder
from tomsparse.testing import char_fast_tokenizer, random_scores, tiny_loaded_model


def synthetic(first: int, last: int) -> list[Prompt]:
    """A two-answer task: per cluster (task) a false-belief prompt whose cue says "p" and a
    true-belief control whose cue says "q"; the answer is one character after the space."""
    out = []
    for i in range(first, last):
        for condition, cue, expected, other in (("false belief", "a", "p", "q"),
                                                ("correct label", "b", "q", "p")):
            out.append(Prompt(family="unexpected", task_id=str(i), task_index=i,
                              condition=condition, reversed=False, scenario=f"{condition} (F)",
                              probe="b", text=f"Story {i} says {cue}{cue}{cue}",
                              expected=expected, alternative=other))
    return out


CFG = PlantConfig(density=0.05, seed=3, lr=0.02, batch_size=8, max_steps=120, target_rate=1.0,
                  check_every=10, families=("unexpected",), eval_clusters=20)


@pytest.fixture(scope="module")
def planted_tiny():
    lm = tiny_loaded_model("llama", seed=0, tokenizer=char_fast_tokenizer())
    base_params = snapshot(lm.model)
    evals = synthetic(100, 120)
    base_scores = score_prompts(lm.model, lm.tokenizer, evals)
    result = plant(lm, CFG, synthetic(0, 20), evals, log=lambda *_: None)
    return lm, result, base_params, base_scores, evals


def test_planted_set_is_seeded_sized_and_not_a_random_mask():
    lm = tiny_loaded_model("llama")
    mats = lm.description.matrices
    a = planted_indices(mats, 0.05, seed=0)
    assert a.keys() == {m.name for m in mats}
    for m in mats:
        idx = a[m.name]
        assert idx.numel() == max(1, round(0.05 * m.numel)) == planted_count(m.numel, 0.05)
        assert torch.unique(idx).numel() == idx.numel()
        assert int(idx.min()) >= 0 and int(idx.max()) < m.numel
        # the sweep's random mask of seed 0 is another draw, not P
        rand = random_indices(m.numel, idx.numel(), 0, m.name)
        assert not torch.equal(torch.sort(rand).values, idx)
    assert all(torch.equal(a[k], v) for k, v in planted_indices(mats, 0.05, 0).items())
    assert any(not torch.equal(a[k], v) for k, v in planted_indices(mats, 0.05, 1).items())
    # at least one weight per matrix, however small the density
    assert all(v.numel() == 1 for v in planted_indices(mats, 1e-9, 0).values())
    with pytest.raises(UserError, match="--density"):
        planted_indices(mats, 0.0, 0)


def test_training_reaches_its_target_and_changes_only_p(planted_tiny):
    lm, result, base_params, base_scores, evals = planted_tiny
    assert result.train.reached, result.train.curve
    assert result.train.curve[-1]["pass_rate_unexpected"] == 1.0
    assert result.train.steps < CFG.max_steps
    # the skill transfers to the unseen clusters: the gate goes from failing to passing
    assert not result.gates_before["unexpected"].passes
    assert result.gates_after["unexpected"].passes
    assert result.accuracy_after > result.accuracy_before
    # independently of the trainer's own check: every parameter outside P is the base's, bit
    # for bit, and every entry of P moved
    params = dict(lm.model.named_parameters())
    by_param = {m.param_name: m for m in lm.description.matrices}
    for name, base in base_params.items():
        now = params[name].detach()
        if name not in by_param:
            assert torch.equal(now, base), name
            continue
        mat = by_param[name]
        outside = torch.ones(mat.numel, dtype=torch.bool)
        outside[result.planted[mat.name]] = False
        assert torch.equal(now.reshape(-1)[outside], base.reshape(-1)[outside]), name
        moved = now.reshape(-1)[result.planted[mat.name]] != base.reshape(-1)[
            result.planted[mat.name]]
        assert moved.float().mean() > 0.5, name


def test_restoring_p_gives_the_base_model_back_exactly(planted_tiny):
    lm, result, base_params, base_scores, evals = planted_tiny
    assert result.checks["restore"]["ok"]
    assert result.checks["random_set"]["ok"]
    trained = {m.name: read_values(m, result.planted[m.name]) for m in lm.description.matrices}
    try:
        with torch.no_grad():
            for m in lm.description.matrices:
                w = m.weight()
                w.view(-1)[result.planted[m.name]] = result.base_values[m.name]
        restored = score_prompts(lm.model, lm.tokenizer, evals)
        # the base model's scores, exactly
        assert np.array_equal(restored.logprob_expected, base_scores.logprob_expected)
        assert np.array_equal(restored.logprob_alternative, base_scores.logprob_alternative)
        assert all(torch.equal(p.detach(), base_params[n])
                   for n, p in lm.model.named_parameters())
    finally:
        with torch.no_grad():
            for m in lm.description.matrices:
                m.weight().view(-1)[result.planted[m.name]] = trained[m.name]


def test_gate_counts_clusters_with_all_controls_right():
    prompts = synthetic(0, 4)
    correct = np.array([1, 1, 1, 0, 0, 1, 1, 1], dtype=bool)  # clusters 0 and 3 pass
    gate = family_gates(prompts, correct)["unexpected"]
    assert (gate.k, gate.n) == (2, 4)


def test_planted_folder_round_trip_and_load(planted_tiny, tmp_path):
    lm, result, base_params, base_scores, evals = planted_tiny
    out = write_planted_folder(lm, result, tmp_path / "planted")
    folder = PlantedFolder(out)
    record = json.loads(folder.record.read_text())
    assert record["kind"] == "planted" and record["density"] == CFG.density
    assert record["base_model"]["model_fingerprint"] == lm.fingerprint
    assert record["planted_total"] == result.total
    assert record["training"]["curve"] and record["checks"]["restore"]["ok"]
    assert set(record["eval_gate_before"]) == set(record["eval_gate_after"]) == {"unexpected"}
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind
    # the folder is a model every command loads with --model DIR, in fp32, planted
    loaded = load_model(str(out), device="cpu")
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    for (name, p), (_, q) in zip(loaded.model.named_parameters(), lm.model.named_parameters()):
        assert torch.equal(p, q.detach()), name
    back = read_planted(loaded.source, loaded.description.matrices)
    assert back is not None and back.density == CFG.density and back.total == result.total
    # restored from the folder alone, the base model's weights come back bit for bit
    with torch.no_grad():
        for m in loaded.description.matrices:
            m.weight().view(-1)[back.indices[m.name]] = back.base_values[m.name]
    for name, p in loaded.model.named_parameters():
        assert torch.equal(p, base_params[name]), name
    # an unplanted folder or a name: None; a changed indices file: refused
    assert read_planted(tmp_path) is None and read_planted("memory") is None
    with pytest.raises(UserError, match="--out .* already exists"):
        write_planted_folder(lm, result, out)
    data = folder.indices.read_bytes()
    folder.indices.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(UserError, match="sha256"):
        read_planted(out)


def brute_force(masks, planted, numels, role):
    names = [n for n in planted if role == "all" or n.endswith("." + role)]
    hit = sum(len(set(masks[n].tolist()) & set(planted[n].tolist())) for n in names)
    k = sum(len(set(masks[n].tolist())) for n in names)
    p = sum(len(set(planted[n].tolist())) for n in names)
    expected = sum(len(masks[n]) * len(planted[n]) / numels[n] for n in names)
    return hit, k, p, expected


def test_recovery_figures_equal_a_brute_force_count():
    lm = tiny_loaded_model("llama")
    mats = lm.description.matrices
    numels = {m.name: m.numel for m in mats}
    tom, gen = random_scores(lm, seed=1)
    planted = planted_indices(mats, 0.2, seed=0)
    # plant P into the ToM ranking's top so the ToM masks find part of it
    for name, idx in planted.items():
        tom[name].view(-1)[idx[: len(idx) // 2]] += 10.0

    class Planted:  # what judge.recovery reads of plant.folder.PlantedModel
        indices, density, base_fingerprint = planted, 0.2, "base123"

    table = planted_recovery(Planted, tom, gen, mats, [0.0, 0.05, 0.1], random_seeds=[0, 1])
    rankings = build_rankings(tom, gen, list(numels), 0.1)
    assert set(table["m"]) == {0.05, 0.1}
    for (mode, seed, m), rows in table.groupby(["mode", "seed", "m"]):
        masks = masks_for(rankings, m, mode, seed=seed)
        for row in rows.itertuples():
            hit, k, p, expected = brute_force(masks, planted, numels, row.role)
            assert (row.overlap, row.masked, row.planted) == (hit, k, p)
            assert row.mask_in_planted == pytest.approx(hit / k if k else np.nan, nan_ok=True)
            assert row.planted_in_mask == pytest.approx(hit / p)
            assert row.expected_overlap == pytest.approx(expected)
            assert row.random_planted_in_mask == pytest.approx(expected / p)
    assert set(table["mode"]) == {"tom-only", "difference", "generic-only", "random"}
    assert len(table[(table["mode"] == "random") & (table["role"] == "all")]) == 4
    assert (table["base_fingerprint"] == "base123").all()
    top = table[(table["mode"] == "tom-only") & (table["role"] == "all")]
    assert (top["enrichment"] > 2).all()  # the planted half is at the top of the ranking
    # the roles partition the matrices
    roles = table[(table["mode"] == "tom-only") & (table["m"] == 0.1)]
    assert roles[roles["role"] != "all"]["overlap"].sum() == \
        roles[roles["role"] == "all"]["overlap"].iloc[0]
    # a mask outside P shares nothing, a mask equal to P is all of it
    rows = recovery_rows(planted, planted, numels, 0.2)
    assert rows[-1]["role"] == "all" and rows[-1]["mask_in_planted"] == 1.0 \
        and rows[-1]["planted_in_mask"] == 1.0
    empty = {n: torch.empty(0, dtype=torch.long) for n in planted}
    assert recovery_rows(empty, planted, numels)[-1]["overlap"] == 0


def test_the_report_and_compare_show_the_recovery(tmp_path):
    lm = tiny_loaded_model("llama")
    mats = lm.description.matrices
    tom, gen = random_scores(lm)

    class Planted:
        indices, density, base_fingerprint = planted_indices(mats, 0.1, 0), 0.1, "basefp"

    table = planted_recovery(Planted, tom, gen, mats, [0.05], random_seeds=[0])
    folder = SweepFolder(tmp_path / "sweep")
    folder.write_planted_recovery(table)
    body = planted_section(folder.root)
    assert "difference" in body and "mask in P" in body and "planted_recovery.csv" in body
    assert planted_section(tmp_path / "none") == ""
    back = folder.read_planted_recovery(["mode", "overlap"])
    pd.testing.assert_frame_equal(back, table, check_dtype=False)


def test_plant_command_refuses_bad_options(capsys, tmp_path):
    assert_exit = []
    for argv, message in ((["--density", "0"], "--density"), (["--target-rate", "2"],
                                                               "--target-rate"),
                          (["--families", "tomi"], "--families")):
        with pytest.raises(SystemExit) as exc:
            code = main(["plant", "--out", str(tmp_path / "x"), *argv])
            raise SystemExit(code)
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
        assert_exit.append(argv)
    assert not (tmp_path / "x").exists()


def test_a_sweep_on_a_planted_folder_reports_the_recovery(tmp_path, capsys):
    """``tomsparse sweep --model DIR`` on a planted folder: planted_recovery.csv (the counts of
    the sweep's masks in P, brute force) and the report's section, kept by summarize."""
    from tomsparse.scores.store import save_scores

    lm = tiny_loaded_model("llama", seed=0, tokenizer=char_fast_tokenizer())
    cfg = PlantConfig(density=0.1, seed=0, max_steps=1, check_every=1,
                      families=("unexpected",), eval_clusters=4)
    result = plant(lm, cfg, synthetic(0, 2), synthetic(100, 104), log=lambda *_: None)
    model_dir = write_planted_folder(lm, result, tmp_path / "model")
    loaded = load_model(str(model_dir), device="cpu")
    tom, gen = random_scores(loaded, seed=2)
    paths = {}
    for kind, scores in (("tom", tom), ("generic", gen)):
        paths[kind] = tmp_path / f"scores_{kind}"
        save_scores(paths[kind], scores, {"model": str(model_dir), "dataset": kind,
                                          "fingerprint": loaded.fingerprint,
                                          "samples_sha256": f"{kind}-samples"})
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"plain generic text, paragraph {i}." for i in range(40)))
    out = tmp_path / "sweep"
    code = main(["sweep", "--model", str(model_dir), "--device", "cpu", "--scores-tom",
                 str(paths["tom"]), "--scores-generic", str(paths["generic"]), "--task-limit",
                 "1", "--corpus", str(corpus), "--ppl-max-tokens", "256", "--out", str(out),
                 "--m_list", "0,0.05", "--controls", "random", "--random-seeds", "0",
                 "--matched-controls", "none"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "planted ground truth" in printed
    table = SweepFolder(out).read_planted_recovery()
    assert table is not None and set(table["m"]) == {0.05}
    numels = {m.name: m.numel for m in loaded.description.matrices}
    rankings = build_rankings(tom, gen, list(numels), 0.05)
    for row in table[table["role"] == "all"].itertuples():
        masks = masks_for(rankings, 0.05, row.mode, seed=row.seed)
        hit, k, p, _ = brute_force(masks, result.planted, numels, "all")
        assert (row.overlap, row.masked, row.planted) == (hit, k, p)
    assert set(table["seed"][table["mode"] == "random"]) == set(mode_seeds("random", [0]))
    page = (out / "report.html").read_text()
    assert "Planted ground truth" in page
    assert main(["summarize", str(out)]) == 0
    assert "Planted ground truth" in (out / "report.html").read_text()
