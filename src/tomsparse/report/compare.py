"""Several models' runs side by side (``tomsparse compare RUN_DIR ...``).

Reads, per run folder, ``manifest.json`` (model, fingerprint) and the specificity tables of its
sweep (``sweep/specificity_baseline.csv``, ``sweep/specificity_verdicts.csv``,
``sweep/specificity.csv``; see ``tomsparse.judge.specificity``) and puts them next to each other:
the baseline's false-belief accuracy and margin per family with their intervals and chance
state, the verdicts on claims (a)-(d) per m, and the pooled ToM change and belief gap of every
mask and m. Writes ``compare.csv`` (long), ``compare.html`` (tables and the specificity plots
of every run) and returns a plain-text rendering.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from tomsparse.errors import UserError
from tomsparse.scores.compute import SCORES
from tomsparse.files import read_csv_checked, read_json_object, write_csv
from tomsparse.report.html import embed_png, write_page
from tomsparse.report.plots import (
    baseline_perplexity,
    draw_specificity,
    specificity_points,
    specificity_pool,
)
from tomsparse.report.style import pyplot, save_figure
from tomsparse.sweep.folder import RunFolder, SweepFolder
from tomsparse.judge.specificity import ABOVE, POOL_ABOVE

# A compare folder's layout: this module is its one owner.
COMPARE_FILES = {"csv": "compare.csv", "html": "compare.html",
                 "plot": "plot_compare_specificity.png"}
# The specificity tables compare reads (``SweepFolder.SPECIFICITY`` roles), what it reads of
# each (and what the table is), checked before anything is written.
TABLES = ("baseline", "verdicts", "points")
TABLE_COLUMNS = {
    "baseline": (("family",), "the sweep's baseline table"),
    "verdicts": (("claim", "m", "value", "lo", "hi", "status"), "the sweep's verdict table"),
    "points": (("family", "metric", "mode", "m", "value", "lo", "hi", "n_tasks", "n_prompts",
                "perplexity"), "the sweep's specificity table"),
}
CHANGE_METRICS = ("tom_margin_change_adj", "belief_gap_margin")
# what compare reads of a planted model's recovery table, and the quantities it shows
PLANTED_COLUMNS = ("mode", "m", "role", "mask_in_planted", "planted_in_mask",
                   "random_mask_in_planted", "random_planted_in_mask", "enrichment")
PLANTED_QUANTITIES = {"planted_in_mask": "share of P in the mask",
                      "mask_in_planted": "share of the mask in P",
                      "enrichment": "enrichment over a random mask"}
COLUMNS = ("run", "model", "fingerprint", "section", "family", "quantity", "claim", "mode", "m",
           "value", "lo", "hi", "state", "n_tasks", "n_prompts", "pool")


@dataclass
class RunTables:
    """One run folder's identity and specificity tables."""

    path: Path
    sweep_dir: Path
    name: str           # the column heading: the model, made unique
    model: str
    fingerprint: str
    baseline: pd.DataFrame
    verdicts: pd.DataFrame
    points: pd.DataFrame
    planted: pd.DataFrame | None = None  # a planted model's recovery table (judge.recovery)

    @property
    def base_fingerprint(self) -> str:
        """The fingerprint of the model this one was planted into ("" if not planted)."""
        if self.planted is None or "base_fingerprint" not in self.planted:
            return ""
        values = self.planted["base_fingerprint"].dropna().astype(str)
        return values.iloc[0] if len(values) else ""


def _fix(sweep_dir: Path) -> str:
    return (f"run `tomsparse summarize {sweep_dir}` to write the specificity tables (the sweep "
            f"needs its m = 0 point), or finish the run with `tomsparse run`")


def read_run(run_dir: str | Path) -> RunTables:
    """A run folder (``manifest.json`` and ``sweep/``), or a sweep folder itself
    (``sweep_manifest.json``); ``UserError`` naming the missing file and the fix."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such folder; give run folders written by `tomsparse run`")
    run, as_sweep = RunFolder(run_dir), SweepFolder(run_dir)
    if run.manifest.is_file() or run.sweep.root.is_dir():
        manifest_path, sweep = run.manifest, run.sweep
    elif as_sweep.manifest.is_file() or as_sweep.points_dir.is_dir():
        manifest_path, sweep = as_sweep.manifest, as_sweep
    else:
        raise UserError(f"{run.manifest}: missing; give a folder written by "
                        f"`tomsparse run` (or a sweep folder of `tomsparse sweep`)")
    if not manifest_path.is_file():
        raise UserError(f"{manifest_path}: missing; give a folder written by `tomsparse run` "
                        f"(or a sweep folder of `tomsparse sweep`)")
    manifest = read_json_object(manifest_path, "give a folder written by `tomsparse run` (or "
                                               "a sweep folder), or restore the file")
    sweep_dir = sweep.root
    frames = []
    for name in TABLES:
        columns, what = TABLE_COLUMNS[name]
        frames.append(read_csv_checked(sweep.specificity(name), columns, what, _fix(sweep_dir)))
    model = str(manifest.get("model") or run_dir.name)
    planted = sweep.read_planted_recovery(PLANTED_COLUMNS)
    # runs of one model with different attribution scores (--score) are told apart by it
    method = manifest.get("score_method")
    name = (f"{model} [{method}]" if isinstance(method, str) and method in SCORES
            and method != SCORES[0] else model)
    return RunTables(path=run_dir, sweep_dir=sweep_dir, name=name, model=model,
                     fingerprint=str(manifest.get("model_fingerprint") or ""),
                     baseline=frames[0], verdicts=frames[1], points=frames[2], planted=planted)


def read_runs(run_dirs: Sequence[str | Path]) -> list[RunTables]:
    """``read_run`` of each folder, their names made unique (model, then model (folder))."""
    if not run_dirs:
        raise UserError("compare needs at least one run folder")
    runs = [read_run(d) for d in run_dirs]
    seen: dict[str, int] = {}
    counts = pd.Series([r.name for r in runs]).value_counts().to_dict()
    for run in runs:
        if counts[run.name] > 1:
            run.name = f"{run.name} ({run.path.resolve().name})"
        seen[run.name] = seen.get(run.name, 0) + 1
        if seen[run.name] > 1:
            run.name = f"{run.name} #{seen[run.name]}"
    return runs


def _num(x) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return math.nan
    return x


def compare_table(runs: Sequence[RunTables]) -> pd.DataFrame:
    """The long table of ``compare.csv`` (columns ``COLUMNS``): per run, section ``baseline``
    (false-belief accuracy and margin per family), ``verdict`` (claim per m) and ``change``
    (pooled ToM change and belief gap per mode and m, the seed group preferred)."""
    rows = []
    for run in runs:
        ident = {"run": run.name, "model": run.model, "fingerprint": run.fingerprint}
        for b in run.baseline.itertuples():
            for quantity, col in (("false-belief accuracy", "tom_accuracy"),
                                  ("false-belief margin", "tom_margin")):
                rows.append(dict(ident, section="baseline", family=b.family, quantity=quantity,
                                 value=_num(getattr(b, col, math.nan)),
                                 lo=_num(getattr(b, f"{col}_lo", math.nan)),
                                 hi=_num(getattr(b, f"{col}_hi", math.nan)),
                                 state=str(getattr(b, "state", "")),
                                 n_tasks=_num(getattr(b, "n_tasks", math.nan)),
                                 n_prompts=_num(getattr(b, "n_prompts", math.nan))))
        for v in run.verdicts.itertuples():
            family = getattr(v, "family", "")
            rows.append(dict(ident, section="verdict", claim=str(v.claim), m=_num(v.m),
                             family="" if pd.isna(family) else str(family),
                             quantity=VERDICT_QUANTITY.get(str(v.claim), "ToM change"),
                             value=_num(v.value), lo=_num(v.lo), hi=_num(v.hi),
                             state=str(v.status), n_tasks=_num(getattr(v, "n_tasks", math.nan)),
                             n_prompts=_num(getattr(v, "n_prompts", math.nan))))
        pool = specificity_pool(run.baseline)
        for metric in CHANGE_METRICS:
            sel = specificity_points(run.points, metric, pool,
                                     baseline_perplexity(run.sweep_dir))
            for p in sel.itertuples():
                rows.append(dict(ident, section="change", quantity=metric, mode=p.mode,
                                 m=_num(p.m), value=_num(p.value), lo=_num(p.lo),
                                 hi=_num(p.hi), n_tasks=_num(p.n_tasks),
                                 n_prompts=_num(p.n_prompts), pool=pool,
                                 state=_change_note(p)))
        rows += planted_rows(run, ident)
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table


def planted_rows(run: RunTables, ident: dict) -> list[dict]:
    """Section ``planted`` of a run on a planted model: per m and mask, over all matrices,
    the recovery of the planted set (random masks: mean over seeds), the random mask's
    expectation in ``state``."""
    if run.planted is None or run.planted.empty:
        return []
    overall = run.planted[run.planted["role"].astype(str) == "all"]
    rows = []
    for (m, mode), sub in overall.groupby(["m", "mode"], sort=False):
        for col, quantity in PLANTED_QUANTITIES.items():
            expected = {"planted_in_mask": "random_planted_in_mask",
                        "mask_in_planted": "random_mask_in_planted"}.get(col)
            note = (f"random {_num(sub[expected].mean()):.3g}" if expected else "")
            rows.append(dict(ident, section="planted", quantity=quantity, mode=str(mode),
                             m=_num(m), value=_num(sub[col].mean()), lo=math.nan, hi=math.nan,
                             state=note))
    return rows


def planted_text(run: RunTables, runs: Sequence[RunTables]) -> str:
    """"planted into <fingerprint> (base: <run>)" for a planted model, "" otherwise."""
    base = run.base_fingerprint
    if not base:
        return ""
    found = [r.name for r in runs if r is not run and r.fingerprint == base]
    return (f"planted into model {base}"
            + (f" (its base: {', '.join(found)})" if found else " (its base is not compared)"))


# what each claim's number is (judge.verdicts)
VERDICT_QUANTITY = {"a": "ToM change minus random masks'", "b": "ToM change minus matched "
                    "controls'", "c": "belief gap minus matched controls'",
                    "d": "log perplexity ratio", "e": "slope of the ToM change on log m"}


def _change_note(p) -> str:
    """``ppl x<ratio>`` and, for a seed group, its seed count."""
    note = f"ppl x{math.exp(p.log_ppl_ratio):.3g}" if np.isfinite(p.log_ppl_ratio) else ""
    k = _num(getattr(p, "n_seeds", 1))
    return note + (f"; {int(k)} seeds" if np.isfinite(k) and k > 1 else "")


def pool_text(run: RunTables) -> str:
    """Which families the run's pooled numbers average: ``above chance (unexpected)``."""
    pool = specificity_pool(run.baseline)
    if pool == POOL_ABOVE:
        fams = run.baseline.loc[run.baseline["state"] == ABOVE, "family"]
        return f"{pool} ({', '.join(map(str, fams))})"
    return f"{pool} (no family passes its controls at baseline)"


def _cell(r) -> str:
    """One number with its interval and state, as text."""
    if r["section"] == "verdict" and r["claim"] == "d":
        num = "" if not np.isfinite(r["value"]) else f"{100 * r['value']:+.0f}% perplexity"
    elif r["section"] == "planted":
        num = (f"x{r['value']:.3g}" if r["quantity"].startswith("enrichment")
               else f"{r['value']:.4g}") if np.isfinite(r["value"]) else "n/a"
    elif not np.isfinite(r["value"]):
        num = "n/a"
    else:
        fmt = "{:.2f}" if r["quantity"] == "false-belief accuracy" else "{:+.2f}"
        num = fmt.format(r["value"])
        if np.isfinite(r["lo"]) and np.isfinite(r["hi"]):
            num += f" [{fmt.format(r['lo'])}, {fmt.format(r['hi'])}]"
    state = r["state"] if isinstance(r["state"], str) else ""
    return f"{num} {state}".strip()


def side_by_side_tables(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{section title: wide table}, one column per run, each cell ``value [lo, hi] state``."""
    if table.empty:
        return {}
    table = table.copy()
    table["cell"] = [_cell(r) for _, r in table.iterrows()]
    runs = list(dict.fromkeys(table["run"]))
    out = {}
    specs = (("baseline", "Baseline on the false-belief prompts (95% t-interval over clusters; "
                          "gate)", ["family", "quantity"]),
             ("verdict", "Verdicts per claim, m and family (value [Holm-adjusted interval], "
                         "outcome)", ["claim", "m", "family", "quantity"]),
             ("change", "ToM change and belief gap per mask and m (paired, 95% interval, pooled "
                        "over the families that pass their controls, else all; perplexity ratio)",
              ["quantity", "mode", "m"]),
             ("planted", "Planted ground truth: recovery of the planted set P per mask and m "
                         "(over all matrices; beside it, a random mask of the same size)",
              ["quantity", "mode", "m"]))
    for section, title, index in specs:
        sub = table[table["section"] == section]
        if sub.empty:
            continue
        sub = sub.assign(m=sub["m"].map(lambda x: "" if not np.isfinite(x) else f"{x:.3g}"))
        wide = sub.pivot_table(index=index, columns="run", values="cell", sort=False,
                               aggfunc=lambda cells: "; ".join(cells))
        wide = wide.reindex(columns=[r for r in runs if r in set(sub["run"])])
        out[title] = wide.fillna("").reset_index()
    return out


def compare_text(table: pd.DataFrame, runs: Sequence[RunTables] = ()) -> str:
    """The plain-text rendering printed by ``tomsparse compare``."""
    lines = []
    for run in runs:
        planted = planted_text(run, runs)
        lines.append(f"{run.name}: model {run.model}, fingerprint {run.fingerprint or '?'}, "
                     f"pooled families {pool_text(run)}, {run.path}"
                     + (f"; {planted}" if planted else ""))
    for title, wide in side_by_side_tables(table).items():
        lines += ["", title, wide.to_string(index=False)]
    return "\n".join(lines)


def plot_compare(runs: Sequence[RunTables], path: str | Path) -> Path:
    """The specificity plot (``draw_specificity``) of every run, one row per run."""
    fig, axes = pyplot().subplots(len(runs), 2, figsize=(12.0, 4.4 * len(runs)), dpi=100,
                                  squeeze=False)
    for run, row in zip(runs, axes):
        draw_specificity(row, run.points, run.baseline, baseline_perplexity(run.sweep_dir))
        for ax in row:
            ax.set_title(f"{run.name}: {ax.get_title()}", fontsize=8)
    return save_figure(fig, path)


def write_compare(run_dirs: Sequence[str | Path], out: str | Path = "compare"
                  ) -> tuple[pd.DataFrame, str, dict[str, Path]]:
    """Read the runs, write ``out/compare.csv``, ``out/compare.html`` and
    ``out/plot_compare_specificity.png``; return (long table, text, paths)."""
    runs = read_runs(run_dirs)
    table = compare_table(runs)
    text = compare_text(table, runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # only once every input has been read
    paths = {"csv": write_csv(out / COMPARE_FILES["csv"], table)}
    paths["plot"] = plot_compare(runs, out / COMPARE_FILES["plot"])
    head = "".join(f"<tr><td>{html.escape(r.name)}</td><td>{html.escape(r.model)}</td>"
                   f"<td>{html.escape(r.fingerprint)}</td><td>{html.escape(pool_text(r))}</td>"
                   f"<td>{html.escape(planted_text(r, runs))}</td>"
                   f"<td>{html.escape(str(r.path))}</td></tr>" for r in runs)
    parts = [f"<h1>tomsparse compare: {len(runs)} run(s)</h1>",
             "<table><tr><th>run</th><th>model</th><th>fingerprint</th><th>pooled families</th>"
             "<th>planted</th><th>folder</th></tr>"
             f"{head}</table>"]
    for title, wide in side_by_side_tables(table).items():
        parts.append(f"<h2>{html.escape(title)}</h2>" + wide.to_html(index=False))
    parts.append("<h2>Specificity plots</h2>" + embed_png(paths["plot"]) +
                 "<p>Per run: ToM change (left) and belief gap (right) against log(perplexity / "
                 "baseline perplexity), 95% t-intervals over clusters, labels m.</p>")
    paths["html"] = write_page(out / COMPARE_FILES["html"], "tomsparse compare", "\n".join(parts))
    return table, text, paths
