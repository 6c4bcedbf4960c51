"""The mask family's Pareto front and goal, against a plain restatement."""

import itertools

import numpy as np
import pandas as pd
import pytest

from tomsparse.cli.frontier import family_modes
from tomsparse.cli.main import main
from tomsparse.judge.frontier import family_table, format_front, goal, pareto_mask
from tomsparse.judge.specificity import ABOVE, POOL_ABOVE


def _front_brute(cost, gap):
    """Every finite point that no other finite point beats in one and matches in the other."""
    finite = [i for i in range(len(cost)) if np.isfinite(cost[i]) and np.isfinite(gap[i])]
    out = set()
    for i in finite:
        if not any(cost[j] <= cost[i] and gap[j] <= gap[i] and (cost[j] < cost[i] or gap[j] < gap[i])
                   for j in finite if j != i):
            out.add(i)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_pareto_front_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    cost = rng.integers(0, 6, 30).astype(float)  # ties on purpose
    gap = rng.integers(-5, 3, 30).astype(float)
    cost[3] = np.nan
    got = pareto_mask(cost, gap)
    assert set(np.flatnonzero(got)) == _front_brute(cost, gap)
    assert not got[3]


def _tables(rows, above=True):
    """specificity-like tables: rows (mode, m, ppl_change, gap, gap_lo, gap_hi)."""
    recs = []
    for mode, m, ppl, gap, lo, hi in rows:
        label = f"{mode}_s0_m{m:.4e}"
        for metric, value in (("belief_gap_margin", (gap, lo, hi)),
                              ("tom_margin_change_adj", (gap / 2, lo / 2, hi / 2))):
            recs.append({"label": label, "mode": mode, "seed": 0, "m": m, "n_seeds": 1,
                         "masked": 100, "perplexity": 10 * (1 + ppl), "ppl_change": ppl,
                         "family": POOL_ABOVE if above else "all", "metric": metric,
                         "value": value[0], "lo": value[1], "hi": value[2], "n_tasks": 6})
    base = pd.DataFrame({"family": ["unexpected"],
                         "state": [ABOVE if above else "at chance"]})
    return {"points": pd.DataFrame(recs), "baseline": base}


def test_family_table_and_goal():
    rows = [("difference", 1e-4, 0.70, -1.0, -1.6, -0.4),       # the plain mask: damaging
            ("difference", 3e-5, 0.20, -0.3, -0.9, 0.2),
            ("difference-p4", 1e-4, 0.30, -0.8, -1.3, -0.2),
            ("difference-p4-x3", 1e-4, 0.04, -0.55, -0.9, -0.1),  # reaches the goal
            ("difference-x3", 1e-4, 0.03, -0.2, -0.5, 0.1),
            ("random", 1e-4, 0.0, 0.0, -0.1, 0.1)]                # not a family member
    frame = family_table(_tables(rows))
    assert set(frame["mode"]) == {"difference", "difference-p4", "difference-p4-x3",
                                  "difference-x3"}
    row = frame.set_index("label").loc["difference-p4-x3_s0_m1.0000e-04"]
    assert row["p"] == pytest.approx(4e-4) and row["left_out_channels"] == 3
    front = set(frame.loc[frame["on_front"], "mode"] + "@" + frame.loc[frame["on_front"], "q"].map(str))
    assert front == {"difference@0.0001", "difference-p4-x3@0.0001", "difference-x3@0.0001",
                     "difference-p4@0.0001"}
    reached = goal(frame)
    assert reached["found"] is True and "difference-p4-x3" in reached["sentence"]
    # at a stricter perplexity limit nothing qualifies
    assert goal(frame, ppl_limit=0.01)["found"] is False
    assert "*" in format_front(frame)


def test_goal_cannot_be_set_when_the_plain_mask_does_no_tom_specific_damage():
    rows = [("difference", 1e-4, 2.08, 1.3, 0.6, 2.1), ("difference-x3", 1e-4, 0.02, 0.1, -0.2, 0.4)]
    reached = goal(family_table(_tables(rows)))
    assert reached["found"] is None and "no ToM-specific damage" in reached["sentence"]


def test_family_modes_grid():
    modes = family_modes([1.0, 4.0], [0, 3])
    assert modes == ["difference", "difference-x3", "difference-p4", "difference-p4-x3"]
    assert len(set(family_modes([1, 2, 16], [0, 1, 3]))) == len(list(itertools.product(
        [1, 2, 16], [0, 1, 3])))


@pytest.mark.parametrize("argv,words", [
    (["frontier"], "frontier needs --run RUN_DIR"),
    (["frontier", "--run", "{tmp}/nothing"], "manifest.json: missing"),
    (["frontier", "--run", "{tmp}", "--p-factors", "0.5"], "p/q factors must be >= 1"),
    (["frontier", "--run", "{tmp}", "--left-out", "-1"], "integers >= 0"),
])
def test_frontier_command_refuses_bad_input(tmp_path, capsys, argv, words):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage error
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and words in err.strip().splitlines()[-1]
