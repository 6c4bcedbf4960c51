"""`tomsparse run` with the checks of issue 37: task-swapped controls swept beside the
difference mask (claim f) and other attribution scores judged with the run's controls
(``--methods``; ``--preset methods`` runs both)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tomsparse.cli.main import main
from tomsparse.config import PRESETS, RunConfig
from tomsparse.errors import UserError
from tomsparse.judge.methods import method_section
from tomsparse.masks import build_rankings, masks_for
from tomsparse.scores.store import load_scores
from tomsparse.testing import registered_model, tiny_loaded_model

from helpers import tiny_run


def test_a_run_with_swapped_controls_and_other_methods(tmp_path):
    out = tiny_run(tmp_path, "--score-replicates", "1", "--swapped-controls", "tom-nobelief,format-control",
                   "--methods", "fisher,snip,wanda", "--score-prompts", "false-belief")
    # the stores: the swapped sets under the run's score, the other methods' in their own
    for name in ("tom-nobelief", "format-control"):
        manifest = json.loads((out / f"scores_{name}" / "manifest.json").read_text())
        assert manifest["dataset"] == name
    for method in ("snip", "wanda"):
        for kind in ("tom", "generic"):
            manifest = json.loads((out / f"scores_{kind}_{method}" / "manifest.json")
                                  .read_text())
            assert manifest["score_method"] == method
    assert not (out / "scores_tom_fisher").exists()   # the run's own method is not repeated
    # the swapped masks were swept at every m > 0 and judged by claim (f)
    points = {p.stem for p in (out / "sweep" / "points").glob("*.json")}
    for name in ("tom-nobelief", "format-control"):
        for m in ("2.0000e-02", "5.0000e-02"):
            assert f"swapped-{name}_s0_m{m}" in points
    verdicts = pd.read_csv(out / "sweep" / "specificity_verdicts.csv")
    assert {"f"} <= set(verdicts["claim"])
    assert (out / "sweep" / "mask_agreement.csv").is_file()
    # each other method's difference mask and its own swapped masks at the primary m in its
    # own folder, judged; the swapped masks are the top m by that method's swapped scores
    # and not top m by its generic scores
    with registered_model("tiny"):
        lm = tiny_loaded_model("llama")
    names = [m.name for m in lm.description.matrices]
    for method in ("snip", "wanda"):
        own = sorted(p.name for p in (out / f"sweep_{method}" / "points").glob("*.json"))
        assert own == ["difference_s0_m5.0000e-02.json",
                       "swapped-format-control_s0_m5.0000e-02.json",
                       "swapped-tom-nobelief_s0_m5.0000e-02.json"]
        gen = load_scores(out / f"scores_generic_{method}")[0]
        for name in ("tom-nobelief", "format-control"):
            store = out / f"scores_{name}_{method}"
            manifest = json.loads((store / "manifest.json").read_text())
            assert manifest["dataset"] == name and manifest["score_method"] == method
            want = masks_for(build_rankings(load_scores(store)[0], gen, names, m_max=0.05),
                             0.05, "difference")
            record = json.loads((out / f"sweep_{method}" / "points"
                                 / f"swapped-{name}_s0_m5.0000e-02.json").read_text())
            assert record["masked"] == sum(int(v.numel()) for v in want.values())
    table = pd.read_csv(out / "method_verdicts.csv", keep_default_na=False)
    assert set(table["method"]) == {"fisher", "snip", "wanda"}
    assert set(table["claim"]) == {"a", "b", "c", "f"} and (table["m"] == 0.05).all()
    f = table[table["claim"] == "f"]
    assert set(f["reference"]) == {"swapped-tom-nobelief", "swapped-format-control"}
    assert (table.loc[table["claim"] != "f", "reference"] == "").all()
    # every method has the same rows: (f) once per swapped set and scope
    rows = {m: sorted(zip(t["claim"], t["reference"], t["family"]))
            for m, t in table.groupby("method")}
    assert rows["fisher"] == rows["snip"] == rows["wanda"]
    # the agreement table against the masks themselves, counted by hand
    agreement = pd.read_csv(out / "method_agreement.csv")
    assert set(zip(agreement["first"], agreement["second"])) == {
        ("fisher", "snip"), ("fisher", "wanda"), ("snip", "wanda")}
    stores = {"fisher": ("scores_tom", "scores_generic"),
              "snip": ("scores_tom_snip", "scores_generic_snip")}
    masks = {}
    for method, (tom, gen) in stores.items():
        t, g = (load_scores(out / d)[0] for d in (tom, gen))
        masks[method] = masks_for(build_rankings(t, g, names, m_max=0.05), 0.05, "difference")
    a = {(n, int(i)) for n in names for i in masks["fisher"][n]}
    b = {(n, int(i)) for n in names for i in masks["snip"][n]}
    row = agreement[(agreement["first"] == "fisher") & (agreement["second"] == "snip")
                    & (agreement["m"] == 0.05) & (agreement["role"] == "all")]
    assert row["shared"].iloc[0] == len(a & b)
    assert row["jaccard"].iloc[0] == pytest.approx(len(a & b) / len(a | b))
    report = (out / "sweep" / "report.html").read_text()
    assert "Attribution methods" in report and "same under every method" in report
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["scores_swapped_sha"]) == {"tom-nobelief", "format-control"}
    assert manifest["options"]["methods"] == ["fisher", "snip", "wanda"]


def test_the_methods_preset():
    preset = PRESETS["methods"]
    assert preset["score_prompts"] == "false-belief"
    assert preset["swapped_controls"] == ["tom-nobelief", "format-control"]
    assert preset["methods"] == ["fisher", "snip", "wanda"]
    # the default design otherwise
    for key in ("m_list", "random_seeds", "matched_controls", "clusters"):
        assert preset[key] == PRESETS["default"][key]
    assert PRESETS["default"]["swapped_controls"] == [] and PRESETS["default"]["methods"] == []


@pytest.mark.parametrize("argv, words", [
    (["--swapped-controls", "tom"], ["--swapped-controls", "tom-nobelief"]),
    (["--methods", "fisher,grad"], ["--methods", "snip"]),
])
def test_bad_method_options_are_usage_errors(argv, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:   # argparse's usage error: exit 2, no traceback
        main(["run", "--out", str(tmp_path / "r"), *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("tomsparse run: error: argument") and all(w in last for w in words)


def test_run_config_refuses_methods_with_reference_fp16():
    from tomsparse.data.score_samples import ScoreDataConfig
    from tomsparse.config import SweepConfig
    with pytest.raises(UserError, match="--reference-fp16"):
        RunConfig(out="x", tom_data=ScoreDataConfig(dataset="tom"),
                  generic_data=ScoreDataConfig(dataset="generic"), sweep=SweepConfig([0.0, 1e-4]),
                  score_reference_fp16=True, methods=("fisher", "snip"))


def test_method_section_names_every_method():
    agreement = pd.DataFrame([{"first": "fisher", "second": "snip", "m": 1e-4, "role": "all",
                               "numel": 100, "masked_first": 10, "masked_second": 12,
                               "shared": 3, "jaccard": 3 / 19, "random_shared": 1.2,
                               "random_jaccard": 1.2 / 20.8, "ratio": (3 / 19) / (1.2 / 20.8)}])
    table = pd.DataFrame([{"method": x, "m": 1e-4, "claim": "a", "family": "transfer",
                           "status": s, "value": -1.0, "lo": -2.0, "hi": -0.5,
                           "n_clusters": 20, "stable": False}
                          for x, s in (("fisher", "shown"), ("snip", "not shown"))])
    html = method_section(agreement, table)
    assert "fisher vs snip" in html and "3 / 19" not in html and "10 / 12 / 3" in html
    assert "shown" in html and "not shown" in html and ">no<" in html
    # a claim no method could measure is not called the same under every method
    unmeasured = table.assign(status="cannot be measured", stable=True)
    html = method_section(agreement, unmeasured)
    assert "nothing measured" in html and ">yes<" not in html


def test_random_seeds_take_ranges():
    import argparse
    from tomsparse.cli.options import seed_list
    assert seed_list("0-38") == list(range(39))
    assert seed_list("0,1,5-7") == [0, 1, 5, 6, 7]
    for bad in ("3-1", "0-2,2", "-1", "a-b", "0-"):
        with pytest.raises(argparse.ArgumentTypeError):
            seed_list(bad)
