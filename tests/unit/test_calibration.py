"""The verdicts' calibration suite at a small size (issue 33, item 6; the full size is
``benchmarks/bench_verdicts.py``, its table in docs/statistics.md).

Simulated sweeps with a known truth (``benchmarks/verdict_scenarios.py``: the bank's prompts
at 20 clusters a family, the default run's points) are written as sweep folders and judged by
``judge.tables.write_specificity`` (what ``tomsparse summarize`` runs), which must give the
verdicts of the in-memory path the benchmark uses; then each scenario's outcomes over a few
data sets are checked against its truth, with binomial tolerances for the count. Judging one
data set costs about a second, so the default count is small; set
TOMSPARSE_CALIBRATION_SIMS (e.g. 60) for the brief's size."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from tomsparse.judge.specificity import POOL_ABOVE
from tomsparse.judge.tables import write_specificity
from tomsparse.judge.verdicts import VERDICT_COLUMNS
from tomsparse.stats import CANNOT_BE_MEASURED, OPPOSITE, SHOWN
from tomsparse.sweep.folder import SweepFolder

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import verdict_scenarios as vsim  # noqa: E402

SIMS = int(os.environ.get("TOMSPARSE_CALIBRATION_SIMS", "3"))
# the scenarios the issue names (skewed mask effects at 5 random masks; the benchmark adds
# 10 and 20, the exchangeable target and 5 random masks at each m)
ISSUE_SCENARIOS = ("no_effect", "tom_effect", "shrink_tom_above", "shrink_tom_below",
                   "weak_model", "skewed_masks_5", "skewed_clusters", "one_random_mask",
                   "irony_bias_generation", "no_effect_exchangeable_judged",
                   # claim (f), issue 37: task-swapped masks at each m and at matched damage
                   "no_effect_swapped", "tom_effect_swapped_spared")
# no-effect scenarios whose family-wise rate the benchmark measured above 5% (see
# docs/statistics.md): not asserted at 5% here
KNOWN_MISSES = {
    "skewed_masks_5": "claim (a)'s contrast with 5 random masks estimates their mean from the "
                      "masks drawn: when none of them is one of the rare catastrophic masks, "
                      "the target (at the population mean) reads as worse than random",
}
NUMBERS = ("value", "lo", "hi", "lo_raw", "hi_raw", "p_raw", "p_holm", "tost_p_holm")
KEYS = ("claim", "label", "family", "metric", "status")


@pytest.fixture(scope="module")
def judged() -> dict[str, list[list[dict]]]:
    """{scenario: [verdicts of data set seed] for seed < SIMS}, judged in memory."""
    return {name: [vsim.judge(vsim.simulate(vsim.scenario(name), seed))
                   for seed in range(SIMS)] for name in ISSUE_SCENARIOS}


def as_frame(vs) -> pd.DataFrame:
    frame = pd.DataFrame(vs, columns=list(VERDICT_COLUMNS))
    for col in KEYS:
        frame[col] = frame[col].fillna("").astype(str)
    return frame.reset_index(drop=True)


# ----------------------------------------------------------------------------- the folder path
@pytest.mark.parametrize("name", ISSUE_SCENARIOS)
def test_a_simulated_sweep_folder_is_judged_as_in_memory(name, judged, tmp_path):
    """The data set written through ``SweepFolder`` (points, integrity records,
    matched.json) and judged by ``write_specificity`` gives the in-memory verdicts: same
    claims, scopes, outcomes, estimates, intervals and p-values."""
    sc = vsim.scenario(name)
    ds = vsim.simulate(sc, 0)
    folder = vsim.write_sweep_folder(ds, tmp_path / name)
    assert not folder.check_integrity().problems
    points, prompts = folder.read_sweep()          # the folder's own checks pass
    assert len(points) == len(vsim.design(sc))
    write_specificity(folder.root, rules=sc.verdict_rules())
    disk = as_frame(pd.read_csv(SweepFolder(folder.root).specificity("verdicts"),
                                keep_default_na=False, na_values={c: [""] for c in NUMBERS}))
    memory = as_frame(judged[name][0])
    assert disk[list(KEYS)].equals(memory[list(KEYS)])
    for col in NUMBERS:
        np.testing.assert_allclose(pd.to_numeric(disk[col]).to_numpy(float),
                                   memory[col].to_numpy(float), rtol=1e-9, atol=1e-12,
                                   equal_nan=True, err_msg=col)


def test_the_simulated_tables_are_what_a_sweep_writes():
    """Likelihood tables: margins are their log-probabilities' difference and correct says
    whether it is positive; generation tables: 5 reps a prompt, no margins; every point's
    perplexity is exp of the mean of its window losses (32; a random mask's 4, as under
    --random-ppl-tokens); 20 clusters a family."""
    ds = vsim.simulate(vsim.scenario("no_effect"), 3)
    for label, table in ds.prompts.items():
        assert np.allclose(table["margin"], table["logprob_expected"]
                           - table["logprob_alternative"])
        assert (table["correct"] == (table["margin"] > 0)).all()
    for info in ds.infos.to_dict("records"):
        windows = vsim.RANDOM_PPL_WINDOWS if info["mode"] == "random" else vsim.PPL_WINDOWS
        assert len(info["ppl_unit_losses"]) == info["ppl_windows"] == windows
        assert info["perplexity"] == pytest.approx(math.exp(np.mean(info["ppl_unit_losses"])))
    frame = vsim.prompt_frame()
    assert frame.groupby("family")["unit"].nunique().to_dict() == {
        f: vsim.N_CLUSTERS for f in vsim.FAMILY_NAMES}
    gen = vsim.simulate(vsim.scenario("irony_bias_generation"), 0)
    base = gen.prompts[gen.infos["label"].iloc[0]]
    assert base["margin"].isna().all() and sorted(base["rep"].unique()) == [1, 2, 3, 4, 5]
    assert set(ds.matched) == {"difference_s0_m1.0000e-04"}
    assert len(ds.matched["difference_s0_m1.0000e-04"]) == 1 + 3   # generic-only, 3 seeds


# ----------------------------------------------------------------------------- rates
def outcome_frame(name: str, judged) -> pd.DataFrame:
    sc = vsim.scenario(name)
    rows = [dict(r, seed=seed) for seed, vs in enumerate(judged[name])
            for r in vsim.outcomes(sc, vs)]
    return pd.DataFrame(rows)


def most(n: int, rate: float = 0.05) -> int:
    """The most false runs a rule at ``rate`` gives in n runs, 99% of the time."""
    return int(sps.binom.ppf(0.99, n, rate))


def least(n: int, power: float = 0.8) -> int:
    """The fewest "shown" a rule of ``power`` gives in n runs, 99% of the time."""
    return int(sps.binom.ppf(0.01, n, power))


NO_EFFECT = [n for n in ISSUE_SCENARIOS if vsim.scenario(n).truth == vsim.NULL]


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(reason=KNOWN_MISSES[n], strict=False))
    if n in KNOWN_MISSES else n for n in NO_EFFECT])
def test_no_effect_scenarios_hold_the_familywise_rate(name, judged):
    """Runs with any false "shown" or "opposite direction": at most the 99th percentile of
    Binomial(runs, 0.05)."""
    frame = outcome_frame(name, judged)
    false_runs = int(frame.groupby("seed")["false_direction"].any().sum())
    assert false_runs <= most(SIMS), (name, false_runs, SIMS)


def test_the_tom_effect_is_found(judged):
    """1 nat off the false-belief margins at 20 clusters: claims (a)-(d) at the primary m
    shown in the pool of passing families (80% power or more), nothing in a false
    direction."""
    frame = outcome_frame("tom_effect", judged)
    assert not frame["false_direction"].any()
    primary = frame[(frame["target"] == "primary")]
    for claim in "abcd":
        sel = primary[(primary["claim"] == claim)
                      & primary["scope"].isin([POOL_ABOVE, ""])]
        assert (sel["status"] == SHOWN).sum() >= least(SIMS), claim


def test_claim_f_finds_an_effect_the_swapped_masks_lack(judged):
    """The target's -1 nat, absent from both task-swapped masks: claim (f) shown in the pool
    of passing families at the primary m, at the same m and at matched damage, against each
    swapped set (80% power or more); nothing in a false direction."""
    frame = outcome_frame("tom_effect_swapped_spared", judged)
    assert not frame["false_direction"].any()
    for claim in ("f", "f, matched damage"):
        sel = frame[(frame["claim"] == claim) & (frame["target"] == "primary")
                    & (frame["scope"] == POOL_ABOVE)]
        assert len(sel) == 2 * SIMS, claim           # one per swapped set and run
        assert (sel["status"] == SHOWN).sum() >= least(2 * SIMS), claim


@pytest.mark.parametrize("name", ["shrink_tom_above", "shrink_tom_below"])
def test_a_proportional_shrink_is_not_a_tom_specific_effect(name, judged):
    """The same shrink of every margin by the target and its matched controls: (b) and (c)
    not shown whichever role's baselines are larger, (a) shown (it does hurt ToM more than
    random masks), (d) in the opposite direction (perplexity +30%)."""
    frame = outcome_frame(name, judged)
    primary = frame[frame["target"] == "primary"]
    false_runs = int(frame.groupby("seed")["false_direction"].any().sum())
    assert false_runs <= most(SIMS)
    for claim in "bc":
        assert (primary.loc[primary["claim"] == claim, "status"] != SHOWN).all(), claim
    pool_a = primary[(primary["claim"] == "a") & (primary["scope"] == POOL_ABOVE)]
    assert (pool_a["status"] == SHOWN).sum() >= least(SIMS)
    assert (frame.loc[frame["claim"] == "d", "status"] == OPPOSITE).all()


def test_one_random_mask_cannot_judge_claim_a(judged):
    """With one random mask a comparison carries no mask-to-mask variance: claim (a) is
    "cannot be measured" in every scope and run, with the reason."""
    for vs in judged["one_random_mask"]:
        a = [v for v in vs if v["claim"] == "a"]
        assert a and all(v["status"] == CANNOT_BE_MEASURED for v in a)
        assert all("at least 2" in v["reason"] for v in a)


def test_the_weak_model_is_judged_on_the_clusters_it_passes(judged):
    """A family the model fails is not judged ("cannot be measured"); one it passes is judged
    on its passed clusters only (fewer than 20 in some run)."""
    counts = []
    for vs in judged["weak_model"]:
        for v in vs:
            if v["claim"] == "a" and v["family"] in vsim.FAMILY_NAMES and v["m"] == vsim.M_PRIMARY:
                if "does not pass its own controls" in str(v["reason"]):
                    assert v["status"] == CANNOT_BE_MEASURED
                else:
                    counts.append(int(v["n_clusters"]))
    assert counts and max(counts) <= vsim.N_CLUSTERS


def test_a_moved_answer_bias_is_refused_under_generation(judged):
    """Under generation scoring accuracy cannot be adjusted for a Yes/No shift exactly: where
    the target moved irony's answer bias (2 logits at the primary m) claims (a) and (b) on
    irony and on the pool holding it are "cannot be measured", with the reason; the
    counterbalanced families with no shift are judged."""
    refused = judged_families = 0
    for vs in judged["irony_bias_generation"]:
        for v in vs:
            if v["claim"] not in "ab" or v["m"] != vsim.M_PRIMARY:
                continue
            if v["family"] == "irony" and v["status"] == CANNOT_BE_MEASURED:
                refused += "answer bias" in str(v["reason"])
            if v["family"] in ("unexpected", "transfer"):
                judged_families += v["status"] != CANNOT_BE_MEASURED
    assert refused >= SIMS                  # (a) and (b) on irony, in most runs
    assert judged_families >= 2 * SIMS


def test_the_plant_gate_counts_the_clusters_the_judge_counts():
    """`tomsparse plant` gates its eval split with its own cluster-pass count over Prompt
    objects (plant.train.family_gates); it must count the same passed clusters, per family, as
    the judge's gate (judge.clusters.family_gate) on the same answers."""
    from tomsparse.data.tasks import load_tasks
    from tomsparse.data.tasks.roles import prompt_role
    from tomsparse.judge.specificity import compute_specificity
    from tomsparse.plant.train import family_gates

    for seed in range(3):
        ds = vsim.simulate(vsim.scenario("weak_model"), seed)
        base_label = ds.infos["label"].iloc[0]
        table = ds.prompts[base_label]
        tables = compute_specificity(ds.infos, ds.prompts, matched=ds.matched)
        judge = tables["baseline"].set_index("family")
        prompts = [p for p in load_tasks("builtin").head_clusters(vsim.N_CLUSTERS).prompts()
                   if prompt_role(p.family, p.condition, p.probe, p.scenario) != ""]
        assert len(prompts) == len(table)
        assert [p.task_id for p in prompts] == list(table["task_id"].astype(str))
        gates = family_gates(prompts, table["correct"].to_numpy(float) > 0.5)
        assert set(gates) == set(judge.index)
        for family, gate in gates.items():
            assert (gate.k, gate.n) == (judge.loc[family, "gate_passed"],
                                        judge.loc[family, "gate_clusters"]), family
        assert any(0 < g.k < g.n for g in gates.values())   # a mix of passed and failed


def test_the_rates_the_report_quotes_are_the_measured_ones():
    """The error rates ``VerdictRules.describe`` prints (config constants) are those the
    calibration measured, as docs/statistics.md gives them, and the report's rule text says
    each of them."""
    from tomsparse import config
    from tomsparse.config import VerdictRules
    docs = (Path(__file__).resolve().parents[2] / "docs" / "statistics.md").read_text()
    text = VerdictRules().describe()
    rates = {"no_effect_exchangeable": config.EXCHANGEABLE_UNDER_FIXED,
             "skewed_masks_10": config.SKEWED_MASKS_RATE,
             "skewed_masks_39_each_m": config.SKEWED_MASKS_39_RATE,
             "no_effect_swapped": config.SWAPPED_NULL_RATE}
    for scenario, rate in rates.items():
        value = rate.rstrip("%")
        rows = [line for line in docs.splitlines() if line.startswith(f"| {scenario} |")]
        prose = f"{value}% of runs false" in docs or f"{rate} of runs" in docs
        assert any(f"| {value} |" in row for row in rows) or prose, (scenario, rate)
        if scenario != "no_effect_swapped":
            assert rate in text
    swapped = VerdictRules().describe(swapped=True)
    assert config.SWAPPED_NULL_RATE in swapped and config.SWAPPED_POWER in swapped
    assert "Claim (f)" in swapped and "Claim (f)" not in text   # only where (f) is judged
    rows = [line for line in docs.splitlines()
            if line.startswith("| tom_effect_swapped_spared | f (m=1e-04) |")]
    assert rows and f"| {config.SWAPPED_POWER.rstrip('%')} |" in rows[0]
