"""Model registry, cache integrity, corpora and perplexity, without the real model."""

import json
import math

import pytest
import torch

from tomsparse.cli.main import main
from tomsparse.data import corpora
from tomsparse.errors import UserError
from tomsparse.evaluate.perplexity import perplexity
from tomsparse.lm import gguf
from tomsparse.lm import registry as models
from tomsparse.testing import CharTokenizer, tiny_model


def test_unknown_model_name(capsys):
    assert main(["info", "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown model 'no-such-model'" in err and "smollm2-135m" in err


def test_hub_id_offline_is_one_clear_line(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["info", "--model", "someone/some-model-that-is-not-cached"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot load model" in err and "offline models" in err


def test_local_model_folder_without_files(tmp_path, capsys):
    assert main(["info", "--model", str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err


def test_missing_package_says_which_command(monkeypatch):
    monkeypatch.setattr(gguf, "package_dir", lambda name: None)
    with pytest.raises(UserError, match=r"not installed.*make gemma"):
        gguf.gguf_files(gguf.OFFLINE_MODELS["gemma3-270m"])


def test_bad_device_and_dtype():
    with pytest.raises(UserError, match="--dtype"):
        models.resolve_dtype("float8")
    with pytest.raises(UserError, match="--device"):
        models.resolve_device("tpu")


def test_half_written_cache_is_not_complete(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert not gguf.is_complete(folder)  # no completion record
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    (folder / gguf.COMPLETION_RECORD).write_text(json.dumps(
        {"files": {"config.json": 2, "model.safetensors": 100}}))
    assert not gguf.is_complete(folder)  # truncated weights
    (folder / "model.safetensors").write_bytes(b"x" * 100)
    assert gguf.is_complete(folder)


def test_wiki_offline_parts_are_disjoint_and_cover():
    cal = corpora.load_corpus("wiki-offline:calibration")
    ev = corpora.load_corpus("wiki-offline:eval")
    full = corpora.load_corpus("wiki-offline")
    assert len(cal.texts) + len(ev.texts) == len(full.texts) > 10000
    assert not set(cal.texts) & set(ev.texts)
    assert 0.1 < len(ev.texts) / len(full.texts) < 0.3
    assert corpora.load_corpus("wiki-offline:eval").sha256 == ev.sha256  # deterministic


def test_local_corpus_files(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\n\nsecond doc\n")
    assert corpora.load_corpus(str(tmp_path / "a.txt")).texts == ["first doc", "second doc"]
    (tmp_path / "b.jsonl").write_text('{"text": "x y"}\n{"text": "z"}\n')
    assert corpora.load_corpus(str(tmp_path / "b.jsonl")).texts == ["x y", "z"]
    (tmp_path / "c.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(UserError, match="no field 'text'"):
        corpora.load_corpus(str(tmp_path / "c.jsonl"))


@pytest.mark.parametrize("content,match", [("\n\n  \n", "is empty"), (None, "does not exist")])
def test_bad_corpus_files(tmp_path, content, match):
    path = tmp_path / "e.txt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=match):
        corpora.load_corpus(str(path))


def test_unreadable_corpus_file(tmp_path):
    path = tmp_path / "bin.txt"
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UserError, match="cannot read corpus file"):
        corpora.load_corpus(str(path))


def test_unknown_corpus_cli(capsys):
    assert main(["perplexity", "--corpus", "nonesuch"]) == 2
    assert "unknown corpus 'nonesuch'" in capsys.readouterr().err


def test_perplexity_matches_manual_windows():
    model = tiny_model("llama")
    tok = CharTokenizer()
    corpus = corpora.Corpus(name="t", texts=["abcdefghij" * 5, "klmnopqrst" * 5], source="test")
    res = perplexity(model, tok, corpus, seqlen=16, batch_size=2)
    ids = torch.tensor(tok(corpus.joined("\n\n"), add_special_tokens=False)["input_ids"])
    n = ids.numel() // 16
    losses = []
    with torch.no_grad():
        for w in range(n):  # one window at a time, independent of the batched code
            x = ids[w * 16:(w + 1) * 16][None]
            logits = model(input_ids=x).logits[0]
            losses.append(torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:]).item())
    assert res.windows == n and res.tokens == n * 16
    assert res.perplexity == pytest.approx(math.exp(sum(losses) / n), rel=1e-5)


def test_perplexity_too_few_tokens():
    corpus = corpora.Corpus(name="tiny", texts=["ab"], source="test")
    with pytest.raises(UserError, match="fewer than one window"):
        perplexity(tiny_model("llama"), CharTokenizer(), corpus, seqlen=16)
