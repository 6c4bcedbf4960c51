"""Score replicates (issue 23.1): the Jaccard overlap of difference masks from independent
score sets, against plain set arithmetic, and the replicate verdicts of a finished run."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tomsparse.masks import build_rankings, masks_for
from tomsparse.judge.replicates import mask_overlap
from tomsparse.testing import random_scores, tiny_loaded_model

from helpers import tiny_run


def test_mask_overlap_is_the_jaccard_of_the_masks():
    lm = tiny_loaded_model("llama")
    first, second = random_scores(lm, seed=0), random_scores(lm, seed=1)
    table = mask_overlap(lm, [first, first, second], [0.0, 0.01, 0.05])
    assert set(table["replicate"]) == {2, 3} and set(table["m"]) == {0.01, 0.05}
    same = table[table["replicate"] == 2]
    assert (same["jaccard"] == 1.0).all()                 # the same scores: the same mask
    names = [m.name for m in lm.description.matrices]
    role = {m.name: m.role for m in lm.description.matrices}
    for m in (0.01, 0.05):
        masks = [masks_for(build_rankings(t, g, names, m_max=m), m, "difference")
                 for t, g in (first, second)]
        for key in ["all", *sorted(set(role.values()))]:
            a = {(n, int(i)) for n in names if key in ("all", role[n]) for i in masks[0][n]}
            b = {(n, int(i)) for n in names if key in ("all", role[n]) for i in masks[1][n]}
            row = table[(table["replicate"] == 3) & (table["m"] == m) & (table["role"] == key)]
            assert row["jaccard"].iloc[0] == pytest.approx(len(a & b) / len(a | b))
            assert (row["masked_1"].iloc[0], row["shared"].iloc[0]) == (len(a), len(a & b))


def test_a_run_with_two_score_replicates(tmp_path):
    out = tiny_run(tmp_path, "--score-replicates", "2")
    for kind in ("tom", "generic"):        # replicate 2 drew its samples with seed + 1
        one = json.loads((out / f"scores_{kind}" / "manifest.json").read_text())
        two = json.loads((out / f"scores_{kind}_r2" / "manifest.json").read_text())
        assert one["samples_sha256"] != two["samples_sha256"]
    overlap = pd.read_csv(out / "mask_overlap.csv")
    assert set(overlap["m"]) == {0.02, 0.05} and overlap["jaccard"].between(0, 1).all()
    verdicts = pd.read_csv(out / "replicate_verdicts.csv")
    assert set(verdicts["replicate"]) == {1, 2} and set(verdicts["claim"]) == {"a", "b", "c"}
    assert (verdicts["m"] == 0.05).all()
    # the replicate's difference point was evaluated in its own folder, at the primary m only
    points = sorted(p.name for p in (out / "sweep_r2" / "points").glob("*.json"))
    assert points == ["difference_s0_m5.0000e-02.json"]
    page = (out / "sweep" / "report.html").read_text()
    assert "Score replicates" in page and "Jaccard" in page
    stages = json.loads((out / "manifest.json").read_text())["stage_seconds"]
    assert "score replicates" in stages


def test_false_belief_score_prompts_are_the_tom_prompts_only(tmp_path):
    from tomsparse.data.tasks import gradient_prompts, load_tasks
    from tomsparse.errors import UserError

    rendered = load_tasks("builtin:train").prompts()
    # restated from the task definitions: the belief probe (b) under false belief, and the
    # ironic remark (not its literal twin)
    wanted = {p.text for p in rendered
              if (p.family in ("unexpected", "transfer") and p.condition == "false belief"
                  and p.probe == "b") or (p.family == "irony" and p.condition == "irony")}
    chosen = gradient_prompts("builtin", select="false-belief")
    assert {p.txt for p in chosen} == wanted and len(chosen) == len(wanted)
    assert len(gradient_prompts("builtin")) == len(rendered)
    prompt_file = tmp_path / "prompts.json"
    prompt_file.write_text(json.dumps([{"txt": "A story. Where is it?", "answer": "box"}]))
    with pytest.raises(UserError, match="--score-prompts false-belief cannot select"):
        gradient_prompts(str(prompt_file), select="false-belief")


def test_replicate_section_names_small_m_and_every_scope():
    from tomsparse.judge.replicates import POOLED, replicate_section
    from tomsparse.judge.specificity import POOL_ABOVE

    overlap = pd.DataFrame([
        dict(replicate=2, m=m, role=role, jaccard=j, masked_1=10, masked_r=12, shared=4)
        for m in (3e-5, 1e-4) for role, j in (("all", 0.2), ("q", 0.3))])
    rows = []
    for r, status in ((1, "shown"), (2, "not shown")):
        for family in ("unexpected", POOL_ABOVE):
            rows.append(dict(replicate=r, m=1e-4, claim="a", family=family,
                             status=status if family == POOL_ABOVE else "shown",
                             stable=family != POOL_ABOVE))
    page = replicate_section(overlap, pd.DataFrame(rows))
    # the two tables' rows, cell by cell (plain parsing: no HTML library needed)
    import re
    rows = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", page, re.S)]
    rows = [r for r in rows if r]
    jaccard, verdict = rows[:2], rows[2:]
    assert [r[1] for r in jaccard] == ["3e-05", "0.0001"]  # m, never 0.000
    assert [r[2] for r in jaccard] == ["10 / 12 / 4"] * 2
    assert [r[3:] for r in jaccard] == [["0.200", "0.300"]] * 2
    by_scope = {r[1]: r for r in verdict}
    assert by_scope["unexpected contents"][2:] == ["shown", "shown", "yes"]
    assert by_scope[POOLED][2:] == ["shown", "not shown", "no"]
