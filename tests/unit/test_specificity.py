"""Specificity statistics and verdicts (issues 15, 22): synthetic per-prompt tables whose
answer is known by construction; the intervals are checked against a plain restatement
(cluster means in a loop, scipy.stats.t quantiles), the gate against shortcut baselines."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from tomsparse.data.tasks import load_tasks
from tomsparse import stats
from tomsparse.errors import UserError
from tomsparse.judge import specificity as sp
from tomsparse.data.tasks import roles
from tomsparse.judge import verdicts as vd
from tomsparse.sweep.folder import group_label
from tomsparse.judge.tables import write_specificity

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


BASE_LOSSES = [2.30, 2.25, 2.35, 2.28, 2.32, 2.31, 2.27, 2.29]   # per-window NLL, ppl ~ 10


def build(points, base_margin=1.0, n_tasks=6, families=("unexpected", "irony"), losses=None):
    """points: label -> (mode, seed, m, perplexity, delta array or float); ``losses``: label ->
    per-window NLLs (the baseline's are BASE_LOSSES)."""
    frame = synthetic_prompts(n_tasks, families)
    base = np.broadcast_to(np.asarray(base_margin, dtype=float), len(frame)).copy()
    losses = losses or {}
    infos = [dict(label="none_s0_m0", mode="none", seed=0, m=0.0, perplexity=10.0,
                  masked=0, ppl_windows=8, ppl_unit_losses=BASE_LOSSES)]
    prompts = {"none_s0_m0": with_margin(frame, base)}
    for label, (mode, seed, m, ppl, delta) in points.items():
        infos.append(dict(label=label, mode=mode, seed=seed, m=m, perplexity=ppl,
                          masked=100, ppl_windows=8, ppl_unit_losses=losses.get(label)))
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
    frame["role"] = [roles.prompt_role(p.family, p.condition, p.probe, p.scenario)
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
    assert roles.prompt_role("tomi", "first-order", "", "first-order (false belief)") == "tom"
    assert roles.prompt_role("tomi", "second-order", "", "second-order (true belief)") == "control"
    assert roles.prompt_role("tomi", "reality", "", "reality") == "fact"


def t_bounds(values, level=0.95):
    """A plain restatement of the t-interval over independent unit values."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    half = sps.t.ppf(0.5 + level / 2, n - 1) * values.std(ddof=1) / np.sqrt(n)
    return values.mean() - half, values.mean() + half


def per_task_means(frame, values, select):
    """Mean of ``values`` over the selected prompts of each task, in a plain loop."""
    out = []
    for task in sorted(frame["task_index"].astype(int).unique()):
        sel = select & (frame["task_index"].astype(int) == task).to_numpy()
        if sel.any():
            out.append(values[sel].mean())
    return np.array(out)


def unexpected(frame):
    return (frame["family"] == "unexpected").to_numpy()


# ----------------------------------------------------------------------------- effects

def test_control_only_damage_is_not_a_belief_loss():
    frame = synthetic_prompts()
    ctrl = is_control(frame) & unexpected(frame)
    noise = 0.05 * np.random.default_rng(4).standard_normal(len(frame))
    # two matched masks of the kind: a comparison with masks drawn at random needs 2
    infos, prompts, _ = build({
        "difference_s0_m1": ("difference", 0, 1e-4, 10.2, np.where(ctrl, -1.0, 0.0)),
        "random-fraction_s0_m9": ("random-fraction", 0, 9e-4, 10.2, noise),
        "random-fraction_s1_m9": ("random-fraction", 1, 9e-4, 10.2, -noise)})
    tables = sp.compute_specificity(infos, prompts, matched={
        "difference_s0_m1": ["random-fraction_s0_m9", "random-fraction_s1_m9"]})
    gap = row(tables, "difference_s0_m1", "unexpected", "belief_gap_margin")
    assert gap["value"] == pytest.approx(1.0)            # ToM 0 minus control -1
    assert row(tables, "difference_s0_m1", "unexpected", "tom_margin_change")["value"] == 0
    assert row(tables, "difference_s0_m1", "unexpected",
               "control_margin_change")["value"] == pytest.approx(-1.0)
    vs = vd.verdicts(tables)
    c = [v for v in vs if v["claim"] == "c" and v["family"] == "unexpected"][0]
    assert c["status"] == stats.OPPOSITE                # the gap moved the other way


def test_false_belief_only_damage_is_a_belief_loss_beyond_matched_damage():
    frame = synthetic_prompts(n_tasks=8)
    tom = is_tom(frame) & unexpected(frame)
    rng = np.random.default_rng(1)
    delta = np.where(tom, -1.0 + 0.2 * rng.standard_normal(len(frame)), 0.0)
    # the matched control shrinks every margin by 30%: a belief gap of 0 (equal baselines)
    infos, prompts, _ = build({"difference_s0_m1": ("difference", 0, 1e-4, 10.2, delta),
                               "random-fraction_s0_m9": ("random-fraction", 0, 9e-4, 10.2,
                                                         -0.3),
                               "random-fraction_s1_m9": ("random-fraction", 1, 9e-4, 10.2,
                                                         -0.25)}, n_tasks=8)
    tables = sp.compute_specificity(infos, prompts, matched={
        "difference_s0_m1": ["random-fraction_s0_m9", "random-fraction_s1_m9"]})
    gap = row(tables, "difference_s0_m1", "unexpected", "belief_gap_margin")
    assert gap["hi"] < 0
    assert gap["value"] == pytest.approx(per_task_means(frame, delta, tom).mean())
    c = [v for v in vd.verdicts(tables) if v["claim"] == "c" and v["family"] == "unexpected"][0]
    assert c["status"] == stats.SHOWN and c["hi"] < 0 and c["lo"] <= c["lo_raw"]


def test_a_uniform_shrink_gives_no_belief_gap_against_its_matched_control():
    """Issue 22.4: every margin shrunk by a fraction e gives a raw belief gap of
    -e x (false-belief baseline - control baseline); against a control doing the same the
    difference in differences is 0, so claim (c) is not shown."""
    frame = synthetic_prompts(n_tasks=8, families=("unexpected",))
    base = np.where(is_tom(frame), 3.0, 1.0)                 # unequal baseline margins
    shrink = -0.5 * base
    infos, prompts, _ = build({"difference_s0_m1": ("difference", 0, 1e-4, 10.0, shrink),
                               "random-fraction_s0_m9": ("random-fraction", 0, 9e-4, 10.0,
                                                         shrink),
                               "random-fraction_s1_m9": ("random-fraction", 1, 9e-4, 10.0,
                                                         shrink)},
                              base_margin=base, n_tasks=8, families=("unexpected",))
    tables = sp.compute_specificity(infos, prompts, matched={
        "difference_s0_m1": ["random-fraction_s0_m9", "random-fraction_s1_m9"]})
    raw_gap = row(tables, "difference_s0_m1", "unexpected", "belief_gap_margin")["value"]
    assert raw_gap == pytest.approx(-0.5 * (3.0 - 1.0))      # the confound, by construction
    c = [v for v in vd.verdicts(tables) if v["claim"] == "c"][0]
    assert c["value"] == pytest.approx(0.0) and c["status"] != stats.SHOWN


@pytest.mark.parametrize("tom_base, control_base", [(3.0, 1.0), (1.0, 3.0)])
def test_proportional_damage_cannot_fake_or_reverse_claim_c(tom_base, control_base):
    """Issue 33.2: the difference mask shrinks every margin by 40%, its matched controls by
    10% (matching perplexity does not equalise the shrink on task prompts): the raw gap moves
    with the baseline ordering, the relative gap is 0 for both, so (c) is never shown or
    opposite, whichever role starts higher."""
    frame = synthetic_prompts(n_tasks=12, families=("unexpected",))
    rng = np.random.default_rng(11)
    base = np.where(is_tom(frame), tom_base, control_base) * (1 + 0.1 * rng.random(len(frame)))
    noise = 0.01 * rng.standard_normal(len(frame))
    infos, prompts, _ = build({
        "difference_s0_m1": ("difference", 0, 1e-4, 20.0, -0.4 * base + noise),
        "random-fraction_s0_m9": ("random-fraction", 0, 9e-4, 20.0, -0.1 * base),
        "random-fraction_s1_m9": ("random-fraction", 1, 9e-4, 20.0, -0.1 * base - noise)},
        base_margin=base, n_tasks=12, families=("unexpected",))
    tables = sp.compute_specificity(infos, prompts, matched={
        "difference_s0_m1": ["random-fraction_s0_m9", "random-fraction_s1_m9"]})
    raw = row(tables, "difference_s0_m1", "unexpected", "belief_gap_margin")["value"]
    assert abs(raw) > 0.5                                  # the raw gap is fooled
    rel = row(tables, "difference_s0_m1", "unexpected", "belief_gap_relative")["value"]
    assert rel == pytest.approx(0.0, abs=0.02)
    c = verdict(vd.verdicts(tables), "c")
    assert c["metric"] == "belief_gap_relative"
    assert c["status"] not in (stats.SHOWN, stats.OPPOSITE), c["sentence"]


def test_irony_yes_shift_under_generation_is_not_tom_damage():
    """Issue 33.6: under generation scoring every irony ToM prompt expects "No"; a model
    that drifts toward "Yes" loses ToM accuracy and gains control accuracy. The bias-adjusted
    accuracy change removes the drift."""
    frame = synthetic_prompts(n_tasks=10, families=("irony",))
    task = frame["task_index"].astype(int).to_numpy()
    says_yes = (frame["expected"] == "Yes").to_numpy()
    # at baseline every prompt right; after, half the clusters answer "Yes" to everything
    drift = task % 2 == 0
    delta = np.where(drift & ~says_yes, -2.0, 0.0)
    infos, prompts, _ = build({"difference_s0_m1": ("difference", 0, 1e-4, 10.0, delta)},
                              n_tasks=10, families=("irony",))
    for label in prompts:
        prompts[label] = prompts[label].assign(margin=np.nan)
    tables = sp.compute_specificity(infos, prompts)
    raw = row(tables, "difference_s0_m1", "irony", "tom_accuracy_change")["value"]
    adj = row(tables, "difference_s0_m1", "irony", "tom_accuracy_change_adj")["value"]
    assert raw == pytest.approx(-0.5) and adj == pytest.approx(-0.25)
    # restated: in a drifting cluster ToM accuracy 1 -> 0 and control 1 -> 1, so the shift
    # toward "Yes" over both prompts is (+1 + 0) / 2 = 0.5 and the adjusted change
    # -1 + 0.5 = -0.5: half the drift is removed (with one answer pair and ToM and control
    # expecting opposite words, the rest cannot be told from a lost reading, which is why
    # irony's claim (c) is not judged)
    per_cluster = np.where(np.arange(10) % 2 == 0, -1.0 + 0.5, 0.0)
    assert adj == pytest.approx(per_cluster.mean())


def test_pure_answer_bias_is_a_bias_shift_not_a_tom_loss():
    frame = synthetic_prompts()
    irony = (frame["family"] == "irony").to_numpy()
    says_yes = (frame["expected"] == "Yes").to_numpy()
    # log P(Yes) - log P(No) rises by 0.8 on every irony prompt.
    delta = np.where(irony, np.where(says_yes, 0.8, -0.8), 0.0)
    infos, prompts, _ = build({"difference_s0_m1": ("difference", 0, 1e-4, 10.0, delta)})
    tables = sp.compute_specificity(infos, prompts)
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


def test_irony_resamples_scenarios_not_tasks():
    """Irony tasks sharing a ``cluster`` (the story scenario) are one unit of resampling."""
    frame = synthetic_prompts(n_tasks=12, families=("irony",))
    frame["cluster"] = "irony scenario " + (frame["task_index"].astype(int) // 3).astype(str)
    rng = np.random.default_rng(3)
    delta = rng.standard_normal(len(frame))
    base = with_margin(frame, np.ones(len(frame)))
    infos = pd.DataFrame([dict(label="none_s0_m0", mode="none", seed=0, m=0.0, perplexity=10.0,
                               masked=0, ppl_windows=1),
                          dict(label="difference_s0_m1", mode="difference", seed=0, m=1e-4,
                               perplexity=10.0, masked=10, ppl_windows=1)])
    tables = sp.compute_specificity(infos, {"none_s0_m0": base,
                                            "difference_s0_m1": with_margin(frame, 1 + delta)},
                                    method="t")   # restated below as a plain t-interval
    got = row(tables, "difference_s0_m1", "irony", "tom_margin_change")
    tom = is_tom(frame)
    scen = frame["cluster"].to_numpy()
    means = [delta[tom & (scen == c)].mean() for c in sorted(set(scen))]
    assert got["n_clusters"] == 4
    assert (got["lo"], got["hi"]) == pytest.approx(t_bounds(means))
    assert tables["baseline"].set_index("family").loc["irony", "cluster_unit"] == "scenario"


# ----------------------------------------------------------------------------- chance gate

def test_a_shortcut_model_does_not_pass_its_own_controls():
    """False-belief prompts all right but every true-belief control wrong (an "answer the
    label" heuristic): accuracy 1.0 on false belief, yet the gate fails and nothing on that
    family is judged."""
    frame = synthetic_prompts(n_tasks=10, families=("unexpected",))
    base = np.where(is_control(frame), -1.0, 1.0)
    infos, prompts, _ = build({"difference_s0_m1": ("difference", 0, 1e-4, 10.0,
                                                    np.where(is_tom(frame), -2.0, 0.0)),
                               "random_s0_m1": ("random", 0, 1e-4, 10.0, 0.0)},
                              base_margin=base, n_tasks=10, families=("unexpected",))
    tables = sp.compute_specificity(infos, prompts)
    b = tables["baseline"].set_index("family").loc["unexpected"]
    assert b["tom_accuracy"] == pytest.approx(1.0)
    assert b["gate_passed"] == 0 and b["state"] == sp.NOT_ABOVE
    vs = vd.verdicts(tables)
    a = [v for v in vs if v["claim"] == "a" and v["family"] == "unexpected"][0]
    assert a["status"] == stats.CANNOT_BE_MEASURED and vd.FAILS_GATE in a["sentence"]
    pooled = [v for v in vs if v["claim"] == "a" and v["family"] == sp.POOL_ABOVE][0]
    assert "no family passes" in pooled["reason"]


def test_gate_is_the_exact_binomial_test_over_clusters():
    """3 of 10 clusters passed beat guessing (the chance test, kept beside the gate), but the
    model does not do the task: the family is not judged."""
    frame = synthetic_prompts(n_tasks=10, families=("unexpected",))
    task = frame["task_index"].astype(int).to_numpy()
    # tasks 0-2 fully right; the others miss one control each
    wrong = (is_control(frame) & (frame["condition"] == "open container").to_numpy()
             & (task >= 3))
    base = np.where(wrong, -1.0, 1.0)
    infos, prompts, _ = build({}, base_margin=base, n_tasks=10, families=("unexpected",))
    b = sp.compute_specificity(infos, prompts)["baseline"].iloc[0]
    chance = 0.5 ** 8                       # 2 false-belief + 6 control prompts per task
    assert b["gate_passed"] == 3 and b["gate_clusters"] == 10
    assert b["chance"] == pytest.approx(chance)
    assert b["chance_p"] == pytest.approx(sps.binom.sf(2, 10, chance)) and b["above_chance"]
    # the pass-rate gate: one-sided 95% Clopper-Pearson bound of 3/10, brute force
    assert b["pass_rate_lo"] == pytest.approx(sps.beta.ppf(0.05, 3, 8))
    assert b["state"] == sp.NOT_ABOVE and b["judged_clusters"] == 0


@pytest.mark.parametrize("n_pass, passes", [(10, True), (9, True), (8, False), (5, False)])
def test_gate_needs_most_clusters_passed_and_judges_only_those(n_pass, passes):
    """Issue 33.1: a family is judged when the lower bound of its cluster pass rate is above
    0.5 (10 of 10: bound 0.74; 9 of 10: 0.61; 8 of 10: 0.49), and every claim on it is
    computed on the clusters passed at baseline."""
    frame = synthetic_prompts(n_tasks=10, families=("unexpected",))
    task = frame["task_index"].astype(int).to_numpy()
    failed = task >= n_pass
    wrong = is_control(frame) & (frame["condition"] == "open container").to_numpy() & failed
    base = np.where(wrong, -1.0, 1.0)
    # damage on the false-belief prompts of the passed clusters only, a large loss elsewhere
    delta = np.where(is_tom(frame), np.where(failed, -5.0, -1.0 - 0.1 * task), 0.0)
    infos, prompts, _ = build({"difference_s0_m1": ("difference", 0, 1e-4, 10.0, delta)},
                              base_margin=base, n_tasks=10, families=("unexpected",))
    tables = sp.compute_specificity(infos, prompts)
    b = tables["baseline"].iloc[0]
    assert b["pass_rate"] == pytest.approx(n_pass / 10)
    assert b["pass_rate_lo"] == pytest.approx(sps.beta.ppf(0.05, n_pass, 10 - n_pass + 1))
    assert (b["state"] == sp.ABOVE) == passes
    got = row(tables, "difference_s0_m1", "unexpected", "tom_margin_change")
    if passes:
        assert b["judged_clusters"] == n_pass and got["n_clusters"] == n_pass
        assert got["value"] == pytest.approx(np.mean([-1.0 - 0.1 * t for t in range(n_pass)]))
    else:
        assert got["n_clusters"] == 10    # described over every cluster, judged nowhere


# ----------------------------------------------------------------------------- intervals

def test_skew_method_is_the_stats_engines():
    """Issue 33.4: the default intervals are ``stats``' skew-aware ones, the same numbers as
    ``stats.paired_interval(method="skew")`` over the same cluster means, and the verdicts
    rebuild them at their Holm level with the recorded skewness."""
    n_tasks = 9
    frame = synthetic_prompts(n_tasks, families=("unexpected",))
    task = frame["task_index"].astype(int).to_numpy()
    delta = np.where(is_tom(frame), -np.random.default_rng(5).exponential(1.0, n_tasks)[task],
                     0.0)
    infos, prompts, _ = build({"difference_s0_m1": ("difference", 0, 1e-4, 10.0, delta)},
                              n_tasks=n_tasks, families=("unexpected",))
    got = row(sp.compute_specificity(infos, prompts), "difference_s0_m1", "unexpected",
              "tom_margin_change")
    want = stats.paired_interval(delta[is_tom(frame)], task[is_tom(frame)], method="skew")
    assert got["method"] == "skew" and got["skewness"] == pytest.approx(want.skewness)
    assert (got["lo"], got["hi"]) == pytest.approx((want.lo, want.hi))
    t = stats.paired_interval(delta[is_tom(frame)], task[is_tom(frame)], method="t")
    assert want.hi - want.lo > t.hi - t.lo                 # widened on the skewed side


def test_point_interval_is_a_t_interval_over_task_means():
    n_tasks = 7
    frame = synthetic_prompts(n_tasks, families=("unexpected",))
    delta = np.random.default_rng(7).standard_normal(len(frame))
    infos, prompts, _ = build({"difference_s0_m1": ("difference", 0, 1e-4, 10.0, delta)},
                              n_tasks=n_tasks, families=("unexpected",))
    got = row(sp.compute_specificity(infos, prompts, method="t"), "difference_s0_m1", "unexpected",
              "tom_margin_change")
    means = per_task_means(frame, delta, is_tom(frame))
    assert got["value"] == pytest.approx(means.mean())
    assert (got["lo"], got["hi"]) == pytest.approx(t_bounds(means))
    assert got["n_clusters"] == n_tasks and got["n_prompts"] == 2 * n_tasks
    assert got["df"] == n_tasks - 1


def test_interval_covers_the_true_mean_at_six_clusters():
    true, covered, reps = -0.5, 0, 60
    for rep in range(reps):
        rng = np.random.default_rng(100 + rep)
        frame = synthetic_prompts(6, families=("unexpected",))
        task = frame["task_index"].astype(int).to_numpy()
        delta = (true + rng.standard_normal(6))[task] + 0.3 * rng.standard_normal(len(frame))
        infos, prompts, _ = build({"d_s0_m1": ("difference", 0, 1e-4, 10.0, delta)},
                                  n_tasks=6, families=("unexpected",))
        got = row(sp.compute_specificity(infos, prompts), "d_s0_m1", "unexpected",
                  "tom_margin_change")
        covered += got["lo"] <= true <= got["hi"]
    assert covered >= 52                 # nominal 57 of 60; P(fewer than 52) < 1% at 95%


def test_random_seeds_add_their_spread_and_the_contrast_subtracts_their_mean():
    frame = synthetic_prompts(n_tasks=8, families=("unexpected",))
    tom = is_tom(frame)
    rng = np.random.default_rng(5)
    seeds = {s: np.where(tom, -0.1 * (s + 1) + 0.05 * rng.standard_normal(len(frame)), 0.0)
             for s in range(4)}
    target = np.where(tom, -1.0 + 0.1 * rng.standard_normal(len(frame)), 0.0)
    pts = {"difference_s0_m1": ("difference", 0, 1e-4, 10.0, target)}
    pts.update({f"random_s{s}_m1": ("random", s, 1e-4, 10.0, d) for s, d in seeds.items()})
    infos, prompts, _ = build(pts, n_tasks=8, families=("unexpected",))
    tables = sp.compute_specificity(infos, prompts, method="t")
    group = group_label("random", 1e-4)
    # plain restatement: per-task seed means, cluster variance + mask variance, WS df
    per_seed = np.array([per_task_means(frame, d, tom) for d in seeds.values()])   # 4 x 8
    d = per_task_means(frame, target, tom) - per_seed.mean(axis=0)
    v_c, v_m = d.var(ddof=1) / 8, per_seed.mean(axis=1).var(ddof=1) / 4
    df = (v_c + v_m) ** 2 / (v_c ** 2 / 7 + v_m ** 2 / 3)
    half = sps.t.ppf(0.975, df) * np.sqrt(v_c + v_m)
    c = tables["contrasts"]
    c = c[(c["label"] == "difference_s0_m1") & (c["family"] == "unexpected")
          & (c["metric"] == "tom_margin_change")].iloc[0]
    assert c["reference"] == group and c["value"] == pytest.approx(d.mean())
    assert (c["lo"], c["hi"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert c["rank_p"] == pytest.approx(1 / 5)        # more damage than all 4 masks
    g = row(tables, group, "unexpected", "tom_margin_change")
    one = row(tables, "random_s0_m1", "unexpected", "tom_margin_change")
    assert g["n_seeds"] == 4 and g["hi"] - g["lo"] > one["hi"] - one["lo"]
    a = [v for v in vd.verdicts(tables) if v["claim"] == "a" and v["family"] == "unexpected"][0]
    assert a["status"] == stats.SHOWN and a["n_clusters"] == 8


def test_outcomes_not_shown_ruled_out_and_opposite():
    frame = synthetic_prompts(n_tasks=10, families=("unexpected",))
    tom, task = is_tom(frame), frame["task_index"].astype(int).to_numpy()
    covers = np.where(tom, np.where(task % 2 == 0, -1.0, 0.9), 0.0)     # mean -0.05, wide
    tiny = np.where(tom, 0.01 * np.where(task % 2 == 0, -1.0, 1.0), 0.0)  # within 0.25 nats
    helps = np.where(tom, 1.0 + 0.05 * (task % 3), 0.0)
    for delta, outcome in ((covers, stats.NOT_SHOWN), (tiny, stats.RULED_OUT),
                           (helps, stats.OPPOSITE)):
        infos, prompts, _ = build({"difference_s0_m1": ("difference", 0, 1e-4, 10.0, delta),
                                   "random_s0_m1": ("random", 0, 1e-4, 10.0, 0.0),
                                   "random_s1_m1": ("random", 1, 1e-4, 10.0, 0.0)},
                                  n_tasks=10, families=("unexpected",))
        vs = vd.verdicts(sp.compute_specificity(infos, prompts))
        a = [v for v in vs if v["claim"] == "a"][0]
        assert a["status"] == outcome, (outcome, a["sentence"])
    with pytest.raises(UserError, match="equivalence-nats"):
        vd.VerdictRules(margin_nats=0)


def test_holm_adjusts_every_claim_of_the_run_together():
    frame = synthetic_prompts(n_tasks=8)
    tom = is_tom(frame)
    rng = np.random.default_rng(2)
    pts, losses = {}, {}
    for i, m in enumerate((1e-5, 3e-5, 1e-4)):
        pts[f"difference_s0_m{i}"] = ("difference", 0, m, 10.0,
                                      np.where(tom, -0.3 * (i + 1) + 0.3 *
                                               rng.standard_normal(len(frame)), 0.0))
        pts[f"random_s0_m{i}"] = ("random", 0, m, 10.0, 0.0)
        pts[f"random_s1_m{i}"] = ("random", 1, m, 10.0, 0.0)
        # +1% to +3% per window, with a little spread (a zero spread has no t-interval)
        losses[f"difference_s0_m{i}"] = [x + 0.01 * (i + 1) + 0.002 * (k % 3)
                                         for k, x in enumerate(BASE_LOSSES)]
    infos, prompts, _ = build(pts, n_tasks=8, losses=losses)
    vs = pd.DataFrame(vd.verdicts(sp.compute_specificity(infos, prompts)))
    tested = vs[np.isfinite(vs["p_raw"])]
    # Holm, restated: one family over the directional tests and the equivalence tests (issue
    # 33.6), sorted p times (k - i), running maximum, capped at 1
    both = np.concatenate([tested["p_raw"].to_numpy(), vs["tost_p"].to_numpy()])
    p = both[np.isfinite(both)]
    order = np.argsort(p)
    adj = np.maximum.accumulate(np.minimum(1, (len(p) - np.arange(len(p))) * p[order]))
    expected = np.empty_like(p)
    expected[order] = adj
    assert tested["p_holm"].to_numpy() == pytest.approx(expected[:len(tested)])
    assert vs["tost_p_holm"].dropna().to_numpy() == pytest.approx(expected[len(tested):])
    assert set(tested["claim"]) >= {"a", "d", "e"} and len(tested) >= 9
    assert ((tested["hi"] - tested["lo"]) >= (tested["hi_raw"] - tested["lo_raw"]) - 1e-12).all()
    shown = tested[tested["status"] == stats.SHOWN]
    assert (shown["p_holm"] <= 0.05).all()
    d = vs[vs["claim"] == "d"].iloc[0]
    assert d["status"] == stats.SHOWN                     # +1% to +3%, well below x1.10


def test_perplexity_claim_has_an_interval_over_windows():
    frame = synthetic_prompts()
    losses = {"difference_s0_m1": [x + 0.3 + 0.01 * k for k, x in enumerate(BASE_LOSSES)]}
    infos, prompts, _ = build({"difference_s0_m1": ("difference", 0, 1e-4, 13.5, 0.0)},
                              losses=losses)
    tables = sp.compute_specificity(infos, prompts)
    r = row(tables, "difference_s0_m1", "unexpected", "tom_margin_change")
    diffs = np.array(losses["difference_s0_m1"]) - np.array(BASE_LOSSES)
    lo, hi = t_bounds(diffs)
    assert r["ppl_ratio"] == pytest.approx(np.exp(diffs.mean()))
    assert (r["ppl_ratio_lo"], r["ppl_ratio_hi"]) == pytest.approx((np.exp(lo), np.exp(hi)))
    d = [v for v in vd.verdicts(tables) if v["claim"] == "d"][0]
    assert d["status"] == stats.OPPOSITE                  # ~x1.4: surely above 1.10
    old = infos.copy()
    old["ppl_unit_losses"] = None                          # records from before the losses
    d = [v for v in vd.verdicts(sp.compute_specificity(old, prompts)) if v["claim"] == "d"][0]
    assert d["status"] == stats.CANNOT_BE_MEASURED and "per-window" in d["reason"]


def test_generation_scoring_is_judged_on_accuracy_and_never_nan():
    """Issue 22.1: under generation every margin is NaN; claims are judged on correctness,
    and a matched control does not crash the verdicts."""
    frame = synthetic_prompts(n_tasks=8, families=("unexpected",))
    tom, task = is_tom(frame), frame["task_index"].astype(int).to_numpy()
    infos, prompts, _ = build({
        "difference_s0_m1": ("difference", 0, 1e-4, 10.0, np.where(tom & (task < 6), -2.0, 0.0)),
        "random_s0_m1": ("random", 0, 1e-4, 10.0, 0.0),
        "random_s1_m1": ("random", 1, 1e-4, 10.0, 0.0),
        "random-fraction_s0_m9": ("random-fraction", 0, 9e-4, 10.0, 0.0),
        "random-fraction_s1_m9": ("random-fraction", 1, 9e-4, 10.0, 0.0)},
        n_tasks=8, families=("unexpected",))
    for label in prompts:
        prompts[label] = prompts[label].assign(margin=np.nan)
    # the t-interval: 6 of 8 clusters at -1 and 2 at 0 is a skewed sample, which the skew-aware
    # interval (the default) widens; test_skew_method_is_the_stats_engines checks that one
    tables = sp.compute_specificity(infos, prompts, method="t", matched={
        "difference_s0_m1": ["random-fraction_s0_m9", "random-fraction_s1_m9"]})
    assert tables["info"].iloc[0]["scoring"] == "generation"
    vs = vd.verdicts(tables)
    judged = [v for v in vs if v["claim"] in "abc" and v["family"] == "unexpected"]
    assert {v["metric"] for v in judged} <= {"tom_accuracy_change_adj", "belief_gap_accuracy"}
    assert all(v["status"] in stats.OUTCOMES and "nan" not in v["sentence"] for v in judged)
    a = [v for v in judged if v["claim"] == "a"][0]
    assert a["value"] == pytest.approx(-0.75) and a["status"] == stats.SHOWN


def test_matched_controls_unknown_label_and_unpaired_points_are_refused():
    infos, prompts, _ = build({"difference_s0_m1": ("difference", 0, 1e-4, 10.0, 0.0),
                               "random_s0_m1": ("random", 0, 1e-4, 10.0, 0.0)})
    with pytest.raises(UserError, match="unknown point label"):
        sp.compute_specificity(infos, prompts, matched={"difference_s0_m1": ["nope"]})
    prompts["random_s0_m1"] = prompts["random_s0_m1"].iloc[1:]
    with pytest.raises(UserError, match="not paired"):
        sp.compute_specificity(infos, prompts)


def test_write_specificity_from_a_sweep_folder(tmp_path):
    frame = synthetic_prompts()
    tom = is_tom(frame)
    infos, prompts, _ = build({
        "difference_s0_m1.0000e-04": ("difference", 0, 1e-4, 12.0, np.where(tom, -1.0, 0.0)),
        "random_s0_m1.0000e-04": ("random", 0, 1e-4, 10.0, 0.0)},
        losses={"difference_s0_m1.0000e-04": [x + 0.18 for x in BASE_LOSSES]})
    points = tmp_path / "points"
    points.mkdir()
    for info in infos.to_dict("records"):
        label = info.pop("label")
        name = label.replace("_m0", "_m0.0000e+00")
        info = {k: v for k, v in info.items() if v is not None}
        if info.get("ppl_unit_losses"):  # a record's perplexity is what its losses give
            info["perplexity"] = float(np.exp(np.mean(info["ppl_unit_losses"])))
        (points / f"{name}.json").write_text(json.dumps(info))
        prompts[label].to_csv(points / f"{name}_prompts.csv", index=False)
    paths = write_specificity(tmp_path, rules=vd.VerdictRules(alpha=0.1))
    assert set(paths) >= {"points", "contrasts", "baseline", "verdicts", "dose", "rules"}
    table = pd.read_csv(tmp_path / "specificity.csv")
    assert set(table["family"]) >= {"unexpected", "irony", sp.POOL_ALL}
    verdicts = pd.read_csv(tmp_path / "specificity_verdicts.csv")
    assert set(verdicts["claim"]) == {"a", "b", "c", "d", "e"}
    assert (verdicts.loc[verdicts["claim"] == "d", "status"] == stats.OPPOSITE).all()  # +20%
    assert json.loads((tmp_path / "verdict_rules.json").read_text())["alpha"] == 0.1
    write_specificity(tmp_path)                 # no rules given: the kept ones are used again
    assert json.loads((tmp_path / "verdict_rules.json").read_text())["alpha"] == 0.1


def test_an_unmatched_control_is_interpolated_between_its_bracketing_sizes():
    """Issue 23.2: a control whose search could not land within the tolerance is the
    interpolation, prompt by prompt, of the two sizes it bracketed."""
    frame = synthetic_prompts(n_tasks=8, families=("unexpected",))
    tom = is_tom(frame)
    low, high = np.where(tom, -0.2, -0.1), np.where(tom, -1.0, -0.5)
    infos, prompts, _ = build({
        "difference_s0_m1": ("difference", 0, 1e-4, 12.0, np.where(tom, -0.9, 0.0)),
        "generic-only_s0_m2": ("generic-only", 0, 2e-5, 11.0, low),
        "generic-only_s0_m8": ("generic-only", 0, 8e-5, 20.0, high)},
        n_tasks=8, families=("unexpected",))
    w = 0.25
    tables = sp.compute_specificity(infos, prompts, interpolated={"difference_s0_m1": [
        {"mode": "generic-only", "labels": ["generic-only_s0_m2", "generic-only_s0_m8"],
         "weight": w}]})
    label = sp.interpolated_label("generic-only", "difference_s0_m1")
    got = row(tables, label, "unexpected", "tom_margin_change")
    assert got["value"] == pytest.approx((1 - w) * -0.2 + w * -1.0)
    assert got["perplexity"] == pytest.approx(np.exp(0.75 * np.log(11.0) + 0.25 * np.log(20.0)))
    c = tables["contrasts"]
    c = c[(c["kind"] == "matched") & (c["family"] == "unexpected")
          & (c["metric"] == "tom_margin_change")].iloc[0]
    assert c["reference"] == label and c["value"] == pytest.approx(-0.9 - got["value"])
    b = [v for v in vd.verdicts(tables) if v["claim"] == "b" and v["family"] == "unexpected"][0]
    assert "interpolated" in b["sentence"]


def test_a_seeded_control_is_interpolated_seed_by_seed():
    """Issue 33.3: an unmatched random-fraction control evaluated at both bracket ends with
    each seed becomes one interpolated control per seed, judged as a set of masks (its
    mask-to-mask variance kept); with 2 or more seeds claim (b) is judged, not refused."""
    frame = synthetic_prompts(n_tasks=8, families=("unexpected",))
    tom = is_tom(frame)
    rng = np.random.default_rng(4)
    spec = {"difference_s0_m1": ("difference", 0, 1e-4, 12.0, np.where(tom, -0.9, 0.0))}
    pairs = []
    for seed in range(3):
        lo, hi = (f"random-fraction_s{seed}_m2", f"random-fraction_s{seed}_m8")
        spec[lo] = ("random-fraction", seed, 2e-3, 11.0, rng.normal(-0.1, 0.05, len(frame)))
        spec[hi] = ("random-fraction", seed, 8e-3, 20.0, rng.normal(-0.6, 0.05, len(frame)))
        pairs.append([lo, hi])
    infos, prompts, _ = build(spec, n_tasks=8, families=("unexpected",))
    w = 0.4
    tables = sp.compute_specificity(infos, prompts, interpolated={"difference_s0_m1": [
        {"mode": "random-fraction", "labels": pairs[0], "weight": w, "seeds": [0, 1, 2],
         "seed_labels": pairs}]})
    labels = [sp.interpolated_label("random-fraction", "difference_s0_m1", s) for s in range(3)]
    assert len(set(labels)) == 3
    expect = []
    for label, (lo, hi) in zip(labels, pairs):
        got = row(tables, label, "unexpected", "tom_margin_change")
        lo_v = row(tables, lo, "unexpected", "tom_margin_change")["value"]
        hi_v = row(tables, hi, "unexpected", "tom_margin_change")["value"]
        assert got["value"] == pytest.approx((1 - w) * lo_v + w * hi_v)
        expect.append(got["value"])
    c = tables["contrasts"]
    c = c[(c["kind"] == "matched") & (c["family"] == "unexpected")
          & (c["metric"] == "tom_margin_change")].iloc[0]
    assert c["reference_seeds"] == 3 and c["reference"] == "+".join(labels)
    assert c["value"] == pytest.approx(-0.9 - np.mean(expect))
    assert np.isfinite(c["mask_se"]) and c["mask_se"] > 0
    b = [v for v in vd.verdicts(tables) if v["claim"] == "b" and v["family"] == "unexpected"][0]
    assert "at least 2" not in str(b["reason"]) and "interpolated" in b["sentence"]
