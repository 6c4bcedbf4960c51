"""``tomsparse compare`` (issue 15, part 5): several runs side by side from their specificity
tables; missing tables are one-line errors with exit code 2."""

import json

import numpy as np
import pandas as pd
import pytest
from test_report_plots import make_sweep, synthetic_prompts

from tomsparse.cli.main import main
from tomsparse.report.compare import compare_table, read_runs, side_by_side_tables


def make_run(folder, model, fingerprint, score_method=None, **sweep_options):
    folder.mkdir(parents=True)
    manifest = {"kind": "run", "model": model, "model_fingerprint": fingerprint}
    if score_method is not None:
        manifest["score_method"] = score_method
    (folder / "manifest.json").write_text(json.dumps(manifest))
    make_sweep(folder / "sweep", **sweep_options)
    return folder


@pytest.fixture
def two_runs(tmp_path):
    a = make_run(tmp_path / "a", "tiny-a", "fp-a")
    frame = synthetic_prompts()
    # model b: two of six tasks wrong at baseline, and other damage
    margin = -0.4 + 0.3 * frame["task_index"].astype(int).to_numpy()
    b = make_run(tmp_path / "b", "tiny-b", "fp-b", base_margin=margin,
                 points={"difference_s0_m3.0000e-05": ("difference", 0, 3e-5, 11.0, -0.25),
                         "random_s0_m3.0000e-05": ("random", 0, 3e-5, 10.0, 0.05)})
    return a, b


def test_compare_puts_each_runs_numbers_side_by_side(two_runs, tmp_path, capsys):
    a, b = two_runs
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert (out / "compare.csv").is_file() and (out / "compare.html").is_file()
    table = pd.read_csv(out / "compare.csv")
    assert list(dict.fromkeys(table["model"])) == ["tiny-a", "tiny-b"]
    assert set(table["fingerprint"]) == {"fp-a", "fp-b"}
    for run, model in ((a, "tiny-a"), (b, "tiny-b")):
        base = pd.read_csv(run / "sweep" / "specificity_baseline.csv").set_index("family")
        verdicts = pd.read_csv(run / "sweep" / "specificity_verdicts.csv")
        mine = table[table["model"] == model]
        acc = mine[(mine["section"] == "baseline")
                   & (mine["quantity"] == "false-belief accuracy")].set_index("family")
        assert acc.loc["unexpected", "value"] == pytest.approx(base.loc["unexpected",
                                                                        "tom_accuracy"])
        assert acc.loc["unexpected", "lo"] == pytest.approx(base.loc["unexpected",
                                                                     "tom_accuracy_lo"])
        assert acc.loc["unexpected", "state"] == base.loc["unexpected", "state"]
        # the text shows the run's baseline accuracy with its interval and state
        b0 = base.loc["unexpected"]
        assert (f"{b0.tom_accuracy:.2f} [{b0.tom_accuracy_lo:.2f}, {b0.tom_accuracy_hi:.2f}] "
                f"{b0.state}") in text
        got = mine[mine["section"] == "verdict"]
        assert len(got) == len(verdicts)
        for v in verdicts.itertuples():
            family = "" if pd.isna(v.family) else v.family
            same_m = np.isclose(got["m"], v.m) | (np.isnan(got["m"]) & np.isnan(v.m))
            row = got[(got["claim"] == v.claim) & same_m
                      & (got["family"].fillna("") == family)].iloc[0]
            assert row["state"] == v.status
            if np.isfinite(v.value):
                assert row["value"] == pytest.approx(v.value)
            if v.claim in "ac" and np.isfinite(v.lo):
                assert f"{v.value:+.2f} [{v.lo:+.2f}, {v.hi:+.2f}] {v.status}" in text
    # model a's accuracy is 1.00, model b's 0.67: different numbers, side by side
    assert "1.00 [1.00, 1.00]" in text and "0.67 [" in text
    assert "tiny-a" in text and "tiny-b" in text
    page = (out / "compare.html").read_text()
    assert "tiny-a" in page and "tiny-b" in page and "data:image/png" in page


def test_compare_columns_and_seed_groups(two_runs):
    runs = read_runs(list(two_runs))
    table = compare_table(runs)
    change = table[(table["section"] == "change") & (table["model"] == "tiny-a")]
    # the random seed group replaces its two seeds
    random = change[(change["mode"] == "random") & (change["quantity"]
                                                    == "tom_margin_change_adj")]
    assert len(random) == 1 and random.iloc[0]["value"] == pytest.approx(-0.2)
    assert "2 seeds" in random.iloc[0]["state"]
    wide = side_by_side_tables(table)
    verdicts = next(t for title, t in wide.items() if title.startswith("Verdicts"))
    assert list(verdicts.columns[-2:]) == ["tiny-a", "tiny-b"]


def test_same_model_twice_gets_two_columns(tmp_path):
    a = make_run(tmp_path / "x" / "run1", "tiny", "fp")
    b = make_run(tmp_path / "y" / "run2", "tiny", "fp")
    names = [r.name for r in read_runs([a, b])]
    assert names == ["tiny (run1)", "tiny (run2)"]


def test_runs_of_one_model_with_other_scores_are_named_by_the_score(tmp_path):
    """compare across attribution methods: runs of one model with --score fisher, snip and
    wanda get a column each, named by the score (Fisher, the default, by the model alone);
    two runs of one score still get their folder's name."""
    runs = [make_run(tmp_path / name, "tiny", "fp", score_method=method)
            for name, method in (("f", "fisher"), ("s", "snip"), ("w", "wanda"),
                                 ("w2", "wanda"))]
    names = [r.name for r in read_runs(runs)]
    assert names == ["tiny", "tiny [snip]", "tiny [wanda] (w)", "tiny [wanda] (w2)"]
    assert set(compare_table(read_runs(runs[:3]))["run"]) == {"tiny", "tiny [snip]",
                                                              "tiny [wanda]"}


def test_missing_tables_are_one_line_errors_with_exit_code_2(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "sweep").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"model": "tiny"}))
    assert main(["compare", str(run), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "specificity_baseline.csv" in err and "tomsparse summarize" in err
    assert not (tmp_path / "cmp").exists()

    make_sweep(tmp_path / "other" / "sweep")
    (tmp_path / "other" / "sweep" / "specificity_verdicts.csv").unlink()
    assert main(["compare", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "manifest.json: missing" in err

    (tmp_path / "other" / "manifest.json").write_text("{}")
    assert main(["compare", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "specificity_verdicts.csv: missing" in err

    assert main(["compare", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_compare_puts_a_planted_model_beside_its_base(two_runs, tmp_path, capsys):
    """A run on a planted model (its sweep holds planted_recovery.csv) gets a "planted"
    section: per m and mask the shares over all matrices (random masks: the mean over their
    seeds), the random mask's expectation beside them, and the line naming its base run."""
    from tomsparse.sweep.folder import SweepFolder
    a, b = two_runs
    rows = []
    for mode, seed, in_p, p_in in (("difference", 0, 0.02, 0.30), ("random", 0, 1e-4, 0.1),
                                   ("random", 1, 3e-4, 0.2)):
        for role, scale in (("all", 1.0), ("q", 2.0)):
            rows.append({"mode": mode, "seed": seed, "m": 1e-4, "role": role,
                         "mask_in_planted": in_p * scale, "planted_in_mask": p_in * scale,
                         "random_mask_in_planted": 1e-4, "random_planted_in_mask": 1e-4,
                         "enrichment": in_p / 1e-4, "base_fingerprint": "fp-a"})
    SweepFolder(b / "sweep").write_planted_recovery(pd.DataFrame(rows))
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    table = pd.read_csv(out / "compare.csv")
    planted = table[table["section"] == "planted"]
    assert set(planted["model"]) == {"tiny-b"}          # the base run has no planted section
    got = planted.set_index(["mode", "quantity"])["value"]
    assert got[("difference", "share of P in the mask")] == pytest.approx(0.30)
    assert got[("difference", "share of the mask in P")] == pytest.approx(0.02)
    assert got[("random", "share of P in the mask")] == pytest.approx(0.15)     # seeds' mean
    assert got[("random", "share of the mask in P")] == pytest.approx(2e-4)
    state = planted.set_index(["mode", "quantity"])["state"]
    assert state[("difference", "share of P in the mask")] == "random 0.0001"
    assert "planted into model fp-a (its base: tiny-a)" in text
