"""A real ``tomsparse sweep`` process killed mid-run (SIGKILL), then run again with the same
options, ends with the same tables as an uninterrupted run: finished points are skipped,
nothing half-written is read."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from tomsparse.lm.registry import load_model
from tomsparse.scores.store import save_scores
from tomsparse.testing import save_tiny_model


@pytest.fixture
def setup(tmp_path):
    folder = save_tiny_model("llama", tmp_path / "tiny-llama")
    lm = load_model(str(folder), device="cpu", log=lambda *_: None)
    gen = torch.Generator().manual_seed(2)
    for kind in ("tom", "generic"):
        save_scores(tmp_path / f"scores_{kind}",
                    {m.name: torch.rand(m.shape, generator=gen) for m in lm.description.matrices},
                    {"model": str(folder), "fingerprint": lm.fingerprint, "dataset": kind,
                     "samples_sha256": f"{kind}-samples"})
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"plain generic text, paragraph {i}." for i in range(40)))
    return folder, corpus


def _command(tmp_path, folder, corpus, out):
    return [sys.executable, "-m", "tomsparse.cli", "sweep", "--model", str(folder),
            "--device", "cpu", "--scores-tom", str(tmp_path / "scores_tom"),
            "--scores-generic", str(tmp_path / "scores_generic"), "--m_list", "0,0.01,0.02",
            "--controls", "random,tom-only", "--random-seeds", "0,1", "--task-limit", "2",
            "--matched-controls", "none",
            "--corpus", str(corpus), "--ppl-max-tokens", "512", "--out", str(out)]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def test_killed_sweep_resumes_to_the_same_tables(setup, tmp_path):
    folder, corpus = setup
    total = 1 + 2 * 4  # baseline + (difference, tom-only, random x2) per m > 0
    whole = tmp_path / "whole"
    subprocess.run(_command(tmp_path, folder, corpus, whole), env=_env(), check=True,
                   capture_output=True, timeout=300)
    assert len(list((whole / "points").glob("*.json"))) == total

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_command(tmp_path, folder, corpus, killed), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if len(list((killed / "points").glob("*.json"))) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    done_at_kill = len(list((killed / "points").glob("*.json")))
    assert 2 <= done_at_kill < total

    resumed = subprocess.run(_command(tmp_path, folder, corpus, killed), env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert len(list((killed / "points").glob("*.json"))) == total
    # no temporary file left behind, and the same tables as the uninterrupted run
    assert not list(killed.rglob("*.tmp"))
    for name in ("summary.csv", "sweep_points.csv", "perplexity_results.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(whole / name), pd.read_csv(killed / name))
    for path in (whole / "tom").rglob("results.csv"):
        assert path.read_bytes() == (killed / path.relative_to(whole)).read_bytes()
