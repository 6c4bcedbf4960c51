"""``tomsparse sweep`` and ``tomsparse summarize`` end to end on a tiny stand-in model: the
reference's m grid, controls side by side, the reference-layout summary recomputed from the
tom/ files, and bad input as one line with exit code 2 and nothing overwritten."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from helpers import one_line_error

from tomsparse.cli.main import main
from tomsparse.lm.adapter import describe, fingerprint
from tomsparse.scores.store import save_scores
from tomsparse.judge.reference import reference_summary
from tomsparse.testing import registered_model, tiny_loaded_model, tiny_model


@pytest.fixture
def stores(tmp_path):
    with registered_model("tiny"):  # --model tiny: a tiny Llama with a character tokenizer
        yield write_stores(tmp_path)


def write_stores(tmp_path):
    lm = tiny_loaded_model("llama", name="tiny")
    gen = torch.Generator().manual_seed(1)
    paths = {}
    for kind in ("tom", "generic"):
        scores = {m.name: torch.rand(m.shape, generator=gen) for m in lm.description.matrices}
        paths[kind] = tmp_path / f"scores_{kind}"
        save_scores(paths[kind], scores, {"model": "tiny", "fingerprint": lm.fingerprint,
                                          "dataset": kind, "samples_sha256": f"{kind}-samples"})
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"plain generic text, paragraph {i}." for i in range(40)))
    return paths, corpus


def _sweep_args(paths, corpus, out, *extra):
    return ["sweep", "--model", "tiny", "--device", "cpu", "--scores-tom", str(paths["tom"]),
            "--scores-generic", str(paths["generic"]), "--task-limit", "1", "--corpus",
            str(corpus), "--ppl-max-tokens", "256", "--out", str(out), *extra]


def test_sweep_grid_controls_and_summarize(stores, tmp_path, capsys):
    paths, corpus = stores
    out = tmp_path / "sweep"
    code = main(_sweep_args(paths, corpus, out, "--m_start", "0", "--m_end", "0.02",
                            "--m_step", "0.01", "--controls", "random", "--random-seeds", "0,1",
                            "--matched-controls", "none"))
    assert code == 0
    printed = capsys.readouterr().out
    assert "report:" in printed
    summary = pd.read_csv(out / "summary.csv")
    # the reference grid 0, 0.01, 0.02: a baseline, then difference + 2 random seeds per m > 0
    assert sorted(summary["m"].unique()) == pytest.approx([0.0, 0.01, 0.02])
    assert sorted(summary["mode"].unique()) == ["difference", "none", "random"]
    assert len(summary) == 1 + 2 * 3
    assert (out / "report.html").exists()
    page = (out / "report.html").read_text()
    assert "(the paper's Table 1)" in page and "random masks (2 seeds)" in page

    # summarize re-reads the points and writes the controls side by side
    assert main(["summarize", str(out)]) == 0
    side = pd.read_csv(out / "summary_side_by_side.csv").set_index("m")
    for m in (0.01, 0.02):
        rnd = summary[(summary["mode"] == "random") & (summary["m"] == m)]["perplexity"]
        dif = summary[(summary["mode"] == "difference") & (summary["m"] == m)]["perplexity"]
        assert side.loc[m, "random_perplexity_mean"] == pytest.approx(rnd.mean())
        assert side.loc[m, "random_perplexity_sd"] == pytest.approx(rnd.std(ddof=1))
        assert side.loc[m, "difference_perplexity"] == pytest.approx(dif.iloc[0])
        assert side.loc[m, "baseline_perplexity"] == pytest.approx(
            summary[summary["mode"] == "none"]["perplexity"].iloc[0])

    # The reference summary recomputed from the tom/<rep>/<m>/<task>/results.csv files
    # agrees with the percentages our metrics gave, point by point.
    ref = reference_summary(out / "tom").set_index("m")
    ours = summary[summary["mode"].isin(["none", "difference"])].set_index("m")
    for fam in ("unexpected", "transfer", "irony"):
        for m in ours.index:
            assert ref.loc[m, f"{fam}_percent_mean"] == pytest.approx(
                ours.loc[m, f"{fam}_percent_mean"])
    assert main(["summarize", "--root", str(out / "tom"), "--out_csv",
                 str(tmp_path / "tom_summary.csv")]) == 0
    written = pd.read_csv(tmp_path / "tom_summary.csv")
    assert {"unexpected_total_mean", "unexpected_total_var", "irony_percent_var",
            "avg_percent_unexpected_transfer"} <= set(written.columns)


def test_a_baseline_only_sweep_writes_its_tables(stores, tmp_path, capsys):
    """Issue 26: ``sweep --m_list 0`` writes the baseline tables and a verdict per claim that
    says it cannot be measured; ``summarize`` of that folder succeeds, and a damaged derived
    table (a 1-byte verdicts file) is rewritten from the points, not reported as damage."""
    paths, corpus = stores
    out = tmp_path / "sweep"
    assert main(_sweep_args(paths, corpus, out, "--m_list", "0")) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["mode"]) == ["none"] and list(summary["m"]) == [0.0]
    baseline = pd.read_csv(out / "specificity_baseline.csv")
    # the tiny model's one task per family: each family of the ToM prompts is in the table
    assert {"unexpected", "transfer", "irony"} <= set(baseline["family"])
    assert (baseline["n_prompts"] > 0).all()
    for name in ("specificity.csv", "specificity_conditions.csv", "specificity_contrasts.csv"):
        table = pd.read_csv(out / name)  # a header and no rows, not an empty file
        assert table.empty and {"label", "family", "value"} <= set(table.columns)

    def check_verdicts():
        verdicts = pd.read_csv(out / "specificity_verdicts.csv")
        assert list(verdicts["claim"]) == ["a", "b", "c", "d", "e"]
        assert set(verdicts["label"]) == {"none_s0_m0.0000e+00"}
        assert verdicts["sentence"].str.contains("cannot be measured: no perturbed point").all()
        assert verdicts["value"].isna().all()

    check_verdicts()
    capsys.readouterr()
    assert main(["summarize", str(out)]) == 0
    check_verdicts()
    (out / "specificity_verdicts.csv").write_text("\n")  # damaged: 1 byte
    (out / "specificity.csv").write_text("x")
    assert main(["summarize", str(out)]) == 0
    assert "error" not in capsys.readouterr().err
    check_verdicts()
    assert pd.read_csv(out / "specificity.csv").empty
    assert "no perturbed point" in (out / "report.html").read_text()


def test_reference_summary_by_hand(tmp_path):
    """Two reps of a hand-written tom/ folder: totals, percentages, sample variance."""
    for rep, (a, b) in {"1": ([[1, 0], [1, 1]], [[1, 0]]), "2": ([[0, 0], [1, 1]], [[1, 1]])}.items():
        d = tmp_path / "tom" / rep / "0.0"
        (d / "unexpected").mkdir(parents=True)
        (d / "transfer").mkdir(parents=True)
        pd.DataFrame(a, columns=["false belief (F)", "false belief (T)"]).to_csv(
            d / "unexpected" / "results.csv")  # with an index column, as pandas writes by default
        pd.DataFrame(b, columns=["no transfer (F)", "no transfer (T)"]).to_csv(
            d / "transfer" / "results.csv", index=False)
    row = reference_summary(tmp_path / "tom").iloc[0]
    # unexpected: totals 3 and 2 of 4 cells; transfer: 1 and 2 of 2 cells
    assert row["unexpected_total_mean"] == 2.5 and row["unexpected_total_var"] == 0.5
    assert row["unexpected_percent_mean"] == 62.5 and row["unexpected_percent_var"] == 312.5
    assert row["transfer_percent_mean"] == 75.0
    assert row["avg_percent_unexpected_transfer"] == (62.5 + 75.0) / 2


def _usage_error(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("tomsparse sweep: error:") and message in err


def test_bad_input(stores, tmp_path, capsys):
    paths, corpus = stores
    out = tmp_path / "bad"
    one_line_error(capsys, main(_sweep_args(paths, corpus, out, "--m_list", "0,1e-3",
                                             "--m_start", "0")), "not both")
    one_line_error(capsys, main(_sweep_args(paths, corpus, out, "--m_start", "0",
                                             "--m_end", "1e-3")), "go together")
    one_line_error(capsys, main(_sweep_args(paths, corpus, out)), "no m values")
    one_line_error(capsys, main(_sweep_args(paths, corpus, out, "--m_list", "0,1.5")), "[0, 1]")
    # list values are checked by argparse: its usage error, exit code 2, no traceback
    _usage_error(capsys, _sweep_args(paths, corpus, out, "--m_list", "0.01",
                                     "--controls", "random,banana"), "banana")
    _usage_error(capsys, _sweep_args(paths, corpus, out, "--m_list", "1e-5,x"), "'1e-5,x'")
    _usage_error(capsys, _sweep_args(paths, corpus, out, "--m_list", "0.01",
                                     "--random-seeds", "0,a"), "'0,a'")
    # --batch-size 0 is refused, not replaced by a default
    _usage_error(capsys, _sweep_args(paths, corpus, out, "--m_list", "0.01", "--batch-size", "0"),
                 "--batch-size: must be at least 1")
    # scores of another model (a different fingerprint)
    other = tiny_model("llama", rms_norm_eps=1e-3)  # same shapes, another config
    wrong = tmp_path / "wrong"
    save_scores(wrong, {m.name: torch.rand(m.shape) for m in describe(other).matrices},
                {"model": "other", "fingerprint": fingerprint(other)})
    args = _sweep_args(paths, corpus, out, "--m_list", "0.01")
    args[args.index(str(paths["tom"]))] = str(wrong)
    one_line_error(capsys, main(args), "fingerprint")
    one_line_error(capsys, main(["summarize", str(tmp_path / "nowhere")]), "no such folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(capsys, main(["summarize", str(empty)]), "results.csv")
    assert not out.exists() or not list((out / "points").glob("*.json"))


def test_changed_options_refused_via_cli(stores, tmp_path, capsys):
    paths, corpus = stores
    out = tmp_path / "s"
    assert main(_sweep_args(paths, corpus, out, "--m_list", "0.01", "--controls", "none")) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    one_line_error(capsys, main(_sweep_args(paths, corpus, out, "--m_list", "0.01",
                                             "--controls", "none", "--perturbation", "zero")),
                    "perturbation", "new --out")
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.parametrize("extra,words", [
    (["--matched-controls", "tom-only"], "cannot be size-matched"),
    (["--controls", "random,difference-p0.5"], ">= 1"),
    (["--match-m", "0.5"], "--match-m 0.5 is not among"),
    (["--match-tolerance", "2"], "--match-tolerance must lie in"),
])
def test_matched_and_family_options_are_checked(stores, tmp_path, capsys, extra, words):
    paths, corpus = stores
    try:
        code = main(_sweep_args(paths, corpus, tmp_path / "s", "--m_list", "0,0.01", *extra))
    except SystemExit as exc:  # argparse's usage error
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert words in err.strip().splitlines()[-1]  # one error line (after argparse's usage)


def test_score_prompts_sharing_a_story_with_the_evaluation_are_refused(tmp_path, capsys):
    """Issue 22.9: a ToM score store whose prompts' stories are evaluation stories is refused
    (one line naming the tasks) unless --allow-overlap; the check is in the sweep manifest."""
    import json

    from tomsparse.data.overlap import story_hashes
    from tomsparse.data.tasks import load_tasks

    with registered_model("tiny"):
        paths, corpus = write_stores(tmp_path)
        shared = [p.text for p in load_tasks("builtin").head(1).prompts()
                  if p.family == "transfer"][:2]
        manifest_path = paths["tom"] / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["data"] = {"story_sha256": story_hashes(shared)}
        manifest_path.write_text(json.dumps(manifest))
        out = tmp_path / "sweep"
        args = _sweep_args(paths, corpus, out, "--m_list", "0", "--matched-controls", "none")
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "transfer:1" in err[0] and "--allow-overlap" in err[0]
        assert "Traceback" not in err[0] and not out.exists()
        assert main([*args, "--allow-overlap"]) == 0
    record = json.loads((out / "sweep_manifest.json").read_text())["overlap"]
    assert record["checked"] and record["allowed"] and record["overlapping_tasks"] == ["transfer:1"]
