"""benchmarks/gpu_check.py (``make gpu-check``, issue 35) stays runnable: the whole check at the
tiny shape on the CPU, every correctness check passing within its limit, its JSON and markdown
written; and its start-up: the kit's wheels on the path, missing imports named in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
ARCHITECTURES = ("llama", "qwen2", "mistral", "gemma3", "gpt2", "opt")


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--device", "cpu",
                           "--shape", "tiny", "--out", str(out), "--kit", str(out / "no-kit")],
                          capture_output=True, text=True, timeout=400, env=env, cwd=ROOT)
    doc = json.loads((out / "gpu_check.json").read_text()) if (out / "gpu_check.json").exists() \
        else None
    md = (out / "gpu_check.md").read_text() if (out / "gpu_check.md").exists() else ""
    return proc, doc, md


def test_the_cpu_run_passes_every_check(cpu_run):
    proc, doc, _ = cpu_run
    assert doc is not None, proc.stderr[-3000:]
    failed = [c for c in doc["checks"] if not c["passed"]]
    broken = {n: s["error"] for n, s in doc["sections"].items() if not s["ok"]}
    assert not failed and not broken, (failed, broken)
    assert proc.returncode == 0 and doc["passed"] and doc["failed"] == []
    assert "PASSED" in proc.stdout


def test_the_checks_cover_every_architecture_dtype_and_claim(cpu_run):
    _, doc, _ = cpu_run
    names = [c["check"] for c in doc["checks"]]
    for arch in ARCHITECTURES:
        for impl in ("eager", "sdpa"):
            assert f"{arch} ({impl}): packed prefix tree = each sequence alone" in names
        for claim in ("batched scores", "mask apply + restore bit for bit",
                      "5 reps sharing one prefill repeatable per seed"):
            assert any(n.startswith(f"{arch}: {claim}") for n in names), (arch, claim)
    assert any("unshared fallback" in n for n in names)  # gemma3's short window
    for dtype in ("float32", "bfloat16"):
        mine = [c for c in doc["checks"] if c["section"] == f"correctness-{dtype}"]
        text = " ".join(c["check"] for c in mine)
        for claim in ("packed prefix tree", "the tree mask matters", "batched scores",
                      "mask apply + restore", "repeatable per seed", "sweep point",
                      "after the restore"):
            assert claim in text, (dtype, claim)
        assert doc["machine"]["attention"][f"correctness-{dtype}"]["implementation"] in (
            "sdpa", "eager")
        assert doc["machine"]["attention"][f"correctness-{dtype}"]["packed_tree_ops"]


def test_the_numbers_are_within_their_limits(cpu_run):
    """Values, not only verdicts: each difference under its limit, and the mask's effect far
    above it (a check that cannot fail proves nothing)."""
    _, doc, _ = cpu_run
    for c in doc["checks"]:
        if "packed prefix tree" in c["check"] or "batched scores" in c["check"] \
                or "unshared fallback" in c["check"] or "after the restore" in c["check"]:
            assert isinstance(c["value"], float) and 0 <= c["value"] <= c["limit"], c
        if "the tree mask matters" in c["check"]:
            assert c["value"] > c["limit"] > 0, c
        if "differs from the baseline" in c["check"]:
            assert c["value"] > c["limit"], c
        if "bit for bit" in c["check"] and "mask apply" in c["check"]:
            assert c["value"] is True, c
    fp32 = [c for c in doc["checks"] if c["section"] == "correctness-float32"
            and "packed prefix tree" in c["check"]]
    assert fp32 and all(c["value"] < 1e-4 for c in fp32)  # fp32 agrees far inside the limit
    assert doc["machine"]["tokenizer"]["vocab"] == 49152  # the real tokenizer, not characters


def test_speed_and_projection_figures_are_written(cpu_run):
    _, doc, md = cpu_run
    what = " | ".join(f["what"] for f in doc["figures"])
    for part in ("scores batched B=4", "scores batched B=1", "scores loop B=1", "rankings",
                 "default point: likelihood", "default point: perplexity",
                 "reference point: generation", "reference point: perplexity"):
        assert part in what, part
    rates = doc["rates"]
    for key in ("likelihood", "generate", "ppl", "ppl_reference", "rankings"):
        assert rates[key] > 0, key
    runs = {p["run"]: p for p in doc["projection"]}
    assert set(runs) == {"tomsparse run --preset paper-7b", "tomsparse run --reference-protocol"}
    paper, reference = runs["tomsparse run --preset paper-7b"], runs[
        "tomsparse run --reference-protocol"]
    assert paper["work"]["scoring"] == "likelihood" and reference["work"]["scoring"] == "generate"
    assert reference["work"]["reps"] == 5 and reference["work"]["whole_corpus"]
    for p in (paper, reference):
        assert p["projected_s"] > 0 and p["flops"] > 0
        assert p["projected_s"] == pytest.approx(sum(s for _, s in p["terms"]), rel=0.05)
    # the markdown holds a row per check and the verdict
    assert md.startswith("# GPU check") and "**PASSED**" in md
    assert md.count("| ok |") >= len(doc["checks"])
    assert "tomsparse run --preset paper-7b" in md


@pytest.fixture()
def gpu_check_module(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_check

    return gpu_check


def test_kit_wheels_go_last_on_the_path_and_import(gpu_check_module, tmp_path, monkeypatch):
    kit = tmp_path / "kit"
    (kit / "wheels").mkdir(parents=True)
    with zipfile.ZipFile(kit / "wheels" / "kit_probe_mod-0.1-py3-none-any.whl", "w") as z:
        z.writestr("kit_probe_mod/__init__.py", "VALUE = 7\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    added = gpu_check_module.add_wheels(kit)
    assert added == ["kit_probe_mod-0.1-py3-none-any.whl"]
    assert sys.path[-1].endswith("kit_probe_mod-0.1-py3-none-any.whl")
    import kit_probe_mod

    try:
        assert kit_probe_mod.VALUE == 7
    finally:
        sys.modules.pop("kit_probe_mod", None)


def test_missing_imports_are_named_in_one_line(gpu_check_module, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(gpu_check_module, "REQUIRED",
                        ("torch", "no_such_module_a", "no_such_module_b"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(SystemExit) as exc:
        gpu_check_module.bootstrap(["--kit", str(tmp_path)])
    assert exc.value.code == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    listed = err.split("missing imports: ")[1].split(" (")[0]
    assert listed == "no_such_module_a, no_such_module_b"  # torch is there: not named
