"""The specificity tables of a sweep folder: its points read (``SweepFolder``), the statistics
computed (``judge.specificity``), the verdicts worded (``judge.verdicts``), and every table
written beside the points. Called by ``judge.summary.collect`` whenever the sweep has its
baseline, so a derived table is always rewritten from the points."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tomsparse.errors import UserError
from tomsparse.files import write_csv, write_json
from tomsparse.sweep.folder import SweepFolder
from tomsparse.judge.specificity import compute_specificity
from tomsparse.config import VerdictRules
from tomsparse.judge.verdicts import VERDICT_COLUMNS, verdicts

MATCHED_COLUMNS = ("target", "target_m", "target_perplexity", "mode", "m", "perplexity",
                   "ppl_change", "matched", "evaluations", "label")


def matched_controls(targets: dict[str, dict]
                     ) -> tuple[dict[str, list[str]], pd.DataFrame, dict[str, list[dict]]]:
    """From the targets of ``matched.json`` (``SweepFolder.read_matched``): {target label:
    [labels of its matched, evaluated controls]}, a table of every search (matched or not),
    and {target label: [{"mode", "labels": [low, high], "weight"}]} for the controls that
    could not be matched and are interpolated between two evaluated sizes. All empty when
    the sweep had no damage-matched controls."""
    mapping, rows, interpolated = {}, [], {}
    for target, t in targets.items():
        for c in t["controls"]:
            rows.append({"target": target, "target_m": t["m"],
                         "target_perplexity": t.get("perplexity"), "mode": c["mode"],
                         "m": c["m"], "perplexity": c.get("perplexity"),
                         "ppl_change": c.get("ppl_change"), "matched": bool(c["matched"]),
                         "evaluations": len(c.get("search", [])), "label": c.get("label")})
            if c["matched"]:   # every seed it was evaluated with (older folders: one label)
                mapping.setdefault(target, []).extend(c.get("labels") or [c["label"]])
            elif isinstance(c.get("interpolation"), dict):
                interpolated.setdefault(target, []).append({"mode": c["mode"],
                                                            **c["interpolation"]})
    return mapping, pd.DataFrame(rows, columns=list(MATCHED_COLUMNS)), interpolated


def specificity_tables(sweep_dir: str | Path, **options) -> dict[str, pd.DataFrame]:
    """``compute_specificity`` on a finished sweep folder (with its damage-matched controls,
    when ``matched.json`` lists some, unless ``matched`` is given)."""
    folder = SweepFolder(sweep_dir)
    points, prompts = folder.read_sweep()
    mapping, searches, interpolated = matched_controls(folder.read_matched())
    options.setdefault("matched", mapping)
    options.setdefault("interpolated", interpolated)
    tables = compute_specificity(points, prompts, **options)
    tables["matched"] = searches
    return tables


def verdict_rules(folder: SweepFolder, rules: VerdictRules | None) -> VerdictRules:
    """``rules`` when given, else the ones the folder's last verdicts used, else defaults."""
    if rules is not None:
        return rules
    kept = folder.read_verdict_rules()
    try:
        return VerdictRules.from_kept(kept)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{folder.verdict_rules}: not a set of verdict rules ({exc}); delete "
                        "it to judge by the defaults") from None


def write_specificity(sweep_dir: str | Path, rules: VerdictRules | None = None,
                      target_mode: str = "difference", **options) -> dict[str, Path]:
    """Write every specificity table (``SweepFolder.SPECIFICITY``: per point, family and
    metric; contrasts; baseline; conditions; roles; matched searches; dose-response;
    verdicts) into the sweep folder, and the verdict ``rules`` used (``verdict_rules``).
    The other options go to ``compute_specificity``."""
    folder = SweepFolder(sweep_dir)
    rules = verdict_rules(folder, rules)
    options.setdefault("gate_floor", rules.gate_floor)
    options.setdefault("method", rules.interval_method)
    options.setdefault("target_null", rules.target_null)
    tables = specificity_tables(sweep_dir, target_mode=target_mode, **options)
    paths = {name: write_csv(folder.specificity(name), tables[name])
             for name in ("points", "contrasts", "baseline", "conditions", "roles", "matched",
                          "dose")}
    paths["verdicts"] = write_csv(folder.specificity("verdicts"),
                                  pd.DataFrame(verdicts(tables, target_mode=target_mode,
                                                        rules=rules,
                                                        swapped=folder.swapped_sets()),
                                               columns=list(VERDICT_COLUMNS)))
    paths["rules"] = write_json(folder.verdict_rules, rules.as_dict())
    return paths
