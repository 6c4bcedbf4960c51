"""Issue 13: where tomsparse claims the reference's behaviour, it is the reference's. Each test
restates the reference's rule independently (plain loops, numpy, the model's own loss) and
compares; the renderer of reference task files is tested in test_reference_render.py."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pandas as pd
import pytest
import torch

from tomsparse import stats
from tomsparse.cli.main import build_parser, main
from tomsparse.cli.options import apply_presets, fill_unset
from tomsparse.config import FAITHFUL, OURS
from tomsparse.data.corpora import Corpus
from tomsparse.data.score_samples import IGNORE, build_generic_samples
from tomsparse.data.tasks.bank import builtin_taskset
from tomsparse.errors import UserError
from tomsparse.evaluate import tom
from tomsparse.evaluate.perplexity import perplexity
from tomsparse.evaluate.results import reference_results_path
from tomsparse.config import m_grid
from tomsparse.sweep.folder import group_label, point_label
from tomsparse.testing import char_fast_tokenizer, registered_model, tiny_model

DOCS = [" ".join(f"w{d}_{i}" for i in range(n)) for d, n in enumerate((3, 30, 8, 16, 50, 5, 16))]
VOCAB = {w: i + 1 for i, w in enumerate(sorted({w for d in DOCS for w in d.split()}))}


class WordTokenizer:
    """Whitespace tokenizer over VOCAB, optionally a BOS id (0) in front."""

    bos_token_id = 0

    def __init__(self, bos: bool):
        self.bos = bos

    def __call__(self, text, add_special_tokens=True, return_tensors=None, **_):
        ids = [VOCAB[w] for w in text.split()]
        if add_special_tokens and self.bos:
            ids = [0] + ids
        return {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids}


# ------------------------------------------------------------------ 3. generic windows


def _reference_windows(tokenizer, docs, nsamples, seqlen, seed):
    """The reference's C4 recipe, restated: random.seed; up to 100 draws; no special tokens;
    first document with >= seqlen tokens; start 0 if L == seqlen else randint(0, L - seqlen)."""
    random.seed(seed)
    out = []
    for _ in range(nsamples):
        for _ in range(100):
            i = random.randint(0, len(docs) - 1)
            enc = tokenizer(docs[i], add_special_tokens=False)["input_ids"]
            if len(enc) >= seqlen:
                break
        if len(enc) == seqlen:
            start = 0
        elif len(enc) > seqlen:
            start = random.randint(0, len(enc) - seqlen)
        else:
            start = 0
        out.append(enc[start:start + seqlen])
    return out


@pytest.mark.parametrize("bos", [False, True])
def test_reference_windows_are_the_reference_recipe(bos):
    tok = WordTokenizer(bos)
    for seed in (0, 1, 7):
        data = build_generic_samples(tok, DOCS, nsamples=40, seqlen=16, seed=seed,
                                     recipe="reference")
        got = [list(s.input_ids) for s in data.samples]
        assert got == _reference_windows(tok, DOCS, 40, 16, seed)
        assert all(0 not in w for w in got)  # no BOS inside any window
        for s in data.samples:
            assert list(s.labels) == [IGNORE] + list(s.input_ids[1:])
        assert data.info["window_recipe"] == "reference"
        assert data.info["add_special_tokens"] is False
    # documents of exactly seqlen tokens (two of them) start at 0 and are taken whole
    windows = build_generic_samples(WordTokenizer(bos), DOCS, nsamples=200, seqlen=16,
                                    seed=3, recipe="reference").samples
    assert any("tokens 0..16" in s.source and ("text 3," in s.source or "text 6," in s.source)
               for s in windows)


def test_reference_windows_differ_from_ours_and_keep_short_documents():
    ours = build_generic_samples(WordTokenizer(True), DOCS, nsamples=20, seqlen=16, seed=0)
    ref = build_generic_samples(WordTokenizer(True), DOCS, nsamples=20, seqlen=16, seed=0,
                                recipe="reference")
    assert ours.info["samples_sha256"] != ref.info["samples_sha256"]
    assert ours.info["window_recipe"] == "tomsparse"
    # no document reaches seqlen: after 100 draws the last one drawn is the (short) window
    short = build_generic_samples(WordTokenizer(False), DOCS[:1], nsamples=2, seqlen=16,
                                  recipe="reference")
    assert [len(s) for s in short.samples] == [3, 3] and short.info["short_windows"] == 2


# ------------------------------------------------------------------ 4. perplexity


ROWS = ["", " = Title = ", "", "alpha beta gamma delta epsilon " * 6, "", "zeta eta theta " * 9,
        "iota kappa lambda mu " * 8, ""]


def _reference_perplexity(model, tokenizer, rows, seqlen):
    """The reference's protocol, restated with the model's own loss: every row joined with
    "\\n\\n", default special tokens, windows of seqlen, batches of 2, mean of batch losses."""
    ids = tokenizer("\n\n".join(rows), return_tensors="pt")["input_ids"]
    n = ids.numel() // seqlen
    losses = []
    for i in range(0, n, 2):
        j = min(i + 2, n)
        batch = ids[:, i * seqlen:j * seqlen].reshape(j - i, seqlen)
        with torch.no_grad():
            losses.append(float(model(input_ids=batch, labels=batch).loss))
    return math.exp(sum(losses) / len(losses)), n


def test_reference_perplexity_protocol():
    from tomsparse.testing import CharTokenizer

    model = tiny_model("llama")
    tok = CharTokenizer(add_bos=True)
    corpus = Corpus(name="rows", texts=list(ROWS), source="test")
    seqlen = 44
    expected, n = _reference_perplexity(model, tok, ROWS, seqlen)
    assert n % 2 == 1  # the last batch holds one window: it weighs as much as a full batch
    got = perplexity(model, tok, corpus, seqlen=seqlen, protocol="reference")
    with pytest.raises(UserError, match="batches of 2 windows"):
        perplexity(model, tok, corpus, seqlen=seqlen, batch_size=7, protocol="reference")
    assert got.windows == n and got.protocol == "reference"
    assert got.perplexity == pytest.approx(expected, rel=1e-5)
    assert got.corpus_sha256 == corpus.rows_sha256
    # ours: blank rows dropped, no BOS, mean over windows; not the same number here
    ours = perplexity(model, tok, corpus, seqlen=seqlen, batch_size=7)
    ids = tok("\n\n".join(r for r in ROWS if r.strip()), add_special_tokens=False,
              return_tensors="pt")["input_ids"]
    k = ids.numel() // seqlen
    windows = ids[0, :k * seqlen].view(k, seqlen)
    with torch.no_grad():
        per_window = [float(model(input_ids=w[None], labels=w[None]).loss) for w in windows]
    assert ours.perplexity == pytest.approx(math.exp(np.mean(per_window)), rel=1e-5)
    assert ours.protocol == "tomsparse" and not math.isclose(ours.perplexity, got.perplexity)


# ------------------------------------------------------------------ 5. the m grid


def test_m_grid_is_numpy_arange_value_for_value():
    grid = m_grid(0.0, 5e-5, 2e-6)
    reference = np.arange(0.0, 5e-5 + 2e-6, 2e-6)
    assert len(grid) == 27 and grid == [float(x) for x in reference]
    assert grid[-1] == 5.2e-05 and 9.999999999999999e-06 in grid
    # the reference's m folders: str() of each numpy float
    names = [reference_results_path("tom", 1, m, "irony").parts[2] for m in grid]
    assert names == [str(x) for x in reference]
    assert "9.999999999999999e-06" in names and "2e-06" in names
    # point files never collide, and clean values keep the names earlier sweeps used
    labels = [point_label("difference", 0, m) for m in grid] + [point_label("difference", 0, 1e-5)]
    assert len(set(labels)) == len(labels)
    assert point_label("difference", 0, 1e-5) == "difference_s0_m1.0000e-05"
    assert point_label("difference", 0, 9.999999999999999e-06) == \
        "difference_s0_m9.999999999999999e-06"
    assert group_label("random", 9.999999999999999e-06) != group_label("random", 1e-5)


# ------------------------------------------------------------------ 6. first-word rule


@pytest.mark.parametrize("rule", ["tomsparse", "reference"])
def test_answer_rule_in_evaluate(monkeypatch, rule):
    """Generated texts are scored by the chosen rule; the reference's, restated here, keeps
    characters other than . , ' " ; and compares with the expected answer as written."""
    taskset = builtin_taskset().head(1)
    prompts = taskset.prompts()
    endings = [" {w}!", " {w},", "{w}.", " '{w}';", " ({w})", " {w}", "", " {w}?"]
    texts = [endings[i % len(endings)].format(w=p.expected.split()[0]) for i, p in
             enumerate(prompts)]
    monkeypatch.setattr(tom, "generate_reps", lambda *a, **k: [list(texts)])
    result = tom.evaluate(tiny_model("llama"), char_fast_tokenizer(), taskset, scoring="greedy",
                          answer_rule=rule)

    def reference_correct(text, expected):
        words = text.split()
        word = words[0] if words else ""
        for ch in ".,'\";":
            word = word.replace(ch, "")
        return word == expected.split()[0]

    got = result.table["correct"].tolist()
    if rule == "reference":
        assert got == [reference_correct(t, p.expected) for t, p in zip(texts, prompts)]
        assert result.meta["answer_rule"] == "reference"
    else:
        strip = ".,'\";:!?"
        assert got == [(t.split()[0].strip() if t.split() else "").translate(
            str.maketrans("", "", strip)) == p.expected.split()[0].translate(
            str.maketrans("", "", strip)) for t, p in zip(texts, prompts)]
    assert any(got) and not all(got)


# ------------------------------------------------------------------ the faithful mode


def _args(*argv):
    return build_parser().parse_args(list(argv))


def test_reference_protocol_resolves_every_point_and_explicit_options_win():
    args = _args("run", "--reference-protocol")
    ms = apply_presets(args)
    assert ms == m_grid(0.0, 5e-5, 2e-6) and len(ms) == 27
    for key, value in FAITHFUL.items():
        assert getattr(args, key) == value, key
    assert (args.nsamples_tom, args.nsamples_generic, args.task_limit, args.ppl_max_tokens) == (
        100, 100, None, None)
    explicit = _args("run", "--reference-protocol", "--dtype", "float32", "--no-reference-ties",
                     "--perturbation", "mean", "--answer-rule", "tomsparse", "--ppl-protocol",
                     "tomsparse", "--no-reference-fp16", "--no-reference-windows",
                     "--supervision", "answer", "--corpus", "wiki-offline:eval",
                     "--generic-corpus", "wiki-offline:calibration", "--scoring",
                     "likelihood", "--reps", "1")
    apply_presets(explicit)
    for key, value in OURS.items():
        assert getattr(explicit, key) == value, key
    plain = _args("run")
    apply_presets(plain)
    for key, value in OURS.items():
        assert getattr(plain, key) == value, key
    sweep = _args("sweep", "--reference-protocol", "--out", "x", "--perturbation", "zero")
    from tomsparse.config import REFERENCE, SWEEP_DEFAULTS
    fill_unset(sweep, {**SWEEP_DEFAULTS, **OURS, **REFERENCE})
    assert (sweep.dtype, sweep.reference_ties, sweep.perturbation, sweep.answer_rule,
            sweep.ppl_protocol, sweep.corpus, sweep.scoring, sweep.reps) == (
        "float16", True, "zero", "reference", "reference", "wikitext2", "generate", 5)


def test_reference_protocol_end_to_end_on_a_tiny_model(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"plain generic text, paragraph number {i}." for i in range(80)))
    out = tmp_path / "run"
    argv = ["run", "--reference-protocol", "--model", "tiny", "--device", "cpu",
            "--dtype", "float32", "--out", str(out), "--nsamples-tom", "3",
            "--nsamples-generic", "3", "--seqlen", "32", "--generic-corpus", str(corpus),
            "--corpus", str(corpus), "--m_list", "0,0.05", "--random-seeds", "0",
            "--task-limit", "1", "--reps", "2", "--no-analysis", "--matched-controls", "none",
            "--controls", "random"]
    with registered_model("tiny") as calls:
        assert main(argv) == 0
    assert calls[0]["dtype"] == "float32"  # the explicit dtype won over the preset's fp16
    for kind in ("tom", "generic"):
        store = json.loads((out / f"scores_{kind}" / "manifest.json").read_text())
        assert store["reference_fp16"] is True
    generic = json.loads((out / "scores_generic" / "manifest.json").read_text())
    assert generic["data"]["window_recipe"] == "reference"
    tom_store = json.loads((out / "scores_tom" / "manifest.json").read_text())
    assert tom_store["supervision"] == "last-token"
    config = json.loads((out / "sweep" / "sweep_manifest.json").read_text())["config"]
    assert (config["perturbation"], config["reference_ties"], config["answer_rule"],
            config["ppl_protocol"], config["scoring"], config["reps"]) == (
        "reference-mean", True, "reference", "reference", "generate", 2)
    # the reference's layout and summary: tom/<rep>/<m>/<task>/results.csv, read back with
    # index_col=0 as its summarize does, give our summary's percentages
    summary = pd.read_csv(out / "sweep" / "summary.csv")
    ref = pd.read_csv(out / "sweep" / "tom_summary.csv").set_index("m")
    for m in (0.0, 0.05):
        ours = summary[(summary["m"] == m) & summary["mode"].isin(["none", "difference"])]
        for fam in ("unexpected", "transfer", "irony"):
            pct = []
            for rep in (1, 2):
                frame = pd.read_csv(reference_results_path(out / "sweep" / "tom", rep, m, fam),
                                    index_col=0)
                pct.append(100 * frame.to_numpy().mean())
            assert np.mean(pct) == pytest.approx(ours[f"{fam}_percent_mean"].iloc[0])
            assert ref.loc[m, f"{fam}_percent_mean"] == pytest.approx(np.mean(pct))
    assert (out / "sweep" / "perplexity_results.csv").exists()


def test_scores_reference_protocol_sets_the_score_options(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"plain generic text, paragraph number {i}." for i in range(40)))
    out = tmp_path / "gen"
    with registered_model("tiny") as calls:
        assert main(["scores", "--model", "tiny", "--device", "cpu", "--dataset", "generic",
                     "--reference-protocol", "--dtype", "float32", "--corpus", str(corpus),
                     "--nsamples", "2", "--seqlen", "16", "--out", str(out)]) == 0
    assert calls[0]["dtype"] == "float32"
    store = json.loads((out / "manifest.json").read_text())
    assert store["reference_fp16"] is True and store["data"]["window_recipe"] == "reference"
    plain = tmp_path / "plain"
    with registered_model("tiny") as calls:
        assert main(["scores", "--model", "tiny", "--device", "cpu", "--dataset", "generic",
                     "--reference-protocol", "--no-reference-windows", "--corpus", str(corpus),
                     "--nsamples", "2", "--seqlen", "16", "--out", str(plain)]) == 0
    assert calls[0]["dtype"] == "float16"  # the reference's model dtype, not given explicitly
    assert json.loads((plain / "manifest.json").read_text())["data"]["window_recipe"] == \
        "tomsparse"


def test_reference_protocol_with_a_matched_control_gives_finite_verdicts(tmp_path):
    """Issue 22.1: the paper's protocol (sampled generation) with its damage-matched control
    turned on finishes, and every verdict is an outcome with finite numbers or says why it
    cannot be measured (it once crashed on idxmax over all-NaN margins)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"plain generic text, paragraph number {i}." for i in range(80)))
    out = tmp_path / "run"
    argv = ["run", "--reference-protocol", "--model", "tiny", "--device", "cpu",
            "--dtype", "float32", "--out", str(out), "--nsamples-tom", "3",
            "--nsamples-generic", "3", "--seqlen", "32", "--generic-corpus", str(corpus),
            "--corpus", str(corpus), "--m_list", "0,0.05", "--random-seeds", "0,1",
            "--task-limit", "3", "--reps", "2", "--no-analysis",
            "--matched-controls", "random-fraction", "--match-m", "0.05", "--match-steps", "2",
            "--controls", "random"]
    with registered_model("tiny"):
        assert main(argv) == 0
    verdicts = pd.read_csv(out / "sweep" / "specificity_verdicts.csv")
    assert set(verdicts["claim"]) == {"a", "b", "c", "d", "e"}
    assert set(verdicts["status"]) <= set(stats.OUTCOMES)
    judged = verdicts[verdicts["status"] != stats.CANNOT_BE_MEASURED]
    assert np.isfinite(judged[["value", "lo", "hi"]].to_numpy()).all()
    cannot = verdicts[verdicts["status"] == stats.CANNOT_BE_MEASURED]
    assert cannot["reason"].fillna("").str.len().gt(0).all()
    assert not verdicts["sentence"].str.contains(r"\bnan\b").any()
    # generation scoring: the ToM claims are judged on correctness, never on NaN margins
    abc = verdicts[verdicts["claim"].isin(["a", "b", "c"]) & (verdicts["metric"] != "")]
    assert set(abc["metric"].dropna()) <= {"tom_accuracy_change_adj", "belief_gap_accuracy"}
    assert "Gate: does the model pass its own controls" in (out / "sweep" / "report.html").read_text()
