"""Task-swapped controls in the sweep and the judge (issue 37, items 2-3): the swapped mask
against a brute-force top-m / not-top-m computation from the two stores, claim (f) against an
independent computation (numpy cluster means, scipy.stats t), the refusal of a store of
another model or score, and the masks' Jaccard agreement against sets and simulation."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from tomsparse import stats
from tomsparse.cli.main import main
from tomsparse.config import SweepConfig
from tomsparse.errors import UserError
from tomsparse.judge import specificity as sp
from tomsparse.judge import verdicts as vd
from tomsparse.judge.agreement import difference_agreement, mask_agreement, random_overlap
from tomsparse.masks import build_rankings, masks_for, parse_mode, swapped_mode, swapped_name
from tomsparse.scores.store import save_scores
from tomsparse.sweep.folder import SweepFolder, point_label
from tomsparse.sweep.runner import sweep_points
from tomsparse.testing import registered_model, tiny_loaded_model

from test_specificity import build, is_tom, per_task_means, synthetic_prompts, t_bounds

MODE = "swapped-format-control"


# ----------------------------------------------------------------------------- helpers

def random_scores(lm, seed):
    gen = torch.Generator().manual_seed(seed)
    return {m.name: torch.rand(m.shape, generator=gen) for m in lm.description.matrices}


def brute_difference(first, generic, m):
    """{matrix: sorted flat indices} of top-k by ``first`` and not top-k by ``generic``,
    k = int(numel * m), ranked by (score descending, index ascending), with plain sets."""
    out = {}
    for name, x in first.items():
        a, g = x.reshape(-1).numpy(), generic[name].reshape(-1).numpy()
        k = int(a.size * m)
        top_a = set(np.lexsort((np.arange(a.size), -a))[:k].tolist())
        top_g = set(np.lexsort((np.arange(g.size), -g))[:k].tolist())
        out[name] = sorted(top_a - top_g)
    return out


@pytest.fixture
def stores(tmp_path):
    """A ToM, a generic and a format-control store of the tiny model (--model tiny)."""
    with registered_model("tiny"):
        lm = tiny_loaded_model("llama", name="tiny")
        scores, paths = {}, {}
        for i, kind in enumerate(("tom", "generic", "format-control")):
            scores[kind] = random_scores(lm, 11 + i)
            paths[kind] = tmp_path / f"scores_{kind}"
            save_scores(paths[kind], scores[kind],
                        {"model": "tiny", "fingerprint": lm.fingerprint, "dataset": kind,
                         "samples_sha256": f"{kind}-samples"})
        corpus = tmp_path / "corpus.txt"
        corpus.write_text("\n\n".join(f"plain generic text, paragraph {i}." for i in range(40)))
        yield lm, scores, paths, corpus


def sweep_args(paths, corpus, out, *extra):
    return ["sweep", "--model", "tiny", "--device", "cpu", "--scores-tom", str(paths["tom"]),
            "--scores-generic", str(paths["generic"]), "--task-limit", "1", "--corpus",
            str(corpus), "--ppl-max-tokens", "256", "--out", str(out), *extra]


# ----------------------------------------------------------------------------- masks

def test_swapped_mode_names_parse_and_refuse():
    assert swapped_mode("format-control") == MODE and swapped_name(MODE) == "format-control"
    assert swapped_name("difference") is None and swapped_name("none") is None
    assert parse_mode(MODE).base == MODE and parse_mode(MODE + "-x2").exclude_channels == 2
    assert point_label(MODE, 0, 1e-4) == "swapped-format-control_s0_m1.0000e-04"
    with pytest.raises(UserError, match="lowercase"):
        swapped_mode("Format_2")
    with pytest.raises(UserError, match="--scores-swapped"):
        SweepConfig(m_values=[0.0, 1e-4], modes=["difference", MODE])
    cfg = SweepConfig(m_values=[0.0, 1e-4, 3e-4], modes=["difference"])
    assert sweep_points(cfg) == [("none", 0, 0.0), ("difference", 0, 1e-4),
                                 ("difference", 0, 3e-4)]
    assert sweep_points(cfg, ["format-control"]) == [
        ("none", 0, 0.0), ("difference", 0, 1e-4), (MODE, 0, 1e-4), ("difference", 0, 3e-4),
        (MODE, 0, 3e-4)]


def test_swapped_mask_is_top_m_by_its_store_and_not_top_m_by_generic():
    lm = tiny_loaded_model("llama", name="tiny")
    swapped, generic = random_scores(lm, 3), random_scores(lm, 4)
    names = [m.name for m in lm.description.matrices]
    rankings = build_rankings(swapped, generic, names, m_max=0.05)
    for m in (0.01, 0.05):
        got = masks_for(rankings, m, MODE)
        want = brute_difference(swapped, generic, m)
        assert set(got) == set(names)
        for name in names:
            assert sorted(got[name].tolist()) == want[name], (name, m)
        # exactly the difference mask of these two stores
        diff = masks_for(rankings, m, "difference")
        assert all(torch.equal(got[n], diff[n]) for n in names)


# ----------------------------------------------------------------------------- the sweep

def test_sweep_evaluates_and_judges_the_swapped_mask(stores, tmp_path, capsys):
    lm, scores, paths, corpus = stores
    out = tmp_path / "sweep"
    common = ("--m_list", "0,0.01,0.02", "--controls", "random", "--random-seeds", "0,1",
              "--matched-controls", "none")
    # first without a swapped store: no claim (f), no agreement table
    assert main(sweep_args(paths, corpus, out, *common)) == 0
    folder = SweepFolder(out)
    before = pd.read_csv(folder.specificity("verdicts"))
    assert "f" not in set(before["claim"]) and not folder.mask_agreement.exists()
    assert "scores_swapped_sha" not in json.loads(folder.manifest.read_text())
    # then the same folder with one: its points are added, the others kept
    code = main(sweep_args(paths, corpus, out, *common,
                           "--scores-swapped", str(paths["format-control"])))
    assert code == 0, capsys.readouterr().err
    manifest = json.loads(folder.manifest.read_text())
    assert list(manifest["scores_swapped_sha"]) == ["format-control"]
    for m in (0.01, 0.02):
        label = point_label(MODE, 0, m)
        record = json.loads(folder.point_record(label).read_text())
        want = brute_difference(scores["format-control"], scores["generic"], m)
        assert record["mode"] == MODE and record["masked"] == sum(map(len, want.values()))
        per_matrix = pd.read_csv(folder.point_masks(label)).set_index("matrix")["masked"]
        assert {n: int(per_matrix[n]) for n in want} == {n: len(v) for n, v in want.items()}
    contrasts = pd.read_csv(folder.specificity("contrasts"))
    swapped = contrasts[contrasts["kind"] == "swapped"]
    assert set(swapped["reference_mode"]) == {MODE}
    assert set(swapped["label"]) == {point_label("difference", 0, m) for m in (0.01, 0.02)}
    verdicts = pd.read_csv(folder.specificity("verdicts"))
    f = verdicts[verdicts["claim"] == "f"]
    a = verdicts[verdicts["claim"] == "a"]
    assert len(f) == len(a) > 0            # one (f) per target and scope, as (a)
    assert f["sentence"].str.contains(MODE).all()
    # the claims of before keep their raw numbers (the Holm family now holds (f) too)
    old = before.set_index(["claim", "label", "family"])
    new = verdicts[verdicts["claim"] != "f"].set_index(["claim", "label", "family"])
    assert list(old.index) == list(new.index)
    for col in ("value", "lo_raw", "hi_raw", "p_raw"):
        assert np.allclose(old[col], new[col], equal_nan=True, rtol=0, atol=0), col
    # agreement: the difference mask and the swapped mask, against plain sets
    table = pd.read_csv(folder.mask_agreement)
    row = table[(table["role"] == "all") & np.isclose(table["m"], 0.02)].iloc[0]
    assert (row["first"], row["second"]) == ("difference", MODE)
    diff = brute_difference(scores["tom"], scores["generic"], 0.02)
    swap = brute_difference(scores["format-control"], scores["generic"], 0.02)
    shared = sum(len(set(diff[n]) & set(swap[n])) for n in diff)
    union = sum(len(set(diff[n]) | set(swap[n])) for n in diff)
    assert row["shared"] == shared and row["jaccard"] == pytest.approx(shared / union)
    page = (out / "report.html").read_text()
    assert "Mask agreement" in page and "task-swapped mask" in page
    # summarize judges it again the same way
    assert main(["summarize", str(out)]) == 0
    again = pd.read_csv(folder.specificity("verdicts"))
    assert list(again["claim"]) == list(verdicts["claim"])


@pytest.mark.parametrize("field, value, words", [
    ("fingerprint", "another-model", "fingerprint"),
    ("score_method", "snip", "snip scores"),
])
def test_a_swapped_store_of_another_model_or_score_is_refused(stores, tmp_path, capsys,
                                                              field, value, words):
    lm, scores, paths, corpus = stores
    bad = tmp_path / "scores_bad"
    fields = {"model": "tiny", "fingerprint": lm.fingerprint, "dataset": "format-control",
              "samples_sha256": "bad-samples", field: value}
    save_scores(bad, scores["format-control"], fields)
    out = tmp_path / "sweep"
    capsys.readouterr()
    code = main(sweep_args(paths, corpus, out, "--m_list", "0,0.01", "--controls", "random",
                           "--random-seeds", "0,1", "--matched-controls", "none",
                           "--scores-swapped", f"fc={bad}"))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert words in err and str(bad) in err and str(paths["tom"]) in err
    assert "recompute" in err
    assert not (out / "points").exists()


def test_two_swapped_stores_of_one_name_are_refused(stores, tmp_path, capsys):
    lm, scores, paths, corpus = stores
    code = main(sweep_args(paths, corpus, tmp_path / "sweep", "--m_list", "0,0.01",
                           "--scores-swapped", str(paths["format-control"]),
                           "--scores-swapped", f"format-control={paths['format-control']}"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "two stores named" in err


# ----------------------------------------------------------------------------- claim (f)

def claim_f_tables(include_swapped=True, n_tasks=8):
    frame = synthetic_prompts(n_tasks=n_tasks, families=("unexpected",))
    tom = is_tom(frame)
    rng = np.random.default_rng(37)
    target = np.where(tom, -1.0 + 0.3 * rng.standard_normal(len(frame)), 0.0)
    swapped = np.where(tom, -0.2 + 0.3 * rng.standard_normal(len(frame)), 0.0)
    pts = {"difference_s0_m1": ("difference", 0, 1e-4, 10.0, target),
           "random_s0_m1": ("random", 0, 1e-4, 10.0, 0.0),
           "random_s1_m1": ("random", 1, 1e-4, 10.0, 0.01)}
    if include_swapped:
        pts["swapped-format-control_s0_m1"] = (MODE, 0, 1e-4, 10.0, swapped)
    infos, prompts, _ = build(pts, n_tasks=n_tasks, families=("unexpected",))
    return frame, tom, target, swapped, infos, prompts


def test_claim_f_is_the_contrast_with_the_swapped_mask_over_clusters():
    frame, tom, target, swapped, infos, prompts = claim_f_tables()
    tables = sp.compute_specificity(infos, prompts, method="t")
    con = tables["contrasts"]
    row = con[(con["kind"] == "swapped") & (con["family"] == "unexpected")
              & (con["metric"] == "tom_margin_change_adj")]
    assert len(row) == 1
    row = row.iloc[0]
    # independent: per-cluster means of target - swapped over the false-belief prompts, and
    # the Student t-interval over them with clusters - 1 df
    d = per_task_means(frame, target - swapped, tom)
    lo, hi = t_bounds(d)
    assert row["reference"] == "swapped-format-control_s0_m1"
    assert row["reference_seeds"] == 1 and row["n_clusters"] == len(d) == 8
    assert row["value"] == pytest.approx(d.mean())
    assert (row["lo"], row["hi"]) == pytest.approx((lo, hi))
    assert row["df"] == len(d) - 1
    vs = vd.verdicts(tables, rules=vd.VerdictRules(interval_method="t"))
    f = [v for v in vs if v["claim"] == "f"]
    assert len(f) == 1
    f = f[0]
    se = d.std(ddof=1) / math.sqrt(len(d))
    assert f["value"] == pytest.approx(d.mean())
    assert (f["lo_raw"], f["hi_raw"]) == pytest.approx((lo, hi))
    assert f["p_raw"] == pytest.approx(2 * sps.t.sf(abs(d.mean() / se), len(d) - 1))
    assert f["status"] == stats.SHOWN and f["hi"] < 0
    assert f["reference"].startswith(MODE) and MODE in f["sentence"]
    # Holm: (f) is one more hypothesis of the run's family
    tested = [v for v in vs if np.isfinite(v["p_raw"])]
    assert "f" in {v["claim"] for v in tested} and "a" in {v["claim"] for v in tested}


def test_claim_f_cannot_be_measured_without_the_swapped_point():
    *_, infos, prompts = claim_f_tables(include_swapped=False)
    tables = sp.compute_specificity(infos, prompts, method="t")
    assert (tables["contrasts"]["kind"] != "swapped").all()
    # no swapped set known: no claim (f), the verdicts of before
    plain = vd.verdicts(tables)
    assert "f" not in {v["claim"] for v in plain}
    # the sweep was run with a swapped store whose point is missing
    vs = vd.verdicts(tables, swapped=["format-control"])
    f = [v for v in vs if v["claim"] == "f"]
    assert len(f) == 1 and f[0]["status"] == stats.CANNOT_BE_MEASURED
    assert "no swapped-format-control point" in f[0]["reason"]
    # the other claims keep their numbers: no p-value was added to the Holm family
    for old, new in zip(plain, [v for v in vs if v["claim"] != "f"]):
        for key in ("status", "value", "lo", "hi", "p_holm"):
            assert old[key] == new[key] or (isinstance(old[key], float)
                                            and math.isnan(old[key]) and math.isnan(new[key]))


def matched_search_table(target, mode, m, matched=True):
    """The searches table (``judge.tables.matched_controls``) of one swapped search."""
    from tomsparse.judge.tables import MATCHED_COLUMNS
    return pd.DataFrame([{"target": target, "target_m": 1e-4, "target_perplexity": 10.0,
                          "mode": mode, "m": m, "perplexity": 10.0, "ppl_change": 0.3,
                          "matched": matched, "evaluations": 5,
                          "label": point_label(mode, 0, m)}], columns=list(MATCHED_COLUMNS))


def test_claim_f_at_matched_damage_is_its_own_contrast_and_never_a_control_of_b():
    frame, tom, target, swapped, infos, prompts = claim_f_tables()
    # the swapped mask at the size its search matched to the target's perplexity: 3e-4
    rng = np.random.default_rng(38)
    bigger = np.where(tom, -0.8 + 0.3 * rng.standard_normal(len(frame)), 0.0)
    extra, extra_prompts, _ = build({"swapped-format-control_s0_m3": (MODE, 0, 3e-4, 10.0,
                                                                      bigger)},
                                    n_tasks=8, families=("unexpected",))
    infos = pd.concat([infos, extra[extra["mode"] == MODE]], ignore_index=True)
    prompts = {**prompts, "swapped-format-control_s0_m3": extra_prompts[
        "swapped-format-control_s0_m3"]}
    mapping = {"difference_s0_m1": ["swapped-format-control_s0_m3"]}
    tables = sp.compute_specificity(infos, prompts, method="t", matched=mapping)
    tables["matched"] = matched_search_table("difference_s0_m1", MODE, 3e-4)
    con = tables["contrasts"]
    assert not (con["kind"] == "matched").any()      # no control of claims (b) and (c)
    row = con[(con["kind"] == sp.SWAPPED_MATCHED) & (con["family"] == "unexpected")
              & (con["metric"] == "tom_margin_change_adj")].iloc[0]
    d = per_task_means(frame, target - bigger, tom)
    lo, hi = t_bounds(d)
    assert row["reference"] == "swapped-format-control_s0_m3"
    assert row["value"] == pytest.approx(d.mean())
    assert (row["lo"], row["hi"]) == pytest.approx((lo, hi))
    vs = vd.verdicts(tables, rules=vd.VerdictRules(interval_method="t"))
    f = [v for v in vs if v["claim"] == "f"]
    assert [v["reference"] for v in f] == [f"{MODE}, same m", f"{MODE} at matched damage"]
    assert f[1]["value"] == pytest.approx(d.mean())
    assert (f[1]["lo_raw"], f[1]["hi_raw"]) == pytest.approx((lo, hi))
    assert "matched damage" in f[1]["sentence"] and "perplexity" in f[1]["sentence"]
    # (b) has no damage-matched control: a swapped search is not one
    b = [v for v in vs if v["claim"] == "b"][0]
    assert b["status"] == stats.CANNOT_BE_MEASURED and MODE not in b["reason"]
    # a search that matched at the target's own m: one test, not two
    same = {"difference_s0_m1": ["swapped-format-control_s0_m1"]}
    tables = sp.compute_specificity(infos, prompts, method="t", matched=same)
    tables["matched"] = matched_search_table("difference_s0_m1", MODE, 1e-4)
    f = [v for v in vd.verdicts(tables) if v["claim"] == "f"]
    assert [v["reference"] for v in f] == [f"{MODE}, same m and matched damage"]
    assert "perplexity" in f[0]["sentence"]
    # a search that matched nothing and bracketed nothing: (f) at matched damage says so
    tables = sp.compute_specificity(infos, prompts, method="t")
    tables["matched"] = matched_search_table("difference_s0_m1", MODE, 0.05, matched=False)
    f = [v for v in vd.verdicts(tables) if v["claim"] == "f"]
    assert f[1]["status"] == stats.CANNOT_BE_MEASURED and "not matched" in f[1]["reason"]
    assert f[0]["status"] != stats.CANNOT_BE_MEASURED


def test_sweep_searches_the_swapped_mask_to_the_difference_masks_damage(stores, tmp_path):
    lm, scores, paths, corpus = stores
    out = tmp_path / "sweep"
    assert main(sweep_args(paths, corpus, out, "--m_list", "0,0.01", "--controls", "random",
                           "--random-seeds", "0,1", "--matched-controls", "generic-only",
                           "--match-search-tokens", "0",
                           "--scores-swapped", str(paths["format-control"]))) == 0
    folder = SweepFolder(out)
    target = json.loads(folder.matched.read_text())["targets"][point_label("difference", 0,
                                                                           0.01)]
    modes = [c["mode"] for c in target["controls"]]
    assert modes == ["generic-only", MODE]
    entry = target["controls"][1]
    assert entry["search"] and entry["search"][0][0] == pytest.approx(0.01)  # starts at m
    if entry["matched"]:   # evaluated in full at the matched size, judged by (f) alone
        record = json.loads(folder.point_record(entry["label"]).read_text())
        want = brute_difference(scores["format-control"], scores["generic"], entry["m"])
        assert record["masked"] == sum(map(len, want.values()))
    contrasts = pd.read_csv(folder.specificity("contrasts"))
    assert MODE not in set(contrasts.loc[contrasts["kind"] == "matched", "reference_mode"])
    verdicts = pd.read_csv(folder.specificity("verdicts"))
    f = verdicts[verdicts["claim"] == "f"]
    if entry["matched"] and entry["m"] == pytest.approx(0.01):   # matched at m itself:
        assert f"{MODE}, same m and matched damage" in set(f["reference"])   # one test
    else:
        assert f"{MODE} at matched damage" in set(f["reference"])


def test_baseline_only_sweep_names_claim_f_per_swapped_set():
    *_, infos, prompts = claim_f_tables(include_swapped=False)
    base = infos[infos["mode"] == "none"]
    tables = sp.compute_specificity(base, {k: prompts[k] for k in base["label"]})
    assert [v["claim"] for v in vd.verdicts(tables)] == ["a", "b", "c", "d", "e"]
    vs = vd.verdicts(tables, swapped=["format-control", "tom-nobelief"])
    assert [v["claim"] for v in vs] == ["a", "b", "c", "d", "e", "f", "f"]
    assert [v["reference"] for v in vs[-2:]] == ["swapped-format-control",
                                                 "swapped-tom-nobelief"]


# ----------------------------------------------------------------------------- agreement

def test_jaccard_per_role_and_overall_equals_plain_sets():
    rng = np.random.default_rng(5)
    numels = {"layers.0.q": 400, "layers.0.k": 300, "layers.1.q": 500}
    roles = {n: n.rsplit(".", 1)[-1] for n in numels}
    first = {n: torch.from_numpy(rng.choice(s, 60, replace=False)) for n, s in numels.items()}
    second = {n: torch.from_numpy(np.concatenate([first[n][:20].numpy(),
                                                  rng.choice(np.setdiff1d(np.arange(s),
                                                                          first[n].numpy()),
                                                             30, replace=False)]))
              for n, s in numels.items()}
    rows = {r["role"]: r for r in mask_agreement(first, second, numels, roles)}
    assert list(rows) == ["all", "q", "k"]
    for role, members in (("all", list(numels)), ("q", ["layers.0.q", "layers.1.q"]),
                          ("k", ["layers.0.k"])):
        a = {(n, int(i)) for n in members for i in first[n]}
        b = {(n, int(i)) for n in members for i in second[n]}
        r = rows[role]
        assert (r["masked_first"], r["masked_second"], r["shared"]) == (len(a), len(b),
                                                                       len(a & b))
        assert r["jaccard"] == pytest.approx(len(a & b) / len(a | b))
        exp = sum(len(first[n]) * len(second[n]) / numels[n] for n in members)
        assert r["random_shared"] == pytest.approx(exp)
        assert r["random_jaccard"] == pytest.approx(exp / (len(a) + len(b) - exp))
        assert r["ratio"] == pytest.approx(r["jaccard"] / r["random_jaccard"])


def test_random_expectation_matches_simulated_random_masks():
    """Independent uniform subsets of the masks' sizes per matrix: the mean shared count is
    the hypergeometric mean (exact), and the mean Jaccard is the ratio of expectations within
    about 1% at these sizes."""
    n, k1, k2 = np.array([2000, 5000, 800]), np.array([100, 300, 40]), np.array([150, 200, 60])
    shared, jac = random_overlap(k1, k2, n)
    rng = np.random.default_rng(0)
    sims_shared, sims_jac = [], []
    for _ in range(3000):
        both = 0
        for size, a, b in zip(n, k1, k2):
            both += np.intersect1d(rng.choice(size, a, replace=False),
                                   rng.choice(size, b, replace=False)).size
        sims_shared.append(both)
        sims_jac.append(both / (k1.sum() + k2.sum() - both))
    sims_shared, sims_jac = np.array(sims_shared), np.array(sims_jac)
    se = sims_shared.std(ddof=1) / math.sqrt(sims_shared.size)
    assert abs(sims_shared.mean() - shared) < 4 * se
    assert shared == pytest.approx(float(np.sum(sps.hypergeom(n, k1, k2).mean())))
    assert sims_jac.mean() == pytest.approx(jac, rel=0.01)


def test_difference_agreement_of_two_score_pairs():
    """Two attribution scores' difference masks (e.g. fisher vs snip stores), from the
    stores: the same Jaccard as plain sets of the brute-force masks."""
    lm = tiny_loaded_model("llama", name="tiny")
    pairs = {"fisher": (random_scores(lm, 1), random_scores(lm, 2)),
             "snip": (random_scores(lm, 3), random_scores(lm, 4))}
    table = difference_agreement(lm.description.matrices, pairs, [0.0, 0.03])
    assert set(table["m"]) == {0.03} and set(table["first"]) == {"fisher"}
    row = table[table["role"] == "all"].iloc[0]
    a = brute_difference(*pairs["fisher"], 0.03)
    b = brute_difference(*pairs["snip"], 0.03)
    shared = sum(len(set(a[n]) & set(b[n])) for n in a)
    union = sum(len(set(a[n]) | set(b[n])) for n in a)
    assert row["shared"] == shared and row["jaccard"] == pytest.approx(shared / union)
    same = difference_agreement(lm.description.matrices, {"x": pairs["fisher"],
                                                          "y": pairs["fisher"]}, [0.03])
    assert (same["jaccard"] == 1.0).all()


def test_the_bottom_line_names_claim_f_where_the_sweep_has_it():
    from tomsparse.judge.specificity import ABOVE
    from tomsparse.report.claims import bottom_line
    baseline = pd.DataFrame({"family": ["transfer"], "state": [ABOVE]})
    rows = [("a", "", "shown"), ("b", "", "not shown"), ("c", "", "not shown"),
            ("f", f"{MODE}, same m", "not shown"), ("f", f"{MODE} at matched damage", "shown")]
    verdicts = pd.DataFrame([{"claim": c, "reference": r, "status": s, "family": "transfer",
                              "m": 1e-4} for c, r, s in rows])
    line = bottom_line(verdicts, baseline, "tiny")
    assert line.endswith(f"(f): {MODE} (same m): not shown; {MODE} (matched damage): shown.")
    # a sweep without task-swapped masks: the sentence of before
    plain = bottom_line(verdicts[verdicts["claim"] != "f"], baseline, "tiny")
    assert "(f)" not in plain and plain.endswith("Specific means (a), (b) and (c) all shown.")
