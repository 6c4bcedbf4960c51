"""Calibration of the verdicts (issue 33, item 6): simulated sweeps with a known truth, judged
by the same code as a real sweep, under named scenarios (``verdict_scenarios.py``).

For every scenario, ``--sims`` data sets are simulated (seeds 0 .. sims-1) and judged in
memory by ``judge.specificity.compute_specificity`` + ``judge.verdicts.verdicts`` at the
default ``config.VerdictRules`` (tests/unit/test_calibration.py shows that a data set written
as a sweep folder and judged by ``judge.tables.write_specificity``, the code behind
``tomsparse summarize``, gives the same verdicts). Printed:

1. per scenario and claim (a and d at each target m; b and c at the primary m, where the
   damage-matched controls are; e once per scope), the share of each outcome over the
   claim's instances (its scopes: the three families and the pool of the passing ones), and
   the share of runs with a false direction in that claim ("shown" where the truth is not on
   the claimed side, "opposite direction" where it is not on the other);
2. the family-wise rate: the share of runs with any false direction (target: at most 5% in
   every no-effect scenario), with its exact binomial 95% interval;
3. the power in the effect scenario, per claim and scope;
4. the false "shown" of claim (a) per scope under skewed mask effects at 5, 10 and 20 random
   masks.

    python benchmarks/bench_verdicts.py --sims 1000 --workers 2 --out calib.csv

``--out`` keeps every judged data set (one row per verdict), so an interrupted run goes on
where it stopped and ``--table-only`` prints the tables from it.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).resolve().parent))

import verdict_scenarios as vsim  # noqa: E402  (the simulator beside this file)

from tomsparse.config import VerdictRules  # noqa: E402
from tomsparse.stats import (CANNOT_BE_MEASURED, NOT_SHOWN, OPPOSITE, RULED_OUT,  # noqa: E402
                             SHOWN)

OUTCOME_ORDER = (SHOWN, OPPOSITE, RULED_OUT, NOT_SHOWN, CANNOT_BE_MEASURED)
OUTCOME_SHORT = {SHOWN: "shown", OPPOSITE: "opposite", RULED_OUT: "ruled out",
                 NOT_SHOWN: "not shown", CANNOT_BE_MEASURED: "cannot"}
COLUMNS = ("scenario", "seed", "claim", "target", "scope", "status", "truth",
           "false_direction")
M_TEXT = {"primary": f"{vsim.M_PRIMARY:.0e}", "secondary": f"{vsim.M_SECONDARY:.0e}", "": ""}


def claim_row(claim: str, target: str) -> str:
    """The table row of a verdict: (a)-(d) per target m, (e) once."""
    return f"{claim} (m={M_TEXT[target]})" if target else claim


def done_seeds(path: Path | None) -> dict[str, set[int]]:
    """{scenario: seeds already judged} in ``--out``. The data set written last may have been
    cut short by an interruption: it is dropped from the file and judged again."""
    if path is None or not path.is_file():
        return {}
    frame = pd.read_csv(path, keep_default_na=False, dtype=str)
    if not frame.empty:
        last = frame.iloc[-1]
        cut = (frame["scenario"] == last["scenario"]) & (frame["seed"] == last["seed"])
        frame = frame[~cut & (frame["false_direction"].isin(("True", "False")))]
        frame.to_csv(path, index=False)
    return {s: set(g["seed"].astype(int)) for s, g in frame.groupby("scenario")}


def run(scenarios: list, sims: int, workers: int, out: Path | None) -> pd.DataFrame:
    """Judge every missing (scenario, seed); rows appended to ``out`` as they come."""
    rules = VerdictRules()
    have = done_seeds(out)
    jobs = [(sc, seed, rules) for sc in scenarios for seed in range(sims)
            if seed not in have.get(sc.name, set())]
    vsim.layout()                                    # built once, before the workers fork
    rows: list[dict] = []
    started = time.perf_counter()
    writer = handle = None
    if out is not None:
        new = not out.is_file()
        handle = out.open("a", newline="")
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
    print(f"{len(jobs)} data sets to judge ({sims} per scenario, {len(scenarios)} scenarios, "
          f"{workers} worker(s))", flush=True)
    try:
        if workers > 1:
            pool = get_context("fork").Pool(workers)
            results = pool.imap_unordered(_job, jobs, chunksize=4)
        else:
            pool, results = None, map(_job, jobs)
        for k, (name, got) in enumerate(results, 1):
            got = [dict(r, scenario=name) for r in got]
            rows += got
            if writer is not None:
                writer.writerows({c: r[c] for c in COLUMNS} for r in got)
                handle.flush()
            if k % 100 == 0 or k == len(jobs):
                spent = time.perf_counter() - started
                print(f"  {k}/{len(jobs)} judged, {spent:.0f} s ({spent / k:.2f} s a data set "
                      f"over {workers} worker(s))", flush=True)
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        if handle is not None:
            handle.close()
    if out is not None:
        return pd.read_csv(out, keep_default_na=False)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _job(args) -> tuple[str, list[dict]]:
    sc = args[0]
    return sc.name, vsim.run_one(args)


# ----------------------------------------------------------------------------- tables
def _bool(series: pd.Series) -> pd.Series:
    return series.astype(str).str.lower().isin(("true", "1"))


def outcome_table(frame: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Per scenario and claim row: % of each outcome over its instances, % of runs with a
    false direction in it."""
    frame = frame.copy()
    frame["row"] = [claim_row(c, t) for c, t in zip(frame["claim"], frame["target"])]
    frame["false"] = _bool(frame["false_direction"])
    out = []
    for name in order:
        sub = frame[frame["scenario"] == name]
        runs = sub["seed"].nunique()
        for row, grp in sub.groupby("row", sort=True):
            if (grp["target"].eq("secondary").all()
                    and grp["status"].eq(CANNOT_BE_MEASURED).all()):
                continue    # by design: no matched controls at 3e-5, or one random mask
            rec = {"scenario": name, "claim": row, "truth": _truth_text(grp["truth"]),
                   "runs": runs}
            for status in OUTCOME_ORDER:
                rec[OUTCOME_SHORT[status]] = 100 * float((grp["status"] == status).mean())
            rec["false/run"] = 100 * float(grp.groupby("seed")["false"].any().mean())
            out.append(rec)
    return pd.DataFrame(out)


def _truth_text(values: pd.Series) -> str:
    signs = sorted(set(int(v) for v in values))
    names = {-1: "claimed", 0: "null", 1: "other side"}
    return "/".join(names[s] for s in signs)


def familywise(frame: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Per scenario: % of runs with any false direction, with its exact 95% interval."""
    frame = frame.copy()
    frame["false"] = _bool(frame["false_direction"])
    out = []
    for name in order:
        sub = frame[frame["scenario"] == name]
        per_run = sub.groupby("seed")["false"].any()
        k, n = int(per_run.sum()), int(per_run.size)
        ci = sps.binomtest(k, n).proportion_ci(0.95) if n else None
        shown = sub[(sub["status"] == SHOWN) & sub["false"]].groupby("seed").size()
        opposite = sub[(sub["status"] == OPPOSITE) & sub["false"]].groupby("seed").size()
        null_claims = sorted(set(sub.loc[sub["truth"].astype(int) == 0, "claim"]))
        out.append({"scenario": name, "runs": n, "false runs": k,
                    "family-wise %": 100 * k / n if n else math.nan,
                    "95% lo": 100 * ci.low if ci else math.nan,
                    "95% hi": 100 * ci.high if ci else math.nan,
                    "runs with false shown %": 100 * shown.size / n if n else math.nan,
                    "runs with false opposite %": 100 * opposite.size / n if n else math.nan,
                    "null claims": ("".join if all(len(c) == 1 for c in null_claims)
                                    else "; ".join)(null_claims)})
    return pd.DataFrame(out)


def by_scope(frame: pd.DataFrame, name: str, status: str = SHOWN) -> pd.DataFrame:
    """% of runs with ``status`` per claim row (rows) and scope (columns) in one scenario."""
    sub = frame[frame["scenario"] == name].copy()
    if sub.empty:
        return pd.DataFrame()
    sub["row"] = [claim_row(c, t) for c, t in zip(sub["claim"], sub["target"])]
    sub["scope"] = sub["scope"].replace("", "-")
    sub["hit"] = sub["status"] == status
    return (100 * sub.pivot_table(index="row", columns="scope", values="hit",
                                  aggfunc="mean")).round(1)


def markdown(frame: pd.DataFrame, digits: int = 1) -> str:
    """A plain markdown table (no tabulate dependency)."""
    cols = list(frame.columns)
    lines = ["| " + " | ".join(str(c) for c in cols) + " |",
             "| " + " | ".join("---" for _ in cols) + " |"]
    for rec in frame.itertuples(index=False):
        cells = []
        for v in rec:
            if isinstance(v, (float, np.floating)):
                cells.append("" if not np.isfinite(v) else f"{v:.{digits}f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sims", type=int, default=1000, help="data sets per scenario")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--scenarios", default="",
                        help="comma-separated scenario names (default: all)")
    parser.add_argument("--out", type=Path, default=None,
                        help="CSV of every verdict judged (resumed when it exists)")
    parser.add_argument("--table-only", action="store_true",
                        help="print the tables from --out, judging nothing")
    args = parser.parse_args(argv)
    every = vsim.scenarios()
    wanted = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in wanted if s not in {sc.name for sc in every}]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: "
                     + ", ".join(sc.name for sc in every))
    by_name = {sc.name: sc for sc in every}
    chosen = [by_name[n] for n in wanted] if wanted else every
    started = time.perf_counter()
    if args.table_only:
        if args.out is None or not args.out.is_file():
            parser.error("--table-only needs --out with judged data sets")
        frame = pd.read_csv(args.out, keep_default_na=False)
    else:
        frame = run(chosen, args.sims, args.workers, args.out)
    order = [sc.name for sc in chosen if sc.name in set(frame["scenario"])]
    frame = frame[frame["seed"].astype(int) < args.sims]
    print("\nScenarios:")
    for sc in chosen:
        print(f"  {sc.name}: {sc.title}")
    print("\n1. Outcomes per scenario and claim (% of the claim's instances: its scopes, the "
          "three families and the pool; false/run: % of runs with a false direction in the "
          "claim). Left out: claims at m=3e-05 that are 'cannot be measured' in every run by "
          "design (b and c: the damage-matched controls are at the primary m only)\n")
    print(markdown(outcome_table(frame, order)))
    print("\n2. Family-wise: % of runs with any false 'shown' or 'opposite direction' "
          "(exact binomial 95% interval)\n")
    print(markdown(familywise(frame, order)))
    for name in order:
        if name == "tom_effect":
            print(f"\n3. Power in {name} (% of runs with 'shown', per claim and scope)\n")
            print(markdown(by_scope(frame, name).reset_index()))
    skewed = [n for n in order if n.startswith("skewed_masks_")]
    if skewed:
        print("\n4. Skewed mask effects: % of runs with claim (a) at m=1e-4 'shown' (false) "
              "per scope\n")
        rows = []
        for name in skewed:
            table = by_scope(frame, name)
            if "a (m=1e-04)" in table.index:
                rows.append({"scenario": name, **table.loc["a (m=1e-04)"].to_dict()})
        print(markdown(pd.DataFrame(rows)))
    if "irony_bias_generation" in order:
        print("\n5. irony_bias_generation: % of runs with a false 'shown' per claim and scope\n")
        print(markdown(by_scope(frame, "irony_bias_generation").reset_index()))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
