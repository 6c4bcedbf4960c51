"""The reference code's summary, recomputed from a folder in its layout
``<root>/<rep>/<m>/<task>/results.csv``: per m and task the total and percentage (mean and
sample variance over reps) and ``avg_percent_unexpected_transfer``, so our numbers can be
checked against the reference's own summarising."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tomsparse.errors import UserError
from tomsparse.evaluate.results import LAYOUT, reference_result_files

REFERENCE_TASKS = ("unexpected", "transfer", "irony")


def _cell_columns(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The 0/1 scenario columns of a reference results.csv (an index column, if the file was
    written with one, is dropped)."""
    cols = [c for c in frame.columns
            if not str(c).startswith("Unnamed") and str(c) != "task_index"]
    cells = frame[cols]
    values = pd.unique(cells.to_numpy().ravel())
    if cells.empty or not set(values.tolist()) <= {0, 1, 0.0, 1.0, True, False}:
        raise UserError(f"{path}: expected a table of 0/1 scenario results (rows = tasks), "
                        f"found values {sorted(map(str, values))[:5]}")
    return cells.astype(float)


def reference_summary(root: str | Path) -> pd.DataFrame:
    """The reference's summary of ``<root>/<rep>/<m>/<task>/results.csv``: one row per m with
    ``<task>_total_mean, <task>_total_var, <task>_percent_mean, <task>_percent_var`` (sample
    variance over reps; 0 with one rep) and ``avg_percent_unexpected_transfer``."""
    root = Path(root)
    records = []
    for rep, m, task, path in reference_result_files(root):
        try:
            m_value = float(m)
        except ValueError:
            raise UserError(f"{path}: the folder {m!r} should be an m value "
                            f"(layout {LAYOUT})") from None
        try:
            frame = pd.read_csv(path)
        except (ValueError, UnicodeDecodeError) as exc:  # pandas' EmptyDataError, ParserError
            raise UserError(f"{path}: not a readable CSV table ({' '.join(str(exc).split())[:120]}"
                            "); the file is damaged: restore it, or rerun the evaluation that "
                            "wrote it") from None
        cells = _cell_columns(frame, path)
        total = float(cells.to_numpy().sum())
        records.append({"rep": rep, "m": m_value, "task": task, "total": total,
                        "percent": 100.0 * total / cells.size})
    if not records:
        raise UserError(f"{root}: no {LAYOUT} files (the reference's tom/ layout)")
    frame = pd.DataFrame(records)
    rows = []
    for m, g in frame.groupby("m", sort=True):
        row = {"m": m}
        for task in [t for t in REFERENCE_TASKS if t in set(g["task"])] + sorted(
                set(g["task"]) - set(REFERENCE_TASKS)):
            t = g[g["task"] == task]
            ddof = 1 if len(t) > 1 else 0
            row[f"{task}_total_mean"] = t["total"].mean()
            row[f"{task}_total_var"] = t["total"].var(ddof=ddof)
            row[f"{task}_percent_mean"] = t["percent"].mean()
            row[f"{task}_percent_var"] = t["percent"].var(ddof=ddof)
        if "unexpected_percent_mean" in row and "transfer_percent_mean" in row:
            row["avg_percent_unexpected_transfer"] = (row["unexpected_percent_mean"]
                                                      + row["transfer_percent_mean"]) / 2
        rows.append(row)
    return pd.DataFrame(rows)
