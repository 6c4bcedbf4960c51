"""The CLI handlers ``cmd_tasks`` and ``cmd_eval``, called with argparse Namespaces (the
parser lives in tomsparse.cli); the model loader is replaced by a tiny model."""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import pandas as pd
import pytest

from tomsparse.errors import UserError
from tomsparse.evaluate import cmd_eval
from tomsparse.tasks import cmd_tasks
from tomsparse.testing import CharTokenizer, tiny_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"


def test_tasks_export_and_show(tmp_path, capsys):
    assert cmd_tasks(argparse.Namespace(action="export", out=str(tmp_path), seed=0)) == 0
    out = capsys.readouterr().out
    assert "builtin:eval: 200 unexpected contents, 200 unexpected transfer, 96 irony" in out
    assert json.loads((tmp_path / "tom_tasks_eval.json").read_text()).keys() == {"s1", "s2", "s3"}

    cmd_tasks(argparse.Namespace(action="show", tasks=str(FIXTURES / "reference_tasks.json"),
                                 n=2))
    out = capsys.readouterr().out
    assert "unexpected contents: 1 tasks, 16 prompts (false belief 4, correct label 4" in out
    assert "expected 'popcorn', alternative 'chocolate'" in out
    assert "Complete the following story: Here is a bag filled with popcorn." in out
    with pytest.raises(UserError, match="--out"):
        cmd_tasks(argparse.Namespace(action="export", out=None))
    with pytest.raises(UserError, match="unknown tasks action"):
        cmd_tasks(argparse.Namespace(action="list"))


@pytest.fixture
def fake_models(monkeypatch):
    """A stand-in for tomsparse.models whose load_model returns a tiny Llama."""
    calls = []

    def load_model(name, device="auto", dtype="float32", **options):
        calls.append((name, device, dtype))
        return types.SimpleNamespace(model=tiny_model("llama", max_position_embeddings=1024),
                                     tokenizer=CharTokenizer(), name=f"tiny:{name}",
                                     fingerprint="abc123")

    monkeypatch.setitem(sys.modules, "tomsparse.models",
                        types.SimpleNamespace(load_model=load_model))
    return calls


def test_cmd_eval_writes_outputs(tmp_path, capsys, fake_models):
    args = argparse.Namespace(model="tiny", tasks=f"builtin,{FIXTURES / 'tomi_small.jsonl'}",
                              scoring="likelihood", reps=None, seed=0, batch_size=8,
                              out=str(tmp_path), device="cpu", dtype="float32", limit=1)
    assert cmd_eval(args) == 0
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
    args = argparse.Namespace(model="tiny", tasks=str(FIXTURES / "reference_tasks.py"),
                              scoring="generate", reps=None, seed=5, batch_size=16,
                              out=str(tmp_path), device="cpu", dtype=None, limit=None)
    cmd_eval(args)
    prompts = pd.read_csv(tmp_path / "tom_prompts.csv")
    assert sorted(prompts["rep"].unique()) == [1, 2, 3, 4, 5]
    assert sorted(prompts["seed"].unique()) == [5, 6, 7, 8, 9]
    assert len(list((tmp_path / "tom").glob("*/0.0/*/results.csv"))) == 5 * 3
