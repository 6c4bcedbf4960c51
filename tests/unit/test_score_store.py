"""The score store (safetensors + manifest) and the reference chunk folders."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from helpers import fake_scores, store_fields

from tomsparse.errors import UserError
from tomsparse.lm.adapter import describe, fingerprint
from tomsparse.scores.reference_chunks import export_reference_chunks, import_reference_chunks
from tomsparse.scores.store import load_scores, read_manifest, save_scores
from tomsparse.testing import tiny_model


def fields_for(model, **extra):
    return store_fields(model, **{"nsamples": 3, "seed": 0, "supervision": "answer",
                                  "supervised_tokens": 12, "wall_time_s": 0.5, **extra})


@pytest.mark.parametrize("layout", ["per-layer", "sharded"])
def test_round_trip_fp32(tmp_path, layout):
    model = tiny_model("llama")
    scores = fake_scores(model)
    scores["layers.0.q"][0, :3] = 0
    save_scores(tmp_path, scores, fields_for(model), layout=layout, shard_size_mb=0)
    loaded, manifest = load_scores(tmp_path, model)
    assert list(loaded) == list(scores)
    for name in scores:
        assert torch.equal(loaded[name], scores[name])
    assert manifest["kind"] == "scores" and manifest["store_dtype"] == "float32"
    assert manifest["fingerprint"] == fingerprint(model)
    assert manifest["zero_counts"]["layers.0.q"] == 3
    assert manifest["shapes"]["layers.1.down"] == [32, 48]
    assert manifest["supervised_tokens"] == 12 and "torch" in manifest["versions"]
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    if layout == "per-layer":
        assert files == ["layer_000.safetensors", "layer_001.safetensors"]
    else:  # a 0 MB limit puts every tensor in its own shard
        assert len(files) == len(scores) and files[0] == "scores-00001-of-00014.safetensors"
    assert set(manifest["index"].values()) == set(files)


def test_bf16_store_halves_the_size(tmp_path):
    model = tiny_model("llama")
    scores = fake_scores(model)
    save_scores(tmp_path / "a", scores, fields_for(model))
    save_scores(tmp_path / "b", scores, fields_for(model), store_dtype="bfloat16")
    size = lambda d: sum(p.stat().st_size for p in d.glob("*.safetensors"))  # noqa: E731
    assert size(tmp_path / "b") < 0.6 * size(tmp_path / "a")
    loaded, manifest = load_scores(tmp_path / "b")
    assert manifest["store_dtype"] == "bfloat16"
    assert all(t.dtype == torch.float32 for t in loaded.values())
    for name in scores:
        assert torch.allclose(loaded[name], scores[name], rtol=1e-2, atol=0)


def test_rewrite_with_another_layout_leaves_no_stale_files(tmp_path):
    model = tiny_model("llama")
    save_scores(tmp_path, fake_scores(model), fields_for(model), layout="sharded",
                shard_size_mb=0)
    tmp_path.joinpath("notes.txt").write_text("mine")
    save_scores(tmp_path, fake_scores(model, 1), fields_for(model))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "layer_000.safetensors", "layer_001.safetensors", "manifest.json", "notes.txt"]
    loaded, _ = load_scores(tmp_path)
    assert torch.equal(loaded["layers.1.v"], fake_scores(model, 1)["layers.1.v"])


def test_refuses_to_overwrite_another_kind_of_folder(tmp_path):
    model = tiny_model("llama")
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "eval"}))
    with pytest.raises(UserError, match="not a score store's .kind 'eval'.; choose another --out"):
        save_scores(tmp_path, fake_scores(model), fields_for(model))
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"kind": "eval"}
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        save_scores(tmp_path / "file", fake_scores(model), fields_for(model))


def test_interrupted_write_is_not_a_store(tmp_path, monkeypatch):
    model = tiny_model("llama")
    save_scores(tmp_path, fake_scores(model), fields_for(model))
    import safetensors.torch

    calls = {"n": 0}
    real = safetensors.torch.save_file

    def dies_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        save_scores(tmp_path, fake_scores(model, 1), fields_for(model))
    # No half-written file and no manifest pointing at a mix of old and new tensors.
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(UserError, match="no manifest.json"):
        load_scores(tmp_path)


def test_load_validates_against_the_model(tmp_path):
    llama = tiny_model("llama")
    save_scores(tmp_path, fake_scores(llama), fields_for(llama))
    load_scores(tmp_path, describe(llama))
    load_scores(tmp_path, fingerprint(llama))
    other = tiny_model("llama", intermediate_size=64)
    with pytest.raises(UserError, match="computed for model fingerprint .* not this model"):
        load_scores(tmp_path, other)
    # Without a fingerprint to compare, the shapes still are.
    with pytest.raises(UserError, match=r"layers.0.gate has shape \(48, 32\) in the store but "
                                        r"\(64, 32\) in this model"):
        load_scores(tmp_path, describe(other))
    with pytest.raises(UserError, match="which this model lacks"):
        load_scores(tmp_path, describe(tiny_model("llama", num_hidden_layers=1)))


def test_load_subset_and_bad_folders(tmp_path):
    model = tiny_model("llama")
    save_scores(tmp_path, fake_scores(model), fields_for(model))
    some, _ = load_scores(tmp_path, names=["layers.1.k", "layers.0.q"])
    assert list(some) == ["layers.1.k", "layers.0.q"]
    with pytest.raises(UserError, match="no scores for layers.5.q"):
        load_scores(tmp_path, names=["layers.5.q"])
    (tmp_path / "layer_001.safetensors").unlink()
    with pytest.raises(UserError, match="missing score file"):
        load_scores(tmp_path)
    with pytest.raises(UserError, match="not a score store"):
        load_scores(tmp_path / "nowhere")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text(json.dumps({"kind": "mask"}))
    with pytest.raises(UserError, match="kind is 'mask'"):
        read_manifest(bad)


# ------------------------------------------------------------------------ reference chunks


def write_reference_chunks(folder, model, scores, key_of=None, dtype=torch.float16):
    """A folder as the reference's chunk_gradient.py leaves it."""
    folder.mkdir(parents=True, exist_ok=True)
    desc = describe(model)
    key_of = key_of or (lambda m: m.reference_key)
    for layer in range(desc.num_layers):
        chunk = {key_of(m): scores[m.name].to(dtype) for m in desc.matrices if m.layer == layer}
        torch.save(chunk, folder / f"layer_{layer}.pt")
    (folder / "manifest.json").write_text(json.dumps({
        "source_model": "tiny/llama", "model_type": "llama", "num_layers": desc.num_layers,
        "modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                    "down_proj"]}))


def test_import_reference_chunks(tmp_path):
    model = tiny_model("llama")
    scores = fake_scores(model)
    write_reference_chunks(tmp_path / "ref", model, scores)
    import_reference_chunks(tmp_path / "ref", tmp_path / "store", model, model_name="tiny")
    loaded, manifest = load_scores(tmp_path / "store", model)
    for name, tensor in scores.items():
        assert torch.equal(loaded[name], tensor.half().float())
    assert manifest["source"] == "reference chunks"
    assert manifest["accumulation_dtype"] == "float16 (reference)"
    assert manifest["reference_manifest"]["source_model"] == "tiny/llama"
    assert manifest["model"] == "tiny" and manifest["fingerprint"] == fingerprint(model)


def test_import_opt_style_keys_and_full_parameter_names(tmp_path):
    opt = tiny_model("opt")
    scores = fake_scores(opt)
    # OPT's own attribute names (out_proj, fc1, fc2) instead of the Llama names.
    write_reference_chunks(tmp_path / "opt", opt, scores,
                           key_of=lambda m: m.param_name.rsplit(".", 2)[-2])
    import_reference_chunks(tmp_path / "opt", tmp_path / "s1", opt)
    loaded, _ = load_scores(tmp_path / "s1", opt)
    assert torch.equal(loaded["layers.1.down"], scores["layers.1.down"].half().float())
    llama = tiny_model("llama")
    scores = fake_scores(llama)
    write_reference_chunks(tmp_path / "full", llama, scores,
                           key_of=lambda m: m.param_name)
    import_reference_chunks(tmp_path / "full", tmp_path / "s2", llama)
    loaded, _ = load_scores(tmp_path / "s2", llama)
    assert torch.equal(loaded["layers.0.gate"], scores["layers.0.gate"].half().float())


def test_import_refuses_chunks_of_another_model(tmp_path):
    small = tiny_model("llama")
    write_reference_chunks(tmp_path / "ref", small, fake_scores(small))
    wide = tiny_model("llama", intermediate_size=64)
    with pytest.raises(UserError, match=r"layer_0.pt: gate_proj has shape \(48, 32\), but "
                                        r"layers.0.gate of this model is \(64, 32\)"):
        import_reference_chunks(tmp_path / "ref", tmp_path / "out", wide)
    deep = tiny_model("llama", num_hidden_layers=3)
    with pytest.raises(UserError, match=r"cover 2 layer\(s\).*the model has 3"):
        import_reference_chunks(tmp_path / "ref", tmp_path / "out", deep)
    with pytest.raises(UserError, match="no layer_<i>.pt files"):
        import_reference_chunks(tmp_path, tmp_path / "out", small)
    assert not (tmp_path / "out").exists()


def test_import_missing_key(tmp_path):
    model = tiny_model("llama")
    scores = fake_scores(model)
    write_reference_chunks(tmp_path / "ref", model, scores)
    chunk = torch.load(tmp_path / "ref" / "layer_1.pt")
    del chunk["v_proj"]
    torch.save(chunk, tmp_path / "ref" / "layer_1.pt")
    with pytest.raises(UserError, match=r"layer_1.pt: no key 'v_proj' for layers.1.v"):
        import_reference_chunks(tmp_path / "ref", tmp_path / "out", model)


def test_export_round_trip(tmp_path, caplog):
    model = tiny_model("llama")
    scores = fake_scores(model)
    scores["layers.0.q"][0, 0] = 1e6  # beyond fp16's range
    scores["layers.0.q"][0, 1] = 1e-9  # below fp16's smallest subnormal
    save_scores(tmp_path / "store", scores, fields_for(model, model_type="llama"))
    with caplog.at_level(logging.WARNING, logger="tomsparse.score_store"):
        export_reference_chunks(tmp_path / "store", tmp_path / "ref")
    assert "1 value(s) overflowed to inf and 1 nonzero value(s) underflowed to 0" in caplog.text
    manifest = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    assert manifest == {"source_model": "tiny-llama", "model_type": "llama", "num_layers": 2,
                        "modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                    "up_proj", "down_proj"]}
    chunk = torch.load(tmp_path / "ref" / "layer_1.pt", weights_only=True)
    assert chunk["down_proj"].dtype == torch.float16
    assert torch.equal(chunk["down_proj"], scores["layers.1.down"].half())
    # Exporting a shallower store over it removes the deeper chunks.
    shallow = {k: v for k, v in scores.items() if k.startswith("layers.0.")}
    save_scores(tmp_path / "shallow", shallow, fields_for(model))
    export_reference_chunks(tmp_path / "shallow", tmp_path / "ref2")
    (tmp_path / "ref2" / "layer_5.pt").write_bytes(b"old")
    export_reference_chunks(tmp_path / "shallow", tmp_path / "ref2")
    assert sorted(p.name for p in (tmp_path / "ref2").iterdir()) == ["layer_0.pt",
                                                                     "manifest.json"]
    # And back.
    import_reference_chunks(tmp_path / "ref", tmp_path / "again", model)
    loaded, _ = load_scores(tmp_path / "again", model)
    assert torch.equal(loaded["layers.1.up"], scores["layers.1.up"].half().float())
