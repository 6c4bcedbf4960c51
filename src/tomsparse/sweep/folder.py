"""The owners of the output folders: every path and file name of a sweep folder
(``SweepFolder``) and of a run folder (``RunFolder``), the point labels that name a sweep's
files, and the readers of what those folders hold (point records, per-prompt tables,
``matched.json``). No other module of tomsparse spells one of these file names
(tests/unit/test_architecture.py checks it), so a layout change is made here alone.

A sweep folder::

    sweep_manifest.json          options, model and score identities (resume check)
    points/<label>.json          one finished point's record (mode, seed, m, perplexity, ...)
    points/<label>_prompts.csv   its per-prompt table; _metrics.csv, _masks.csv beside it
    claims/, search/             claims of concurrent processes; damage-matched searches
    matched.json                 the damage-matched searches' results
    massive_channels.json        channels left out by the -x masks
    tom/                         the reference's layout of the ToM results
    summary.csv, ... , specificity_*.csv, report.html, plot_*.png   derived from points/

A run folder (``tomsparse run``) holds ``manifest.json``, ``scores_tom/``,
``scores_generic/``, ``sweep/`` (a sweep folder) and ``analysis/``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tomsparse.errors import UserError
from tomsparse.files import read_json_object

BASELINE_MODE = "none"  # the unperturbed point, m = 0; every change is measured against it
# The columns that identify one prompt in a per-prompt table (the same at every point).
PROMPT_KEY = ("family", "task_id", "task_index", "condition", "reversed", "scenario", "probe",
              "cell")
PROMPT_NUMBERS = ("logprob_expected", "logprob_alternative", "margin")
POINT_FIELDS = ("mode", "seed", "m", "perplexity", "masked")

_LABEL_RE = re.compile(r"^(?P<mode>.+)_s(?P<seed>-?\d+)_m(?P<m>[-+.0-9eE]+)$")


def m_tag(m: float) -> str:
    """m in file and label names: 5 significant digits when that is m exactly (the names of
    earlier sweeps), else its full repr, so that the reference grid's 9.999999999999999e-06
    and 1e-05 never share a name."""
    short = f"{m:.4e}"
    return short if float(short) == m else repr(float(m))


def point_label(mode: str, seed: int, m: float) -> str:
    """Label of one point, the stem of its files under ``points/``."""
    return f"{mode}_s{seed}_m{m_tag(m)}"


def group_label(mode: str, m: float) -> str:
    """Label of the seed group of ``mode`` at ``m`` (all seeds as replicates)."""
    return f"{mode}_sall_m{m_tag(m)}"


BASELINE_LABEL = point_label(BASELINE_MODE, 0, 0.0)


@dataclass(frozen=True)
class PointRecord:
    """A finished point's record (``points/<label>.json``), checked."""

    label: str
    mode: str
    seed: int
    m: float
    perplexity: float
    masked: int
    ppl_windows: int | None
    ppl_unit_losses: list[float] | None  # per-window mean NLL (None: written before they were)
    fields: dict  # the whole record as written (timings, matched_to, ...)


def _damaged(path: Path, point: Path, problem: str) -> UserError:
    """The one line for a damaged point: what is wrong, and how to have it recomputed."""
    stem = point.stem
    return UserError(f"{path}: {problem}; the sweep point {stem} is damaged: delete its files "
                     f"({point.parent}/{stem}.json and {stem}_*.csv) and run the same "
                     "`tomsparse sweep` again to recompute it (or rerun the whole sweep)")


def _unit_losses(path: Path, info: dict) -> list[float] | None:
    """A record's per-window losses, checked: a list of numbers, or None when absent."""
    losses = info.get("ppl_unit_losses")
    if losses is None:
        return None
    if not isinstance(losses, list) or not all(isinstance(x, (int, float)) for x in losses):
        raise _damaged(path, path, "'ppl_unit_losses' is not a list of numbers")
    return [float(x) for x in losses]


class SweepFolder:
    """One sweep folder: its paths, and the readers of its points."""

    MANIFEST = "sweep_manifest.json"
    MATCHED = "matched.json"
    MASSIVE_CHANNELS = "massive_channels.json"
    REPORT = "report.html"
    FRONTIER_TABLE, FRONTIER_MANIFEST = "frontier.csv", "frontier.json"
    # the derived tables (summary.py and the specificity tables), by role
    TABLES = {"sweep_points": "sweep_points.csv", "perplexity": "perplexity_results.csv",
              "tom_summary": "tom_summary.csv", "summary": "summary.csv",
              "side_by_side": "summary_side_by_side.csv"}
    SPECIFICITY = {"points": "specificity.csv", "contrasts": "specificity_contrasts.csv",
                   "baseline": "specificity_baseline.csv",
                   "conditions": "specificity_conditions.csv",
                   "roles": "specificity_roles.csv", "matched": "specificity_matched.csv",
                   "dose": "specificity_dose.csv", "verdicts": "specificity_verdicts.csv"}
    # the decision rules the verdicts were judged by (config.VerdictRules), kept so
    # that `tomsparse summarize` judges again by the same ones
    VERDICT_RULES = "verdict_rules.json"
    PLOTS = {"tom_metric": "plot_tom_metric.png", "tom_accuracy": "plot_tom_accuracy.png",
             "perplexity": "plot_perplexity.png", "masks": "plot_masks_per_layer.png",
             "specificity": "plot_specificity.png"}

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __fspath__(self) -> str:
        return str(self.root)

    # ------------------------------------------------------------------ paths
    @property
    def points_dir(self) -> Path:
        return self.root / "points"

    @property
    def claims_dir(self) -> Path:
        return self.root / "claims"

    @property
    def search_dir(self) -> Path:
        return self.root / "search"

    @property
    def tom_dir(self) -> Path:
        """The reference's layout of the ToM results (``tom/<rep>/<m>/<task>/``)."""
        return self.root / "tom"

    @property
    def manifest(self) -> Path:
        return self.root / self.MANIFEST

    @property
    def matched(self) -> Path:
        return self.root / self.MATCHED

    @property
    def massive_channels(self) -> Path:
        return self.root / self.MASSIVE_CHANNELS

    @property
    def report(self) -> Path:
        return self.root / self.REPORT

    @property
    def frontier_table(self) -> Path:
        """``tomsparse frontier``'s table of the mask family (its folder is a sweep folder)."""
        return self.root / self.FRONTIER_TABLE

    @property
    def frontier_manifest(self) -> Path:
        return self.root / self.FRONTIER_MANIFEST

    def table(self, name: str) -> Path:
        """A derived table by role (``TABLES``)."""
        return self.root / self.TABLES[name]

    def specificity(self, name: str) -> Path:
        """A specificity table by role (``SPECIFICITY``)."""
        return self.root / self.SPECIFICITY[name]

    @property
    def verdict_rules(self) -> Path:
        return self.root / self.VERDICT_RULES

    def read_verdict_rules(self) -> dict:
        """The decision rules the last verdicts used ({} when none were kept)."""
        path = self.verdict_rules
        return read_json_object(path) if path.is_file() else {}

    def plot(self, name: str) -> Path:
        return self.root / self.PLOTS[name]

    def point_record(self, label: str) -> Path:
        return self.points_dir / f"{label}.json"

    def point_prompts(self, label: str) -> Path:
        return self.points_dir / f"{label}_prompts.csv"

    def point_metrics(self, label: str) -> Path:
        return self.points_dir / f"{label}_metrics.csv"

    def point_masks(self, label: str) -> Path:
        return self.points_dir / f"{label}_masks.csv"

    def search_result(self, target_label: str, mode: str) -> Path:
        """The result of the damage-matched search of ``mode`` for a target point."""
        return self.search_dir / f"{target_label}_{mode}.result.json"

    def search_point(self, mode: str, m: float) -> Path:
        """One perplexity evaluation of a damage-matched search."""
        return self.search_dir / f"{point_label(mode, 0, m)}.json"

    def export_dir(self, m: float) -> Path:
        """The perturbed model exported at ``m`` (``--export-model``)."""
        return self.root / f"model_m{m_tag(m)}"

    def record_paths(self) -> list[Path]:
        """Every point record under ``points/``, sorted by name."""
        return sorted(self.points_dir.glob("*.json"))

    def has_points(self) -> bool:
        return any(self.points_dir.glob("*.json"))

    def baseline_records(self) -> list[Path]:
        """The m = 0 point records (``none_s<seed>_m...``)."""
        return sorted(self.points_dir.glob(f"{BASELINE_MODE}_s*.json"))

    # ------------------------------------------------------------------ reading
    def read_point(self, path: Path) -> tuple[dict, pd.DataFrame]:
        """A finished point's record and its metrics table, checked: a damaged or missing
        file is a UserError naming it and the fix."""
        info = _read_record(path)
        metrics_path = self.point_metrics(path.stem)
        if not metrics_path.is_file():
            raise _damaged(metrics_path, path, "missing (every finished point has its "
                                               "metrics table)")
        try:
            metrics = pd.read_csv(metrics_path)
        except (ValueError, UnicodeDecodeError) as exc:  # pandas' EmptyDataError, ParserError
            first = " ".join(str(exc).split())[:120]
            raise _damaged(metrics_path, path, f"not a readable CSV table ({first})") from None
        for column in ("level", "family"):
            if column not in metrics.columns:
                raise _damaged(metrics_path, path, f"not a metrics table (no {column!r} "
                                                   "column)")
        if not self.point_prompts(path.stem).is_file():  # the specificity tables read it
            raise _damaged(self.point_prompts(path.stem), path,
                           "missing (every finished point has its per-prompt table)")
        return info, metrics

    def read_records(self) -> list[PointRecord]:
        """The records of every labelled point (``<mode>_s<seed>_m<m>.json``), checked."""
        out = []
        for path in self.record_paths():
            if not _LABEL_RE.match(path.stem):
                continue
            info = _read_record(path)
            out.append(PointRecord(label=path.stem, mode=str(info["mode"]),
                                   seed=int(info["seed"]), m=float(info["m"]),
                                   perplexity=float(info["perplexity"]),
                                   masked=int(info["masked"]),
                                   ppl_windows=info.get("ppl_windows"),
                                   ppl_unit_losses=_unit_losses(path, info), fields=info))
        return out

    def read_prompts(self, label: str) -> pd.DataFrame:
        """A point's per-prompt table, key columns as text."""
        path = self.point_prompts(label)
        if not path.is_file():
            raise UserError(f"{path}: missing (every finished point needs its per-prompt "
                            "table)")
        return pd.read_csv(path, dtype={k: str for k in PROMPT_KEY}, keep_default_na=False,
                           na_values={c: [""] for c in PROMPT_NUMBERS})

    def read_sweep(self) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
        """Points (label, mode, seed, m, perplexity, masked, ppl_windows, ppl_unit_losses) and
        the per-prompt
        table of every point, keyed by label."""
        if not self.points_dir.is_dir():
            raise UserError(f"{self.root}: no points/ folder; is this a sweep folder?")
        records = self.read_records()
        if not records:
            raise UserError(f"{self.points_dir}: no finished sweep points")
        infos = pd.DataFrame([{"label": r.label, "mode": r.mode, "seed": r.seed, "m": r.m,
                               "perplexity": r.perplexity, "masked": r.masked,
                               "ppl_windows": r.ppl_windows,
                               "ppl_unit_losses": r.ppl_unit_losses} for r in records])
        return infos, {r.label: self.read_prompts(r.label) for r in records}

    def baseline_perplexity(self) -> float:
        """The perplexity of the sweep's m = 0 point, NaN if none."""
        for path in self.baseline_records():
            try:
                return float(json.loads(path.read_text()).get("perplexity", float("nan")))
            except (OSError, ValueError, TypeError, AttributeError):
                continue
        return float("nan")

    def read_matched(self) -> dict[str, dict]:
        """The targets of ``matched.json`` (the damage-matched searches), checked: {target
        label: {"mode", "m", "perplexity", "controls": [{"mode", "m", "seed", "label",
        "perplexity", "ppl_change", "matched", "search"}]}}; {} when the sweep had none."""
        return read_matched(self.matched)

    def read_manifest(self) -> dict:
        """The sweep's manifest, {} when the folder has none."""
        if not self.manifest.exists():
            return {}
        return read_json_object(self.manifest, "restore it, or delete it (the report then "
                                               "shows no options)")


def _read_record(path: Path) -> dict:
    """A point record, checked (JSON object with the point fields, numbers as numbers)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise _damaged(path, path, "not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise _damaged(path, path, f"not valid JSON ({exc.msg} at line {exc.lineno} column "
                                   f"{exc.colno})") from None
    except OSError as exc:
        raise _damaged(path, path, f"cannot be read ({exc.strerror or exc})") from None
    if not isinstance(info, dict):
        raise _damaged(path, path, f"holds a JSON {type(info).__name__}, not a point record")
    missing = [k for k in POINT_FIELDS if k not in info]
    if missing:
        raise _damaged(path, path, f"not a point record (no {', '.join(missing)})")
    try:
        info["m"], info["seed"] = float(info["m"]), int(info["seed"])
        info["perplexity"], info["masked"] = float(info["perplexity"]), int(info["masked"])
    except (TypeError, ValueError):
        raise _damaged(path, path, "a field of the point record is not a number") from None
    return info


def read_matched(path: str | Path) -> dict[str, dict]:
    """The targets of a ``matched.json`` (see ``SweepFolder.read_matched``); {} when the file
    does not exist. A damaged file is a UserError naming it."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"{path}: cannot read the matched controls ({exc})") from None
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    targets = data.get("targets") if isinstance(data, dict) else None
    if not isinstance(targets, dict):
        raise UserError(f"{path}: no \"targets\" object; not a sweep's matched.json")
    for label, target in targets.items():
        controls = target.get("controls") if isinstance(target, dict) else None
        if (not isinstance(controls, list) or "m" not in target
                or not all(isinstance(c, dict) and {"mode", "m", "matched"} <= set(c)
                           for c in controls)):
            raise UserError(f"{path}: target {label!r} is malformed (each target needs mode "
                            "and m, each control mode, m, seed and matched)")
    return targets


class RunFolder:
    """The output folder of ``tomsparse run``."""

    MANIFEST = "manifest.json"
    REPORT_SECTIONS = "report_sections.json"
    MASK_OVERLAP, REPLICATE_VERDICTS = "mask_overlap.csv", "replicate_verdicts.csv"

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def manifest(self) -> Path:
        return self.root / self.MANIFEST

    @property
    def sweep(self) -> SweepFolder:
        return SweepFolder(self.root / "sweep")

    @property
    def analysis_dir(self) -> Path:
        return self.root / "analysis"

    @property
    def report_sections(self) -> Path:
        """The sections ``tomsparse analyze`` leaves for the run's report."""
        return self.analysis_dir / self.REPORT_SECTIONS

    def scores(self, dataset: str, replicate: int = 1) -> Path:
        """The score store of ``dataset`` (tom or generic); score replicate r > 1 (an
        independent draw of the samples) is ``scores_<dataset>_r<r>``."""
        return self.root / (f"scores_{dataset}" if replicate == 1
                            else f"scores_{dataset}_r{replicate}")

    def replicate_sweep(self, replicate: int) -> SweepFolder:
        """The small sweep of score replicate r > 1 (its difference mask at the primary m)."""
        return SweepFolder(self.root / f"sweep_r{replicate}")

    @property
    def mask_overlap(self) -> Path:
        """The Jaccard overlap of the replicates' difference masks (judge.replicates)."""
        return self.root / self.MASK_OVERLAP

    @property
    def replicate_verdicts(self) -> Path:
        """The primary verdicts under each score replicate (judge.replicates)."""
        return self.root / self.REPLICATE_VERDICTS

    def read_report_sections(self) -> list[tuple[str, str]]:
        """The (title, html) sections the analyses left for the report; [] when none."""
        path = self.report_sections
        if not path.is_file():
            return []
        return [(str(title), str(body))
                for title, body in json.loads(path.read_text(encoding="utf-8"))]
