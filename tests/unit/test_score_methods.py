"""``--score fisher|snip|wanda`` (issue 37, item 1) on tiny random models: SNIP against autograd
per sample in a plain loop, Wanda against an explicit activation pass with a hook written
here, Fisher unchanged; the store's manifest names the score (an old store without the field
reads as Fisher); the sweep refuses a ToM and a generic store of different scores unless
``--allow-mixed-scores``; ``tomsparse run`` does not reuse a store of another score."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from test_scores import assert_scores_close, make_samples, one_thread  # noqa: F401
from helpers import one_line_error

from tomsparse.cli.main import main
from tomsparse.data.score_samples import IGNORE, ScoreSample
from tomsparse.errors import UserError
from tomsparse.lm.adapter import describe
from tomsparse.scores.compute import SCORES, compute_score_set, compute_scores
from tomsparse.scores.store import (check_score_methods, load_scores, read_manifest,
                                    save_scores, score_method, scores_identity,
                                    with_score_method)
from tomsparse.testing import registered_model, tiny_loaded_model, tiny_model


def _batch(sample):
    return torch.tensor([sample.input_ids]), torch.tensor([sample.labels])


def snip_by_hand(model, samples):
    """sum over samples of |w * dL_i/dw|, each sample's gradient from its own
    ``loss.backward()`` (the model's own loss: mean cross-entropy over the supervised
    tokens), in fp64; also |w * sum_i dL_i/dw|, the batch-gradient definition SNIP is not."""
    matrices = describe(model).matrices
    per_sample = {m.name: torch.zeros(m.shape, dtype=torch.float64) for m in matrices}
    summed = {m.name: torch.zeros(m.shape, dtype=torch.float64) for m in matrices}
    for s in samples:
        model.zero_grad(set_to_none=True)
        ids, labels = _batch(s)
        loss = model(input_ids=ids, labels=labels, use_cache=False).loss
        loss.backward()
        for m in matrices:
            grad = m.module.weight.grad
            grad = (grad.t() if m.transposed else grad)[m.rows].double()
            w = m.weight().detach().double()
            per_sample[m.name] += (w * grad).abs()
            summed[m.name] += grad
    model.zero_grad(set_to_none=True)
    batch = {m.name: (m.weight().detach().double() * summed[m.name]).abs() for m in matrices}
    return per_sample, batch


def wanda_by_hand(model, samples):
    """|W| * sqrt(sum over every token of every sample of x_j**2), x each target module's
    input, captured by a plain forward hook; each sample alone (no padding), in fp64."""
    matrices = describe(model).matrices
    modules = {id(m.module): m.module for m in matrices}
    sums = {key: 0.0 for key in modules}

    def hook_for(key):
        def hook(module, args, output):
            x = args[0].detach().double()
            sums[key] = sums[key] + x.reshape(-1, x.shape[-1]).pow(2).sum(0)
        return hook

    handles = [module.register_forward_hook(hook_for(key)) for key, module in modules.items()]
    try:
        with torch.no_grad():
            for s in samples:
                model(input_ids=_batch(s)[0], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {m.name: m.weight().detach().double().abs() * sums[id(m.module)].sqrt()[None, :]
            for m in matrices}


def _as_double(scores):
    return {k: v.double() for k, v in scores.items()}


# ------------------------------------------------------------------ the three scores
@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_snip_is_the_per_sample_sum_of_w_times_grad(arch):
    model = tiny_model(arch)
    samples = make_samples(n=5)
    expected, batch_gradient = snip_by_hand(model, samples)
    for method in ("loop", "batched"):
        got = compute_scores(model, None, samples, method=method, batch_size=3,
                             progress=False, score="snip")
        assert got.score == "snip" and got.manifest_fields()["score_method"] == "snip"
        assert_scores_close(expected, _as_double(got.scores))
    # the per-sample definition is not |w * (sum of the gradients)|: on these samples the
    # gradients' signs disagree, so the two differ far beyond the tolerance above
    total = sum(float(v.sum()) for v in expected.values())
    gap = sum(float((expected[k] - batch_gradient[k]).sum()) for k in expected)
    assert gap > 0.05 * total
    # and it is not the Fisher score either
    fisher = compute_scores(model, None, samples, method="loop", progress=False).scores
    assert any((fisher[k].double() - expected[k]).abs().max() > 1e-3 * expected[k].max()
               for k in expected)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_wanda_is_weight_times_input_norm_over_real_tokens(arch, monkeypatch):
    model = tiny_model(arch)
    samples = make_samples(n=6)
    expected = wanda_by_hand(model, samples)

    def no_backward(*_args, **_kwargs):
        raise AssertionError("wanda ran a backward pass")

    monkeypatch.setattr(torch.autograd, "backward", no_backward)
    batched = compute_scores(model, None, samples, method="batched", batch_size=4,
                             progress=False, score="wanda")
    assert batched.padded_tokens > 0  # padded batches: the padding must not count
    assert batched.score == "wanda" and batched.nsamples == len(samples)
    assert_scores_close(expected, _as_double(batched.scores))
    loop = compute_scores(model, None, samples, method="loop", progress=False, score="wanda")
    assert loop.padded_tokens == 0
    assert_scores_close(expected, _as_double(loop.scores))
    assert all(p.grad is None for p in model.parameters())
    # the mean loss is recorded as for the gradient scores
    monkeypatch.undo()
    fisher = compute_scores(model, None, samples, method="loop", progress=False)
    assert abs(fisher.mean_loss - batched.mean_loss) < 1e-4


def test_wanda_with_padding_counted_would_differ():
    """The comparison above can fail: counting padded positions changes the scores."""
    model = tiny_model("llama")
    samples = make_samples(n=6)
    pad_id = 0
    padded = [ScoreSample(tuple(s.input_ids) + (pad_id,) * 5, tuple(s.labels) + (IGNORE,) * 5,
                          s.source) for s in samples]
    right = compute_scores(model, None, samples, progress=False, score="wanda").scores
    wrong = wanda_by_hand(model, padded)
    assert any((wrong[k] - right[k].double()).abs().max() > 1e-3 * wrong[k].max()
               for k in right)


def test_fisher_is_unchanged():
    model = tiny_model("llama")
    samples = make_samples(n=5)
    for method in ("loop", "batched"):
        default = compute_scores(model, None, samples, method=method, batch_size=3,
                                 progress=False)
        fisher = compute_scores(model, None, samples, method=method, batch_size=3,
                                progress=False, score="fisher")
        assert default.score == fisher.score == "fisher"
        for name in default.scores:
            assert torch.equal(default.scores[name], fisher.scores[name])  # bit for bit
    # and still the sum of squared per-sample gradients (autograd in a plain loop)
    matrices = describe(model).matrices
    expected = {m.name: torch.zeros(m.shape, dtype=torch.float64) for m in matrices}
    for s in samples:
        model.zero_grad(set_to_none=True)
        ids, labels = _batch(s)
        model(input_ids=ids, labels=labels, use_cache=False).loss.backward()
        for m in matrices:
            g = m.module.weight.grad
            expected[m.name] += (g.t() if m.transposed else g)[m.rows].double() ** 2
    model.zero_grad(set_to_none=True)
    assert_scores_close(expected, _as_double(default.scores))


def test_bad_score_refused():
    model = tiny_model("llama")
    samples = make_samples(n=2)
    with pytest.raises(UserError, match="unknown score 'obd'"):
        compute_scores(model, None, samples, progress=False, score="obd")
    with pytest.raises(UserError, match="--score snip cannot be combined with --reference-fp16"):
        compute_scores(model, None, samples, progress=False, score="snip", reference_fp16=True)
    assert SCORES == ("fisher", "snip", "wanda")


# ------------------------------------------------------------------ the store
@pytest.mark.parametrize("score", SCORES)
def test_store_manifest_names_the_score(score, tmp_path):
    lm = tiny_loaded_model("llama")
    samples = make_samples(n=3)
    result = compute_score_set(lm, samples, out=tmp_path / score, progress=False, score=score)
    stored, manifest = load_scores(tmp_path / score, lm)
    assert manifest["score_method"] == score == score_method(manifest)
    for name, tensor in result.scores.items():
        assert torch.equal(stored[name], tensor)


def test_old_store_reads_as_fisher_and_identity(tmp_path):
    lm = tiny_loaded_model("llama")
    scores = {m.name: torch.rand(m.shape) for m in lm.description.matrices}
    save_scores(tmp_path / "old", scores, {"model": "tiny", "fingerprint": lm.fingerprint,
                                           "dataset": "tom", "samples_sha256": "abc"})
    old = read_manifest(tmp_path / "old")
    assert "score_method" not in old and score_method(old) == "fisher"
    # a Fisher store's identity is its samples' hash, as before; another score's is not
    assert scores_identity(old) == "abc" == with_score_method("abc", "fisher")
    assert scores_identity({**old, "score_method": "fisher"}) == "abc"
    snip = scores_identity({**old, "score_method": "snip"})
    wanda = scores_identity({**old, "score_method": "wanda"})
    assert len({"abc", snip, wanda}) == 3 and snip == with_score_method("abc", "snip")
    # imported reference chunks (no samples hash): "fisher" written or not, the same identity
    imported = {k: v for k, v in old.items() if k != "samples_sha256"}
    assert scores_identity(imported) == scores_identity({**imported, "score_method": "fisher"})
    assert scores_identity(imported) != scores_identity({**imported, "score_method": "wanda"})
    with pytest.raises(UserError, match="damaged"):
        score_method({**old, "score_method": 3})


def test_check_score_methods():
    fisher, old, wanda = {"score_method": "fisher"}, {}, {"score_method": "wanda"}
    assert check_score_methods(old, fisher) == {"tom": "fisher", "generic": "fisher"}
    with pytest.raises(UserError) as info:
        check_score_methods(old, wanda, tom_where="in A", generic_where="in B")
    message = str(info.value)
    assert "\n" not in message
    for needle in ("in A", "in B", "fisher", "wanda", "--allow-mixed-scores", "--score"):
        assert needle in message
    assert check_score_methods(old, wanda, allow=True) == {"tom": "fisher", "generic": "wanda"}


# ------------------------------------------------------------------ the command line
@pytest.fixture
def stand_in():
    with registered_model("tiny"):
        yield


def test_scores_command(stand_in, tmp_path, capsys):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([
        {"txt": f"Complete the following story: Tom puts toy {i} in the box. He looks in the",
         "answer": "box"} for i in range(6)]))
    base = ["scores", "--model", "tiny", "--device", "cpu", "--data_path", str(prompts),
            "--nsamples", "4"]
    out = tmp_path / "wanda"
    assert main([*base, "--score", "wanda", "--out", str(out)]) == 0
    assert "wanda scores, batched method" in capsys.readouterr().out
    scores, manifest = load_scores(out)
    assert manifest["score_method"] == "wanda" and manifest["nsamples"] == 4
    # a store of another score is not overwritten unasked
    code = main([*base, "--score", "snip", "--out", str(out)])
    one_line_error(capsys, code, "wanda scores, not snip", "--overwrite")
    assert read_manifest(out)["score_method"] == "wanda"
    assert main([*base, "--score", "snip", "--overwrite", "--out", str(out)]) == 0
    capsys.readouterr()
    assert read_manifest(out)["score_method"] == "snip"
    # the default is Fisher, and says so in the manifest
    assert main([*base, "--out", str(tmp_path / "fisher")]) == 0
    capsys.readouterr()
    assert read_manifest(tmp_path / "fisher")["score_method"] == "fisher"
    code = main([*base, "--score", "snip", "--reference-fp16", "--out", str(tmp_path / "x")])
    one_line_error(capsys, code, "--score snip cannot be combined with --reference-fp16")
    assert not (tmp_path / "x").exists()


def _stores(tmp_path, tom_score, generic_score):
    lm = tiny_loaded_model("llama", name="tiny")
    gen = torch.Generator().manual_seed(1)
    paths = {}
    for kind, score in (("tom", tom_score), ("generic", generic_score)):
        scores = {m.name: torch.rand(m.shape, generator=gen) for m in lm.description.matrices}
        fields = {"model": "tiny", "fingerprint": lm.fingerprint, "dataset": kind,
                  "samples_sha256": f"{kind}-samples"}
        if score is not None:
            fields["score_method"] = score
        paths[kind] = tmp_path / f"scores_{kind}"
        save_scores(paths[kind], scores, fields)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"plain generic text, paragraph {i}." for i in range(40)))
    return paths, corpus


def _sweep_args(paths, corpus, out, *extra):
    return ["sweep", "--model", "tiny", "--device", "cpu", "--scores-tom", str(paths["tom"]),
            "--scores-generic", str(paths["generic"]), "--task-limit", "1", "--corpus",
            str(corpus), "--ppl-max-tokens", "256", "--m_list", "0,0.01", "--controls", "none",
            "--matched-controls", "none", "--out", str(out), *extra]


def test_sweep_refuses_mixed_scores_unless_asked(stand_in, tmp_path, capsys):
    paths, corpus = _stores(tmp_path, None, "wanda")  # an old (Fisher) store and a Wanda one
    out = tmp_path / "sweep"
    code = main(_sweep_args(paths, corpus, out))
    one_line_error(capsys, code, str(paths["tom"]), str(paths["generic"]), "fisher", "wanda",
                    "--allow-mixed-scores")
    assert not out.exists()  # refused before anything was written
    # the library's sweep refuses it too (frontier and run go through it)
    from tomsparse.config import SweepConfig
    from tomsparse.pipeline import stream_scores
    from tomsparse.sweep.runner import run_points

    lm = tiny_loaded_model("llama", name="tiny")
    cfg = SweepConfig(m_values=[0.0], modes=[], tasks="builtin", task_limit=1,
                      corpus=str(corpus), ppl_max_tokens=256)
    with pytest.raises(UserError, match="--allow-mixed-scores"):
        run_points(lm, stream_scores(lm, paths["tom"]), stream_scores(lm, paths["generic"]),
                   cfg, tmp_path / "library", progress=False)
    assert not (tmp_path / "library").exists()
    # asked for: the sweep runs and its manifest records both scores
    assert main(_sweep_args(paths, corpus, out, "--allow-mixed-scores")) == 0
    assert "mixing fisher ToM scores with wanda generic scores" in capsys.readouterr().out
    manifest = json.loads((out / "sweep_manifest.json").read_text())
    assert manifest["score_methods"] == {"tom": "fisher", "generic": "wanda"}
    assert sorted(pd.read_csv(out / "summary.csv")["mode"]) == ["difference", "none"]


def test_sweep_accepts_an_old_store_with_a_fisher_one(stand_in, tmp_path, capsys):
    paths, corpus = _stores(tmp_path, None, "fisher")
    out = tmp_path / "sweep"
    assert main(_sweep_args(paths, corpus, out, "--m_list", "0")) == 0
    manifest = json.loads((out / "sweep_manifest.json").read_text())
    assert manifest["score_methods"] == {"tom": "fisher", "generic": "fisher"}


def test_run_does_not_reuse_a_store_of_another_score(stand_in, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"plain generic text, paragraph number {i}." for i in range(60)))
    out = tmp_path / "run"
    argv = ["run", "--model", "tiny", "--device", "cpu", "--out", str(out), "--nsamples-tom", "3",
            "--nsamples-generic", "3", "--seqlen", "32", "--generic-corpus", str(corpus),
            "--corpus", str(corpus), "--m_list", "0", "--task-limit", "1",
            "--ppl-max-tokens", "256", "--no-analysis", "--score-replicates", "1",
            "--matched-controls", "none"]
    assert main([*argv, "--score", "wanda"]) == 0
    printed = capsys.readouterr().out
    assert "tom scores: 3 samples (wanda)" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["score_method"] == "wanda" and manifest["options"]["score"] == "wanda"
    for kind in ("tom", "generic"):
        store = read_manifest(out / f"scores_{kind}")
        assert store["score_method"] == "wanda"
        assert manifest[f"scores_{kind}_sha"] == scores_identity(store) != store["samples_sha256"]
    assert main([*argv, "--score", "wanda"]) == 0
    assert "reusing tom scores" in capsys.readouterr().out
    # the same samples with another score: recomputed, and the sweep folder (whose points were
    # made with the Wanda masks) is not resumed with them
    code = main(argv)  # --score fisher, the default
    err = capsys.readouterr()
    assert "reusing" not in err.out and "tom scores: 3 samples" in err.out
    assert code == 2 and "scores_tom_sha" in err.err
    assert read_manifest(out / "scores_tom")["score_method"] == "fisher"
