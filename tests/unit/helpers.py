"""Helpers shared by several test files: made-up score sets, their store manifests, and a run
folder as ``tomsparse run`` leaves it for ``tomsparse analyze --run``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tomsparse.lm.adapter import describe, fingerprint
from tomsparse.scores.store import save_scores


# ------------------------------------------------------------------ score stores
def fake_scores(model, seed=0):
    """Positive random scores (uniform in [0.01, 1.01)) for every target matrix of ``model``."""
    gen = torch.Generator().manual_seed(seed)
    return {m.name: torch.rand(m.shape, generator=gen) + 0.01 for m in describe(model).matrices}


def store_fields(model, **extra):
    """The manifest fields of a ToM score store of ``model`` (as the caller of ``save_scores``
    gives them), with ``extra`` added."""
    return {"model": "tiny-llama", "fingerprint": fingerprint(model), "dataset": "tom",
            "accumulation_dtype": "float32", **extra}


# ------------------------------------------------------------------ analyses
def tom_and_generic_scores(desc, seed=0):
    """(ToM scores, generic scores): uniform random in [0, 1), one seeded stream for both."""
    gen = torch.Generator().manual_seed(seed)
    tom = {m.name: torch.rand(m.shape, generator=gen) for m in desc.matrices}
    gnr = {m.name: torch.rand(m.shape, generator=gen) for m in desc.matrices}
    return tom, gnr


def write_run_folder(run: Path, model, m_list, random_seeds) -> Path:
    """A run folder of ``model`` named "tiny": its two score stores
    (``tom_and_generic_scores``) and a manifest.json with the options ``analyze --run``
    reads (``m_list``, ``random_seeds``, zero perturbation). Returns ``run``."""
    desc = describe(model)
    fp = fingerprint(model, desc)
    tom, gen = tom_and_generic_scores(desc)
    save_scores(run / "scores_tom", tom, {"model": "tiny", "fingerprint": fp})
    save_scores(run / "scores_generic", gen, {"model": "tiny", "fingerprint": fp})
    (run / "manifest.json").write_text(json.dumps({
        "model": "tiny", "options": {"m_list": list(m_list), "random_seeds": list(random_seeds),
                                     "perturbation": "zero", "scale": 0.0}}))
    return run


def one_line_error(capsys, code, *needles):
    """The command exited with 2 and wrote a one-line error holding every needle."""
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def tiny_run(tmp_path, *extra):
    """``tomsparse run`` on the registered tiny model at the smallest size a run has (3 + 3
    score samples, 2 tasks a family, m = 0, 0.02, 0.05, 2 random masks, no matched controls,
    no analyses) into ``tmp_path / "run"``, with ``extra`` options; returns the folder."""
    from tomsparse.cli.main import main
    from tomsparse.testing import registered_model

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"plain generic text, paragraph number {i}." for i in range(60)))
    out = tmp_path / "run"
    argv = ["run", "--model", "tiny", "--device", "cpu", "--out", str(out), "--nsamples-tom", "3",
            "--nsamples-generic", "3", "--seqlen", "32", "--generic-corpus", str(corpus),
            "--corpus", str(corpus), "--m_list", "0,0.02,0.05", "--random-seeds", "0,1",
            "--task-limit", "2", "--ppl-max-tokens", "256", "--no-analysis",
            "--matched-controls", "none", *extra]
    with registered_model("tiny"):
        assert main(argv) == 0
    return out
