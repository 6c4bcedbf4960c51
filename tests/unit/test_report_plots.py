"""The report's plots and tables (issues 15 and 24): the specificity plot (ToM change against
the log perplexity ratio, one error bar per point or seed group), the ToM change and the
perplexity ratio against m on log axes, the paper's Table 1 with intervals, numbers formatted
for reading, and the order of the report's sections. Synthetic sweep folders whose answers
are known by construction."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from matplotlib.collections import PolyCollection
from matplotlib.container import ErrorbarContainer

from tomsparse.report import plots, style
from tomsparse.report.sweep_report import change_plots, write_report
from tomsparse.report.tables import number, readable_table, signed, table_one, with_interval
from tomsparse.judge import specificity as sp
from tomsparse.sweep.folder import group_label
from tomsparse.judge.tables import write_specificity

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


def errorbar_lines(ax):
    """{colour: [(x, y, lo, hi), ...]} of every line drawn with error bars in ``ax``."""
    out = {}
    for c in ax.containers:
        if not isinstance(c, ErrorbarContainer):
            continue
        line = c.lines[0]
        segs = c.lines[2][0].get_segments() if c.lines[2] else []
        out[line.get_color()] = [(float(x), float(y), float(sg[:, 1].min()), float(sg[:, 1].max()))
                                 for x, y, sg in zip(line.get_xdata(), line.get_ydata(), segs)]
    return out


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
    assert sp.POOL_ABOVE in axes[0].get_title() and "n = 6 tasks" in axes[0].get_title()
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


def test_report_puts_the_verdict_first_and_every_section_after_the_contents(sweep):
    page = write_report(sweep, summary_of(sweep), {"model": "tiny"}).read_text()
    assert (sweep / "plot_specificity.png").is_file()
    order = ["bottom-line", "Gate: does the model", "id='claims-table'", "<b>Contents</b>",
             "id='table-1'>ToM and perplexity at each m (the paper's Table 1)",
             "id='tom-vs-m'", 'alt="plot_tom_metric"', 'alt="plot_perplexity"',
             "id='matched'", 'alt="plot_specificity"', "id='evidence'",
             "id='reference'>The reference's summary", "id='manifest'"]
    at = [page.index(x) for x in order]
    assert at == sorted(at), dict(zip(order, at))
    # 6 clusters in its one family: below the sizes the statistics need
    assert "Pilot-sized run" in page and "fewer than 20 clusters" in page
    assert 'href="specificity.csv"' in page and 'href="specificity_baseline.csv"' in page
    for gone in ("Family-level reading", "Controls side by side", "17.7x"):
        assert gone not in page


# ----------------------------------------------------------------------------- against m

# Two sizes: the difference mask hurts the ToM prompts more at the larger one.
POINTS_TWO_M = {"difference_s0_m3.0000e-05": ("difference", 0, 3e-5, 12.0, -0.4),
                "difference_s0_m1.0000e-04": ("difference", 0, 1e-4, 20.0, -1.0),
                "random_s0_m3.0000e-05": ("random", 0, 3e-5, 10.0, -0.05),
                "random_s0_m1.0000e-04": ("random", 0, 1e-4, 10.0, -0.1),
                "random_s1_m1.0000e-04": ("random", 1, 1e-4, 10.2, -0.3)}


def test_change_against_m_is_the_tables_change_on_a_log_m_axis(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", points=POINTS_TWO_M)
    points = pd.read_csv(sweep / "specificity.csv")
    fig, axes = style.pyplot().subplots(1, 1, squeeze=False)
    drawn = plots.draw_change_vs_m(list(axes[0]), points, "tom_margin_change_adj",
                                   ["unexpected"])
    ax = axes[0][0]
    assert ax.get_xscale() == "log"
    bars = errorbar_lines(ax)[style.mode_color("difference")]     # one bar per m
    assert [(x, round(y, 9)) for x, y, _, _ in bars] == [(3e-5, -0.4), (1e-4, -1.0)]
    table = points[(points["family"] == "unexpected")
                   & (points["metric"] == "tom_margin_change_adj")].set_index("label")
    d = table.loc["difference_s0_m1.0000e-04"]
    assert bars[1][2:] == pytest.approx((d["lo"], d["hi"]))
    # the random masks: a band through the seed group at 1e-4 and the single seed at 3e-5
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1
    rows = drawn["unexpected"].set_index("label")
    assert group_label("random", 1e-4) in rows.index and "random_s1_m1.0000e-04" not in rows.index
    group = table.loc[group_label("random", 1e-4)]
    verts = bands[0].get_paths()[0].vertices
    at = verts[np.isclose(verts[:, 0], 1e-4)][:, 1]
    assert sorted(at)[0] == pytest.approx(group["lo"]) and sorted(at)[-1] == pytest.approx(
        group["hi"])
    random_line = [line for line in ax.lines if line.get_linestyle() == "--"][0]
    assert list(random_line.get_ydata()) == pytest.approx([-0.05, -0.2])
    assert "n = 6 clusters" in ax.get_title()
    style.pyplot().close(fig)


def test_perplexity_against_m_is_the_ratio_with_its_window_interval(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", points=POINTS_TWO_M)
    points = pd.read_csv(sweep / "specificity.csv")
    points = points[points["metric"] == "tom_margin_change"]
    fig, ax = style.pyplot().subplots()
    rows = plots.draw_perplexity_vs_m(ax, points).set_index("label")
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert rows.loc["difference_s0_m1.0000e-04", "ratio"] == pytest.approx(2.0)
    assert rows.loc["difference_s0_m3.0000e-05", "ratio"] == pytest.approx(1.2)
    bars = errorbar_lines(ax)[style.mode_color("difference")]
    assert [(x, round(y, 9)) for x, y, _, _ in bars] == [(3e-5, 1.2), (1e-4, 2.0)]
    style.pyplot().close(fig)


def test_the_sweeps_own_modes_against_m_and_a_fallback_without_a_baseline(sweep):
    summary = summary_of(sweep)
    plots_, caption = change_plots(sweep, summary)
    assert [p.name for p in plots_] == ["plot_tom_metric.png", "plot_tom_accuracy.png",
                                        "plot_perplexity.png"]
    assert "log axis" in caption and "95% t-intervals" in caption
    (sweep / "specificity.csv").unlink()
    plots_, caption = change_plots(sweep, summary)
    assert [p.name for p in plots_] == ["plot_perplexity.png"] and "No specificity" in caption


# ----------------------------------------------------------------------------- tables

def test_numbers_read_as_numbers():
    assert [number(x) for x in (7829.0, 2330, 123456.7, 0.0039062, 13.909, 1e-5,
                                float("nan"), None, True)] == [
        "7,829", "2,330", "123,457", "0.00391", "13.9", "1e-05", "", "", "yes"]
    assert signed(-0.0001) == "+0.00" and signed(-0.25) == "-0.25"
    assert with_interval(-0.5, -0.9, -0.1) == "-0.50 [-0.90, -0.10]"
    assert with_interval(0.5, float("nan"), 1.0) == "+0.50"


def test_readable_table_drops_empty_rows_and_columns():
    frame = pd.DataFrame({"label": ["a", "b", "c"], "x": [1.0, np.nan, 2330.0],
                          "y": [np.nan, np.nan, np.nan]})
    page = readable_table(frame, keys=("label",))
    assert "<td>b</td>" not in page and ">y<" not in page
    assert "<td>2,330</td>" in page and "<td>a</td><td>1</td>" in page


def test_table_one_shows_the_csvs_changes_beside_the_random_masks(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", points=POINTS_TWO_M)
    page = table_one(sweep)
    points = pd.read_csv(sweep / "specificity.csv")
    pick = points[(points["family"] == "unexpected")].set_index(["label", "metric"])
    for label in ("difference_s0_m1.0000e-04", group_label("random", 1e-4),
                  "difference_s0_m3.0000e-05", "random_s0_m3.0000e-05"):
        for metric in ("tom_margin_change_adj", "tom_accuracy_change"):
            r = pick.loc[(label, metric)]
            assert with_interval(r["value"], r["lo"], r["hi"]) in page, (label, metric)
    assert page.index("m = 3e-05") < page.index("m = 0.0001")
    assert "random masks (2 seeds)" in page and "random masks (1 seed)" in page
    assert "-0.30 .. -0.10" in page          # the range over the two random seeds
    assert "perplexity x2" in page and "+20.0%" in page       # ratios 2.0 and 1.2
