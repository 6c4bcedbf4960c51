"""The top of a sweep's report: the bottom line, the gate and the claims table, from
the sweep's ``specificity_verdicts.csv`` and ``specificity_baseline.csv`` (``judge.verdicts``
and ``judge.specificity`` write them; ``SweepFolder`` knows their names)."""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd

from tomsparse.report.tables import FAMILY_NAMES
from tomsparse.sweep.folder import SweepFolder
from tomsparse.judge.specificity import ABOVE, POOL_ABOVE
from tomsparse.config import VerdictRules
from tomsparse.judge.verdicts import CANNOT, CLAIM_TEXT, ratio_text

_SHORT = {"a": "ToM hurt more than by random masks of the same count",
          "b": "ToM hurt more than by damage-matched controls",
          "c": "relative false-belief gap beyond damage-matched controls",
          "d": "perplexity nearly unchanged", "e": "ToM damage beyond random grows with m",
          "f": "ToM hurt more than by the task-swapped mask"}


def _family(name: str, passing: list[str]) -> str:
    if name == POOL_ABOVE:
        return "pooled: " + ", ".join(FAMILY_NAMES.get(f, f) for f in passing)
    return FAMILY_NAMES.get(name, name) or "-"


def _num(x, digits: int = 2) -> str:
    return "" if x is None or not np.isfinite(x) else f"{x:+.{digits}f}"


def _short_reason(reason: str) -> str:
    """A not-judged reason once per kind: the gate's counts are in the gate table."""
    if reason.startswith("it does not pass its own controls"):
        return "its family does not pass its controls (the gate table above)"
    return reason


def _primary_scope(passing: list[str]) -> str | None:
    return POOL_ABOVE if len(passing) > 1 else (passing[0] if passing else None)


def bottom_line(verdicts: pd.DataFrame, baseline: pd.DataFrame, model: str) -> str:
    """One plain sentence: what the run shows about ToM-specific weights on ``model``."""
    passing = list(baseline.loc[baseline["state"] == ABOVE, "family"])
    if not passing:
        return (f"No ToM-specific effect can be measured on {model}: it does not pass its own "
                f"controls in any family (see the gate below: most clusters must have every "
                f"false-belief and true-belief prompt right), so none of its ToM claims is "
                f"judged.")
    scope = _primary_scope(passing)
    rows = verdicts[(verdicts["family"] == scope) & verdicts["claim"].isin(["a", "b", "c"])]
    where = _family(scope, passing)
    if rows.empty or "m" not in rows:
        return f"{model} passes its own controls in {where}; the sweep has no judged claim."
    m = rows["m"].max()
    at = rows[rows["m"] == m].set_index("claim")["status"].to_dict()
    specific = all(at.get(c) == "shown" for c in ("a", "b", "c"))
    head = ("A ToM-specific effect is shown" if specific
            else "No ToM-specific effect is shown")
    parts = "; ".join(f"({c}) {at[c]}" for c in ("a", "b", "c") if c in at)
    # claim (f), where the sweep has task-swapped masks: whether it is about belief at all
    swapped = verdicts[(verdicts["family"] == scope) & (verdicts["claim"] == "f")
                       & np.isclose(verdicts["m"].astype(float), m)]
    against = "; ".join(f"{_swapped_reference(r.reference)}: {r.status}"
                        for r in swapped.itertuples())
    return (f"{head} on {model} at m = {m:.3g} ({where}; the families that pass their own "
            f"controls): {parts}. Specific means (a), (b) and (c) all shown."
            + (f" More than the task-swapped masks, (f): {against}." if against else ""))


def _swapped_reference(reference, table: bool = False) -> str:
    """A claim (f) reference (``swapped-x, same m`` / ``swapped-x at matched damage``) as
    ``swapped-x (same m)``, or ``swapped-x, same m`` inside the table's parentheses."""
    text = str(reference)
    for sep in (", ", " at "):
        if sep in text:
            mode, how = text.split(sep, 1)
            return f"{mode}, {how}" if table else f"{mode} ({how})"
    return text


def _rate(r) -> str:
    """The pass rate with its one-sided 95% lower bound."""
    rate, lo = getattr(r, "pass_rate", math.nan), getattr(r, "pass_rate_lo", math.nan)
    if not np.isfinite(rate):
        return ""
    return f"{rate:.0%} (95% lower bound {lo:.0%})" if np.isfinite(lo) else f"{rate:.0%}"


def _margins(r) -> str:
    """The baseline's false-belief and true-belief margins (claim (c) is judged relative to
    them)."""
    tom, control = getattr(r, "tom_margin", math.nan), getattr(r, "control_margin", math.nan)
    if not (np.isfinite(tom) and np.isfinite(control)):
        return ""
    return f"{tom:.2f} / {control:.2f}"


def gate_table(baseline: pd.DataFrame) -> str:
    """Per family: clusters passed, the pass rate and its lower bound against the floor, the
    clusters judged, beside the old chance test and the false-belief accuracy."""
    rows = []
    for r in baseline.itertuples():
        unit = getattr(r, "cluster_unit", "cluster")
        passed = getattr(r, "gate_passed", math.nan)
        total = getattr(r, "gate_clusters", math.nan)
        floor = getattr(r, "gate_floor", math.nan)
        chance_p = getattr(r, "chance_p", getattr(r, "gate_p", math.nan))
        judged = getattr(r, "judged_clusters", 0)
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            FAMILY_NAMES.get(r.family, r.family), f"{passed} of {total} {unit}s", _rate(r),
            f"{floor:.0%}" if np.isfinite(floor) else "",
            f"{int(judged)} {unit}s" if r.state == ABOVE else "none",
            f"{chance_p:.2g}" if np.isfinite(chance_p) else "",
            f"{r.tom_accuracy:.2f} [{r.tom_accuracy_lo:.2f}, {r.tom_accuracy_hi:.2f}]"
            if np.isfinite(r.tom_accuracy_lo) else f"{r.tom_accuracy:.2f}", _margins(r),
            "passes" if r.state == ABOVE else "does not pass")) + "</tr>")
    head = ("<tr><th>family</th><th>passed (false belief and every true-belief control "
            "right)</th><th>pass rate</th><th>floor</th><th>judged on</th><th>better than "
            "guessing, exact binomial p</th><th>false-belief accuracy [95%]</th>"
            "<th>baseline margin (nats): false belief / true-belief controls</th>"
            "<th>gate</th></tr>")
    return f"<table id='gate-table'>{head}{''.join(rows)}</table>"


def claims_table(verdicts: pd.DataFrame, passing: list[str]) -> str:
    """The judged claims (claim x m x family): estimate, Holm-adjusted interval, clusters,
    outcome, effect size; claims that cannot be measured are counted below it."""
    judged = verdicts[verdicts["status"] != CANNOT]
    rows = []
    for r in judged.itertuples():
        effect = ""
        if r.claim in ("a", "b", "f") and np.isfinite(r.tom_margin_removed):
            effect = (f"{r.tom_margin_removed:.0%} of the ToM margin removed, accuracy "
                      f"{r.tom_accuracy_change_pp:+.0f} points")
        m = "all" if r.claim == "e" else f"{r.m:.3g}"
        estimate = _num(r.value)
        interval = (f"[{_num(r.lo)}, {_num(r.hi)}] at {r.level:.1%}"
                    if np.isfinite(r.lo) else "")
        if r.claim == "d":      # judged on the log ratio; shown as the perplexity ratio
            estimate = f"ratio {ratio_text(math.exp(r.value), 1)}"
            interval = (f"[{ratio_text(math.exp(r.lo), 1)}, {ratio_text(math.exp(r.hi), 1)}] at {r.level:.1%}"
                        if np.isfinite(r.lo) else "")
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            f"({r.claim}) {_SHORT[r.claim]}" + (f" ({_swapped_reference(r.reference, table=True)})"
                                                if r.claim == "f" else ""), m, _family(r.family, passing) if r.claim != "d"
            else "(perplexity text)", estimate, interval,
            f"{int(r.n_clusters)}{' windows' if r.claim == 'd' else ''}",
            r.status, _detectable_text(r), effect)) + "</tr>")
    head = ("<tr><th>claim</th><th>m</th><th>family</th><th>estimate</th><th>Holm-adjusted "
            "interval</th><th>clusters</th><th>outcome</th><th>smallest effect it could "
            "have shown (80% power)</th><th>effect size</th></tr>")
    return f"<table id='claims-table'>{head}{''.join(rows)}</table>"


def _detectable_text(r) -> str:
    """Beside every judged claim: the effect it would have shown with 80% power (a null
    reads as informative or underpowered)."""
    d = getattr(r, "detectable", math.nan)
    if not np.isfinite(d):
        return ""
    return f"{d:.3f} in log ratio" if r.claim == "d" else f"{d:.2f}"


def claims_section(out, model: str) -> str:
    """Bottom line, gate, claims table, decision rules, and every verdict's sentence
    (folded); empty when the sweep has no verdicts yet."""
    folder = SweepFolder(out)
    vpath, bpath = folder.specificity("verdicts"), folder.specificity("baseline")
    if not vpath.is_file() or not bpath.is_file():
        return ""
    verdicts, baseline = pd.read_csv(vpath), pd.read_csv(bpath)
    if "state" not in baseline or baseline.empty:
        return ""
    passing = list(baseline.loc[baseline["state"] == ABOVE, "family"])
    rules = VerdictRules.from_kept(folder.read_verdict_rules())
    n_tests = int(np.isfinite(verdicts["p_raw"]).sum()) if "p_raw" in verdicts else 0
    cannot = verdicts[verdicts["status"] == CANNOT]
    reasons = cannot["reason"].astype(str).map(_short_reason)
    why = reasons.groupby(reasons, sort=False).size() if len(cannot) else pd.Series(dtype=int)
    cannot_text = "".join(f"<li>{n} claim(s): {html.escape(str(reason))}</li>"
                          for reason, n in why.items())
    sentences = "".join(f"<li>{html.escape(str(s))}</li>" for s in verdicts["sentence"])
    # (f) only in a sweep with task-swapped stores (docs/swapped.md)
    claims = "".join(f"<li>({c}) {html.escape(t)}</li>" for c, t in CLAIM_TEXT.items()
                     if c != "f" or (verdicts["claim"] == "f").any())
    return (f"<p class='bottom-line'><b>{html.escape(bottom_line(verdicts, baseline, model))}"
            f"</b></p>"
            f"<h3>Gate: does the model pass its own controls?</h3>{gate_table(baseline)}"
            f"<h3>Claims</h3><ul>{claims}</ul>{claims_table(verdicts, passing)}"
            + (f"<p>Not judged ({len(cannot)} of {len(verdicts)} claims):</p><ul>{cannot_text}</ul>" if cannot_text else "")
            + f"<p><i>How to read this.</i> {html.escape(rules.describe(n_tests, swapped=bool((verdicts['claim'] == 'f').any())))}</p>"
            f"<details><summary>Every verdict in one sentence</summary><ul>{sentences}</ul>"
            f"</details>")
