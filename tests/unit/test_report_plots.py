"""The report's plots (issue 15, part 6): the specificity plot (ToM change against the log
perplexity ratio, one error bar per point or seed group), intervals on the ToM lines and the
log perplexity axis. Synthetic sweep folders whose answers are known by construction."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from matplotlib.collections import PolyCollection
from matplotlib.container import ErrorbarContainer

from tomsparse.report import plots, style
from tomsparse.report.sweep_report import line_plots, write_report
from tomsparse.sweep import specificity as sp
from tomsparse.sweep.folder import group_label
from tomsparse.sweep.specificity_tables import write_specificity
from tomsparse.sweep.summary import with_tom_columns

CONTENTS = {"false belief": ("o1", "o2"), "correct label": ("o1", "o1"),
            "informed protagonist": ("o1", "o1"), "open container": ("o1", "o1")}
N_TASKS = 6
BASE_PPL = 10.0


def synthetic_prompts(n_tasks=N_TASKS):
    """Unexpected contents only: 16 prompts a task, 2 of them ToM (false belief, probe b)."""
    rows = []
    for t in range(n_tasks):
        o1, o2 = f"apple{t}", f"pear{t}"
        for cond, pair in CONTENTS.items():
            for rev in (False, True):
                for probe, which in zip("ab", pair):
                    exp = {"o1": o1, "o2": o2}[which]
                    if rev:
                        exp = o2 if exp == o1 else o1
                    scen = f"{cond} ({'T' if rev else 'F'})"
                    rows.append(dict(family="unexpected", task_id=str(t + 1), task_index=str(t),
                                     condition=cond, reversed=str(rev), scenario=scen,
                                     probe=probe, cell=scen, expected=exp,
                                     alternative=o2 if exp == o1 else o1, rep=1))
    return pd.DataFrame(rows)


def tom_mask(frame):
    return ((frame["condition"] == "false belief") & (frame["probe"] == "b")).to_numpy()


TOM_FRACTION = 2 / 16      # ToM prompts among a task's prompts

# label -> (mode, seed, m, perplexity, margin change of the ToM prompts)
POINTS = {"difference_s0_m1.0000e-04": ("difference", 0, 1e-4, 20.0, -1.0),
          "random_s0_m1.0000e-04": ("random", 0, 1e-4, 10.0, -0.1),
          "random_s1_m1.0000e-04": ("random", 1, 1e-4, 10.2, -0.3),
          "difference-p4_s0_m1.0000e-04": ("difference-p4", 0, 1e-4, 15.0, -0.5)}


def make_sweep(folder, points=POINTS, base_ppl=BASE_PPL, base_margin=None):
    """A sweep folder (points/*.json and *_prompts.csv) with its specificity tables. The
    baseline margin differs between tasks (1 + 0.3 x task), so the level varies over tasks
    while every change is the same in every task."""
    frame = synthetic_prompts()
    if base_margin is None:
        base_margin = 1.0 + 0.3 * frame["task_index"].astype(int).to_numpy()
    pts = folder / "points"
    pts.mkdir(parents=True)
    tom = tom_mask(frame)

    def write(label, mode, seed, m, ppl, margin):
        info = dict(mode=mode, seed=seed, m=m, perplexity=ppl, masked=0 if m == 0 else 100,
                    ppl_windows=2)
        (pts / f"{label}.json").write_text(json.dumps(info))
        out = frame.copy()
        out["margin"] = margin
        out["correct"] = out["margin"] > 0
        out.to_csv(pts / f"{label}_prompts.csv", index=False)

    write("none_s0_m0.0000e+00", "none", 0, 0.0, base_ppl, base_margin)
    for label, (mode, seed, m, ppl, delta) in points.items():
        write(label, mode, seed, m, ppl, base_margin + np.where(tom, delta, 0.0))
    write_specificity(folder)
    return folder


def summary_of(folder):
    """The sweep summary's columns the report reads (one family)."""
    rows = []
    for path in sorted((folder / "points").glob("*.json")):
        info = json.loads(path.read_text())
        prompts = pd.read_csv(path.with_name(path.stem + "_prompts.csv"))
        rows.append(dict(mode=info["mode"], seed=info["seed"], m=info["m"],
                         masked=info["masked"], perplexity=info["perplexity"],
                         unexpected_margin=prompts["margin"].mean(),
                         unexpected_accuracy=prompts["correct"].mean()))
    return pd.DataFrame(rows)


@pytest.fixture
def sweep(tmp_path):
    return make_sweep(tmp_path / "sweep")


def errorbars(ax):
    """(x, y, lo, hi) of every error bar drawn in ``ax``."""
    out = []
    for c in ax.containers:
        if not isinstance(c, ErrorbarContainer):
            continue
        line = c.lines[0]
        x, y = float(line.get_xdata()[0]), float(line.get_ydata()[0])
        seg = c.lines[2][0].get_segments()[0] if c.lines[2] else np.array([[x, y], [x, y]])
        out.append((x, y, float(seg[:, 1].min()), float(seg[:, 1].max())))
    return sorted(out)


# ----------------------------------------------------------------------------- specificity

def test_specificity_plot_one_error_bar_per_point_at_log_ppl_ratio(sweep):
    points = pd.read_csv(sweep / "specificity.csv")
    baseline = pd.read_csv(sweep / "specificity_baseline.csv")
    fig, axes = style.pyplot().subplots(1, 2)
    info = plots.draw_specificity(axes, points, baseline)
    assert info["pool"] == sp.POOL_ABOVE           # every prompt right at baseline
    # difference, difference-p4 and the random seed group (not its two member seeds)
    expected = sorted([(math.log(20 / BASE_PPL), -1.0), (math.log(15 / BASE_PPL), -0.5),
                       (math.log(10.1 / BASE_PPL), -0.2)])
    bars = errorbars(axes[0])
    assert len(bars) == 3
    for (x, y, lo, hi), (ex, ey) in zip(bars, expected):
        assert x == pytest.approx(ex) and y == pytest.approx(ey)
    # the interval drawn is the table's
    table = points[(points["family"] == sp.POOL_ABOVE)
                   & (points["metric"] == "tom_margin_change_adj")].set_index("label")
    group = table.loc[group_label("random", 1e-4)]
    x, y, lo, hi = bars[0]
    assert (lo, hi) == pytest.approx((group["lo"], group["hi"]))
    # two seeds 0.2 apart on every cluster: the interval is the seeds' (t, 1 df), restated
    half = stats.t.ppf(0.975, 1) * np.sqrt(np.var([-0.1, -0.3], ddof=1) / 2)
    assert (lo, hi) == pytest.approx((-0.2 - half, -0.2 + half))
    # the belief gap panel: controls untouched, so the gap is the ToM change
    gaps = errorbars(axes[1])
    assert [round(b[1], 6) for b in gaps] == [round(e[1], 6) for e in expected]
    assert "above chance" in axes[0].get_title() and "n = 6 tasks" in axes[0].get_title()
    labels = axes[0].get_legend_handles_labels()[1]
    assert sorted(labels) == sorted([style.mode_label(m) for m in
                                     ("difference", "difference-p4", "random")])
    texts = [t.get_text() for t in axes[0].texts]
    assert "m=0.0001 (2 seeds)" in texts and len(texts) == 3
    assert any(abs(line.get_ydata()[0]) == 0 for line in axes[0].lines
               if len(line.get_ydata()) == 2 and line.get_ydata()[0] == line.get_ydata()[1])
    style.pyplot().close(fig)


def test_specificity_pool_falls_back_to_all_and_to_the_baseline_json(sweep):
    points = pd.read_csv(sweep / "specificity.csv")
    at_chance = pd.DataFrame({"family": ["unexpected"], "state": ["at chance"]})
    assert plots.specificity_pool(at_chance) == sp.POOL_ALL
    assert plots.specificity_pool(None) == sp.POOL_ALL
    # without ppl_change the baseline perplexity comes from points/none_*.json
    assert plots.baseline_perplexity(sweep) == BASE_PPL
    rows = plots.specificity_points(points.drop(columns="ppl_change"), "tom_margin_change_adj",
                                    sp.POOL_ALL, plots.baseline_perplexity(sweep))
    assert sorted(rows["log_ppl_ratio"]) == pytest.approx(
        sorted(math.log(p / BASE_PPL) for p in (20.0, 15.0, 10.1)))
    assert set(rows["family"]) == {sp.POOL_ALL}


def test_unknown_modes_get_their_own_colour_and_marker():
    known = set(style.MODE_COLORS.values())
    for mode in ("random-fraction", "difference-p4", "difference-p4-x3", "generic-only"):
        color = style.mode_color(mode)
        assert color.startswith("#") and len(color) == 7
        assert style.mode_color(mode) == color          # stable
        assert style.mode_marker(mode)
        assert mode in style.mode_label(mode)
    assert style.mode_color("random-fraction") not in known


def test_report_embeds_the_specificity_plot_after_the_verdicts(sweep):
    page = write_report(sweep, summary_of(sweep), {"model": "tiny"}).read_text()
    assert (sweep / "plot_specificity.png").is_file()
    claims = page.index("bottom-line")
    section = page.index("Is the effect specific to ToM?")
    image = page.index('alt="plot_specificity"')
    assert claims < page.index("Chance gate") < section < image < page.index("Baseline levels")


# ----------------------------------------------------------------------------- ToM lines

def test_level_intervals_are_the_summary_level_with_paired_change_intervals(sweep):
    levels = plots.level_intervals(sweep, "margin", draws=400).set_index("label")
    summary = summary_of(sweep)
    for r in summary.itertuples():
        label = f"{r.mode}_s{r.seed}_m{r.m:.4e}"
        assert levels.loc[label, "value"] == pytest.approx(r.unexpected_margin)
    base = levels.loc["none_s0_m0.0000e+00"]
    assert base["lo"] < base["value"] < base["hi"]       # tasks differ at baseline
    diff = levels.loc["difference_s0_m1.0000e-04"]
    assert diff["change"] == pytest.approx(-1.0 * TOM_FRACTION)
    # the change is the same in every task: the paired interval has no width, the level's has
    assert (diff["change_lo"], diff["change_hi"]) == pytest.approx((diff["change"],) * 2)
    assert diff["hi"] - diff["lo"] > 0.1
    group = levels.loc[group_label("random", 1e-4)]
    assert group["n_seeds"] == 2
    assert group["value"] == pytest.approx(base["value"] - 0.2 * TOM_FRACTION)
    assert (group["change_lo"], group["change_hi"]) == pytest.approx(
        (-0.3 * TOM_FRACTION, -0.1 * TOM_FRACTION))
    assert int(base["n_tasks"]) == N_TASKS


def test_tom_lines_have_intervals_and_perplexity_a_log_axis(sweep, monkeypatch):
    drawn = []
    real = plots.save_figure

    def capture(fig, path):
        ax = fig.axes[0]
        drawn.append({"name": path.name, "yscale": ax.get_yscale(),
                      "bands": [c for c in ax.collections if isinstance(c, PolyCollection)],
                      "bars": errorbars(ax),
                      "legend": ax.get_legend_handles_labels()[1]})
        return real(fig, path)

    monkeypatch.setattr(plots, "save_figure", capture)
    summary = summary_of(sweep)
    summary, metric, label = with_tom_columns(summary)
    paths, caption = line_plots(sweep, summary, metric, label)
    assert [p.name for p in paths] == ["plot_tom_metric.png", "plot_tom_accuracy.png",
                                       "plot_perplexity.png"]
    by = {d["name"]: d for d in drawn}
    assert by["plot_perplexity.png"]["yscale"] == "log"
    for name in ("plot_tom_metric.png", "plot_tom_accuracy.png"):
        assert by[name]["yscale"] == "linear"
        assert len(by[name]["bands"]) == 3               # one band per mode
        assert len(by[name]["bars"]) == 1                # the baseline level's interval
        assert any("mean of 2 seeds" in t for t in by[name]["legend"])
    # the band of the ToM metric around the difference line: baseline level + paired change
    x, y, lo, hi = by["plot_tom_metric.png"]["bars"][0]
    assert x == 0.0 and lo < y < hi
    assert "95%" in caption and f"n = {N_TASKS} tasks" in caption
    assert "log axis" in caption


def test_tom_lines_without_prompt_tables_fall_back_to_seed_ranges(sweep, monkeypatch):
    for path in (sweep / "points").glob("*_prompts.csv"):
        path.unlink()
    summary = summary_of_without_prompts(sweep)
    summary, metric, label = with_tom_columns(summary)
    paths, caption = line_plots(sweep, summary, metric, label)
    assert all(p.is_file() for p in paths)
    assert "no intervals" in caption


def summary_of_without_prompts(folder):
    rows = []
    for path in sorted((folder / "points").glob("*.json")):
        info = json.loads(path.read_text())
        rows.append(dict(mode=info["mode"], seed=info["seed"], m=info["m"],
                         masked=info["masked"], perplexity=info["perplexity"],
                         unexpected_margin=0.5 - info["m"], unexpected_accuracy=0.8))
    return pd.DataFrame(rows)
