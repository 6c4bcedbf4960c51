"""Integration: ``tomsparse plant`` into the default model (SmolLM2-135M, offline) at a small
step count, through the command line: the folder's files, its record, loading it with --model
DIR, and the base model restored from the folder bit for bit."""

from __future__ import annotations

import json

import torch

from tomsparse.cli.main import main
from tomsparse.lm.registry import DEFAULT_MODEL, load_model
from tomsparse.plant.folder import PlantedFolder, read_planted


def test_plant_into_the_default_model(tmp_path, capsys):
    out = tmp_path / "planted"
    code = main(["plant", "--model", DEFAULT_MODEL, "--device", "cpu", "--out", str(out),
                 "--max-steps", "2", "--check-every", "2", "--train-clusters", "1",
                 "--eval-clusters", "1", "--batch-size", "4"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "P restored to its base values gives the base model back: yes" in text
    folder = PlantedFolder(out)
    assert folder.record.is_file() and folder.indices.is_file()
    assert any(p.suffix == ".safetensors" and p != folder.indices for p in out.iterdir())
    record = json.loads(folder.record.read_text())
    assert record["density"] == 1e-3 and record["options"]["max_steps"] == 2
    assert record["training"]["steps"] == 2 and len(record["training"]["curve"]) == 1
    assert record["checks"]["restore"]["ok"] and record["checks"]["restore"]["eval_scores_equal"]
    assert set(record["eval_gate_before"]) == {"transfer"}
    assert record["planted_by_role"]["q"]["planted"] > 0 and "lm_head" not in json.dumps(
        record["planted_by_role"])
    base = load_model(DEFAULT_MODEL, device="cpu")
    assert record["base_model"]["model_fingerprint"] == base.fingerprint
    planted = load_model(str(out), device="cpu")
    assert planted.fingerprint != base.fingerprint
    info = read_planted(planted.source, planted.description.matrices)
    assert info.total == record["planted_total"] == sum(
        max(1, round(1e-3 * m.numel)) for m in base.description.matrices)
    base_params = dict(base.model.named_parameters())
    by_param = {m.param_name: m for m in planted.description.matrices}
    changed = 0
    with torch.no_grad():
        for m in planted.description.matrices:
            w = m.weight().reshape(-1)
            changed += int((w[info.indices[m.name]] != info.base_values[m.name]).sum())
            w[info.indices[m.name]] = info.base_values[m.name]
    assert changed > 0  # training moved the planted weights
    for name, p in planted.model.named_parameters():  # restored: the base model, bit for bit
        assert torch.equal(p, base_params[name]), (name, name in by_param)
