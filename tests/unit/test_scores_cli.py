"""``tomsparse scores`` end to end on a tiny stand-in model: compute (tom and generic), the
reference mode's defaults, import/export, and bad input as one line with exit code 2."""

from __future__ import annotations

import json

import pytest
import torch
from test_scores import one_thread  # noqa: F401

from tomsparse.cli.main import main
from tomsparse.lm.registry import DEFAULT_MODEL
from tomsparse.scores.store import load_scores
from tomsparse.testing import registered_model, tiny_model


@pytest.fixture
def stand_in():
    """``--model tiny`` (and the default model) load a tiny Llama (in the requested dtype)
    with a character tokenizer; the calls for ``tiny`` are recorded."""
    with registered_model("tiny") as calls, registered_model(DEFAULT_MODEL):
        yield calls


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([
        {"txt": f"Complete the following story: Tom puts toy {i} in the box. He looks in the",
         "answer": "box"} for i in range(6)]))
    return path


def test_compute_tom(stand_in, prompt_file, tmp_path, capsys):
    out = tmp_path / "tom"
    code = main(["scores", "--model", "tiny", "--device", "cpu", "--dataset", "tom",
                 "--data_path", str(prompt_file), "--nsamples", "4", "--batch-size", "3",
                 "--out", str(out)])
    assert code == 0
    assert stand_in[0]["dtype"] == "float32"
    printed = capsys.readouterr().out
    assert "scores: 14 matrices, 4 samples (tom, supervision answer), 16 supervised tokens" in printed
    scores, manifest = load_scores(out, tiny_model("llama"))
    assert len(scores) == 14
    assert manifest["dataset"] == "tom" and manifest["dataset_source"] == str(prompt_file)
    assert manifest["supervision"] == "answer" and manifest["supervised_tokens"] == 16
    assert manifest["nsamples"] == 4 and manifest["seed"] == 0
    assert manifest["accumulation_dtype"] == "float32" and manifest["method"] == "batched"
    assert manifest["model"] == "tiny" and manifest["model_type"] == "llama"
    assert set(manifest["zero_counts"]) == set(scores)
    assert manifest["wall_time_s"] > 0 and manifest["dataset_sha256"]


def test_compute_generic(stand_in, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(("Some generic text about the weather. " * (i + 2)).strip()
                                  for i in range(5)))
    out = tmp_path / "gen"
    code = main(["scores", "--model", "tiny", "--device", "cpu", "--dataset", "generic",
                 "--corpus", str(corpus), "--nsamples", "3", "--seqlen", "24", "--seed", "2",
                 "--store-dtype", "bfloat16", "--out", str(out)])
    assert code == 0
    scores, manifest = load_scores(out)
    assert manifest["supervised_tokens"] == 3 * 23 and manifest["seqlen"] == 24
    assert manifest["store_dtype"] == "bfloat16" and manifest["seed"] == 2
    assert all(t.dtype == torch.float32 for t in scores.values())


def test_reference_mode_defaults(stand_in, prompt_file, tmp_path, capsys):
    out = tmp_path / "ref"
    code = main(["scores", "--model", "tiny", "--device", "cpu", "--reference-fp16",
                 "--data_path", str(prompt_file), "--nsamples", "3", "--out", str(out)])
    assert code == 0
    assert stand_in[0]["dtype"] == "float16"
    _, manifest = load_scores(out)
    assert manifest["supervision"] == "last-token" and manifest["supervised_tokens"] == 3
    assert manifest["method"] == "loop" and manifest["reference_fp16"] is True
    assert manifest["accumulation_dtype"] == "float16 (reference)"
    assert manifest["model_dtype"] == "float16"
    assert "using the plain loop" in capsys.readouterr().err


def test_import_and_export(stand_in, prompt_file, tmp_path):
    store = tmp_path / "store"
    assert main(["scores", "--model", "tiny", "--device", "cpu", "--data_path",
                 str(prompt_file), "--nsamples", "2", "--out", str(store)]) == 0
    chunks = tmp_path / "chunks"
    assert main(["scores", "export", "--from", str(store), "--out", str(chunks)]) == 0
    assert sorted(p.name for p in chunks.iterdir()) == ["layer_0.pt", "layer_1.pt",
                                                        "manifest.json"]
    again = tmp_path / "again"
    assert main(["scores", "import", "--from", str(chunks), "--model", "tiny",
                 "--out", str(again)]) == 0
    original, _ = load_scores(store)
    imported, manifest = load_scores(again, tiny_model("llama"))
    assert manifest["source"] == "reference chunks"
    for name, tensor in original.items():
        assert torch.equal(imported[name], tensor.half().float())


@pytest.mark.parametrize("argv, message", [
    (["scores", "--dataset", "tom"], "scores needs --out DIR"),
    (["scores", "import", "--out", "x"], "scores import needs --from"),
    (["scores", "export", "--from", "nowhere", "--out", "x"], "no manifest.json"),
])
def test_bad_invocations(stand_in, argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "tomsparse: error: " in err and message in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    # values out of range are refused by the parser, never replaced by a default
    (["--score-batch-size", "0"], "argument --score-batch-size/--batch-size: must be at least 1, "
                                  "got 0"),
    (["--nsamples", "0"], "argument --nsamples: must be at least 1, got 0"),
    (["--seqlen", "-1"], "argument --seqlen: must be 0 or more, got -1"),
])
def test_bad_numbers_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["scores", "--model", "tiny", "--device", "cpu", *argv, "--out", "x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err.strip().splitlines()[-1]


def test_answerless_prompts_need_last_token(stand_in, tmp_path, capsys):
    path = tmp_path / "ref_prompts.json"
    path.write_text(json.dumps([{"txt": "Read the following story: It rains. Correct Answer:"}]))
    assert main(["scores", "--data_path", str(path), "--nsamples", "1",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--supervision last-token" in capsys.readouterr().err
    assert main(["scores", "--data_path", str(path), "--nsamples", "1", "--supervision",
                 "last-token", "--out", str(tmp_path / "o")]) == 0
    # more samples than the file's one prompt: refused with both numbers, before the model
    assert main(["scores", "--data_path", str(path), "--out", str(tmp_path / "o2")]) == 2
    assert "has only 1 ToM prompts" in capsys.readouterr().err
