"""Acceptance: what a user runs first, `tomsparse run --quick`, as a real process on the real
packaged default model (about 5 minutes). Checks the outputs' invariants rather than numbers:
the controls have the difference mask's size, random masks leave perplexity almost unchanged,
the report carries its sections and the five analyses, a second run reuses everything, and
the report read in a real browser (headless Chromium) shows the bottom line, the chance gate
and the claims table on its first screen, with every image loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from browser import find_chromium, read_in_browser


def _run(out):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "tomsparse.cli", "run", "--quick", "--out",
                           str(out)], env=env, capture_output=True, text=True, timeout=2400)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("acceptance") / "quick"
    return out, _run(out)


def test_quick_run(quick_run):
    out, first = quick_run
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.rstrip().splitlines()[-1].startswith("report: ")
    assert first.stdout.startswith("tomsparse ") and "options: " in first.stdout

    summary = pd.read_csv(out / "sweep" / "summary.csv")
    # the quick preset's controls, and the random-fraction mask whose perplexity change was
    # matched to the difference mask's (when the search matched it)
    matched = json.loads((out / "sweep" / "matched.json").read_text())
    controls = [c for t in matched["targets"].values() for c in t["controls"]]
    assert [c["mode"] for c in controls] == ["random-fraction"]
    assert set(summary["mode"]) == {"none", "difference", "random", "tom-only"} | {
        c["mode"] for c in controls if c["matched"]}
    at = summary[summary["m"] > 0]
    diff = at[at["mode"] == "difference"].iloc[0]
    rnd = at[at["mode"] == "random"]
    assert len(rnd) == 2 and (rnd["masked"] == diff["masked"]).all() and diff["masked"] > 0
    assert at[at["mode"] == "tom-only"]["masked"].iloc[0] >= diff["masked"]
    base = summary[summary["mode"] == "none"].iloc[0]
    assert 5 < base["perplexity"] < 50  # SmolLM2-135M on Wikipedia text
    assert (abs(rnd["perplexity"] / base["perplexity"] - 1) < 0.1).all()

    page = (out / "sweep" / "report.html").read_text()
    for heading in ["Verdict", "Gate: does the model pass its own controls", "(the paper's Table 1)", "ToM change against m",
                    "Damage-matched controls", "The reference's summary", "Contents"] + [
            f"Analysis {i}:" for i in range(1, 6)]:
        assert heading in page, heading
    assert "Pilot-sized run" in page       # --quick is below the sizes the statistics need
    manifest = json.loads((out / "manifest.json").read_text())
    # the run is a process of this interpreter: it records the torch installed here
    assert manifest["versions"]["torch"] == torch.__version__ and manifest["options"]["quick"]
    for kind in ("tom", "generic"):
        store = json.loads((out / f"scores_{kind}" / "manifest.json").read_text())
        assert store["supervised_tokens"] > 0 and store["nsamples"] == 8
    assert (out / "analysis" / "analysis_manifest.json").exists()

    second = _run(out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "reusing tom scores" in second.stdout and "reusing generic scores" in second.stdout
    pd.testing.assert_frame_equal(pd.read_csv(out / "sweep" / "summary.csv"), summary)


def test_report_first_screen_in_a_browser(quick_run, tmp_path):
    """The issue-24 check: the report at 1280 x 1000, read by Chromium as a user reads it."""
    out, first = quick_run
    assert first.returncode == 0, first.stderr[-3000:]
    if find_chromium() is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; `make test` "
                    "tries that): the report was not read in a browser")
    found = read_in_browser(out / "sweep" / "report.html", tmp_path, width=1280, height=1000)
    screen = found["viewport"][1]
    assert found["bottom_line"] and found["gate_table"] and found["claims_table"], found
    assert found["bottom_line"]["bottom"] <= screen, found["bottom_line"]
    assert "smollm2-135m" in found["bottom_line"]["text"]
    assert found["gate_table"]["bottom"] <= screen, found["gate_table"]
    assert found["claims_table"]["top"] + 40 <= screen, found["claims_table"]  # its head row
    assert found["page_width"] <= found["viewport"][0]        # nothing runs off to the right
    assert found["images"] >= 8 and found["broken_images"] == [], found
