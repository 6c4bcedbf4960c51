"""Specificity statistics (issue 15): synthetic per-prompt tables whose answer is known by
construction; the bootstrap is checked against a plain loop restatement."""

import json

import numpy as np
import pandas as pd
import pytest

from tomsparse.data.tasks import load_tasks
from tomsparse.errors import UserError
from tomsparse.sweep import specificity as sp

CONTENTS = ("false belief", "correct label", "informed protagonist", "open container")
# Expected (probe a, probe b) before reversal, restated from the task definitions (method.md 5).
CONTENTS_EXPECTED = {"false belief": ("o1", "o2"), "correct label": ("o1", "o1"),
                     "informed protagonist": ("o1", "o1"), "open container": ("o1", "o1")}


def synthetic_prompts(n_tasks=6, families=("unexpected", "irony")):
    """Rows of a per-prompt table: unexpected contents (16 prompts a task) and irony (2)."""
    rows = []
    for t in range(n_tasks):
        base = dict(task_id=str(t + 1), task_index=str(t))
        if "unexpected" in families:
            o1, o2 = f"apple{t}", f"pear{t}"
            for cond in CONTENTS:
                for rev in (False, True):
                    for probe, which in zip("ab", CONTENTS_EXPECTED[cond]):
                        exp = {"o1": o1, "o2": o2}[which]
                        if rev:
                            exp = o2 if exp == o1 else o1
                        alt = o2 if exp == o1 else o1
                        scen = f"{cond} ({'T' if rev else 'F'})"
                        rows.append(dict(base, family="unexpected", condition=cond,
                                         reversed=str(rev), scenario=scen, probe=probe,
                                         cell=scen, expected=exp, alternative=alt))
        if "irony" in families:
            for cond, exp, alt, rev, scen in (("irony", "No", "Yes", True, "Irony"),
                                              ("irony reversed", "Yes", "No", False,
                                               "Irony reversed")):
                rows.append(dict(base, family="irony", condition=cond, reversed=str(rev),
                                 scenario=scen, probe="", cell=scen, expected=exp,
                                 alternative=alt))
    return pd.DataFrame(rows)


def is_tom(frame):
    return (((frame["family"] == "unexpected") & (frame["condition"] == "false belief")
             & (frame["probe"] == "b")) | (frame["condition"] == "irony")).to_numpy()


def is_control(frame):
    return (((frame["family"] == "unexpected") & (frame["condition"] != "false belief")
             & (frame["probe"] == "b")) | (frame["condition"] == "irony reversed")).to_numpy()


def with_margin(frame, margin):
    out = frame.copy()
    out["margin"] = np.asarray(margin, dtype=float)
    out["correct"] = out["margin"] > 0
    return out


def build(points, base_margin=1.0, n_tasks=6, families=("unexpected", "irony")):
    """points: label -> (mode, seed, m, perplexity, delta array or float)."""
    frame = synthetic_prompts(n_tasks, families)
    base = np.broadcast_to(np.asarray(base_margin, dtype=float), len(frame)).copy()
    infos = [dict(label="none_s0_m0", mode="none", seed=0, m=0.0, perplexity=10.0,
                  masked=0, ppl_windows=2)]
    prompts = {"none_s0_m0": with_margin(frame, base)}
    for label, (mode, seed, m, ppl, delta) in points.items():
        infos.append(dict(label=label, mode=mode, seed=seed, m=m, perplexity=ppl,
                          masked=100, ppl_windows=2))
        prompts[label] = with_margin(frame, base + delta)
    return pd.DataFrame(infos), prompts, frame


def row(tables, label, family, metric, name="points"):
    t = tables[name]
    sel = t[(t["label"] == label) & (t["family"] == family) & (t["metric"] == metric)]
    assert len(sel) == 1, (label, family, metric)
    return sel.iloc[0]


def verdict(vs, claim, label=None):
    hits = [v for v in vs if v["claim"] == claim and (label is None or v["label"] == label)]
    assert len(hits) == 1
    return hits[0]


# ----------------------------------------------------------------------------- roles

def test_roles_follow_the_rendered_tasks():
    """ToM prompts are the belief probes whose answer differs from reality (probe a of the
    same scenario); controls are belief probes whose answer is reality."""
    prompts = load_tasks("builtin").head(3).prompts()
    frame = pd.DataFrame([p.__dict__ for p in prompts])
    frame["role"] = [sp.prompt_role(p.family, p.condition, p.probe, p.scenario)
                     for p in prompts]
    assert (frame["role"] != "").all()
    for fam in ("unexpected", "transfer"):
        sub = frame[frame["family"] == fam]
        reality = sub[sub["probe"] == "a"].set_index(["task_id", "scenario"])["expected"]
        belief = sub[sub["probe"] == "b"].set_index(["task_id", "scenario"])
        differs = belief["expected"] != reality.loc[belief.index]
        assert ((belief["role"] == "tom") == differs).all()
        assert set(belief["role"]) == {"tom", "control"}
        assert set(sub.loc[sub["probe"] == "a", "role"]) == {"fact"}
    irony = frame[frame["family"] == "irony"]
    assert set(irony.loc[irony["role"] == "tom", "expected"]) == {"No"}
    assert set(irony.loc[irony["role"] == "control", "expected"]) == {"Yes"}
    assert sp.prompt_role("tomi", "first-order", "", "first-order (false belief)") == "tom"
    assert sp.prompt_role("tomi", "second-order", "", "second-order (true belief)") == "control"
    assert sp.prompt_role("tomi", "reality", "", "reality") == "fact"


# ----------------------------------------------------------------------------- effects

def test_control_only_damage_is_not_a_belief_loss():
    frame = synthetic_prompts()
    ctrl = is_control(frame) & (frame["family"] == "unexpected").to_numpy()
    infos, prompts, _ = build({"difference_s0_m1": ("difference", 0, 1e-4, 10.2,
                                                    np.where(ctrl, -1.0, 0.0))})
    tables = sp.compute_specificity(infos, prompts, draws=300)
    gap = row(tables, "difference_s0_m1", "unexpected", "belief_gap_margin")
    assert gap["value"] == pytest.approx(1.0)            # ToM 0 minus control -1
    assert row(tables, "difference_s0_m1", "unexpected", "tom_margin_change")["value"] == 0
    assert row(tables, "difference_s0_m1", "unexpected",
               "control_margin_change")["value"] == pytest.approx(-1.0)
    c = verdict(sp.verdicts(tables), "c")
    assert c["status"] == sp.FAILS


def test_false_belief_only_damage_is_a_belief_loss():
    frame = synthetic_prompts(n_tasks=8)
    tom = is_tom(frame) & (frame["family"] == "unexpected").to_numpy()
    rng = np.random.default_rng(1)
    delta = np.where(tom, -1.0 + 0.2 * rng.standard_normal(len(frame)), 0.0)
    infos, prompts, _ = build({"difference_s0_m1": ("difference", 0, 1e-4, 10.2, delta)},
                              n_tasks=8)
    tables = sp.compute_specificity(infos, prompts, draws=300)
    gap = row(tables, "difference_s0_m1", sp.POOL_ABOVE, "belief_gap_margin")
    assert gap["hi"] < 0
    assert gap["value"] == pytest.approx(delta[tom].mean())
    assert verdict(sp.verdicts(tables), "c")["status"] == sp.HOLDS


def test_pure_answer_bias_is_a_bias_shift_not_a_tom_loss():
    frame = synthetic_prompts()
    irony = (frame["family"] == "irony").to_numpy()
    says_yes = (frame["expected"] == "Yes").to_numpy()
    # log P(Yes) - log P(No) rises by 0.8 on every irony prompt.
    delta = np.where(irony, np.where(says_yes, 0.8, -0.8), 0.0)
    infos, prompts, _ = build({"difference_s0_m1": ("difference", 0, 1e-4, 10.0, delta)})
    tables = sp.compute_specificity(infos, prompts, draws=300)
    label = "difference_s0_m1"
    assert row(tables, label, "irony", "tom_margin_change")["value"] == pytest.approx(-0.8)
    assert row(tables, label, "irony", "control_margin_change")["value"] == pytest.approx(0.8)
    assert row(tables, label, "irony", "bias_shift")["value"] == pytest.approx(0.8)
    assert row(tables, label, "irony", "tom_margin_change_adj")["value"] == pytest.approx(0.0)
    for pool in (sp.POOL_ALL, sp.POOL_ABOVE):
        assert row(tables, label, pool, "belief_gap_margin")["value"] == pytest.approx(0.0)
        assert row(tables, label, pool, "tom_margin_change_adj")["value"] == pytest.approx(0.0)
    base = tables["baseline"].set_index("family")
    assert base.loc["irony", "gap_confounded"] and not base.loc["unexpected", "gap_confounded"]


def test_baseline_at_chance_is_flagged_and_blocks_the_tom_verdicts():
    frame = synthetic_prompts(n_tasks=10)
    tom = is_tom(frame)
    # 6 of 10 tasks get their false-belief prompts right: above 0.5, but not beyond chance
    task = frame["task_index"].astype(int).to_numpy()
    base = np.where(tom, np.where(task % 5 < 3, 1.0, -1.0), 1.0)
    infos, prompts, _ = build({"difference_s0_m1": ("difference", 0, 1e-4, 10.0,
                                                    np.where(tom, -1.0, 0.0)),
                               "random_s0_m1": ("random", 0, 1e-4, 10.0, 0.0)},
                              base_margin=base, n_tasks=10)
    tables = sp.compute_specificity(infos, prompts, draws=500)
    b = tables["baseline"].set_index("family")
    assert b.loc["unexpected", "tom_accuracy"] == pytest.approx(0.6)
    assert b.loc["unexpected", "tom_accuracy_lo"] <= 0.5 <= b.loc["unexpected", "tom_accuracy_hi"]
    assert b["at_chance"].all()
    vs = sp.verdicts(tables)
    assert verdict(vs, "a")["status"] == sp.CANNOT
    assert verdict(vs, "c")["status"] == sp.CANNOT
    assert "at chance" in verdict(vs, "a")["sentence"]


def test_a_loss_whose_interval_covers_zero_does_not_hold():
    frame = synthetic_prompts(n_tasks=10, families=("unexpected",))
    tom = is_tom(frame)
    task = frame["task_index"].astype(int).to_numpy()
    delta = np.where(tom, np.where(task % 2 == 0, -1.0, 0.9), 0.0)   # mean -0.05
    infos, prompts, _ = build({"difference_s0_m1": ("difference", 0, 1e-4, 10.0, delta),
                               "random_s0_m1": ("random", 0, 1e-4, 10.0, 0.0)}, n_tasks=10,
                              families=("unexpected",))
    tables = sp.compute_specificity(infos, prompts, draws=500)
    vs = sp.verdicts(tables)
    for claim in ("a", "c"):
        v = verdict(vs, claim)
        assert v["value"] == pytest.approx(-0.05)
        assert v["lo"] < 0 < v["hi"] and v["status"] == sp.FAILS


# ----------------------------------------------------------------------------- bootstrap

def test_bootstrap_matches_a_plain_loop():
    n_tasks, draws, seed = 5, 200, 3
    frame = synthetic_prompts(n_tasks, families=("unexpected",))
    rng = np.random.default_rng(7)
    delta = rng.standard_normal(len(frame))
    infos, prompts, _ = build({"difference_s0_m1": ("difference", 0, 1e-4, 10.0, delta)},
                              n_tasks=n_tasks, families=("unexpected",))
    tables = sp.compute_specificity(infos, prompts, draws=draws, seed=seed)
    got = row(tables, "difference_s0_m1", "unexpected", "tom_margin_change")

    tom = is_tom(frame)
    task = frame["task_index"].astype(int).to_numpy()
    loop_rng = np.random.default_rng(seed)
    idx = loop_rng.integers(0, n_tasks, size=(draws, n_tasks))
    stats = []
    for b in range(draws):
        values = []
        for t in idx[b]:
            values.extend(delta[tom & (task == t)])
        stats.append(np.mean(values))
    lo, hi = np.percentile(stats, [2.5, 97.5])
    assert got["value"] == pytest.approx(delta[tom].mean())
    assert got["lo"] == pytest.approx(lo) and got["hi"] == pytest.approx(hi)
    assert got["n_tasks"] == n_tasks and got["n_prompts"] == 2 * n_tasks


def test_bootstrap_interval_covers_the_true_mean():
    true = -0.5
    covered = 0
    for rep in range(30):
        rng = np.random.default_rng(100 + rep)
        frame = synthetic_prompts(30, families=("unexpected",))
        task = frame["task_index"].astype(int).to_numpy()
        per_task = true + rng.standard_normal(30)     # one shift per task (clustered)
        delta = per_task[task]
        infos, prompts, _ = build({"d_s0_m1": ("difference", 0, 1e-4, 10.0, delta)},
                                  n_tasks=30, families=("unexpected",))
        tables = sp.compute_specificity(infos, prompts, draws=400, seed=rep)
        got = row(tables, "d_s0_m1", "unexpected", "tom_margin_change")
        covered += got["lo"] <= true <= got["hi"]
    assert covered >= 24                               # nominal 95%: 28.5 of 30


# ----------------------------------------------------------------------------- seeds, verdicts

def test_random_seeds_are_replicates_and_difference_minus_random():
    frame = synthetic_prompts()
    tom = is_tom(frame) & (frame["family"] == "unexpected").to_numpy()
    infos, prompts, _ = build({
        "difference_s0_m1": ("difference", 0, 1e-4, 10.0, np.where(tom, -1.0, 0.0)),
        "random_s0_m1": ("random", 0, 1e-4, 10.0, np.where(tom, -0.1, 0.0)),
        "random_s1_m1": ("random", 1, 1e-4, 10.0, np.where(tom, -0.3, 0.0))})
    tables = sp.compute_specificity(infos, prompts, draws=500)
    group = sp.group_label("random", 1e-4)
    g = row(tables, group, "unexpected", "tom_margin_change")
    assert g["value"] == pytest.approx(-0.2) and g["n_seeds"] == 2
    assert g["lo"] == pytest.approx(-0.3) and g["hi"] == pytest.approx(-0.1)
    c = tables["contrasts"]
    c = c[(c["label"] == "difference_s0_m1") & (c["family"] == "unexpected")
          & (c["metric"] == "tom_margin_change")].iloc[0]
    assert c["reference"] == group and c["value"] == pytest.approx(-0.8)
    assert c["lo"] == pytest.approx(-0.9) and c["hi"] == pytest.approx(-0.7)
    vs = sp.verdicts(tables)
    assert verdict(vs, "a")["status"] == sp.HOLDS
    assert verdict(vs, "b")["status"] == sp.CANNOT     # no matched controls given


def test_matched_controls_and_perplexity_threshold():
    frame = synthetic_prompts()
    tom = is_tom(frame) & (frame["family"] == "unexpected").to_numpy()
    hurt = np.where(tom, -1.0, 0.0)
    infos, prompts, _ = build({
        "difference_s0_m1": ("difference", 0, 1e-4, 10.5, hurt),
        "generic-only_s0_m3": ("generic-only", 0, 3e-4, 10.5, hurt)})
    tables = sp.compute_specificity(
        infos, prompts, draws=300, matched={"difference_s0_m1": ["generic-only_s0_m3"]})
    vs = sp.verdicts(tables, ppl_threshold=0.10)
    b = verdict(vs, "b", "difference_s0_m1")
    assert b["value"] == pytest.approx(0.0) and b["status"] == sp.FAILS
    d = verdict(vs, "d", "difference_s0_m1")
    assert d["value"] == pytest.approx(0.05) and d["status"] == sp.HOLDS
    assert verdict(sp.verdicts(tables, ppl_threshold=0.02), "d")["status"] == sp.FAILS
    with pytest.raises(UserError):
        sp.compute_specificity(infos, prompts, matched={"difference_s0_m1": ["nope"]})


def test_unpaired_points_are_refused():
    infos, prompts, _ = build({"random_s0_m1": ("random", 0, 1e-4, 10.0, 0.0)})
    prompts["random_s0_m1"] = prompts["random_s0_m1"].iloc[1:]
    with pytest.raises(UserError, match="not paired"):
        sp.compute_specificity(infos, prompts, draws=10)


def test_write_specificity_from_a_sweep_folder(tmp_path):
    frame = synthetic_prompts()
    tom = is_tom(frame)
    infos, prompts, _ = build({
        "difference_s0_m1.0000e-04": ("difference", 0, 1e-4, 12.0, np.where(tom, -1.0, 0.0)),
        "random_s0_m1.0000e-04": ("random", 0, 1e-4, 10.0, 0.0)})
    points = tmp_path / "points"
    points.mkdir()
    for info in infos.to_dict("records"):
        label = info.pop("label")
        (points / f"{label.replace('_m0', '_m0.0000e+00')}.json").write_text(json.dumps(info))
        prompts[label].to_csv(points / f"{label.replace('_m0', '_m0.0000e+00')}_prompts.csv",
                              index=False)
    paths = sp.write_specificity(tmp_path, draws=100)
    assert set(paths) >= {"points", "contrasts", "baseline", "verdicts"}
    table = pd.read_csv(tmp_path / "specificity.csv")
    assert set(table["family"]) >= {"unexpected", "irony", sp.POOL_ALL}
    verdicts = pd.read_csv(tmp_path / "specificity_verdicts.csv")
    assert list(verdicts["claim"]) == ["a", "b", "c", "d"]
    assert (verdicts.loc[verdicts["claim"] == "d", "status"] == sp.FAILS).all()  # +20%
