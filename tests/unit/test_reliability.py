"""The reliability battery (issue 16): every failure a user can cause ends in one clear line
with exit code 2, names the file, option or value, and creates or changes no output.

Each case builds a command line against a tiny stand-in model (``--model tiny``), tiny score
stores and one finished sweep folder shared by the module, runs ``tomsparse`` and checks:
exit code 2; on stderr exactly one line ``tomsparse: error: ...`` (or, for a bad option
value, argparse's usage and its one ``error:`` line); the named things in that line; and
the watched outputs byte for byte (and mtime) as they were. Read-only folders cannot stop
root (these tests may run as root), so they are simulated by making ``os.access`` say no for
them; file-as-parent paths (``file.txt/sub``) need no privileges.

Beyond the battery: an unexpected error shows its traceback and a bug-report line (exit 1);
a damaged sweep manifest in a folder with no finished point is re-initialised; what a
command records in its manifest is what ran; the output-path checks and the error mapping on
their own.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from test_sweep_cli import write_stores

from tomsparse import __version__
from tomsparse.cli import perplexity as perplexity_cli
from tomsparse.cli import tasks as tasks_cli
from tomsparse.cli.main import build_parser, main
from tomsparse.cli.run import run_config
from tomsparse.errors import UserError, file_in_traceback, user_message
from tomsparse.files import check_output_dir, check_output_file, read_json_object
from tomsparse.scores.store import load_scores
from tomsparse.testing import registered_model

# ------------------------------------------------------------------ shared inputs


@dataclass
class Base:
    """What the module builds once: score stores, a corpus, a finished sweep folder."""

    root: Path
    stores: dict
    corpus: Path
    sweep: Path
    sweep_stdout: str


# One point (the difference mask at m = 0.01): the least a sweep folder can hold. (A
# baseline-only sweep, --m_list 0, is avoided: see the lead's note on specificity tables.)
SWEEP_OPTIONS = ("--m_list", "0.01", "--controls", "none", "--matched-controls", "none",
                 "--task-limit", "1", "--ppl-max-tokens", "256", "--eval-batch-size", "3",
                 "--reps", "1", "--match-steps", "4", "--scale", "0.0", "--seed", "0")


def sweep_argv(base: Base, out, *extra, stores=None):
    stores = stores or base.stores
    return ["sweep", "--model", "tiny", "--device", "cpu", "--scores-tom", str(stores["tom"]),
            "--scores-generic", str(stores["generic"]), "--corpus", str(base.corpus),
            "--task-limit", "1", "--ppl-max-tokens", "256", "--controls", "none",
            "--matched-controls", "none", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    with registered_model("tiny"):
        stores, corpus = write_stores(root)
        sweep = root / "sweep"
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            argv = ["sweep", "--model", "tiny", "--device", "cpu", "--scores-tom",
                    str(stores["tom"]), "--scores-generic", str(stores["generic"]),
                    "--corpus", str(corpus), "--out", str(sweep), *SWEEP_OPTIONS]
            assert main(argv) == 0
        yield Base(root, stores, corpus, sweep, buffer.getvalue())


@pytest.fixture
def tiny(base):
    with registered_model("tiny") as calls:
        yield calls


# ------------------------------------------------------------------ what "unchanged" means


def snapshot(path: Path):
    """A file's or a folder's files with bytes and mtime; None when it does not exist."""
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_file():
        return (path.read_bytes(), path.stat().st_mtime_ns)
    return {p.relative_to(path).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()}


def run_cli(argv, capsys) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's usage error
        code = exc.code
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, needles, usage: bool | None) -> str:
    """Exit 2, no traceback, one error line (after argparse's usage for a bad option value:
    ``usage`` True; one-line ``tomsparse: error:`` for ``usage`` False; None: either)."""
    assert code == 2, f"exit code {code}\n{err}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    is_usage = bool(lines) and lines[0].startswith("usage:")
    if usage is not None:
        assert is_usage == usage, err
    if is_usage:
        errors = [line for line in lines if ": error: " in line]
        assert len(errors) == 1 and lines[-1] == errors[0], err
        assert lines[-1].startswith("tomsparse ") and "error: argument " in lines[-1], err
    else:
        assert len(lines) == 1 and lines[0].startswith("tomsparse: error: "), err
    line = lines[-1]
    for needle in needles:
        assert str(needle) in line, f"{needle!r} not in: {line}"
    return line


def read_only(monkeypatch, *folders: Path) -> None:
    """``os.access`` says no to writing into these folders (root ignores permissions)."""
    real = os.access
    blocked = [Path(f).resolve() for f in folders]

    def access(path, mode, *args, **kwargs):
        p = Path(path).resolve()
        if mode & os.W_OK and any(p == b or b in p.parents for b in blocked):
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


# ------------------------------------------------------------------ the cases


@dataclass
class Case:
    """``argv``: the command line; ``watch``: outputs that must not be created or changed;
    ``needles``: what the error line names; ``usage``: argparse's usage error (True), one
    ``tomsparse: error:`` line (False) or either (None: an option whose check may sit in
    argparse or in the library)."""

    argv: list
    needles: list
    watch: list = field(default_factory=list)
    usage: bool | None = False


@dataclass
class Ctx:
    base: Base
    tmp: Path
    monkeypatch: pytest.MonkeyPatch

    def file(self, name="afile.txt", text="my notes") -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def sweep_copy(self, name="sweep") -> Path:
        """A private copy of the module's finished sweep folder."""
        dst = self.tmp / name
        shutil.copytree(self.base.sweep, dst)
        return dst

    def point(self, folder: Path, mode="difference") -> Path:
        return next((folder / "points").glob(f"{mode}_s0_*.json"))


def bad_number(command: list, option: str, value: str, *needles, usage=True):
    """``command option value``: refused with the option and value named."""
    def build(c: Ctx) -> Case:
        out = c.tmp / "out"
        argv = [*command, option, value]
        if "--out" not in argv and command[0] not in ("tasks", "summarize"):
            argv += ["--out", out]
        return Case(argv, [option, value, *needles], watch=[out], usage=usage)
    return build


def sweep_number(option: str, value: str, *needles, usage=True):
    def build(c: Ctx) -> Case:
        out = c.tmp / "out"
        return Case(sweep_argv(c.base, out, "--m_list", "0.01", option, value),
                    [option, value, *needles], watch=[out], usage=usage)
    return build


def run_number(option: str, value: str, *needles, usage=True):
    def build(c: Ctx) -> Case:
        out = c.tmp / "run"
        return Case(["run", "--model", "tiny", "--device", "cpu", "--quick", "--out", out,
                     option, value], [option, value, *needles], watch=[out], usage=usage)
    return build


def model_cmd(command: str, *extra) -> list:
    return [command, "--model", "tiny", "--device", "cpu", *extra]


def analyze_argv(c: Ctx, *extra) -> list:
    return ["analyze", "--model", "tiny", "--device", "cpu", "--scores-tom",
            c.base.stores["tom"], "--scores-generic", c.base.stores["generic"], "--m", "0.01",
            "--max-prompts", "2", *extra]


# -- 1. bad numbers, per command


def _scores_number(option, value, *needles, usage=None):
    def build(c: Ctx) -> Case:
        out = c.tmp / "scores"
        return Case(model_cmd("scores", "--nsamples", "2", option, value, "--out", out),
                    [option, value, *needles], watch=[out], usage=usage)
    return build


def _generic_seqlen_zero(c: Ctx) -> Case:
    out = c.tmp / "scores"
    return Case(model_cmd("scores", "--dataset", "generic", "--seqlen", "0", "--out", out),
                ["--seqlen 0", "at least 2"], watch=[out])


def _summarize_reps(c: Ctx) -> Case:
    folder = c.sweep_copy()
    return Case(["summarize", folder, "--reps", "0"], ["--reps", "0"], watch=[folder],
                usage=None)


NUMBERS = {
    "eval --batch-size 0": bad_number(model_cmd("eval"), "--batch-size", "0", "at least 1"),
    "eval --reps 0": bad_number(model_cmd("eval", "--scoring", "generate"), "--reps", "0"),
    "eval --limit 0": bad_number(model_cmd("eval"), "--limit", "0"),
    "eval --seed -1": bad_number(model_cmd("eval"), "--seed", "-1", "0 or more"),
    "perplexity --batch-size 0": bad_number(model_cmd("perplexity"), "--batch-size", "0"),
    "perplexity --batch-size -3": bad_number(model_cmd("perplexity"), "--batch-size", "-3"),
    "perplexity --seqlen 1": bad_number(model_cmd("perplexity"), "--seqlen", "1",
                                        "at least 2"),
    "perplexity --max-tokens 0": bad_number(model_cmd("perplexity"), "--max-tokens", "0"),
    "tasks show -n -1": bad_number(["tasks", "show"], "-n", "-1", "0 or more", usage=None),
    "tasks export --seed x": bad_number(["tasks", "export"], "--seed", "x", "whole number"),
    "sweep --reps 0": sweep_number("--reps", "0", "at least 1"),
    "sweep --task-limit 0": sweep_number("--task-limit", "0"),
    "sweep --match-steps 0": sweep_number("--match-steps", "0"),
    "sweep --ppl-max-tokens 0": sweep_number("--ppl-max-tokens", "0"),
    "sweep --scale nan": sweep_number("--scale", "nan", "finite"),
    "sweep --random-seeds 0,-1": sweep_number("--random-seeds", "0,-1", ">= 0"),
    "sweep --batch-size 0": sweep_number("--batch-size", "0", "at least 1", usage=None),
    "sweep --seed -2": sweep_number("--seed", "-2", usage=None),
    "scores --nsamples 0": _scores_number("--nsamples", "0"),
    "scores --batch-size 0": _scores_number("--batch-size", "0", "at least 1"),
    "scores --shard-size-mb 0": _scores_number("--shard-size-mb", "0"),
    "scores --dataset generic --seqlen 0": _generic_seqlen_zero,
    "run --nsamples-tom 0": run_number("--nsamples-tom", "0", usage=None),
    "run --analysis-prompts -1": run_number("--analysis-prompts", "-1", usage=None),
    "run --eval-batch-size 0": run_number("--eval-batch-size", "0", usage=None),
    "run --seqlen 1": run_number("--seqlen", "1", "at least 2", usage=None),
    "summarize --reps 0": _summarize_reps,
    "analyze --batch-size 0": lambda c: Case(analyze_argv(c, "--batch-size", "0"),
                                             ["--batch-size", "0"], usage=True),
    "analyze --top-pairs 0": lambda c: Case(analyze_argv(c, "--top-pairs", "0"),
                                            ["--top-pairs", "0"], usage=True),
    "frontier --eval-batch-size 0": lambda c: Case(
        ["frontier", "--run", c.tmp, "--eval-batch-size", "0"], ["--eval-batch-size", "0"],
        usage=True),
    "frontier --ppl-limit inf": lambda c: Case(
        ["frontier", "--run", c.tmp, "--ppl-limit", "inf"], ["--ppl-limit", "inf"],
        usage=True),
}


# -- 2. output paths: files, folders, paths under a file, read-only folders, a full disk


def _tasks_export_out(kind):
    def build(c: Ctx) -> Case:
        if kind == "file":
            out = c.file()
            needles = [f"--out {out} is a file"]
        elif kind == "under a file":
            parent = c.file()
            out = parent / "bank"
            needles = [f"{parent} is a file"]
        else:
            out = c.tmp / "locked" / "bank"
            out.parent.mkdir()
            read_only(c.monkeypatch, out.parent)
            needles = [f"{out.parent} is not writable"]
        return Case(["tasks", "export", "--out", out], needles, watch=[c.tmp])
    return build


def _perplexity_out(kind):
    def build(c: Ctx) -> Case:
        if kind == "folder":
            out = c.tmp / "results"
            out.mkdir()
            needles = [f"--out {out} is a folder", "perplexity.json"]
        elif kind == "under a file":
            out = c.file() / "ppl.json"
            needles = [f"{out.parent} is a file"]
        else:
            folder = c.tmp / "locked"
            folder.mkdir()
            out = folder / "ppl.json"
            read_only(c.monkeypatch, folder)
            needles = [f"{folder} is not writable"]
        return Case(model_cmd("perplexity", "--corpus", c.base.corpus, "--max-tokens", "256",
                              "--out", out), needles, watch=[c.tmp])
    return build


def _out_is_file(command: Callable[[Ctx, Path], list]):
    def build(c: Ctx) -> Case:
        out = c.file()
        return Case(command(c, out), [str(out), "is a file"], watch=[c.tmp])
    return build


def _sweep_out_read_only(c: Ctx) -> Case:
    folder = c.tmp / "locked"
    folder.mkdir()
    read_only(c.monkeypatch, folder)
    out = folder / "sweep"
    return Case(sweep_argv(c.base, out, "--m_list", "0.01"), [f"{folder} is not writable"],
                watch=[folder])


def _summarize_out_csv_folder(c: Ctx) -> Case:
    folder = c.sweep_copy()
    target = c.tmp / "tables"
    target.mkdir()
    return Case(["summarize", folder, "--out_csv", target], [f"{target}", "is a folder"],
                watch=[folder, target])


def _summarize_read_only(c: Ctx) -> Case:
    folder = c.sweep_copy()
    read_only(c.monkeypatch, folder)
    return Case(["summarize", folder], [f"{folder}", "not writable"], watch=[folder])


def _summarize_reference_out_csv_folder(c: Ctx) -> Case:
    folder = c.sweep_copy()
    return Case(["summarize", "--root", folder / "tom", "--out_csv", folder / "points"],
                [f"{folder / 'points'}", "is a folder"], watch=[folder])


def _disk_full(c: Ctx) -> Case:
    """The first table of summarize hits a full disk: one line naming it, no half file."""
    folder = c.sweep_copy()

    def to_csv(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    c.monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    return Case(["summarize", folder], ["no space left", str(folder / "sweep_points.csv")],
                watch=[folder])


def _permission_denied(c: Ctx) -> Case:
    """A file the user may not read (raised by the corpus reader): one line naming it."""
    secret = c.tmp / "secret.txt"

    def load_corpus(spec):
        raise PermissionError(errno.EACCES, "Permission denied", str(secret))

    c.monkeypatch.setattr(perplexity_cli, "load_corpus", load_corpus)
    return Case(model_cmd("perplexity", "--corpus", secret), [str(secret), "permission denied"],
                watch=[c.tmp])


def _read_only_file_system(c: Ctx) -> Case:
    out = c.tmp / "bank"

    def export_bank(folder, seed=0, **_options):
        raise OSError(errno.EROFS, "Read-only file system", str(Path(folder) / "eval.json"))

    c.monkeypatch.setattr(tasks_cli, "export_bank", export_bank)
    return Case(["tasks", "export", "--out", out], [str(out / "eval.json"), "read-only"],
                watch=[out])


OUTPUTS = {
    "tasks export --out FILE": _tasks_export_out("file"),
    "tasks export --out FILE/sub": _tasks_export_out("under a file"),
    "tasks export --out read-only folder": _tasks_export_out("read-only"),
    "perplexity --out DIR": _perplexity_out("folder"),
    "perplexity --out FILE/x.json": _perplexity_out("under a file"),
    "perplexity --out in a read-only folder": _perplexity_out("read-only"),
    "eval --out FILE": _out_is_file(lambda c, out: model_cmd("eval", "--out", out)),
    "analyze --out FILE": _out_is_file(lambda c, out: analyze_argv(c, "--out", out)),
    "compare --out FILE": _out_is_file(lambda c, out: ["compare", c.base.sweep, "--out", out]),
    "frontier --out FILE": _out_is_file(lambda c, out: [
        "frontier", "--model", "tiny", "--scores-tom", c.base.stores["tom"],
        "--scores-generic", c.base.stores["generic"], "--out", out]),
    "sweep --out FILE": _out_is_file(lambda c, out: sweep_argv(c.base, out, "--m_list", "0.01")),
    "run --out FILE": _out_is_file(lambda c, out: [
        "run", "--model", "tiny", "--device", "cpu", "--quick", "--out", out]),
    "sweep --out in a read-only folder": _sweep_out_read_only,
    "summarize --out_csv DIR": _summarize_out_csv_folder,
    "summarize a read-only sweep folder": _summarize_read_only,
    "summarize --root tom --out_csv DIR": _summarize_reference_out_csv_folder,
    "summarize on a full disk": _disk_full,
    "permission denied on an input": _permission_denied,
    "read-only file system": _read_only_file_system,
}


# -- 3. damaged and missing inputs


def _damaged_point(damage):
    def build(c: Ctx) -> Case:
        folder = c.sweep_copy()
        point = c.point(folder)
        metrics = point.with_name(point.stem + "_metrics.csv")
        if damage == "json":
            point.write_text('{"mode": "none", "seed": 0, "m": 0.0, "perplex')
            needles = [str(point), "not valid JSON", "delete", "recompute"]
        elif damage == "a list":
            point.write_text("[1, 2, 3]")
            needles = [str(point), "not a point record"]
        elif damage == "no field":
            record = json.loads(point.read_text())
            del record["perplexity"]
            point.write_text(json.dumps(record))
            needles = [str(point), "perplexity"]
        elif damage == "no metrics":
            metrics.unlink()
            needles = [str(metrics), "missing", "delete", "rerun"]
        else:  # an empty metrics table
            metrics.write_text("")
            needles = [str(metrics), "not a readable CSV"]
        return Case(["summarize", folder], needles, watch=[folder])
    return build


def _summarize_damaged_manifest(c: Ctx) -> Case:
    folder = c.sweep_copy()
    (folder / "sweep_manifest.json").write_text("{garbage")
    return Case(["summarize", folder], [str(folder / "sweep_manifest.json"), "JSON"],
                watch=[folder])


def _reference_results_damaged(c: Ctx) -> Case:
    folder = c.sweep_copy()
    results = sorted((folder / "tom").glob("*/*/*/results.csv"))[0]
    results.write_bytes(b"")
    out_csv = c.tmp / "tom_summary.csv"
    return Case(["summarize", "--root", folder / "tom", "--out_csv", out_csv],
                [str(results), "not a readable CSV"], watch=[folder, out_csv])


def _damaged_store(damage):
    def build(c: Ctx) -> Case:
        stores = {k: c.tmp / f"scores_{k}" for k in ("tom", "generic")}
        for kind in stores:
            shutil.copytree(c.base.stores[kind], stores[kind])
        path = stores["tom"] / "layer_001.safetensors"
        if damage == "truncated":
            path.write_bytes(path.read_bytes()[:100])
            needles = [str(path), "safetensors"]
        else:  # NaN in one matrix
            scores, manifest = load_scores(stores["tom"])
            tensors = {n: t.clone() for n, t in scores.items()
                       if manifest["index"][n] == "layer_001.safetensors"}
            name = sorted(tensors)[0]
            tensors[name].view(-1)[:2] = float("nan")
            save_file(tensors, str(path))
            needles = [str(path), name, "non-finite"]
        out = c.tmp / "out"
        return Case(sweep_argv(c.base, out, "--m_list", "0.01", stores=stores), needles,
                    watch=[out, stores["tom"]])
    return build


def _sweep_damaged_manifest_with_points(c: Ctx) -> Case:
    folder = c.sweep_copy()
    (folder / "sweep_manifest.json").write_text("{garbage")
    return Case(sweep_argv(c.base, folder, *SWEEP_OPTIONS),
                [str(folder / "sweep_manifest.json"), "finished points", "new --out"],
                watch=[folder])


def _sweep_missing(option):
    def build(c: Ctx) -> Case:
        missing = c.tmp / ("tasks.json" if option == "--tasks" else "corpus.txt")
        out = c.tmp / "out"
        return Case(sweep_argv(c.base, out, "--m_list", "0.01", option, missing),
                    [str(missing)], watch=[out])
    return build


def _ppl_below_one_window(c: Ctx) -> Case:
    out = c.tmp / "out"
    argv = sweep_argv(c.base, out, "--m_list", "0.01")
    argv[argv.index("--ppl-max-tokens") + 1] = "16"
    return Case(argv, ["--ppl-max-tokens", "16 tokens", "window"], watch=[out])


def _analyze_damaged_run_manifest(c: Ctx) -> Case:
    run = c.tmp / "run"
    run.mkdir()
    (run / "manifest.json").write_text("[not, json")
    return Case(["analyze", "--run", run], [str(run / "manifest.json"), "not valid JSON"],
                watch=[run])


def _analyze_truncated_store(c: Ctx) -> Case:
    store = c.tmp / "scores_tom"
    shutil.copytree(c.base.stores["tom"], store)
    path = store / "layer_000.safetensors"
    path.write_bytes(b"\xff" * 8 + path.read_bytes()[8:])
    out = c.tmp / "analysis"
    return Case(["analyze", "--model", "tiny", "--device", "cpu", "--scores-tom", store,
                 "--scores-generic", c.base.stores["generic"], "--m", "0.01", "--out", out],
                [str(path)], watch=[out, store])


def _compare_damaged(c: Ctx) -> Case:
    folder = c.sweep_copy()
    (folder / "specificity_baseline.csv").write_bytes(b"")
    out = c.tmp / "compare"
    return Case(["compare", folder, "--out", out],
                [str(folder / "specificity_baseline.csv")], watch=[out, folder])


def _frontier_damaged_run(c: Ctx) -> Case:
    run = c.tmp / "run"
    run.mkdir()
    (run / "manifest.json").write_text('["a list"]')
    return Case(["frontier", "--run", run], [str(run / "manifest.json"), "not an object"],
                watch=[run])


def _missing_input(command):
    def build(c: Ctx) -> Case:
        missing = c.tmp / "nowhere.json"
        if command == "eval":
            argv = model_cmd("eval", "--tasks", missing, "--out", c.tmp / "out")
        else:
            argv = model_cmd("perplexity", "--corpus", missing, "--out", c.tmp / "p.json")
        return Case(argv, [str(missing)], watch=[c.tmp])
    return build


INPUTS = {
    "summarize: point JSON cut short": _damaged_point("json"),
    "summarize: point JSON is a list": _damaged_point("a list"),
    "summarize: point without perplexity": _damaged_point("no field"),
    "summarize: metrics CSV missing": _damaged_point("no metrics"),
    "summarize: metrics CSV empty": _damaged_point("empty metrics"),
    "summarize: damaged sweep_manifest.json": _summarize_damaged_manifest,
    "summarize --root: damaged results.csv": _reference_results_damaged,
    "sweep: truncated score file": _damaged_store("truncated"),
    "sweep: NaN in a score store": _damaged_store("nan"),
    "sweep: damaged manifest, finished points": _sweep_damaged_manifest_with_points,
    "sweep: --tasks file missing": _sweep_missing("--tasks"),
    "sweep: --corpus file missing": _sweep_missing("--corpus"),
    "sweep: --ppl-max-tokens below one window": _ppl_below_one_window,
    "analyze: damaged run manifest": _analyze_damaged_run_manifest,
    "analyze: garbage safetensors header": _analyze_truncated_store,
    "compare: empty specificity table": _compare_damaged,
    "frontier: run manifest not an object": _frontier_damaged_run,
    "eval: --tasks file missing": _missing_input("eval"),
    "perplexity: --corpus file missing": _missing_input("perplexity"),
}

CASES = {**NUMBERS, **OUTPUTS, **INPUTS}


@pytest.mark.parametrize("name", list(CASES))
def test_battery(name, base, tiny, tmp_path, monkeypatch, capsys):
    case = CASES[name](Ctx(base, tmp_path, monkeypatch))
    before = [snapshot(Path(p)) for p in case.watch]
    code, err = run_cli(case.argv, capsys)
    assert_one_line_error(code, err, case.needles, case.usage)
    after = [snapshot(Path(p)) for p in case.watch]
    for path, old, new in zip(case.watch, before, after):
        assert new == old, f"{path} was {'created' if old is None else 'changed'}"


def test_the_battery_is_large_enough():
    assert len(CASES) >= 40
    assert len(NUMBERS) >= 10 and len(OUTPUTS) >= 10 and len(INPUTS) >= 10


# ------------------------------------------------------------------ beyond the battery


def test_internal_error_shows_traceback_and_asks_for_a_report(monkeypatch, capsys):
    def boom(spec):
        raise RuntimeError("something the code did not expect")

    monkeypatch.setattr(tasks_cli, "load_tasks", boom)
    code, err = run_cli(["tasks", "show"], capsys)
    assert code == 1
    assert "Traceback (most recent call last)" in err
    assert "RuntimeError: something the code did not expect" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("tomsparse: internal error:") and "bug" in last
    assert __version__ in last and "report" in last


def test_interrupt_exits_130(monkeypatch, capsys):
    def interrupted(spec):
        raise KeyboardInterrupt

    monkeypatch.setattr(tasks_cli, "load_tasks", interrupted)
    code, err = run_cli(["tasks", "show"], capsys)
    assert code == 130 and "Traceback" not in err


def test_damaged_manifest_without_points_is_reinitialised(base, tiny, tmp_path, capsys):
    out = tmp_path / "sweep"
    (out / "points").mkdir(parents=True)
    (out / "sweep_manifest.json").write_text("{garbage")
    assert main(sweep_argv(base, out, *SWEEP_OPTIONS)) == 0
    assert "re-initialising" in capsys.readouterr().out
    assert read_json_object(out / "sweep_manifest.json")["config"]["batch_size"] == 3
    assert len(list((out / "points").glob("*.json"))) == 1


OPTION_OF_CONFIG = {"batch_size": "eval_batch_size", "modes": "controls",
                    "m_values": "m_list"}


def test_sweep_manifest_records_what_ran(base):
    """The options a sweep printed (what the user gave) are the values its manifest
    recorded: nothing given was replaced by a default."""
    printed = next(line for line in base.sweep_stdout.splitlines()
                   if line.startswith("options: "))
    options = json.loads(printed[len("options: "):])
    config = read_json_object(base.sweep / "sweep_manifest.json")["config"]
    compared = 0
    for key, value in config.items():
        given = options.get(OPTION_OF_CONFIG.get(key, key))
        if given is None:
            continue
        if key == "modes":
            given = given if "difference" in given else ["difference", *given]
        assert value == given, f"{key}: ran with {value!r}, the user gave {given!r}"
        compared += 1
    assert compared >= 10
    assert config["batch_size"] == 3 and config["reps"] == 1 and config["match_steps"] == 4


def test_run_records_its_resolved_options(capsys):
    """``tomsparse run``: the options its manifest records are the configuration that runs."""
    args = build_parser().parse_args([
        "run", "--quick", "--nsamples-tom", "5", "--nsamples-generic", "6", "--seqlen", "64",
        "--batch-size", "3", "--eval-batch-size", "7", "--reps", "2", "--scoring", "generate",
        "--task-limit", "2", "--ppl-max-tokens", "512", "--analysis-prompts", "4",
        "--match-steps", "3", "--random-seeds", "0,1,2"])
    cfg = run_config(args)
    capsys.readouterr()
    recorded = cfg.options
    ran = {"nsamples_tom": cfg.tom_data.nsamples, "nsamples_generic": cfg.generic_data.nsamples,
           "seqlen": cfg.generic_data.seqlen, "batch_size": cfg.score_batch_size,
           "eval_batch_size": cfg.sweep.batch_size, "reps": cfg.sweep.reps,
           "scoring": cfg.sweep.scoring, "task_limit": cfg.sweep.task_limit,
           "ppl_max_tokens": cfg.sweep.ppl_max_tokens, "match_steps": cfg.sweep.match_steps,
           "random_seeds": cfg.sweep.random_seeds, "m_list": cfg.sweep.m_values,
           "controls": cfg.sweep.modes, "analysis_prompts": cfg.analysis_prompts,
           "seed": cfg.sweep.seed, "corpus": cfg.sweep.corpus,
           "generic_corpus": cfg.generic_data.corpus, "perturbation": cfg.sweep.perturbation}
    for key, value in ran.items():
        assert recorded[key] == value, f"{key}: recorded {recorded[key]!r}, runs {value!r}"
    assert (recorded["nsamples_tom"], recorded["eval_batch_size"], recorded["reps"]) == (5, 7, 2)


def test_perplexity_records_the_batch_size_it_used(base, tiny, tmp_path, capsys):
    out = tmp_path / "ppl.json"
    argv = model_cmd("perplexity", "--corpus", base.corpus, "--max-tokens", "512",
                     "--seqlen", "64", "--out", out)
    assert main([str(a) for a in argv]) == 0
    assert read_json_object(out)["options"]["batch_size"] == 4
    assert main([str(a) for a in [*argv, "--protocol", "reference"]]) == 0
    assert read_json_object(out)["options"]["batch_size"] == 2
    capsys.readouterr()
    before = snapshot(out)
    code, err = run_cli([*argv, "--protocol", "reference", "--ppl-batch-size", "3"], capsys)
    assert_one_line_error(code, err, ["--protocol reference", "--ppl-batch-size 3"], usage=False)
    assert snapshot(out) == before


# ------------------------------------------------------------------ the pieces on their own


def test_check_output_dir_and_file(tmp_path, monkeypatch):
    afile = tmp_path / "a.txt"
    afile.write_text("x")
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert check_output_file(tmp_path / "new" / "x.json") == tmp_path / "new" / "x.json"
    with pytest.raises(UserError, match=f"--out {afile} is a file"):
        check_output_dir(afile)
    with pytest.raises(UserError, match=f"{afile} is a file, so the folder cannot be created"):
        check_output_dir(afile / "sub" / "deeper")
    with pytest.raises(UserError, match=f"--out_csv {tmp_path} is a folder"):
        check_output_file(tmp_path, "--out_csv")
    with pytest.raises(UserError, match="is a folder"):
        check_output_file(str(tmp_path / "nothing") + "/")
    with pytest.raises(UserError, match=f"{afile} is a file, so the file cannot be written"):
        check_output_file(afile / "x.json")
    read_only(monkeypatch, tmp_path)
    with pytest.raises(UserError, match=f"{tmp_path} is not writable"):
        check_output_dir(tmp_path / "new")
    with pytest.raises(UserError, match=f"{tmp_path} is not writable"):
        check_output_file(tmp_path / "x.json")
    assert not (tmp_path / "new").exists()


def test_user_message_maps_what_the_user_can_fix(tmp_path):
    assert user_message(UserError("bad\ninput")) == "bad input"
    assert "no such file" in user_message(FileNotFoundError(errno.ENOENT, "x", "/a/b"))
    assert user_message(NotADirectoryError(errno.ENOTDIR, "x", "/a/f/g")).startswith("/a/f/g:")
    assert "is a folder" in user_message(IsADirectoryError(errno.EISDIR, "x", "/a"))
    assert "permission denied" in user_message(PermissionError(errno.EACCES, "x", "/a"))
    full = user_message(OSError(errno.ENOSPC, "No space left on device", "/a/t.csv"))
    assert "no space left" in full and "/a/t.csv" in full
    assert "read-only" in user_message(OSError(errno.EROFS, "x", "/a"))
    assert user_message(RuntimeError("bug")) is None
    assert user_message(OSError(errno.EPIPE, "Broken pipe")) is None  # no file: a bug
    assert "out of memory" in user_message(torch.OutOfMemoryError("CUDA out of memory"))


def test_damaged_file_is_named_from_the_traceback(tmp_path):
    path = tmp_path / "record.json"
    path.write_text("{oops")

    def read(p):
        return json.loads(p.read_text())

    exc = _raised_from(lambda: read(path))
    assert file_in_traceback(exc, (".json",)) == str(path)
    message = user_message(exc)
    assert message.startswith(f"{path}: not a valid JSON file") and "\n" not in message
    csv = tmp_path / "t.csv"
    csv.write_text("")
    message = user_message(_raised_from(lambda: pd.read_csv(csv)))
    assert message.startswith(f"{csv}: not a valid CSV file")


def _raised_from(call):
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the point is to keep it
        return exc
    raise AssertionError("nothing was raised")


def test_atomic_write_names_the_target_on_a_full_disk(tmp_path, monkeypatch):
    from tomsparse.files import write_json

    def write_text(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(OSError) as info:
        write_json(tmp_path / "out.json", {"a": 1})
    assert info.value.filename == str(tmp_path / "out.json")
    assert list(tmp_path.iterdir()) == []  # no temporary left behind


def test_a_closed_pipe_ends_quietly():
    """``tomsparse tasks show | head -1``: the reader goes away; no traceback, exit 141."""
    proc = subprocess.Popen([sys.executable, "-m", "tomsparse.cli", "tasks", "show", "-n",
                             "10000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
