"""Tables a person reads: numbers formatted for reading (7,829, not 7.83e+03), empty rows and
columns dropped, every table linked to the CSV it shows, long tables folded; and the report's
per-m table of ToM and perplexity (the paper's Table 1, with intervals and the random masks
beside the difference mask), from the sweep's ``specificity.csv`` and
``specificity_baseline.csv`` (``SweepFolder`` knows their names)."""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from tomsparse.sweep.folder import SweepFolder
from tomsparse.judge.specificity import POOL_ABOVE, POOL_ALL
from tomsparse.judge.verdicts import ratio_text

FAMILY_NAMES = {"unexpected": "unexpected contents", "transfer": "unexpected transfer",
                "irony": "irony", "tomi": "ToMi", POOL_ALL: "all families pooled",
                POOL_ABOVE: "families that pass their controls, pooled"}


def number(x, digits: int = 3) -> str:
    """``x`` for reading: integers with thousands separators (7,829), other numbers to
    ``digits`` significant figures without exponent where that stays short; "" for missing."""
    if x is None or isinstance(x, str):
        return "" if x is None else x
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return ""
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v):,}"
    if 1000 <= abs(v) < 1e15:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def signed(x, digits: int = 2) -> str:
    """``x`` with its sign (+0.12, -1.50); "" for missing."""
    if x is None or not np.isfinite(x):
        return ""
    x = 0.0 if round(float(x), digits) == 0 else float(x)   # no "-0.00"
    return f"{x:+.{digits}f}"


def with_interval(value, lo, hi, digits: int = 2) -> str:
    """"+0.12 [-0.05, +0.30]"; the value alone when the interval is missing."""
    if value is None or not np.isfinite(value):
        return ""
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return signed(value, digits)
    return f"{signed(value, digits)} [{signed(lo, digits)}, {signed(hi, digits)}]"


def csv_link(path: Path, report_dir: Path) -> str:
    """A link to ``path`` relative to the report's folder (the report sits in the sweep folder,
    so the link works wherever the folder is copied)."""
    try:
        href = path.relative_to(report_dir).as_posix()
    except ValueError:
        href = path.as_posix()
    return f'<a class="csv" href="{html.escape(href)}">{html.escape(path.name)}</a>'


def readable_table(frame: pd.DataFrame, *, keys: tuple[str, ...] = (),
                   headers: dict[str, str] | None = None, digits: int = 3) -> str:
    """``frame`` as an HTML table for reading: rows whose non-key cells are all empty and
    columns that are all empty dropped, numbers formatted by ``number``, columns renamed by
    ``headers``."""
    frame = frame.copy()
    values = [c for c in frame.columns if c not in keys]
    empty = frame[values].apply(lambda col: col.map(lambda v: number(v, digits) == ""))
    frame = frame[~empty.all(axis=1)]
    keep = [c for c in frame.columns if c in keys or not empty.loc[frame.index, c].all()]
    frame = frame[keep]
    headers = headers or {}
    head = "".join(f"<th>{html.escape(headers.get(c, c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(number(v, digits))}</td>" for v in row)
                   + "</tr>" for row in frame.itertuples(index=False))
    return f"<table><tr>{head}</tr>{body}</table>"


def folded(summary: str, inner: str, open_: bool = False) -> str:
    """``inner`` inside a ``<details>`` element headed ``summary`` (plain text)."""
    return (f"<details{' open' if open_ else ''}><summary>{html.escape(summary)}</summary>"
            f"{inner}</details>")


# ----------------------------------------------------------------------------- Table 1

def _row(points: pd.DataFrame, label: str, family: str, metric: str):
    hit = points[(points["label"] == label) & (points["family"] == family)
                 & (points["metric"] == metric)]
    return hit.iloc[0] if len(hit) else None


def _random_label(points: pd.DataFrame, m: float) -> tuple[str | None, int, list[str]]:
    """The random masks at ``m``: (the label to show: the seed group where several seeds ran,
    else the single point; the number of seeds; the single seeds' labels)."""
    at = points[(points["mode"] == "random") & np.isclose(points["m"].astype(float), m)]
    if at.empty:
        return None, 0, []
    n_seeds = at["n_seeds"].fillna(1).astype(int) if "n_seeds" in at else pd.Series(1, at.index)
    singles = sorted(set(at.loc[n_seeds == 1, "label"]))
    groups = at[n_seeds > 1]
    if len(groups):
        return str(groups["label"].iloc[0]), int(groups["n_seeds"].iloc[0]), singles
    return (singles[0] if singles else None), len(singles), singles


def perplexity_ratio(row) -> tuple[float, float, float]:
    """(ratio, lo, hi) of a point's perplexity to the unperturbed model's: the table's ratio
    and its interval over text windows, else 1 + ppl_change without an interval."""
    ratio = float(row.get("ppl_ratio", math.nan))
    if np.isfinite(ratio):
        return ratio, float(row.get("ppl_ratio_lo", math.nan)), float(row.get("ppl_ratio_hi",
                                                                               math.nan))
    return 1.0 + float(row.get("ppl_change", math.nan)), math.nan, math.nan


def perplexity_text(row) -> str:
    """"x2.66 [x2.18, x3.25]" or "+8.1%" (``perplexity_ratio``)."""
    ratio, lo, hi = perplexity_ratio(row)
    if np.isfinite(lo) and np.isfinite(hi):
        return f"{ratio_text(ratio, 1)} [{ratio_text(lo, 1)}, {ratio_text(hi, 1)}]"
    return ratio_text(ratio, 1)


def _seed_range(points: pd.DataFrame, labels: list[str], family: str, metric: str) -> str:
    vals = [float(r["value"]) for r in (_row(points, lab, family, metric) for lab in labels)
            if r is not None and np.isfinite(r["value"])]
    return f"{min(vals):+.2f} .. {max(vals):+.2f}" if len(vals) > 1 else ""


def table_one(out: str | Path) -> str:
    """Per m of the difference mask: per family, the false-belief accuracy and margin at
    baseline and their change under the difference mask and under the random masks of the
    same count (95% t-intervals over clusters; a seed group's interval holds the
    mask-to-mask variance too, and the range over the seeds is shown beside it), with the
    perplexity ratio and its interval over text windows. "" without specificity tables."""
    folder = SweepFolder(out)
    pcsv, bcsv = folder.specificity("points"), folder.specificity("baseline")
    if not pcsv.is_file() or not bcsv.is_file():
        return ""
    points, baseline = pd.read_csv(pcsv), pd.read_csv(bcsv)
    diff = points[points["mode"] == "difference"]
    if diff.empty:
        return ""
    families = list(baseline["family"].astype(str))
    finite = points[np.isfinite(points["value"].astype(float))]
    pools = [p for p in (POOL_ABOVE, POOL_ALL) if (finite["family"] == p).any()][:1]
    base = baseline.set_index("family")
    parts = []
    for m in sorted(diff["m"].astype(float).unique()):
        label = str(diff.loc[np.isclose(diff["m"].astype(float), m), "label"].iloc[0])
        rlabel, k, singles = _random_label(points, m)
        any_row = _row(points, label, families[0], "tom_accuracy_change")
        ppl = f"perplexity {perplexity_text(any_row)}" if any_row is not None else ""
        rr = _row(points, rlabel, families[0], "tom_accuracy_change") if rlabel else None
        if rr is not None:
            ppl += f"; random masks {perplexity_text(rr)}"
        masked = number(any_row["masked"]) if any_row is not None else ""
        rows = []
        for fam in families + pools:
            cells = [FAMILY_NAMES.get(fam, fam)]
            if fam in base.index:
                b = base.loc[fam]
                cells += [f"{b['tom_accuracy']:.2f} [{b['tom_accuracy_lo']:.2f}, "
                          f"{b['tom_accuracy_hi']:.2f}]" if np.isfinite(b["tom_accuracy_lo"])
                          else number(b["tom_accuracy"], 2),
                          with_interval(b["tom_margin"], b["tom_margin_lo"], b["tom_margin_hi"])]
            else:
                cells += ["", ""]
            for metric in ("tom_accuracy_change", "tom_margin_change_adj"):
                d = _row(points, label, fam, metric)
                r = _row(points, rlabel, fam, metric) if rlabel else None
                cells.append(with_interval(d["value"], d["lo"], d["hi"]) if d is not None else "")
                cells.append(with_interval(r["value"], r["lo"], r["hi"]) if r is not None else "")
                cells.append(_seed_range(points, singles, fam, metric))
            rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
        rand = f"random masks ({k} seed{'s' if k != 1 else ''})"
        head = ("<tr><th rowspan='2'>family</th><th colspan='2'>unperturbed model</th>"
                "<th colspan='3'>change in false-belief accuracy</th>"
                "<th colspan='3'>change in false-belief margin (nats)</th></tr>"
                "<tr><th>accuracy [95%]</th><th>margin [95%]</th>"
                f"<th>difference mask</th><th>{rand}</th><th>range over seeds</th>"
                f"<th>difference mask</th><th>{rand}</th><th>range over seeds</th></tr>")
        parts.append(f"<h3>m = {m:.3g}: {masked} weights masked; {html.escape(ppl)}</h3>"
                     f"<table class='num'>{head}{''.join(rows)}</table>")
    caption = (
        "Accuracy: the share of false-belief prompts whose expected answer is the likelier "
        "one; margin: log P(expected answer) - log P(alternative) in nats, so a drop is damage "
        "(for irony minus its shift in the Yes/No answer bias, which the irony controls cannot "
        "tell apart from a lost irony reading). Every change is paired per prompt against the "
        "unperturbed model; brackets are 95% t-intervals over clusters (tasks; story "
        "scenarios for irony), a random group's also holding the mask-to-mask variance, and "
        "are not corrected for multiplicity (the claims above are). Perplexity: the ratio to "
        "the unperturbed model's, with its 95% interval over text windows. Source: "
        + csv_link(pcsv, Path(out)) + ", " + csv_link(bcsv, Path(out)) + ".")
    return "\n".join(parts) + f"<p class='caption'>{caption}</p>"
