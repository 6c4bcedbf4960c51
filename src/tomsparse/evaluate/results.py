"""Result files of a ToM evaluation: the result type, its CSVs, and the one writer of the
reference's layout ``tom/<rep>/<m>/<family>/results.csv`` (used by ``tomsparse eval --out``
and by the sweep)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tomsparse.data.tasks.model import (
    CONTENTS_CONDITIONS,
    REFERENCE_FAMILIES,
    TRANSFER_CONDITIONS,
)
from tomsparse.files import atomic_path, atomic_write_text, check_link, write_csv

# Reference results.csv columns, in the reference's order.
REFERENCE_COLUMNS = {
    "unexpected": [f"{c} ({r})" for c in CONTENTS_CONDITIONS for r in "FT"],
    "transfer": [f"{c} ({r})" for c in TRANSFER_CONDITIONS for r in "FT"],
    "irony": ["Irony", "Irony reversed"],
}


@dataclass
class EvalResult:
    table: pd.DataFrame
    metrics: pd.DataFrame
    meta: dict = field(default_factory=dict)

    def reference_results(self) -> dict:
        """{(rep, family): DataFrame} in the reference's results.csv shape: one row per task,
        one 0/1 column per scenario (1 when both probes of the cell are right)."""
        out = {}
        table = self.table[self.table["family"].isin(REFERENCE_FAMILIES)]
        for (rep, family), rows in table.groupby(["rep", "family"], sort=True):
            cells = rows.groupby(["task_index", "scenario"])["correct"].all().unstack("scenario")
            columns = [c for c in REFERENCE_COLUMNS[family] if c in cells.columns]
            n_tasks = int(rows["task_index"].max()) + 1
            frame = cells.reindex(index=range(n_tasks), columns=columns).fillna(False)
            out[(int(rep), family)] = frame.astype(int)
        return out

    def write(self, out_dir: str | Path, prompt_text: bool = False) -> dict:
        """Write ``tom_prompts.csv`` (one row per prompt), ``tom_metrics.csv``, the reference
        layout ``tom/<rep>/<m>/<family>/results.csv`` and a line in ``tom_runs.jsonl``.

        The two CSVs are merged with what an earlier run wrote there: rows of the same model,
        scoring and m are replaced, others kept (so a sweep over m can share one folder). The
        prompt texts are left out of the CSV unless ``prompt_text`` (a sweep would repeat
        them for every m and rep; ``tomsparse tasks show`` renders them). Returns the written
        paths by kind.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"prompts": out / "tom_prompts.csv", "metrics": out / "tom_metrics.csv"}
        table = self.table if prompt_text else self.table.drop(columns=["prompt"], errors="ignore")
        for kind, frame in (("prompts", table), ("metrics", self.metrics)):
            _merge_csv(paths[kind], frame)
        paths["reference"] = write_reference_results(out / "tom", self.reference_results(),
                                                     self.meta.get("m", 0.0))
        paths["runs"] = check_link(out / "tom_runs.jsonl")
        # appended by rewriting it whole (atomically), never through a planted link
        before = (paths["runs"].read_text(encoding="utf-8") if paths["runs"].is_file()
                  else "")
        atomic_write_text(paths["runs"], before + json.dumps(self.meta, default=str) + "\n")
        return paths


# The reference's layout under a ``tom/`` folder: ``<rep>/<m>/<family>/results.csv``. This
# module is its one owner: the sweep, the reference summary and the command line ask it.
RESULTS_FILE = "results.csv"
LAYOUT = f"<rep>/<m>/<task>/{RESULTS_FILE}"


def reference_results_path(root: str | Path, rep: int, m: float, family: str) -> Path:
    """``<root>/<rep>/<m>/<family>/results.csv``, m written as Python writes the float."""
    return Path(root) / str(rep) / str(float(m)) / family / RESULTS_FILE


def reference_result_files(root: str | Path) -> list[tuple[str, str, str, Path]]:
    """Every ``(rep, m, task, path)`` of the reference's layout under ``root``, sorted by path
    (m as the folder spells it)."""
    return [(p.parts[-4], p.parts[-3], p.parts[-2], p)
            for p in sorted(Path(root).glob(f"*/*/*/{RESULTS_FILE}"))]


def write_reference_results(root: str | Path, results: dict, m: float) -> list[Path]:
    """Write ``{(rep, family): frame}`` (``EvalResult.reference_results``) in the reference's
    layout under ``root`` (a ``tom/`` folder), each file atomically. As the reference writes
    them: rows = tasks, the task number as an unnamed first column (read them back with
    ``pd.read_csv(path, index_col=0)``), then one 0/1 column per scenario."""
    paths = []
    for (rep, family), frame in results.items():
        path = reference_results_path(root, rep, m, family)
        with atomic_path(path) as tmp:
            frame.rename_axis(index=None, columns=None).to_csv(tmp, index=True)
        paths.append(path)
    return paths


def _merge_csv(path: Path, frame: pd.DataFrame) -> None:
    keys = ["model", "scoring", "m"]
    if path.exists():
        old = pd.read_csv(path, keep_default_na=False, na_values=[""])
        if all(k in old.columns for k in keys) and len(frame):
            mine = set(map(tuple, frame[keys].astype(str).drop_duplicates().values.tolist()))
            same = old[keys].astype(str).apply(tuple, axis=1).isin(mine)
            frame = pd.concat([old[~same], frame], ignore_index=True)
    write_csv(path, frame)
