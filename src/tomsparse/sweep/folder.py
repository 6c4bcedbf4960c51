"""The owners of the output folders: every path and file name of a sweep folder
(``SweepFolder``) and of a run folder (``RunFolder``), the point labels that name a sweep's
files, and the readers of what those folders hold (point records, per-prompt tables,
``matched.json``). No other module of tomsparse spells one of these file names
(tests/unit/test_architecture.py checks it), so a layout change is made here alone.

A sweep folder::

    sweep_manifest.json          options, model and score identities (resume check)
    points/<label>.json          one finished point's record (mode, seed, m, perplexity, ...)
    points/<label>_prompts.csv   its per-prompt table; _metrics.csv, _masks.csv beside it
    points/<label>.sha256        the point's integrity record: the sha256 of each of its files
                                 as the sweep wrote them (``sha256sum -c`` reads it)
    matched.sha256               the same for matched.json
    edits_accepted.json          edited files judged anyway (``summarize --accept-edited``)
    claims/, search/             claims of concurrent processes; damage-matched searches
    matched.json                 the damage-matched searches' results
    massive_channels.json        channels left out by the -x masks
    tom/                         the reference's layout of the ToM results
    summary.csv, ... , specificity_*.csv, report.html, plot_*.png   derived from points/

A run folder (``tomsparse run``) holds ``manifest.json``, ``scores_tom/``,
``scores_generic/``, ``sweep/`` (a sweep folder) and ``analysis/``.

Results carry their own integrity: the sweep writes each point's files, then the sha256 of
each (``write_point``), then the record that marks the point finished. Every reader of the
points (``read_point``, ``read_records``, ``read_sweep``) first checks the folder once
(``verify``): each file against its recorded sha256 (a difference is refused unless it was
accepted with ``summarize --accept-edited``, and the report then says so), and every value
read back for range and consistency: a finite, positive perplexity that its window losses
give, margins equal to their log-probabilities, numbers that are numbers, the same prompts at
every point, one task per task number.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tomsparse.errors import UserError
from tomsparse.files import atomic_write_text, read_json_object, write_csv, write_json
from tomsparse.manifest import sha256_file
from tomsparse.safe_read import parse_json, read_csv, read_text, sanitize_html

BASELINE_MODE = "none"  # the unperturbed point, m = 0; every change is measured against it
# The columns that identify one prompt in a per-prompt table (the same at every point).
PROMPT_KEY = ("family", "task_id", "task_index", "condition", "reversed", "scenario", "probe",
              "cell")
PROMPT_NUMBERS = ("logprob_expected", "logprob_alternative", "margin")
POINT_FIELDS = ("mode", "seed", "m", "perplexity", "masked")
# What a sweep manifest says when its points carry integrity records (``write_point``).
INTEGRITY = "sha256 of every point file, points/<label>.sha256"
MAX_RECORD_BYTES = 16 * 2 ** 20   # a point record (its window losses included)
MAX_SECTIONS_BYTES = 64 * 2 ** 20  # report_sections.json (its PNGs are embedded)

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
    """A record's per-window losses, checked: a list of finite numbers >= 0 whose mean gives
    the record's perplexity (ppl = exp(mean unit loss), evaluate.perplexity), as many as its
    windows (or its batches of 2, under the reference protocol); None when absent."""
    losses = info.get("ppl_unit_losses")
    if losses is None:
        return None
    if (not isinstance(losses, list) or not losses
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in losses)):
        raise _damaged(path, path, "'ppl_unit_losses' is not a list of numbers")
    values = [float(x) for x in losses]
    if not all(math.isfinite(x) and x >= 0 for x in values):
        raise _damaged(path, path, "'ppl_unit_losses' holds a loss that is negative or not "
                                   "finite; a next-token loss is a finite number >= 0")
    windows = info.get("ppl_windows")
    if isinstance(windows, int) and not isinstance(windows, bool) and windows > 0 \
            and len(values) not in (windows, math.ceil(windows / 2)):
        raise _damaged(path, path, f"'ppl_unit_losses' holds {len(values)} losses for "
                                   f"{windows} perplexity windows")
    implied = math.exp(sum(values) / len(values))
    if not math.isclose(implied, info["perplexity"], rel_tol=1e-4):
        raise _damaged(path, path, f"perplexity {info['perplexity']:.6g} is not what its window "
                                   f"losses give (exp of their mean: {implied:.6g}); a "
                                   "perplexity changed by hand is not judged")
    return values


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

    # the edited files judged anyway (``summarize --accept-edited``), and the integrity
    # record of matched.json (each point's is ``point_integrity``)
    EDITS_ACCEPTED = "edits_accepted.json"
    MATCHED_INTEGRITY = "matched.sha256"
    # the planted ground truth's recovery (a sweep of a planted model: judge.recovery)
    PLANTED_RECOVERY = "planted_recovery.csv"
    # the Jaccard agreement of the difference mask and the task-swapped masks, beside two
    # random masks of the same counts (a sweep with --scores-swapped: judge.agreement)
    MASK_AGREEMENT = "mask_agreement.csv"

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._checked: tuple[list, dict] | None = None  # what ``verify`` read, once

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

    @property
    def planted_recovery(self) -> Path:
        """How the masks of a sweep on a planted model recover the planted set
        (``judge.recovery``); absent for any other model."""
        return self.root / self.PLANTED_RECOVERY

    def write_planted_recovery(self, table: pd.DataFrame) -> Path:
        return write_csv(self.planted_recovery, table)

    def read_planted_recovery(self, columns=()) -> pd.DataFrame | None:
        """The planted-recovery table, checked for ``columns``; None when the sweep has none."""
        return _optional_table(self.planted_recovery, "planted-recovery", columns,
                               "delete it and run `tomsparse summarize` or the sweep again to "
                               "rewrite it")

    @property
    def mask_agreement(self) -> Path:
        """The masks' agreement table (``judge.agreement``); absent without task-swapped
        stores."""
        return self.root / self.MASK_AGREEMENT

    def write_mask_agreement(self, table: pd.DataFrame) -> Path:
        return write_csv(self.mask_agreement, table)

    def read_mask_agreement(self, columns=()) -> pd.DataFrame | None:
        """The mask-agreement table, checked for ``columns``; None when the sweep has none."""
        return _optional_table(self.mask_agreement, "mask-agreement", columns,
                               "delete it and run the sweep again to rewrite it")

    def swapped_sets(self) -> list[str]:
        """The names of the task-swapped stores the sweep was run with (its manifest's
        ``scores_swapped_sha``); [] for a sweep without them or without a manifest."""
        if not self.manifest.is_file():
            return []
        value = self.read_manifest().get("scores_swapped_sha")
        return sorted(str(k) for k in value) if isinstance(value, dict) else []

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

    def point_integrity(self, label: str) -> Path:
        """The point's integrity record: the sha256 of each of its files as written."""
        return self.points_dir / f"{label}.sha256"

    @property
    def matched_integrity(self) -> Path:
        return self.root / self.MATCHED_INTEGRITY

    @property
    def edits_accepted(self) -> Path:
        return self.root / self.EDITS_ACCEPTED

    def point_files(self, label: str) -> list[Path]:
        """Every file of a point that exists (record, per-prompt, metrics and mask tables)."""
        return [p for p in (self.point_record(label), self.point_prompts(label),
                            self.point_metrics(label), self.point_masks(label)) if p.exists()]

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

    # ------------------------------------------------------------------ writing
    def write_point(self, label: str, record: dict, prompts: pd.DataFrame,
                    metrics: pd.DataFrame, masks: pd.DataFrame | None = None) -> dict:
        """Write a finished point: its tables, then its integrity record (the sha256 of each
        file), then its record, last (a point counts as finished once its record exists, so
        a finished point always has its integrity record)."""
        paths = [write_csv(self.point_prompts(label), prompts),
                 write_csv(self.point_metrics(label), metrics)]
        if masks is not None and not masks.empty:
            paths.append(write_csv(self.point_masks(label), masks))
        text = json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"
        record_path = self.point_record(label)
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        atomic_write_text(self.point_integrity(label),
                          _hash_lines(paths, {record_path.name: digest}))
        atomic_write_text(record_path, text)
        return record

    def write_matched(self, data: dict) -> Path:
        """Write ``matched.json`` and its integrity record."""
        path = write_json(self.matched, data)
        atomic_write_text(self.matched_integrity, _hash_lines([path]))
        return path

    # ------------------------------------------------------------------ integrity
    def integrity_declared(self) -> bool:
        """Whether the sweep's manifest says its points carry integrity records."""
        try:
            return self.read_manifest().get("integrity") == INTEGRITY
        except UserError:
            return False

    def check_integrity(self) -> Integrity:
        """Every point file (and matched.json) against its integrity record; changes
        nothing. A point without a record is a problem where the manifest says every point
        has one (or another point has one), else it was written by an older tomsparse."""
        found = Integrity()
        labels = [p.stem for p in self.record_paths() if _LABEL_RE.match(p.stem)]
        recorded = self.integrity_declared() or any(self.point_integrity(label).is_file()
                                                    for label in labels)
        for label in labels:
            ipath = self.point_integrity(label)
            record = self.point_record(label)
            if not ipath.is_file():
                if recorded:
                    found.problems[str(record)] = (f"point {label} has no integrity record "
                                                   f"({ipath.name} is missing)", "no record")
                else:
                    found.unrecorded.append(label)
                continue
            try:
                hashes = _read_hashes(ipath)
            except (ValueError, UserError) as exc:
                found.problems[str(ipath)] = (f"the integrity record of point {label} is "
                                              f"damaged ({exc})", "damaged")
                continue
            for name, digest in hashes.items():
                path = self.points_dir / name
                if not path.is_file():
                    found.problems[str(path)] = ("missing (the sweep wrote it)", "missing")
                else:
                    now = sha256_file(path)
                    if now != digest:
                        found.problems[str(path)] = ("differs from the sha256 the sweep recorded "
                                                     "when it wrote it", now)
            for path in self.point_files(label):
                if path.name not in hashes:
                    found.problems[str(path)] = (f"not in the integrity record of point {label} "
                                                 "(added after the sweep wrote it)",
                                                 sha256_file(path))
        if self.matched.is_file():
            if self.matched_integrity.is_file():
                try:
                    digest = _read_hashes(self.matched_integrity).get(self.MATCHED)
                except (ValueError, UserError):
                    digest = None
                now = sha256_file(self.matched)
                if digest != now:
                    found.problems[str(self.matched)] = ("differs from the sha256 the sweep "
                                                         "recorded when it wrote it", now)
            elif recorded:
                found.problems[str(self.matched)] = (f"has no integrity record "
                                                     f"({self.MATCHED_INTEGRITY} is missing)",
                                                     sha256_file(self.matched))
        accepted = self._accepted()
        found.accepted = {k: v for k, v in found.problems.items()
                          if accepted.get(self._relative(k)) == v[1]}
        return found

    def _relative(self, path: str | Path) -> str:
        """``path`` as the accepted edits name it: inside the folder, so the record still
        holds when the folder is moved."""
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def _accepted(self) -> dict[str, str]:
        if not self.edits_accepted.is_file():
            return {}
        data = read_json_object(self.edits_accepted, "delete it (edited files are then "
                                                     "refused again)")
        files = data.get("files")
        if not isinstance(files, dict):
            raise UserError(f"{self.edits_accepted}: no \"files\" object; delete it (edited "
                            "files are then refused again)")
        return {str(k): str(v.get("sha256") if isinstance(v, dict) else v)
                for k, v in files.items()}

    def accept_edits(self) -> list[str]:
        """Record the files that now differ from their integrity records as accepted (``summarize
        --accept-edited``): they are judged, and the report says which they are. Returns
        one line per file accepted."""
        found = self.check_integrity()
        if not found.problems:
            return []
        kept = {}
        if self.edits_accepted.is_file():
            kept = read_json_object(self.edits_accepted).get("files") or {}
        when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for path, (what, digest) in found.problems.items():
            kept[self._relative(path)] = {"sha256": digest, "problem": what, "accepted": when}
        write_json(self.edits_accepted, {"files": kept})
        self._checked = None
        return [f"{path}: {what}" for path, (what, _d) in sorted(found.problems.items())]

    def integrity_notes(self) -> list[str]:
        """What a report of this folder must say about its integrity: the edited files judged
        anyway, and the points with no integrity record. [] for an intact folder."""
        found = self.check_integrity()
        notes = []
        if found.accepted:
            names = sorted(found.accepted)
            notes.append(f"{len(names)} file(s) of this sweep differ from what the sweep wrote "
                         f"and were judged anyway (summarize --accept-edited): "
                         + "; ".join(f"{Path(n).name}: {found.accepted[n][0]}"
                                     for n in names[:8])
                         + (" ..." if len(names) > 8 else "")
                         + ". The verdicts below rest on edited results.")
        if found.unrecorded:
            notes.append(f"{len(found.unrecorded)} point(s) carry no integrity record (written "
                         "by an older tomsparse): edits to them cannot be detected.")
        return notes

    def verify(self) -> tuple[list[PointRecord], dict[str, pd.DataFrame]]:
        """Check the folder once (per instance) before any of it is judged: integrity (each
        file against its record, ``check_integrity``; refused unless accepted), then every
        point record and per-prompt table for range and consistency, and the same prompts
        at every point. Returns the checked records and per-prompt tables."""
        if self._checked is not None:
            return self._checked
        # what each file holds first (a damaged file is named for what is wrong with it) ...
        records = []
        for path in self.record_paths():
            if not _LABEL_RE.match(path.stem):
                continue
            info = _read_record(path)
            records.append(PointRecord(label=path.stem, mode=str(info["mode"]),
                                       seed=int(info["seed"]), m=float(info["m"]),
                                       perplexity=float(info["perplexity"]),
                                       masked=int(info["masked"]),
                                       ppl_windows=info.get("ppl_windows"),
                                       ppl_unit_losses=info["ppl_unit_losses"], fields=info))
            if self.point_metrics(path.stem).exists():  # a missing one: read_point says so
                self._read_metrics(path)
        tables = {r.label: self._read_prompt_table(r.label) for r in records}
        _check_same_prompts(self, tables)
        # ... then whether it is what the sweep wrote
        found = self.check_integrity()
        refused = found.refused
        if refused:
            path, (what, _digest) = sorted(refused.items())[0]
            more = f" ({len(refused) - 1} more file(s) too)" if len(refused) > 1 else ""
            raise UserError(f"{path}: {what}{more}; the sweep's results were changed after it "
                            "wrote them, so they are not judged: restore the file, or delete "
                            "the point's files and run the same sweep again to recompute it "
                            "(or rerun the whole sweep), or run `tomsparse summarize "
                            f"{self.root} --accept-edited` to judge them anyway with a warning "
                            "in the report")
        self._checked = (records, tables)
        return self._checked

    def _read_metrics(self, path: Path) -> pd.DataFrame:
        """A point's metrics table, checked (present, readable, a metrics table)."""
        metrics_path = self.point_metrics(path.stem)
        if not metrics_path.is_file():
            raise _damaged(metrics_path, path, "missing (every finished point has its "
                                               "metrics table)")
        try:
            metrics = read_csv(metrics_path, "a point's metrics table")
        except UserError as exc:
            first = str(exc)[len(str(metrics_path)) + 2:].split("; expected")[0]
            raise _damaged(metrics_path, path, first) from None
        for column in ("level", "family"):
            if column not in metrics.columns:
                raise _damaged(metrics_path, path, f"not a metrics table (no {column!r} "
                                                   "column)")
        return metrics

    # ------------------------------------------------------------------ reading
    def read_point(self, path: Path) -> tuple[dict, pd.DataFrame]:
        """A finished point's record and its metrics table, checked (``verify`` first): a
        damaged, edited or missing file is a UserError naming it and the fix."""
        self.verify()
        info = _read_record(path)
        metrics = self._read_metrics(path)
        if not self.point_prompts(path.stem).is_file():  # the specificity tables read it
            raise _damaged(self.point_prompts(path.stem), path,
                           "missing (every finished point has its per-prompt table)")
        return info, metrics

    def read_records(self) -> list[PointRecord]:
        """The records of every labelled point (``<mode>_s<seed>_m<m>.json``), checked
        (``verify``)."""
        return list(self.verify()[0])

    def _read_prompt_table(self, label: str) -> pd.DataFrame:
        path = self.point_prompts(label)
        if not path.is_file():
            raise UserError(f"{path}: missing (every finished point needs its per-prompt "
                            "table)")
        try:
            table = read_csv(path, "a point's per-prompt table",
                             dtype={k: str for k in PROMPT_KEY}, keep_default_na=False,
                             na_values={c: [""] for c in PROMPT_NUMBERS})
        except UserError as exc:
            first = str(exc)[len(str(path)) + 2:].split("; expected")[0]
            raise _damaged(path, self.point_record(label), first) from None
        return _check_prompt_table(path, table)

    def read_prompts(self, label: str) -> pd.DataFrame:
        """A point's per-prompt table, key columns as text, number columns as numbers,
        checked (``verify``)."""
        tables = self.verify()[1]
        if label in tables:
            return tables[label].copy()
        return self._read_prompt_table(label)

    def read_sweep(self) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
        """Points (label, mode, seed, m, perplexity, masked, ppl_windows, ppl_unit_losses) and
        the per-prompt
        table of every point, keyed by label."""
        if not self.points_dir.is_dir():
            raise UserError(f"{self.root}: no points/ folder; is this a sweep folder?")
        records, tables = self.verify()
        if not records:
            raise UserError(f"{self.points_dir}: no finished sweep points")
        infos = pd.DataFrame([{"label": r.label, "mode": r.mode, "seed": r.seed, "m": r.m,
                               "perplexity": r.perplexity, "masked": r.masked,
                               "ppl_windows": r.ppl_windows,
                               "ppl_unit_losses": r.ppl_unit_losses} for r in records])
        return infos, {r.label: tables[r.label].copy() for r in records}

    def baseline_perplexity(self) -> float:
        """The perplexity of the sweep's m = 0 point (its record checked), NaN if none."""
        for path in self.baseline_records():
            try:
                return float(_read_record(path)["perplexity"])
            except UserError:
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
    """A point record, checked: a JSON object (size and nesting limited) with the point
    fields, numbers as numbers in their ranges (m >= 0, a finite positive perplexity that its
    window losses give, masked >= 0)."""
    try:
        text = read_text(path, "point record", MAX_RECORD_BYTES, kind="JSON")
        info = parse_json(text, str(path))
    except UserError as exc:
        problem = str(exc)[len(str(path)) + 2:] if str(exc).startswith(f"{path}: ") else str(exc)
        raise _damaged(path, path, problem) from None
    if not isinstance(info, dict):
        raise _damaged(path, path, f"holds a JSON {type(info).__name__}, not a point record")
    missing = [k for k in POINT_FIELDS if k not in info]
    if missing:
        raise _damaged(path, path, f"not a point record (no {', '.join(missing)})")
    try:
        if any(isinstance(info[k], (bool, list, dict)) for k in ("m", "seed", "perplexity",
                                                                "masked")):
            raise TypeError
        info["m"], info["seed"] = float(info["m"]), int(info["seed"])
        info["perplexity"], info["masked"] = float(info["perplexity"]), int(info["masked"])
    except (TypeError, ValueError, OverflowError):
        raise _damaged(path, path, "a field of the point record is not a number") from None
    if not (math.isfinite(info["perplexity"]) and info["perplexity"] > 0):
        raise _damaged(path, path, f"perplexity {info['perplexity']!r} is not a finite positive "
                                   "number (a perplexity is exp of a mean loss: at least 1)")
    if not (math.isfinite(info["m"]) and info["m"] >= 0) or info["masked"] < 0:
        raise _damaged(path, path, "m or masked is negative or not finite")
    windows = info.get("ppl_windows")
    if windows is not None and (isinstance(windows, bool) or not isinstance(windows, int)
                                or windows < 1):
        raise _damaged(path, path, f"'ppl_windows' {windows!r} is not a whole number >= 1")
    info["ppl_unit_losses"] = _unit_losses(path, info)
    return info


def _check_prompt_table(path: Path, table: pd.DataFrame) -> pd.DataFrame:
    """A per-prompt table's values, checked (and its number columns made numbers): a number
    cell is empty or a number, a margin is its log-probabilities' difference, ``correct``
    says whether it is positive (likelihood scoring), and no prompt appears twice."""
    point = path.with_name(path.name[: -len("_prompts.csv")] + ".json")
    missing = [c for c in PROMPT_KEY if c not in table.columns]
    if missing:
        raise _damaged(path, point, f"not a per-prompt table (no {', '.join(missing)} "
                                    "column)")
    for column in PROMPT_NUMBERS:
        if column not in table.columns:
            continue
        raw = table[column]
        numbers = pd.to_numeric(raw, errors="coerce")
        text = raw.astype(str).str.strip()
        bad = numbers.isna() & raw.notna() & (text != "") & (text.str.lower() != "nan")
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            value = str(raw.iloc[row])[:40]
            raise _damaged(path, point, f"line {row + 2}, column {column!r}: {value!r} is not a "
                                        "number")
        table[column] = numbers.astype(float)
    if {"logprob_expected", "logprob_alternative", "margin"} <= set(table.columns):
        e, a = table["logprob_expected"].to_numpy(), table["logprob_alternative"].to_numpy()
        margin = table["margin"].to_numpy()
        scored = ~np.isnan(margin)
        diff = e - a
        tol = 1e-9 * np.maximum(1.0, np.abs(e) + np.abs(a))
        off = scored & ~(np.abs(margin - diff) <= tol)
        if off.any():
            row = int(np.flatnonzero(off)[0])
            raise _damaged(path, point, f"line {row + 2}: margin {margin[row]!r} is not "
                                        f"logprob_expected - logprob_alternative "
                                        f"({diff[row]!r}); {int(off.sum())} row(s) so: a "
                                        "margin changed by hand is not judged")
        if "correct" in table.columns and scored.any():
            correct = (table["correct"].astype(str).str.strip().str.lower()
                       .map({"true": True, "false": False, "1": True, "0": False,
                             "1.0": True, "0.0": False}))
            wrong = scored & (correct.to_numpy(dtype=object) != (margin > 0))
            if wrong.any():
                row = int(np.flatnonzero(wrong)[0])
                raise _damaged(path, point, f"line {row + 2}: correct is "
                                            f"{table['correct'].iloc[row]!r} but the margin is "
                                            f"{margin[row]!r} (likelihood scoring: correct when "
                                            "the margin is above 0)")
    key = [*PROMPT_KEY, "rep"] if "rep" in table.columns else list(PROMPT_KEY)
    twice = table.duplicated(key, keep=False)
    if twice.any():
        row = int(np.flatnonzero(twice.to_numpy())[0])
        raise _damaged(path, point, f"line {row + 2}: the prompt {_prompt_text(table.iloc[row])} "
                                    "appears more than once")
    return table


def _prompt_text(row) -> str:
    return (f"{row['family']} task {row['task_id']} ({row['condition']}, {row['scenario']}"
            + (f", probe {row['probe']}" if str(row.get('probe', '')) not in ('', 'nan') else "")
            + ")")


def _check_same_prompts(folder: "SweepFolder", tables: dict[str, pd.DataFrame]) -> None:
    """The same prompts at every point (a point missing a prompt would silently drop it from
    every comparison), and one task per task number (tasks sharing a number would be
    resampled as one cluster)."""
    if not tables:
        return
    labels = sorted(tables, key=lambda label: (not label.startswith(BASELINE_MODE + "_"),
                                               label))
    first = labels[0]
    key = list(PROMPT_KEY)
    keys = {label: set(map(tuple, tables[label][key].astype(str).to_numpy()))
            for label in labels}
    for label in labels[1:]:
        lost, extra = keys[first] - keys[label], keys[label] - keys[first]
        if lost or extra:
            which = sorted(lost or extra)[0]
            row = dict(zip(key, which))
            what = (f"lacks {len(lost)} prompt(s) that {first} has" if lost
                    else f"has {len(extra)} prompt(s) that {first} lacks")
            raise _damaged(folder.point_prompts(label), folder.point_record(label),
                           f"{what} (e.g. {_prompt_text(row)}); every point is evaluated on "
                           f"the same prompts, so a row was deleted from one of the two "
                           f"({folder.point_prompts(first).name}, this one) or added to the "
                           "other by hand")
    table = tables[first]
    per_number = table.groupby(["family", "task_id"])["task_index"].nunique()
    shared = per_number[per_number > 1]
    if len(shared):
        family, number = shared.index[0]
        indices = sorted(set(table.loc[(table["family"] == family)
                                       & (table["task_id"] == number), "task_index"]))
        raise UserError(f"{folder.point_prompts(first)}: {len(indices)} different {family} "
                        f"tasks (indices {', '.join(indices[:6])}) share the task number "
                        f"{number}, so they would be resampled as one cluster; give each task "
                        "its own NUMBER in the task file and run the sweep again")


def _read_hashes(path: Path) -> dict[str, str]:
    """An integrity record (``sha256sum`` lines: hash, two spaces, a file name in the same
    folder); ValueError when damaged."""
    text = read_text(path, "integrity record", 1 << 20)
    hashes = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if (not sep or not re.fullmatch(r"[0-9a-f]{64}", digest) or not name
                or "/" in name or "\\" in name or name in (".", "..")):
            raise ValueError(f"line {line[:40]!r}")
        hashes[name] = digest
    return hashes


def _hash_lines(paths: list[Path], extra: dict[str, str] | None = None) -> str:
    hashes = {p.name: sha256_file(p) for p in paths}
    hashes.update(extra or {})
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(hashes.items()))


@dataclass
class Integrity:
    """What ``SweepFolder.check_integrity`` found: ``problems`` (file -> what differs, and the
    sha256 found: "missing" for a missing file), the subset accepted by ``summarize
    --accept-edited`` (judged with a warning), and the points written without a record (by
    an older tomsparse)."""

    problems: dict[str, tuple[str, str]] = field(default_factory=dict)
    accepted: dict[str, tuple[str, str]] = field(default_factory=dict)
    unrecorded: list[str] = field(default_factory=list)

    @property
    def refused(self) -> dict[str, tuple[str, str]]:
        return {k: v for k, v in self.problems.items() if k not in self.accepted}


def read_matched(path: str | Path) -> dict[str, dict]:
    """The targets of a ``matched.json`` (see ``SweepFolder.read_matched``); {} when the file
    does not exist. A damaged file is a UserError naming it."""
    path = Path(path)
    if not path.exists():
        return {}
    data = parse_json(read_text(path, "matched.json", kind="JSON"), str(path))
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
    METHOD_AGREEMENT, METHOD_VERDICTS = "method_agreement.csv", "method_verdicts.csv"

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

    def method_scores(self, dataset: str, method: str) -> Path:
        """The score store of ``dataset`` under another attribution score than the run's
        (``--methods``): ``scores_<dataset>_<method>``."""
        return self.root / f"scores_{dataset}_{method}"

    def method_sweep(self, method: str) -> SweepFolder:
        """The small sweep of another attribution score's difference mask at the primary m
        (``--methods``)."""
        return SweepFolder(self.root / f"sweep_{method}")

    @property
    def method_agreement(self) -> Path:
        """The Jaccard agreement of the attribution scores' difference masks
        (judge.methods)."""
        return self.root / self.METHOD_AGREEMENT

    @property
    def method_verdicts(self) -> Path:
        """The primary verdicts under each attribution score's difference mask
        (judge.methods)."""
        return self.root / self.METHOD_VERDICTS

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
        """The (title, html) sections the analyses left for the report; [] when none. The
        file is data: its shape is checked (a list of [title, body] pairs of text), the
        titles are plain text (the report escapes them), and each body keeps only safe HTML
        (``safe_read.sanitize_html``: a ``<script>`` or an ``onerror`` planted there never
        reaches the report)."""
        path = self.report_sections
        if not path.is_file():
            return []
        fix = "delete it, or run `tomsparse analyze --run` again to rewrite it"
        data = parse_json(read_text(path, "report sections file", MAX_SECTIONS_BYTES, fix,
                                    kind="JSON"), str(path), fix=fix)
        if not isinstance(data, list) or not all(
                isinstance(x, (list, tuple)) and len(x) == 2
                and all(isinstance(y, str) for y in x) for x in data):
            raise UserError(f"{path}: not a list of [title, body] pairs of text; the file is "
                            f"damaged: {fix}")
        return [(title, sanitize_html(body)) for title, body in data]  # titles: escaped there


def _optional_table(path: Path, what: str, columns, fix: str) -> pd.DataFrame | None:
    """A table a sweep may lack: None when ``path`` is absent, else read and checked for
    ``columns`` (a one-line error naming the file, the missing columns and ``fix``)."""
    if not path.is_file():
        return None
    frame = read_csv(path, f"the {what} table", fix=fix)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: lacks the column(s) {', '.join(missing)} of the {what} "
                        f"table; {fix}")
    return frame
