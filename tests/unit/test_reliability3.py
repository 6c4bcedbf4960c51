"""The bad-input battery, round 3 (issue 36): nothing a user hands in writes outside its
folder or runs code, a sweep folder's results carry their own integrity, and every input fails
in one clear line with exit code 2 (or the documented note or warning).

Each numbered case of the issue is a test below, named by its number (``test_36_<n>_...``).
The sweep cases share one finished sweep folder (tiny model, baseline and one difference
point over two tasks per family), copied and edited per case."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import types
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_offline_models import flip, offline_tiny  # noqa: F401 (a fixture)
from test_reliability import run_cli, snapshot
from test_reliability2 import refused
from test_sweep_cli import write_stores

from tomsparse.cli.main import main
from tomsparse.errors import UserError
from tomsparse.files import atomic_path, atomic_write_text
from tomsparse.lm import gguf
from tomsparse.safe_read import check_torch_archive, sanitize_html
from tomsparse.sweep.folder import BASELINE_LABEL, INTEGRITY, SweepFolder, point_label
from tomsparse.testing import registered_model, save_tiny_model, tiny_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"
DIFF = point_label("difference", 0, 0.01)
DEEP = 100_000


def succeeded(argv, capsys) -> tuple[str, str]:
    """``argv`` exits 0; (stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err


# ------------------------------------------------------------------ a finished sweep


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run-shaped folder holding a finished sweep (``run/sweep``): baseline and the
    difference mask at m = 0.01, two tasks per family."""
    root = tmp_path_factory.mktemp("integrity")
    with registered_model("tiny"):
        stores, corpus = write_stores(root)
        sweep = root / "run" / "sweep"
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert main(["sweep", "--model", "tiny", "--device", "cpu", "--scores-tom",
                         str(stores["tom"]), "--scores-generic", str(stores["generic"]),
                         "--corpus", str(corpus), "--m_list", "0,0.01", "--controls", "none",
                         "--matched-controls", "none", "--task-limit", "2",
                         "--ppl-max-tokens", "256", "--ppl-seqlen", "64", "--scale", "0.0",
                         "--out", str(sweep)]) == 0
    return sweep


@pytest.fixture
def sweep(finished, tmp_path):
    """A fresh copy of the finished sweep, inside a run-shaped folder, to edit."""
    copy = tmp_path / "run" / "sweep"
    shutil.copytree(finished, copy)
    return copy


def prompts_of(sweep: Path, label: str) -> pd.DataFrame:
    return pd.read_csv(SweepFolder(sweep).point_prompts(label), keep_default_na=False,
                       dtype=str)


def write_prompts(sweep: Path, label: str, frame: pd.DataFrame) -> None:
    frame.to_csv(SweepFolder(sweep).point_prompts(label), index=False)


def edit_record(sweep: Path, label: str, **fields) -> None:
    path = SweepFolder(sweep).point_record(label)
    record = json.loads(path.read_text())
    record.update(fields)
    path.write_text(json.dumps(record))


def summarize_refused(sweep: Path, capsys, needles, accept: bool = False) -> str:
    before = snapshot(sweep / "report.html")
    argv = ["summarize", sweep] + (["--accept-edited"] if accept else [])
    line = refused(argv, capsys, needles)
    assert snapshot(sweep / "report.html") == before  # nothing judged, nothing rewritten
    return line


def test_the_sweep_records_an_integrity_record_per_point(finished):
    folder = SweepFolder(finished)
    assert folder.read_manifest()["integrity"] == INTEGRITY
    for label in (BASELINE_LABEL, DIFF):
        lines = folder.point_integrity(label).read_text().splitlines()
        names = {line.split("  ", 1)[1] for line in lines}
        assert {f"{label}.json", f"{label}_prompts.csv", f"{label}_metrics.csv"} <= names
    found = folder.check_integrity()
    assert not found.problems and not found.unrecorded


# ------------------------------------------------------------------ 1. writers and links


def test_36_1_tasks_export_refuses_a_link_planted_in_out(tmp_path, capsys):
    victim = tmp_path / "elsewhere" / "precious.txt"
    victim.parent.mkdir()
    victim.write_text("keep me")
    out = tmp_path / "bank"
    out.mkdir()
    (out / "tom_tasks_train.json").symlink_to(victim)
    for extra in ([], ["--overwrite"]):
        line = refused(["tasks", "export", "--out", out, *extra], capsys,
                       [str(out / "tom_tasks_train.json"), "symbolic link", str(victim)],
                       watch=[victim])
        assert "outside" in line
    assert victim.read_text() == "keep me"


def test_36_1_the_writer_replaces_a_link_inside_its_folder_and_never_its_target(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "other.txt"
    target.write_text("other")
    (folder / "result.txt").symlink_to(target)
    atomic_write_text(folder / "result.txt", "new")
    assert not (folder / "result.txt").is_symlink()
    assert (folder / "result.txt").read_text() == "new" and target.read_text() == "other"
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    (folder / "link.txt").symlink_to(outside)
    with pytest.raises(UserError, match="symbolic link .* outside"):
        atomic_write_text(folder / "link.txt", "y")
    assert outside.read_text() == "x" and not list(folder.glob(".*.tmp"))


def test_36_1_appended_run_log_is_rewritten_atomically_not_through_a_link(tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    victim = tmp_path / "victim.jsonl"
    victim.write_text("mine\n")
    (out / "tom_runs.jsonl").symlink_to(victim)
    with registered_model("tiny"):
        refused(["eval", "--model", "tiny", "--device", "cpu", "--tasks",
                 FIXTURES / "reference_tasks.json", "--out", out], capsys,
                [str(out / "tom_runs.jsonl"), "symbolic link"], watch=[victim])


# ------------------------------------------------------------------ 2. report sections


def test_36_2_report_sections_are_data_and_scripts_never_reach_the_report(sweep, capsys):
    sections = sweep.parent / "analysis" / "report_sections.json"
    sections.parent.mkdir()
    sections.write_text(json.dumps([
        ["Mechanistic <b>analyses</b>",
         "<p>fine <b>bold</b></p><script>alert(1)</script>"
         "<img src=x onerror=alert(2)><a href='javascript:alert(3)'>link</a>"
         "<table border='1' class='dataframe'><tr style='text-align: right;'><td>1</td></tr>"
         "</table><img alt='plot' src='data:image/png;base64,iVBORw0KGgo='>"]]))
    succeeded(["summarize", sweep], capsys)
    report = (sweep / "report.html").read_text()
    assert "<script>alert" not in report and "alert(1)" not in report
    assert "onerror" not in report
    assert "href='javascript" not in report and 'href="javascript' not in report
    assert "<p>fine <b>bold</b></p>" in report                     # safe markup kept
    assert "<td>1</td>" in report and "data:image/png;base64,iVBORw0KGgo=" in report
    assert "Mechanistic &lt;b&gt;analyses&lt;/b&gt;" in report      # titles are text
    assert "&lt;a href=" in report                                   # a link is shown as text


def test_36_2_sanitizer_keeps_an_allow_list():
    dirty = ("<div onclick='x()'><p style='color:red'>a &amp; b</p><iframe src=e></iframe>"
             "<svg><script>s</script></svg><img src='https://e/x.png'>"
             "<!-- c --><td valign='top'>t</td>")
    clean = sanitize_html(dirty)
    assert clean == ("<div><p>a &amp; b</p><img><td valign=\"top\">t</td></div>")


# ------------------------------------------------------------------ 3. code and memory


def test_36_3_a_malicious_pickle_in_a_model_folder_is_refused_without_advice(tmp_path, capsys):
    folder = save_tiny_model("llama", tmp_path / "evil")
    from safetensors.torch import load_file

    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    weights["extra"] = Payload()
    torch.save(weights, folder / "pytorch_model.bin")
    line = refused(["info", "--model", folder], capsys,
                   [str(folder), "pytorch_model.bin", "refused", "other than tensors"])
    assert "weights_only=False" not in line and "weights_only" not in line.split("refused")[0]
    assert not marker.exists()


def deflated_bomb(path: Path, mib: int = 64) -> None:
    """A torch archive whose one tensor (``mib`` MiB of zeros) is stored deflated: a small
    file that asks for a lot of memory."""
    plain = path.with_suffix(".plain")
    torch.save({"q_proj": torch.zeros(mib * 2 ** 18)}, plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            dst.writestr(item.filename, src.read(item.filename))
    plain.unlink()


def test_36_3_a_deflated_chunk_is_refused_before_it_is_inflated(tmp_path, capsys):
    chunks = tmp_path / "chunks"
    chunks.mkdir()
    deflated_bomb(chunks / "layer_0.pt")
    assert (chunks / "layer_0.pt").stat().st_size < 2 ** 20
    with pytest.raises(UserError, match="inflates .* to 64.0 MiB"):
        check_torch_archive(chunks / "layer_0.pt")
    shutil.copy(chunks / "layer_0.pt", chunks / "layer_1.pt")
    out = tmp_path / "store"
    with registered_model("tiny"):
        refused(["scores", "import", "--model", "tiny", "--device", "cpu", "--from", chunks,
                 "--out", out], capsys, [str(chunks / "layer_0.pt"), "unpack to 64.0 MiB",
                                         "refused before reading"], watch=[out])


def test_36_3_a_large_python_literal_task_file_is_refused_before_parsing(tmp_path, capsys):
    path = tmp_path / "big.py"
    path.write_text("tsks1 = [" + ",".join(["1"] * 2_000_000) + "]\n")  # 4 MB
    refused(["tasks", "show", "--tasks", path], capsys,
            [str(path), "more than 200,000 tokens", ".json"])


# ------------------------------------------------------------------ 4. edited results


def test_36_4_an_edited_perplexity_is_refused_even_when_accepted(sweep, capsys):
    base = json.loads(SweepFolder(sweep).point_record(BASELINE_LABEL).read_text())
    edit_record(sweep, DIFF, perplexity=base["perplexity"] * 1.001)  # "no damage"
    record = SweepFolder(sweep).point_record(DIFF)
    for accept in (False, True):  # a value check: refused even when edits are accepted
        summarize_refused(sweep, capsys, [str(record), "is not what its window losses give"],
                          accept=accept)


def test_36_4_a_negative_perplexity_is_refused(sweep, capsys):
    edit_record(sweep, DIFF, perplexity=-5.0, ppl_unit_losses=None)
    summarize_refused(sweep, capsys, [str(SweepFolder(sweep).point_record(DIFF)),
                                      "not a finite positive number"], accept=True)


def test_36_4_margins_that_are_not_their_logprobs_difference_are_refused(sweep, capsys):
    table = prompts_of(sweep, DIFF)
    table["margin"] = [str(abs(float(x)) + 1.0) for x in table["margin"]]  # all "right"
    write_prompts(sweep, DIFF, table)
    path = SweepFolder(sweep).point_prompts(DIFF)
    for accept in (False, True):
        summarize_refused(sweep, capsys, [str(path), "is not logprob_expected - "
                                                     "logprob_alternative"], accept=accept)
    # margins, log-probabilities and correctness edited together agree: the hash tells
    table = prompts_of(sweep, DIFF)
    table["logprob_expected"] = [str(float(x) + 3.0) for x in table["logprob_expected"]]
    table["margin"] = [str(float(e) - float(a)) for e, a in
                       zip(table["logprob_expected"], table["logprob_alternative"])]
    table["correct"] = [str(float(x) > 0) for x in table["margin"]]
    write_prompts(sweep, DIFF, table)
    summarize_refused(sweep, capsys, [str(path), "differs from the sha256", "--accept-edited"])


def test_36_4_a_deleted_baseline_row_is_refused(sweep, capsys):
    table = prompts_of(sweep, BASELINE_LABEL)
    write_prompts(sweep, BASELINE_LABEL, table.iloc[1:])
    for accept in (False, True):
        summarize_refused(sweep, capsys, ["1 prompt(s)", "the same prompts",
                                          SweepFolder(sweep).point_prompts(BASELINE_LABEL).name],
                          accept=accept)


def test_36_4_margins_set_to_text_are_refused_not_dropped(sweep, capsys):
    table = prompts_of(sweep, DIFF)
    table.loc[3, "margin"] = "large"
    write_prompts(sweep, DIFF, table)
    summarize_refused(sweep, capsys, [str(SweepFolder(sweep).point_prompts(DIFF)),
                                      "line 5, column 'margin'", "'large' is not a number"],
                      accept=True)


def test_36_4_tasks_sharing_a_number_are_refused_in_the_file_and_in_the_folder(sweep, tmp_path,
                                                                               capsys):
    data = json.loads((FIXTURES / "reference_tasks.json").read_text())
    data["s1"] = [dict(data["s1"][0], NUMBER=7) for _ in range(4)]
    path = tmp_path / "same_number.json"
    path.write_text(json.dumps(data))
    refused(["tasks", "show", "--tasks", path], capsys,
            [str(path), "s1 tasks 0 and 1 both have NUMBER 7", "own NUMBER"])
    for label in (BASELINE_LABEL, DIFF):  # an older sweep of such a file: both tasks "1"
        table = prompts_of(sweep, label)
        table.loc[table["family"] == "unexpected", "task_id"] = "1"
        write_prompts(sweep, label, table)
    summarize_refused(sweep, capsys, ["2 different unexpected tasks", "share the task number 1",
                                      "one cluster"], accept=True)


def test_36_4_a_consistent_edit_is_judged_only_when_accepted_and_the_report_says_so(sweep,
                                                                                    capsys):
    metrics = SweepFolder(sweep).point_metrics(DIFF)
    frame = pd.read_csv(metrics)
    frame.loc[0, "mean_margin"] = 9.0  # a value no consistency check covers
    frame.to_csv(metrics, index=False)
    summarize_refused(sweep, capsys, [str(metrics), "differs from the sha256 the sweep recorded",
                                      "--accept-edited"])
    _out, err = succeeded(["summarize", sweep, "--accept-edited"], capsys)
    assert f"accepted an edited file: {metrics}" in err
    report = (sweep / "report.html").read_text()
    assert "class='warning'" in report and "judged anyway" in report and metrics.name in report
    succeeded(["summarize", sweep], capsys)  # accepted once: judged again, still warned
    assert "judged anyway" in (sweep / "report.html").read_text()
    frame.loc[1, "mean_margin"] = 9.0  # edited again after the acceptance
    frame.to_csv(metrics, index=False)
    summarize_refused(sweep, capsys, [str(metrics), "differs from the sha256"])


def test_36_4_a_removed_integrity_record_is_refused(sweep, capsys):
    SweepFolder(sweep).point_integrity(DIFF).unlink()
    summarize_refused(sweep, capsys, [f"point {DIFF} has no integrity record"])


def test_36_4_a_folder_from_before_integrity_records_is_judged_with_a_note(sweep, capsys):
    folder = SweepFolder(sweep)
    for path in folder.points_dir.glob("*.sha256"):
        path.unlink()
    manifest = json.loads(folder.manifest.read_text())
    del manifest["integrity"]
    folder.manifest.write_text(json.dumps(manifest))
    succeeded(["summarize", sweep], capsys)
    assert "carry no integrity record" in (sweep / "report.html").read_text()


# ------------------------------------------------------------------ 5. deep and huge inputs


def nested_json(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("kind", ["task json", "tomi jsonl", "python expression",
                                  "python unary chain", "16000-bit integer",
                                  "16000-bit integer json"])
def test_36_5_deep_or_huge_task_files_end_in_one_line(kind, tmp_path, capsys):
    fixture = json.loads((FIXTURES / "reference_tasks.json").read_text())
    source = (FIXTURES / "reference_tasks.py").read_text()
    path, needle = {
        "task json": (tmp_path / "deep.json", "nested more than 64 levels"),
        "tomi jsonl": (tmp_path / "deep.jsonl", "line 1: nested more than 64 levels"),
        "python expression": (tmp_path / "sum.py", "more than 1,000 operators"),
        "python unary chain": (tmp_path / "unary.py", "more than 1,000 operators"),
        "16000-bit integer": (tmp_path / "big_number.py", "an integer of 16,001 bits"),
        "16000-bit integer json": (tmp_path / "big_number.json", "an integer of 4817 digits"),
    }[kind]
    if kind == "task json":
        path.write_text('{"s1": ' + nested_json() + "}")
    elif kind == "tomi jsonl":
        path.write_text('{"input": ' + nested_json() + ', "target": "box"}\n')
    elif kind == "python expression":
        path.write_text("tsks1 = " + "+".join(["1"] * DEEP) + "\n")
    elif kind == "python unary chain":
        path.write_text("tsks1 = " + "-" * 200_000 + "1\n")
    elif kind == "16000-bit integer":
        assert '"NUMBER": 1,' in source
        path.write_text(source.replace('"NUMBER": 1,', f'"NUMBER": {hex(2 ** 16000)},', 1))
    else:
        fixture["s1"][0]["NUMBER"] = 0
        text = json.dumps(fixture).replace('"NUMBER": 0', '"NUMBER": 1' + "0" * 4816, 1)
        path.write_text(text)
    refused(["tasks", "show", "--tasks", path], capsys, [str(path), needle])


def test_36_5_a_deep_score_prompt_file_ends_in_one_line(tmp_path, capsys):
    path = tmp_path / "prompts.json"
    path.write_text("[" + nested_json() + "]")
    out = tmp_path / "scores"
    with registered_model("tiny"):
        refused(["scores", "--model", "tiny", "--device", "cpu", "--dataset", "tom",
                 "--data-path", path, "--nsamples", "2", "--out", out], capsys,
                [str(path), "nested more than 64 levels"], watch=[out])


def test_36_5_a_deep_point_record_ends_in_one_line(sweep, capsys):
    record = SweepFolder(sweep).point_record(DIFF)
    record.write_text('{"mode": ' + nested_json() + "}")
    summarize_refused(sweep, capsys, [str(record), "nested more than 64 levels"])


# ------------------------------------------------------------------ 6. report sections shape


@pytest.mark.parametrize("text", ['{"title": "x"}', '[["only a title"]]', '[["t", 3]]',
                                  nested_json()])
def test_36_6_report_sections_of_the_wrong_shape_end_in_one_line(sweep, text, capsys):
    sections = sweep.parent / "analysis" / "report_sections.json"
    sections.parent.mkdir()
    sections.write_text(text)
    refused(["summarize", sweep], capsys, [str(sections)])


# ------------------------------------------------------------------ 7. --cache-dir


def test_36_7_cache_dir_that_is_a_file_is_named_as_such(tmp_path, capsys):
    cache = tmp_path / "cache.txt"
    cache.write_text("not a folder")
    refused(["info", "--model", "someone/model", "--cache-dir", cache], capsys,
            [f"--cache-dir {cache} is a file, not a folder"])


# ------------------------------------------------------------------ 8. cost and device


def test_36_8_a_gpu_preset_on_the_cpu_asks_for_yes_before_anything_loads(tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    with registered_model("tiny") as calls:
        line = refused(["run", "--model", "tiny", "--preset", "paper-7b", "--out", out],
                       capsys, ["--preset paper-7b is sized for a GPU", "400 score samples",
                                "sweep points", "on 2 CPU cores", "--yes"],
                       watch=[out])
        assert not calls
    assert "6,592 prompts" in line


def test_36_8_device_cuda_without_cuda_is_refused_before_the_model_loads(tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with registered_model("tiny") as calls:
        refused(["eval", "--model", "tiny", "--device", "cuda", "--tasks",
                 FIXTURES / "reference_tasks.json"], capsys,
                ["--device cuda", "no CUDA device"])
        refused(["run", "--model", "tiny", "--device", "cuda", "--out", tmp_path / "run"],
                capsys, ["--device cuda", "no CUDA device"], watch=[tmp_path / "run"])
        assert not calls


# ------------------------------------------------------------------ 9. a full disk


def test_36_9_a_full_disk_during_tasks_export_leaves_no_truncated_file(tmp_path, capsys,
                                                                        monkeypatch):
    out = tmp_path / "bank"
    real = Path.write_text

    def write_text(self, data, *args, **kwargs):
        if "tom_tasks_train" in self.name:
            real(self, data[: len(data) // 3], *args, **kwargs)  # part written, then full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    line = refused(["tasks", "export", "--out", out], capsys,
                   ["no space left on the device", str(out / "tom_tasks_train.json")])
    assert "half-written files are not" in line
    left = sorted(p.name for p in out.iterdir())
    assert left == ["tom_tasks_eval.json", "tom_tasks_eval.py"]  # whole; no train, no temp
    json.loads((out / "tom_tasks_eval.json").read_text())


def test_36_9_a_full_disk_while_writing_a_score_store_is_named(tmp_path, capsys, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              "(os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    out = tmp_path / "scores"
    with registered_model("tiny"):
        line = refused(["scores", "--model", "tiny", "--device", "cpu", "--dataset", "tom",
                        "--nsamples", "2", "--out", out], capsys,
                       ["no space left on the device", str(out / "layer_000.safetensors")])
    assert "damaged" not in line
    assert not list(out.glob("*.safetensors")) and not list(out.glob(".*.tmp"))


def test_36_9_a_library_error_on_a_nearly_full_disk_is_taken_for_a_full_disk(tmp_path,
                                                                              monkeypatch):
    import tomsparse.files as files

    monkeypatch.setattr(files.shutil, "disk_usage",
                        lambda _p: types.SimpleNamespace(total=10, used=10, free=0))
    with pytest.raises(OSError) as caught:
        with atomic_path(tmp_path / "layer_0.pt") as tmp:
            tmp.write_bytes(b"part")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(tmp_path / "layer_0.pt")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ 10. one overwrite rule


@pytest.mark.parametrize("fmt", ["reference", "lm-eval"])
def test_36_10_tasks_export_refuses_to_replace_files_without_overwrite(fmt, tmp_path, capsys):
    out = tmp_path / "export"
    argv = ["tasks", "export", "--format", fmt, "--out", out]
    if fmt == "lm-eval":
        argv += ["--tasks", FIXTURES / "reference_tasks.json"]
    succeeded(argv, capsys)
    refused(argv, capsys, [str(out), "already exists", "--overwrite"], watch=[out])
    succeeded(argv + ["--overwrite"], capsys)


# ------------------------------------------------------------------ 11. long input


def test_36_11_a_long_story_whose_variants_part_early_still_packs():
    from tomsparse.lm.prefix_tree import (build_prefix_tree, can_pack, row_limit,
                                          sequence_logprobs, subtree_tokens)

    model = tiny_model("llama", max_position_embeddings=512)
    story = [(7 * i) % 100 + 2 for i in range(400)]
    seqs = []
    for variant in range(4):  # the variants part after 3 tokens, then share nothing
        seqs.append(story[:3] + [110 + variant] + story[3:] + [5])
    assert max(subtree_tokens(build_prefix_tree(seqs))) > row_limit(model) == 512
    assert can_pack(model, seqs)  # before: the whole batch ran unshared
    picks = [[(len(s) - 2, 9), (100, 11)] for s in seqs]
    with torch.inference_mode():
        packed = sequence_logprobs(model, seqs, picks, 1, "cpu")
        alone = sequence_logprobs(model, seqs, picks, 1, "cpu", shared=False)
    for a, b in zip(packed, alone):
        assert a == pytest.approx(b, abs=1e-4)


# ------------------------------------------------------------------ 12. a rebuilt model says why


def test_36_12_a_damaged_converted_model_is_rebuilt_and_the_command_says_why(offline_tiny,
                                                                           capsys):
    conversions, _logs = offline_tiny
    succeeded(["info", "--model", "tiny-offline"], capsys)
    weights = gguf.converted_folder("tiny-offline") / "model.safetensors"
    flip(weights, weights.stat().st_size // 2, keep_mtime=True)
    out, _err = succeeded(["info", "--model", "tiny-offline"], capsys)
    assert len(conversions) == 2
    assert "model.safetensors: its content differs from the recorded sha256" in out
    assert "rebuilding it" in out


# ------------------------------------------------------------------ 13. options without effect


def test_36_13_backend_vllm_under_likelihood_says_it_has_no_effect(capsys):
    with registered_model("tiny"):
        _out, err = succeeded(["eval", "--model", "tiny", "--device", "cpu", "--tasks",
                               FIXTURES / "reference_tasks.json", "--backend", "vllm"], capsys)
    assert "note: --backend vllm applies to generate and greedy scoring" in err


def test_36_13_backend_vllm_without_vllm_is_refused_before_the_model_loads(capsys,
                                                                           monkeypatch):
    from tomsparse.cli import eval as eval_cli

    monkeypatch.setattr(eval_cli, "vllm_available", lambda: False)
    with registered_model("tiny") as calls:
        refused(["eval", "--model", "tiny", "--device", "cpu", "--tasks",
                 FIXTURES / "reference_tasks.json", "--scoring", "greedy", "--backend", "vllm"],
                capsys, ["--backend vllm needs the vllm package"])
        assert not calls


def test_36_13_clusters_beyond_the_bank_say_every_task_is_used(finished, tmp_path, capsys,
                                                               monkeypatch):
    from tomsparse.cli import sweep as sweep_cli

    def stop(*_a, **_k):
        raise UserError("stopped after the checks")

    monkeypatch.setattr(sweep_cli, "load_model_from", stop)
    stores = finished.parents[1]
    code, err = run_cli(["sweep", "--model", "tiny", "--scores-tom", stores / "scores_tom",
                         "--scores-generic", stores / "scores_generic", "--m_list", "0,0.01",
                         "--clusters", "10000", "--out", tmp_path / "s"], capsys)
    assert code == 2 and "stopped after the checks" in err
    note = [line for line in err.splitlines() if line.startswith("note: --clusters 10000")]
    assert len(note) == 1 and "every task of every family is used" in note[0], err
    assert "irony" in note[0]
