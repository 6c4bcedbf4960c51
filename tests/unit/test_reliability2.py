"""The bad-input battery, round 2 (issue 26): each case ends in exit 2 with one line naming
the culprit and no traceback (or in the documented success: a rebuilt model), and leaves no
output behind. The claims cases are in test_claims_heartbeat.py."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from test_offline_models import flip, load_tiny, offline_tiny  # noqa: F401 (a fixture)
from test_reliability import assert_one_line_error, base, run_cli, snapshot, tiny  # noqa: F401

from tomsparse.errors import UserError
from tomsparse.lm import gguf, registry
from tomsparse.files import read_csv_checked, read_json_object
from tomsparse.scores.store import open_scores, save_scores
from tomsparse.testing import save_tiny_model, tiny_loaded_model, tiny_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"


def refused(argv, capsys, needles, usage=False, watch=()):
    """``argv`` exits 2 with one line holding every needle, and creates or changes none of
    ``watch``."""
    before = [snapshot(Path(p)) for p in watch]
    code, err = run_cli(argv, capsys)
    if usage:
        line = assert_one_line_error(code, err, needles, usage)
    else:  # a command may say what it starts on stderr first (eval does): then one error line
        assert code == 2 and "Traceback" not in err, f"exit code {code}\n{err}"
        lines = err.strip().splitlines()
        assert [x for x in lines if "error:" in x] == lines[-1:], err
        line = lines[-1]
        assert line.startswith("tomsparse: error: "), err
        for needle in needles:
            assert str(needle) in line, f"{needle!r} not in: {line}"
    for path, old in zip(watch, before):
        assert snapshot(Path(path)) == old, f"{path} was created or changed"
    return line


# ------------------------------------------------------------------ compare: shapes of inputs


def _run_folder(tmp: Path, manifest, verdicts: str | None = None) -> Path:
    """A run folder: ``manifest.json`` holding ``manifest`` (text as is), the three specificity
    tables of its sweep (the verdict table's text replaced by ``verdicts``)."""
    run = tmp / "run"
    (run / "sweep").mkdir(parents=True)
    (run / "manifest.json").write_text(manifest)
    (run / "sweep" / "specificity_baseline.csv").write_text(
        "family,tom_accuracy,tom_margin,state\nunexpected,0.5,0.1,at chance\n")
    (run / "sweep" / "specificity_verdicts.csv").write_text(
        verdicts or "claim,m,value,lo,hi,status\na,0.01,0.1,0.0,0.2,not shown\n")
    (run / "sweep" / "specificity.csv").write_text(
        "family,metric,mode,m,value,lo,hi,n_tasks,n_prompts,perplexity\n")
    return run


def test_compare_refuses_a_manifest_that_is_a_json_list(tmp_path, capsys):
    run = _run_folder(tmp_path, "[1, 2]")
    out = tmp_path / "cmp"
    refused(["compare", run, "--out", out], capsys,
            [str(run / "manifest.json"), "JSON list, not an object"], watch=[out])


def test_compare_refuses_a_sweep_manifest_that_is_a_json_string(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    (sweep / "points").mkdir(parents=True)
    (sweep / "sweep_manifest.json").write_text('"just a string"')
    out = tmp_path / "cmp"
    refused(["compare", sweep, "--out", out], capsys,
            [str(sweep / "sweep_manifest.json"), "JSON str, not an object"], watch=[out])


def test_compare_refuses_a_verdict_table_with_unrelated_columns(tmp_path, capsys):
    run = _run_folder(tmp_path, '{"model": "tiny-model"}', verdicts="colour,size\nred,3\n")
    out = tmp_path / "cmp"
    line = refused(["compare", run, "--out", out], capsys,
                   [str(run / "sweep" / "specificity_verdicts.csv"), "claim, m, value",
                    "verdict table", "colour, size"], watch=[out])
    assert "tomsparse summarize" in line  # the fix: the tables are rewritten from the points


def test_compare_of_good_inputs_still_writes(tmp_path, capsys):
    run = _run_folder(tmp_path, '{"model": "tiny-model", "model_fingerprint": "fp"}')
    out = tmp_path / "cmp"
    code, _err = run_cli(["compare", run, "--out", out], capsys)
    assert code == 0 and (out / "compare.csv").is_file()


def test_shape_readers_name_the_file_and_what_was_expected(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n")
    assert list(read_csv_checked(path, ["a"], "a table")["b"]) == [2]
    with pytest.raises(UserError, match=rf"{path}: lacks the column\(s\) c of a table .*has a, b"):
        read_csv_checked(path, ["a", "c"], "a table")
    path.write_bytes(b"")
    with pytest.raises(UserError, match=rf"{path}: not a readable CSV table .*expected a table"):
        read_csv_checked(path, ["a"], "a table")
    with pytest.raises(UserError, match="missing; expected a table"):
        read_csv_checked(tmp_path / "none.csv", ["a"], "a table")
    path.write_text('"text"')
    with pytest.raises(UserError, match=rf"{path}: holds a JSON str, not an object"):
        read_json_object(path)


def test_analyze_refuses_run_options_of_the_wrong_shape(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"model": "tiny", "options": ["m_list"]}))
    out = tmp_path / "analysis"
    refused(["analyze", "--run", run, "--out", out], capsys,
            [str(run / "manifest.json"), "\"options\" should be an object"], watch=[out])


# ------------------------------------------------------------------ ranges: what exists


def test_generic_nsamples_beyond_the_corpus_is_refused_before_any_window(base, tiny, tmp_path,
                                                                        capsys):
    out = tmp_path / "scores"
    texts = base.corpus.read_text().split("\n\n")
    pool = sum(len(t.encode()) + 2 for t in texts)  # one window per byte, at most
    refused(["scores", "--model", "tiny", "--device", "cpu", "--dataset", "generic", "--corpus",
             base.corpus, "--seqlen", "8", "--nsamples", "1000000000", "--out", out], capsys,
            ["--nsamples 1,000,000,000", f"at most {pool:,} distinct windows", str(base.corpus)],
            watch=[out])


def test_tom_nsamples_beyond_the_prompts_is_refused_before_the_model_loads(tiny, tmp_path,
                                                                          capsys, monkeypatch):
    from tomsparse.cli import run as run_command, scores as scores_cli
    from tomsparse.data.tasks.loaders import gradient_prompts

    def no_model(*_a, **_k):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(scores_cli, "load_model", no_model)
    pool = len(gradient_prompts("builtin", select="false-belief"))
    out = tmp_path / "scores"
    refused(["scores", "--model", "tiny", "--device", "cpu", "--dataset", "tom",
             "--score-prompts", "false-belief", "--nsamples", str(pool + 1), "--out", out],
            capsys, [f"--nsamples {pool + 1}", f"only {pool} ToM prompts", "builtin"],
            watch=[out])
    monkeypatch.setattr(run_command, "run_main_job", no_model)
    out = tmp_path / "run"
    refused(["run", "--quick", "--model", "tiny", "--device", "cpu", "--score-prompts",
             "false-belief", "--nsamples-tom", str(pool + 1), "--out", out], capsys,
            [f"--nsamples-tom {pool + 1}", f"only {pool} ToM prompts"], watch=[out])


def test_repeated_random_seeds_are_refused(base, tiny, tmp_path, capsys):
    out = tmp_path / "sweep"
    refused(["sweep", "--model", "tiny", "--scores-tom", base.stores["tom"], "--scores-generic",
             base.stores["generic"], "--m_list", "0.01", "--random-seeds", "0,0", "--out", out],
            capsys, ["--random-seeds", "'0,0'", "seed 0 is given more than once"], usage=True,
            watch=[out])


@pytest.mark.parametrize("scoring", ["likelihood", "greedy"])
def test_a_story_longer_than_the_context_is_refused_before_any_forward_pass(tiny, tmp_path,
                                                                           capsys, monkeypatch,
                                                                           scoring):
    data = json.loads((FIXTURES / "reference_tasks.json").read_text())
    data["s1"][0]["txt"] = "XNAM walks on. " * 200 + data["s1"][0]["txt"]  # ~3,000 tokens
    tasks = tmp_path / "long.json"
    tasks.write_text(json.dumps(data))
    forwards = []
    monkeypatch.setattr("torch.nn.Module.__call__", lambda *a, **k: forwards.append(1))
    out = tmp_path / "eval"
    line = refused(["eval", "--model", "tiny", "--device", "cpu", "--tasks", tasks, "--scoring",
                    scoring, "--out", out], capsys,
                   ["task 1 (unexpected", "more than the model's context of 1024 tokens"],
                   watch=[out])
    taken = int(re.search(r" take (\d+) tokens", line).group(1))
    assert taken > 2800  # the story's ~2,900 characters, one token each
    assert not forwards


def test_reference_protocol_checks_its_corpora_before_any_work(tiny, tmp_path, capsys):
    # tests run offline (conftest): c4 cannot be downloaded
    out = tmp_path / "run"
    refused(["run", "--model", "tiny", "--device", "cpu", "--reference-protocol", "--out", out],
            capsys, ["corpus 'c4'", "cannot be reached"], watch=[out])
    assert not tiny  # refused before the model was even loaded


# ------------------------------------------------------------------ damaged weights


@pytest.fixture
def bigger_offline_tiny(offline_tiny, monkeypatch):  # noqa: F811 (the imported fixture)
    """The offline stand-in with weights of ~5 MB: bigger than the 16 sampled 64 KiB blocks
    of the old load check, so a flip between them is what a sampled check misses."""
    conversions, logs = offline_tiny

    def dequantize_into(entry, work):
        conversions.append(work)
        save_tiny_model("llama", work)
        tiny_model("llama", hidden_size=256, intermediate_size=512).save_pretrained(work)

    monkeypatch.setattr(gguf, "dequantize_into", dequantize_into)
    return conversions, logs


def test_a_flip_between_sampled_blocks_is_found_at_the_next_load_and_rebuilt(
        bigger_offline_tiny):
    conversions, logs = bigger_offline_tiny
    first = load_tiny(logs)
    weights = gguf.converted_folder("tiny-offline") / "model.safetensors"
    good = weights.read_bytes()
    assert len(good) > 2 * gguf.SAMPLE_BLOCKS * gguf.SAMPLE_BYTES
    span = len(good) - gguf.SAMPLE_BYTES
    offset = span // (gguf.SAMPLE_BLOCKS - 1) // 2  # half-way between two sampled blocks
    flip(weights, offset, keep_mtime=True)
    assert gguf.sampled_sha256(weights) == json.loads(
        (weights.parent / gguf.COMPLETION_RECORD).read_text())["sampled_sha256"][weights.name]
    logs.clear()
    again = load_tiny(logs)
    assert len(conversions) == 2, logs
    assert any("model.safetensors: its content differs from the recorded sha256" in line
               and "rebuilding it" in line for line in logs), logs
    assert weights.read_bytes() == good and again.fingerprint == first.fingerprint


def test_the_fingerprint_covers_the_weights_so_old_stores_are_refused(tmp_path):
    folder = save_tiny_model("llama", tmp_path / "m")
    first = registry.load_model(str(folder), device="cpu")
    store = tmp_path / "scores"
    save_scores(store, {m.name: m.module.weight.detach().abs() for m in first.description.matrices},
                {"model": str(folder), "fingerprint": first.fingerprint, "dataset": "tom"})
    open_scores(store, model=first)  # its own model: accepted
    weights = folder / "model.safetensors"
    flip(weights, os.path.getsize(weights) // 2, keep_mtime=True)
    damaged = registry.load_model(str(folder), device="cpu")
    assert damaged.fingerprint != first.fingerprint
    with pytest.raises(UserError, match=rf"{store}: scores were computed for model fingerprint "
                                        rf"{first.fingerprint}"):
        open_scores(store, model=damaged)
    # a model built in memory has no weight files: config and shapes, as before
    assert tiny_loaded_model("llama").fingerprint == tiny_loaded_model("llama", seed=1).fingerprint
