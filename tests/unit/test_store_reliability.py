"""Score stores that are damaged, non-finite, interrupted or in the wrong place (issue 16):
each is refused with one line naming the file (and the matrix), before any work and without
creating or changing an output; a killed write's temporaries are removed by the next one."""

from __future__ import annotations

import json
import logging
import os
import tempfile

import pytest
import torch
from helpers import fake_scores, store_fields
from safetensors.torch import save_file
from test_scores import one_thread  # noqa: F401

from tomsparse.cli import scores as scores_cli
from tomsparse.cli.main import main
from tomsparse.errors import UserError
from tomsparse.lm.adapter import describe
from tomsparse.lm.registry import DEFAULT_MODEL
from tomsparse.scores.reference_chunks import export_reference_chunks, import_reference_chunks
from tomsparse.scores.store import load_scores, read_manifest, save_scores
from tomsparse.testing import registered_model, tiny_loaded_model, tiny_model


def fields_for(model, **extra):
    return store_fields(model, **{"samples_sha256": "a" * 64, **extra})


def snapshot(folder):
    """Every file under ``folder`` with its bytes and mtime: what "unchanged" means."""
    if not folder.exists():
        return None
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("tomsparse: error: ") and len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def store(tmp_path):
    model = tiny_model("llama")
    save_scores(tmp_path / "store", fake_scores(model), fields_for(model))
    return tmp_path / "store"


# ------------------------------------------------------------------ 1. damaged stores


@pytest.mark.parametrize("damage", ["truncated", "garbage header", "empty"])
def test_damaged_score_file_names_the_file(store, damage, capsys, tmp_path):
    path = store / "layer_001.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2],
                      "garbage header": b"\xff" * 8 + data[8:],
                      "empty": b""}[damage])
    with pytest.raises(UserError, match=rf"{path}: not a readable safetensors file .*damaged"):
        load_scores(store)
    # A sweep reading one matrix of the good file still can.
    assert list(load_scores(store, names=["layers.0.q"])[0]) == ["layers.0.q"]
    out = tmp_path / "chunks"
    assert main(["scores", "export", "--from", str(store), "--out", str(out)]) == 2
    assert str(path) in one_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "holds a JSON list, not an object"),
    (b"\xff\xfe garbage", "not valid JSON"),
])
def test_damaged_manifest_names_it(store, text, message, capsys, tmp_path):
    manifest = store / "manifest.json"
    manifest.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(UserError, match=rf"{manifest}: {message}"):
        read_manifest(store)
    with pytest.raises(UserError, match=rf"{manifest}: {message}"):
        load_scores(store)
    assert main(["scores", "export", "--from", str(store), "--out", str(tmp_path / "o")]) == 2
    assert f"{manifest}: {message}" in one_error_line(capsys)


def test_damaged_manifest_fields_and_index(store):
    manifest = store / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "index": ["layer_000.safetensors"]}))
    with pytest.raises(UserError, match=rf"{manifest}: field 'index' is a list, not a dict"):
        load_scores(store)
    index = dict(data["index"], **{"layers.0.q": "../elsewhere.safetensors"})
    manifest.write_text(json.dumps({**data, "index": index}))
    with pytest.raises(UserError, match=r"index puts layers.0.q in '../elsewhere.safetensors'"):
        load_scores(store)


# ------------------------------------------------------------------ 2. finiteness


def _poison(store, value, count=3):
    """Rewrite layer_001 with ``count`` entries of layers.1.v set to ``value``, bypassing
    save_scores (as a bad disk, another tool or an older tomsparse would)."""
    scores, manifest = load_scores(store)
    tensors = {n: t for n, t in scores.items() if manifest["index"][n] == "layer_001.safetensors"}
    tensors["layers.1.v"].view(-1)[:count] = value
    save_file(tensors, str(store / "layer_001.safetensors"))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_matrix_is_refused_by_name(store, value, capsys, tmp_path):
    _poison(store, value)
    path = store / "layer_001.safetensors"
    with pytest.raises(UserError, match=rf"{path}: layers.1.v holds 3 non-finite entries"):
        load_scores(store)
    # scores export does not copy it.
    out = tmp_path / "chunks"
    assert main(["scores", "export", "--from", str(store), "--out", str(out)]) == 2
    err = one_error_line(capsys)
    assert str(path) in err and "layers.1.v" in err and "3 non-finite" in err
    assert not out.exists()


def test_save_refuses_non_finite_scores(tmp_path):
    model = tiny_model("llama")
    scores = fake_scores(model)
    scores["layers.0.up"][1, 2] = float("nan")
    with pytest.raises(UserError, match=r"layers.0.up holds 1 non-finite entries \(1 NaN"):
        save_scores(tmp_path / "s", scores, fields_for(model))
    assert not (tmp_path / "s").exists()


def test_reference_fp16_store_keeps_its_overflow(tmp_path, caplog):
    # The reference's fp16 sums overflow to +inf; a store that records them keeps them (they
    # rank first, as in the reference), but NaN is refused there too.
    model = tiny_model("llama")
    scores = fake_scores(model)
    scores["layers.1.k"][0, :2] = float("inf")
    ref = fields_for(model, accumulation_dtype="float16 (reference)")
    save_scores(tmp_path / "ref", scores, ref)
    with caplog.at_level(logging.WARNING):
        loaded, _ = load_scores(tmp_path / "ref")
    assert torch.isinf(loaded["layers.1.k"]).sum() == 2
    assert "2 score(s) are +inf" in caplog.text
    with pytest.raises(UserError, match="layers.1.k holds 2 non-finite"):
        save_scores(tmp_path / "plain", scores, fields_for(model))
    _poison(tmp_path / "ref", float("nan"), count=1)
    with pytest.raises(UserError, match="layers.1.v holds 1 non-finite entries .1 NaN"):
        load_scores(tmp_path / "ref")


# ------------------------------------------------------------------ 3. where scores go


@pytest.fixture
def stand_ins():
    """``--model tiny`` and ``--model wide`` (another model: wider MLP); the calls recorded."""
    def wide(dtype="float32", **_):
        return tiny_loaded_model(name="wide", dtype=dtype, intermediate_size=64)

    with registered_model("tiny") as tiny_calls, registered_model("wide", wide) as wide_calls, \
            registered_model(DEFAULT_MODEL):
        yield tiny_calls, wide_calls


@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if scores are computed; the refusals must come before."""
    def compute(*_, **__):
        raise AssertionError("scores were computed before the destination was refused")

    monkeypatch.setattr(scores_cli, "compute_score_set", compute)


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([
        {"txt": f"Complete the following story: Tom puts toy {i} in the box. He looks in the",
         "answer": "box"} for i in range(6)]))
    return path


def compute_argv(prompts, out, model="tiny", nsamples=2, *extra):
    return ["scores", "--model", model, "--device", "cpu", "--data_path", str(prompts),
            "--nsamples", str(nsamples), "--out", str(out), *extra]


def test_store_of_another_model_or_data_is_refused_before_computing(
        stand_ins, prompt_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "scores"
    assert main(compute_argv(prompt_file, out)) == 0
    capsys.readouterr()
    before = snapshot(out)
    real = scores_cli.compute_score_set
    monkeypatch.setattr(scores_cli, "compute_score_set", lambda *a, **k: pytest.fail(
        "scores were computed before the destination was refused"))
    # Another model.
    assert main(compute_argv(prompt_file, out, "wide")) == 2
    err = one_error_line(capsys)
    assert f"{out} already holds a score store of model tiny" in err and "--overwrite" in err
    # Other samples of the same dataset.
    assert main(compute_argv(prompt_file, out, "tiny", 3)) == 2
    assert "other tom samples" in one_error_line(capsys)
    # The other dataset: refused before the model is even loaded.
    calls = len(stand_ins[0])
    assert main(["scores", "--model", "tiny", "--device", "cpu", "--dataset", "generic",
                 "--out", str(out)]) == 2
    assert "of tom data, not generic" in one_error_line(capsys)
    assert len(stand_ins[0]) == calls
    assert snapshot(out) == before
    # The same model on the same samples is the same store: recomputed in place; and
    # --overwrite replaces another one.
    monkeypatch.setattr(scores_cli, "compute_score_set", real)
    assert main(compute_argv(prompt_file, out, "tiny", 2, "--store-dtype", "bfloat16")) == 0
    assert read_manifest(out)["store_dtype"] == "bfloat16"
    assert main(compute_argv(prompt_file, out, "wide", 2, "--overwrite")) == 0
    assert read_manifest(out)["model"] == "wide"


@pytest.mark.parametrize("case", ["file", "under a file", "unwritable", "another kind",
                                  "damaged manifest"])
def test_bad_destinations_are_refused_up_front(stand_ins, no_compute, prompt_file, tmp_path,
                                               capsys, monkeypatch, case):
    target = tmp_path / "target"
    if case in ("file", "under a file"):
        target.write_text("my notes")
    elif case in ("another kind", "damaged manifest"):
        target.mkdir()
        (target / "manifest.json").write_text(
            json.dumps({"kind": "sweep"}) if case == "another kind" else "{oops")
    out = target / "scores" if case == "under a file" else target
    if case == "unwritable":  # chmod cannot stop root, so ask os.access
        monkeypatch.setattr(os, "access", lambda path, mode: False)
    before = snapshot(tmp_path)
    assert main(compute_argv(prompt_file, out)) == 2
    err = one_error_line(capsys)
    expect = {"file": f"--out {out} is a file", "under a file": f"{target} is a file",
              "unwritable": f"{tmp_path} is not writable",
              "another kind": "not a score store's (kind 'sweep')",
              "damaged manifest": f"{target / 'manifest.json'}: not valid JSON"}[case]
    assert expect in err
    assert stand_ins[0] == []  # refused before the model was loaded
    assert snapshot(tmp_path) == before


def test_import_does_not_replace_another_store(stand_ins, prompt_file, tmp_path, capsys):
    model = tiny_model("llama")
    out = tmp_path / "scores"
    assert main(compute_argv(prompt_file, out)) == 0
    capsys.readouterr()
    before = snapshot(out)
    chunks = tmp_path / "chunks"
    export_reference_chunks(out, chunks)
    calls = len(stand_ins[0])
    assert main(["scores", "import", "--from", str(chunks), "--model", "tiny",
                 "--out", str(out)]) == 2
    assert f"{out} already holds a score store of tiny" in one_error_line(capsys)
    assert len(stand_ins[0]) == calls and snapshot(out) == before
    again = tmp_path / "again"
    for _ in range(2):  # re-importing the same chunks is the same store
        assert main(["scores", "import", "--from", str(chunks), "--model", "tiny",
                     "--out", str(again)]) == 0
    assert load_scores(again, model)[1]["source"] == "reference chunks"
    capsys.readouterr()
    # The same chunks imported for another model into it: refused by its fingerprint.
    before = snapshot(again)
    assert main(["scores", "import", "--from", str(chunks), "--model", "wide",
                 "--out", str(again)]) == 2
    assert f"{again} already holds a score store of model tiny" in one_error_line(capsys)
    assert snapshot(again) == before


def test_export_never_writes_into_a_store(store, tmp_path, capsys):
    before = snapshot(store)
    assert main(["scores", "export", "--from", str(store), "--out", str(store)]) == 2
    assert "not a reference chunk folder" in one_error_line(capsys)
    other = tmp_path / "other"
    save_scores(other, fake_scores(tiny_model("llama"), 1), fields_for(tiny_model("llama")))
    with pytest.raises(UserError, match="not a reference chunk folder"):
        export_reference_chunks(store, other)
    assert snapshot(store) == before
    load_scores(other)


# ------------------------------------------------------------------ 4. leftover temporaries


def leave_temporaries(folder, names):
    """What a write killed with SIGKILL leaves: atomic_path's temporaries (made the way it
    makes them) and safetensors' own ``.tmpXXXXXX`` beside its target."""
    left = []
    for name in names:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        os.write(fd, b"half a file")
        os.close(fd)
        left.append(tmp)
    safetensors_tmp = folder / ".tmpAb3xYz"
    safetensors_tmp.write_bytes(b"half a tensor")
    return left + [str(safetensors_tmp)]


def test_next_write_removes_a_killed_writes_temporaries(store):
    model = tiny_model("llama")
    left = leave_temporaries(store, ["layer_000.safetensors", "scores-00001-of-00002.safetensors",
                                     "manifest.json"])
    (store / "manifest.json").unlink()  # a killed write removed it first
    mine = [store / ".tmp", store / "notes.tmp", store / ".tmp-my-notes", store / "notes.txt"]
    for path in mine:
        path.write_text("mine")
    save_scores(store, fake_scores(model, 1), fields_for(model))
    assert not any(os.path.exists(p) for p in left)
    assert all(p.exists() for p in mine)  # only what a store write leaves is removed
    assert sorted(p.name for p in store.iterdir() if not p.name.startswith(".")) == [
        "layer_000.safetensors", "layer_001.safetensors", "manifest.json", "notes.tmp",
        "notes.txt"]
    loaded, _ = load_scores(store)
    assert torch.equal(loaded["layers.0.k"], fake_scores(model, 1)["layers.0.k"])


def test_next_export_removes_a_killed_exports_temporaries(store, tmp_path):
    out = tmp_path / "chunks"
    export_reference_chunks(store, out)
    left = leave_temporaries(out, ["layer_1.pt", "manifest.json"])
    export_reference_chunks(store, out)
    assert not any(os.path.exists(p) for p in left)
    assert sorted(p.name for p in out.iterdir()) == ["layer_0.pt", "layer_1.pt",
                                                     "manifest.json"]


# ------------------------------------------------------------------ 5. reference chunks


class NotATensor:
    pass


def write_chunks(folder, model, edit=None):
    folder.mkdir(parents=True, exist_ok=True)
    desc = describe(model)
    for layer in range(desc.num_layers):
        chunk = {m.reference_key: torch.rand(m.shape).half() for m in desc.matrices
                 if m.layer == layer}
        if edit:
            chunk = edit(layer, chunk)
        torch.save(chunk, folder / f"layer_{layer}.pt")


def test_pickled_chunk_is_refused_with_the_accepted_format(tmp_path, capsys):
    model = tiny_model("llama")
    write_chunks(tmp_path / "ref", model,
                 lambda layer, c: {**c, "extra": NotATensor()} if layer == 1 else c)
    path = tmp_path / "ref" / "layer_1.pt"
    with pytest.raises(UserError) as info:
        import_reference_chunks(tmp_path / "ref", tmp_path / "out", model)
    message = str(info.value)
    assert message.startswith(f"{path}: refused") and "NotATensor" in message
    assert "a dict of tensors per layer keyed q_proj ... down_proj" in message
    assert "weights_only" not in message and "\n" not in message
    assert not (tmp_path / "out").exists()
    with registered_model("tiny"):
        assert main(["scores", "import", "--from", str(tmp_path / "ref"), "--model", "tiny",
                     "--out", str(tmp_path / "out")]) == 2
    err = one_error_line(capsys)
    assert str(path) in err and "weights_only" not in err and "dict of tensors" in err


@pytest.mark.parametrize("damage", ["truncated", "a list", "nan"])
def test_damaged_chunks_name_the_file(tmp_path, damage):
    model = tiny_model("llama")
    if damage == "nan":
        def edit(layer, chunk):
            chunk["up_proj"].view(-1)[:2] = float("nan")
            return chunk
    elif damage == "a list":
        def edit(layer, chunk):
            return list(chunk.values())
    else:
        edit = None
    write_chunks(tmp_path / "ref", model, edit)
    path = tmp_path / "ref" / "layer_0.pt"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    expect = {"truncated": "cannot read it", "a list": "holds a list, not a dict",
              "nan": r"up_proj \(layers.0.up\) holds 2 NaN entries"}[damage]
    with pytest.raises(UserError, match=rf"{path}: {expect}") as info:
        import_reference_chunks(tmp_path / "ref", tmp_path / "out", model)
    assert "weights_only" not in str(info.value)
    assert not (tmp_path / "out").exists()
