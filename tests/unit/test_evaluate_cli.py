"""``tomsparse tasks`` and ``tomsparse eval`` through the command line's entry point; the
model is a tiny registered stand-in."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from tomsparse.cli.main import main
from tomsparse.testing import registered_model, tiny_loaded_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"


def test_tasks_export_and_show(tmp_path, capsys):
    assert main(["tasks", "export", "--out", str(tmp_path), "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "builtin:eval: 200 unexpected contents, 200 unexpected transfer, 96 irony" in out
    assert json.loads((tmp_path / "tom_tasks_eval.json").read_text()).keys() == {
        "renderer", "s1", "s2", "s3"}

    assert main(["tasks", "show", "--tasks", str(FIXTURES / "reference_tasks.json"), "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "unexpected contents: 1 tasks, 16 prompts (false belief 4, correct label 4" in out
    assert "expected 'popcorn', alternative 'chocolate'" in out
    assert "Complete the following story: Here is a bag filled with popcorn." in out
    assert main(["tasks", "export"]) == 2
    assert capsys.readouterr().err.strip() == "tomsparse: error: tasks export needs --out DIR"
    assert main(["tasks", "show", "-n", "-1"]) == 2
    assert "-n -1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse: the action is one of two
        main(["tasks", "list"])
    assert exit_info.value.code == 2 and "invalid choice: 'list'" in capsys.readouterr().err


def test_tasks_show_default_count_is_the_documented_one(capsys):
    with pytest.raises(SystemExit):
        main(["tasks", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert main(["tasks", "show"]) == 0
    shown = capsys.readouterr().out.count("\n- task ")
    families = 3  # the built-in bank: unexpected contents, transfer, irony
    assert f"prompts to show per family (default {shown // families})" in help_text


@pytest.fixture
def fake_models():
    """``load_model("tiny")`` returns a tiny Llama named ``tiny:tiny`` with fingerprint
    ``abc123``; the calls are recorded as (name, device, dtype)."""
    calls = []

    def load(device="auto", dtype="float32", **_):
        calls.append(("tiny", device, dtype))
        lm = tiny_loaded_model("llama", name="tiny:tiny", max_position_embeddings=1024)
        return dataclasses.replace(lm, fingerprint="abc123")

    with registered_model("tiny", load):
        yield calls


def test_cmd_eval_writes_outputs(tmp_path, capsys, fake_models):
    assert main(["eval", "--model", "tiny", "--tasks", f"builtin,{FIXTURES / 'tomi_small.jsonl'}",
                 "--scoring", "likelihood", "--seed", "0", "--batch-size", "8",
                 "--out", str(tmp_path), "--device", "cpu", "--dtype", "float32",
                 "--limit", "1"]) == 0
    assert fake_models == [("tiny", "cpu", "float32")]
    printed = capsys.readouterr().out
    for family in ("unexpected", "transfer", "irony", "tomi"):
        assert family in printed
    prompts = pd.read_csv(tmp_path / "tom_prompts.csv")
    assert len(prompts) == 16 + 16 + 2 + 3 and set(prompts["model"]) == {"tiny:tiny"}
    assert "prompt" not in prompts.columns
    assert (tmp_path / "tom" / "1" / "0.0" / "irony" / "results.csv").is_file()
    run = json.loads((tmp_path / "tom_runs.jsonl").read_text().splitlines()[0])
    assert run["fingerprint"] == "abc123" and run["scoring"] == "likelihood"


def test_cmd_eval_generate_defaults_to_five_reps(tmp_path, fake_models):
    assert main(["eval", "--model", "tiny", "--tasks", str(FIXTURES / "reference_tasks.py"),
                 "--scoring", "generate", "--seed", "5", "--out", str(tmp_path),
                 "--device", "cpu"]) == 0
    prompts = pd.read_csv(tmp_path / "tom_prompts.csv")
    assert sorted(prompts["rep"].unique()) == [1, 2, 3, 4, 5]
    assert sorted(prompts["seed"].unique()) == [5, 6, 7, 8, 9]
    assert len(list((tmp_path / "tom").glob("*/0.0/*/results.csv"))) == 5 * 3
