"""The real packaged default model: conversion cache, adapter facts, CLI."""

import shutil

import pytest

from tomsparse.cli.main import main
from tomsparse.lm import gguf
from tomsparse.lm import registry as models

pytestmark = pytest.mark.integration


def test_default_model_facts(default_model):
    desc = default_model.description
    assert type(default_model.model).__name__ == "LlamaForCausalLM"
    assert desc.num_layers == 30 and len(desc.matrices) == 30 * 7
    g = desc.geometry
    assert (g.hidden_size, g.num_heads, g.num_kv_heads, g.head_dim) == (576, 9, 3, 64)
    assert desc.rope.theta == pytest.approx(1e5) and desc.rope.layout == "half"
    assert desc.tied_embeddings
    assert sum(p.numel() for p in default_model.model.parameters()) == 134_515_008


def test_killed_conversion_is_rebuilt(tmp_path, monkeypatch, default_model):
    # A cache folder without its completion record (a conversion killed half-way) must be
    # rebuilt, not loaded. Copy the good conversion, then break it.
    monkeypatch.setenv("TOMSPARSE_CACHE", str(tmp_path))
    good = default_model.source
    target = gguf.converted_folder("smollm2-135m")
    shutil.copytree(good, target)
    (target / gguf.COMPLETION_RECORD).unlink()
    (target / "model.safetensors").write_bytes(b"truncated")
    lm = models.load_model("smollm2-135m", device="cpu", log=lambda *_: None)
    assert gguf.is_complete(target)
    assert lm.fingerprint == default_model.fingerprint


def test_info_cli(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "RoPE: theta 100000" in out and "wiki-offline:eval" in out and "gate" in out
