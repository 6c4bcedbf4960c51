"""The m-sweep in memory: for each m and mask mode, perturb, evaluate ToM and perplexity,
undo; then the summary tables.

Each point (mode, seed, m) is written to ``points/`` atomically as soon as it is done, so a
killed sweep run again with the same options skips what it has and ends with the same
tables. A sweep folder remembers its options; running it with different ones is refused
rather than mixing results.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .errors import UserError
from .manifest import build_manifest, write_csv, write_json
from .masks import MODES, build_rankings, check_m_values, mask_stats
from .perturb import apply_perturbation, restore

REFERENCE_TASKS = ("unexpected", "transfer", "irony")


@dataclass
class SweepConfig:
    m_values: list[float]
    modes: list[str] = field(default_factory=lambda: ["difference", "random", "tom-only"])
    random_seeds: list[int] = field(default_factory=lambda: [0, 1])
    perturbation: str = "mean"
    scale: float = 0.0
    reference_ties: bool = False
    scoring: str = "likelihood"
    reps: int = 1
    seed: int = 0
    tasks: str = "builtin"
    task_limit: int | None = None
    corpus: str = "wiki-offline:eval"
    ppl_seqlen: int = 2048
    ppl_max_tokens: int | None = 4096
    batch_size: int = 16

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def m_grid(m_start: float, m_end: float, m_step: float) -> list[float]:
    """The reference's numpy.arange(start, end + step, step), without float drift."""
    if m_step <= 0:
        raise UserError(f"--m_step must be positive, got {m_step}")
    n = int(round((m_end - m_start) / m_step)) + 1
    return [round(m_start + i * m_step, 12) for i in range(max(n, 0))]


def _points(cfg: SweepConfig) -> list[tuple[str, int, float]]:
    pts = [("none", 0, 0.0)] if 0.0 in cfg.m_values else []
    for m in (m for m in cfg.m_values if m > 0):
        for mode in cfg.modes:
            seeds = cfg.random_seeds if mode == "random" else [0]
            pts += [(mode, s, m) for s in seeds]
    return pts


def _point_name(mode: str, seed: int, m: float) -> str:
    return f"{mode}_s{seed}_m{m:.4e}"


def _check_folder(out: Path, manifest: dict) -> None:
    path = out / "sweep_manifest.json"
    if not path.exists():
        return
    old = json.loads(path.read_text())
    keys = ("config", "model_fingerprint", "scores_tom_sha", "scores_generic_sha")
    diff = [k for k in keys if old.get(k) != manifest.get(k)]
    if diff:
        detail = ""
        if "config" in diff:
            changed = sorted(k for k in set(old["config"]) | set(manifest["config"])
                             if old["config"].get(k) != manifest["config"].get(k))
            detail = f" (options changed: {', '.join(changed)})"
        raise UserError(f"sweep folder {out} was written with different "
                        f"{', '.join(diff)}{detail}; use a new --out folder, or the same "
                        "options to resume it")


def run_sweep(lm, tom_scores: dict, gen_scores: dict, cfg: SweepConfig, out: str | Path,
              scores_ids: tuple[str, str] = ("", ""), export_m: float | None = None,
              progress: bool = True, log=print, scores_info: dict | None = None) -> pd.DataFrame:
    """Run (or resume) a sweep; returns the per-point summary frame."""
    from .corpora import load_corpus
    from .evaluate import evaluate
    from .perplexity import perplexity, tokenize_corpus
    from .tasks import load_tasks

    out = Path(out)
    ms = check_m_values(cfg.m_values)
    cfg.m_values = ms
    if export_m is not None and not any(m > 0 and abs(m - export_m) <= 1e-12 * max(m, 1e-30)
                                        for m in ms):
        raise UserError(f"--export-model {export_m:g} is not one of the sweep's m values > 0 "
                        f"({', '.join(f'{m:g}' for m in ms if m > 0) or 'none'})")
    manifest = build_manifest("sweep", model=lm.name, model_fingerprint=lm.fingerprint,
                              config=cfg.as_dict(), scores_tom_sha=scores_ids[0],
                              scores_generic_sha=scores_ids[1], scores=scores_info or {})
    _check_folder(out, manifest)
    (out / "points").mkdir(parents=True, exist_ok=True)
    for stale in out.rglob(".*.tmp"):  # left by a killed run mid-write (see atomic_path)
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()
    if not (out / "sweep_manifest.json").exists():
        write_json(out / "sweep_manifest.json", manifest)

    desc = lm.description
    names = [m.name for m in desc.matrices]
    rankings = build_rankings(tom_scores, gen_scores, names, m_max=max(ms),
                              reference_ties=cfg.reference_ties)
    taskset = load_tasks(cfg.tasks)
    if cfg.task_limit:
        taskset = taskset.head(cfg.task_limit)
    corpus = load_corpus(cfg.corpus)
    ppl_ids = tokenize_corpus(lm.tokenizer, corpus, cfg.ppl_max_tokens)

    points = _points(cfg)
    matrix_sums: dict = {}  # reused by every point: weights are restored after each
    iterator = points
    if progress:
        from tqdm import tqdm
        iterator = tqdm(points, desc="sweep", unit="point")
    for mode, seed, m in iterator:
        name = _point_name(mode, seed, m)
        done = out / "points" / f"{name}.json"
        if done.exists():
            continue
        t0 = time.time()
        masks = ({} if mode == "none" else
                 {n: rankings[n].mask(m, mode, seed=seed, reference_ties=cfg.reference_ties)
                  for n in names})
        t_mask = time.time()
        saved = apply_perturbation(desc.matrices, masks, mode=cfg.perturbation, scale=cfg.scale,
                                   totals=matrix_sums)
        t_apply = time.time() - t_mask
        try:
            result = evaluate(lm.model, lm.tokenizer, taskset, scoring=cfg.scoring, reps=cfg.reps,
                              seed=cfg.seed, batch_size=cfg.batch_size, m=m, model_name=lm.name)
            ppl = perplexity(lm.model, lm.tokenizer, corpus, seqlen=cfg.ppl_seqlen,
                             token_ids=ppl_ids, batch_size=2)
        finally:
            t_r = time.time()
            restore(saved)
            t_restore = time.time() - t_r
        stats = pd.DataFrame(mask_stats(masks, rankings, m)) if masks else pd.DataFrame()
        # The prompt text is the same at every point: only the baseline keeps it.
        table = result.table if mode == "none" else result.table.drop(columns=["prompt"],
                                                                      errors="ignore")
        write_csv(out / "points" / f"{name}_prompts.csv", table)
        write_csv(out / "points" / f"{name}_metrics.csv", result.metrics)
        if not stats.empty:
            write_csv(out / "points" / f"{name}_masks.csv", stats)
        if mode in ("difference", "none"):
            # The reference's layout, for its summarize step: tom/<rep>/<m>/<task>/results.csv
            for (rep, family), frame in result.reference_results().items():
                path = out / "tom" / str(rep) / f"{m}" / family / "results.csv"
                with_index = frame.reset_index(drop=True)
                write_csv(path, with_index)
        write_json(done, {"mode": mode, "seed": seed, "m": m, "perplexity": ppl.perplexity,
                          "ppl_windows": ppl.windows, "masked": int(sum(x.numel() for x in masks.values())),
                          "seconds": round(time.time() - t0, 2),
                          "mask_seconds": round(t_mask - t0, 4),
                          "apply_restore_seconds": round(t_apply + t_restore, 4)})
    if export_m is not None:
        m = min((x for x in ms if x > 0), key=lambda x: abs(x - export_m))
        export_perturbed_model(lm, rankings, cfg, m, out / f"model_m{m:.4e}", matrix_sums, log)
    return collect(out)


def export_perturbed_model(lm, rankings, cfg: SweepConfig, m: float, folder: Path,
                           matrix_sums: dict | None = None, log=print) -> Path:
    """Write the model perturbed with the difference mask at ``m`` as an ordinary Hugging
    Face folder (written beside, then renamed: never half a model), with a record of what was
    done to it; the model in memory is restored. An existing export is kept."""
    folder = Path(folder)
    if (folder / "tomsparse-export.json").exists():
        return folder
    masks = {n: r.mask(m, "difference", reference_ties=cfg.reference_ties)
             for n, r in rankings.items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    saved = apply_perturbation(lm.description.matrices, masks, mode=cfg.perturbation,
                               scale=cfg.scale, totals=matrix_sums)
    try:
        lm.model.save_pretrained(tmp)
        if hasattr(lm.tokenizer, "save_pretrained"):
            lm.tokenizer.save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        restore(saved)
    write_json(tmp / "tomsparse-export.json", build_manifest(
        "perturbed-model", model=lm.name, model_fingerprint=lm.fingerprint, m=m,
        mode="difference", perturbation=cfg.perturbation, scale=cfg.scale,
        reference_ties=cfg.reference_ties,
        masked=int(sum(x.numel() for x in masks.values()))))
    if folder.exists():
        shutil.rmtree(folder)  # an export interrupted before its record was written
    tmp.rename(folder)
    log(f"[tomsparse] wrote the perturbed model (difference mask, m = {m:g}) to {folder}")
    return folder


def collect(out: str | Path) -> pd.DataFrame:
    """Read every finished point; write the tidy table, perplexity_results.csv and summary."""
    out = Path(out)
    points, tidy = [], []
    for path in sorted((out / "points").glob("*.json")):
        info = json.loads(path.read_text())
        points.append(info)
        metrics = pd.read_csv(path.with_name(path.stem + "_metrics.csv"))
        fam = metrics[metrics["level"] == "family"]
        for _, row in fam.iterrows():
            for metric in ("reference_percent", "reference_percent_var", "prompt_accuracy",
                           "scenario_accuracy", "strict_score", "mean_margin",
                           "margin_ci_low", "margin_ci_high", "prompt_ci_low", "prompt_ci_high",
                           "n_cells"):
                if metric in row and pd.notna(row[metric]):
                    tidy.append({"m": info["m"], "mode": info["mode"], "seed": info["seed"],
                                 "family": row["family"], "metric": metric,
                                 "value": float(row[metric])})
        tidy.append({"m": info["m"], "mode": info["mode"], "seed": info["seed"],
                     "family": "", "metric": "perplexity", "value": info["perplexity"]})
        tidy.append({"m": info["m"], "mode": info["mode"], "seed": info["seed"],
                     "family": "", "metric": "masked", "value": info["masked"]})
    if not points:
        raise UserError(f"{out} holds no finished sweep points")
    tidy = pd.DataFrame(tidy).sort_values(["mode", "seed", "m", "family", "metric"])
    write_csv(out / "sweep_points.csv", tidy)
    pts = pd.DataFrame(points)
    ref = pts[pts["mode"].isin(["none", "difference"])].sort_values("m")
    write_csv(out / "perplexity_results.csv", ref[["m", "perplexity"]])
    summary = summarize(tidy)
    write_csv(out / "summary.csv", summary)
    write_csv(out / "summary_side_by_side.csv", side_by_side(summary))
    return summary


def summarize(tidy: pd.DataFrame) -> pd.DataFrame:
    """One row per (mode, seed, m): the reference's summary columns plus ours."""
    rows = []
    for (mode, seed, m), g in tidy.groupby(["mode", "seed", "m"], sort=True):
        get = {(r.family, r.metric): r.value for r in g.itertuples()}
        row = {"mode": mode, "seed": seed, "m": m, "masked": get.get(("", "masked")),
               "perplexity": get.get(("", "perplexity"))}
        for fam in ("unexpected", "transfer", "irony", "tomi"):
            pct = get.get((fam, "reference_percent"))
            if pct is None:
                continue
            var = get.get((fam, "reference_percent_var"), 0.0)
            cells = get.get((fam, "n_cells"), float("nan"))
            row[f"{fam}_total_mean"] = pct / 100 * cells
            row[f"{fam}_total_var"] = var * (cells / 100) ** 2
            row[f"{fam}_percent_mean"] = pct
            row[f"{fam}_percent_var"] = var
            row[f"{fam}_strict"] = get.get((fam, "strict_score"))
            row[f"{fam}_margin"] = get.get((fam, "mean_margin"))
            row[f"{fam}_margin_ci_low"] = get.get((fam, "margin_ci_low"))
            row[f"{fam}_margin_ci_high"] = get.get((fam, "margin_ci_high"))
            row[f"{fam}_accuracy"] = get.get((fam, "prompt_accuracy"))
        both = get.get(("unexpected+transfer", "reference_percent"))
        if both is not None:
            row["avg_percent_unexpected_transfer"] = both
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# options from the command line (shared by `tomsparse sweep` and `tomsparse run`)

# Sweep options whose default depends on the command (run's presets) are None in the parser.
SWEEP_DEFAULTS = dict(scoring="likelihood", reps=1, random_seeds=[0, 1])


def parse_controls(text: str) -> list[str]:
    """``--controls random,tom-only`` -> the mask modes of a sweep (difference always first)."""
    wanted = [c.strip() for c in (text or "").split(",") if c.strip() and c.strip() != "none"]
    controls = [m for m in MODES if m != "difference"]
    bad = [c for c in wanted if c not in controls]
    if bad:
        raise UserError(f"--controls {text!r}: unknown mode {bad[0]!r}; choose from "
                        f"{', '.join(controls)} (comma-separated) or none")
    return ["difference"] + [c for c in dict.fromkeys(wanted) if c != "difference"]


def resolve_m_values(args) -> list[float]:
    """``--m_list`` or the reference's ``--m_start/--m_end/--m_step`` grid, not both."""
    m_list = getattr(args, "m_list", None)
    grid = [getattr(args, k, None) for k in ("m_start", "m_end", "m_step")]
    if m_list is not None and any(g is not None for g in grid):
        raise UserError("give either --m_list or --m_start/--m_end/--m_step, not both")
    if m_list is not None:
        return check_m_values(m_list)
    if any(g is not None for g in grid):
        if any(g is None for g in grid):
            raise UserError("--m_start, --m_end and --m_step go together (e.g. --m_start 0 "
                            "--m_end 5e-5 --m_step 2e-6, the reference's grid)")
        return check_m_values(m_grid(*grid))
    raise UserError("no m values: give --m_list 0,1e-5,3e-5 or --m_start 0 --m_end 5e-5 "
                    "--m_step 2e-6")


def config_from_args(args, m_values: list[float]) -> SweepConfig:
    return SweepConfig(m_values=list(m_values), modes=parse_controls(args.controls),
                       random_seeds=list(args.random_seeds), perturbation=args.perturbation,
                       scale=args.scale, reference_ties=args.reference_ties,
                       scoring=args.scoring, reps=args.reps, seed=args.seed, tasks=args.tasks,
                       task_limit=args.task_limit, corpus=args.corpus,
                       ppl_max_tokens=args.ppl_max_tokens,
                       batch_size=getattr(args, "eval_batch_size", None) or 16)


def print_summary(summary: pd.DataFrame, log=print) -> None:
    cols = [c for c in ("mode", "seed", "m", "masked", "perplexity", "unexpected_margin",
                        "transfer_margin", "irony_margin", "tomi_margin") if c in summary]
    log(summary[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))


def cmd_sweep(args) -> int:
    """``tomsparse sweep --model M --scores-tom DIR --scores-generic DIR (--m_list ... |
    --m_start --m_end --m_step) --controls random,tom-only ... --out DIR``."""
    from .manifest import options_dict
    from .models import load_model
    from .report import write_report
    from .score_store import load_scores, scores_identity

    if not args.scores_tom or not args.scores_generic:
        raise UserError("sweep needs --scores-tom DIR and --scores-generic DIR (score stores "
                        "from `tomsparse scores`, or `tomsparse run`'s scores_tom/ and "
                        "scores_generic/)")
    ms = resolve_m_values(args)
    for key, value in SWEEP_DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    t0 = time.time()
    lm = load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)
    tom, tom_manifest = load_scores(args.scores_tom, model=lm)
    gen, gen_manifest = load_scores(args.scores_generic, model=lm)
    cfg = config_from_args(args, ms)
    ids = (scores_identity(tom_manifest), scores_identity(gen_manifest))
    summary = run_sweep(lm, tom, gen, cfg, args.out, scores_ids=ids,
                        export_m=args.export_model,
                        scores_info={"tom": str(args.scores_tom), "generic": str(args.scores_generic)})
    manifest = build_manifest("sweep", model=lm.name, model_fingerprint=lm.fingerprint,
                              options=options_dict(args), scores_tom_sha=ids[0],
                              scores_generic_sha=ids[1], seconds=round(time.time() - t0, 1))
    report = write_report(args.out, summary, manifest)
    print()
    print_summary(summary)
    print(f"\nreport: {Path(report).resolve()}  ({time.time() - t0:.0f} s)")
    return 0


# --------------------------------------------------------------------------------------------
# summaries: controls side by side, and the reference's summary of a tom/ folder

SIDE_METRICS = ("masked", "perplexity", "tom_margin", "tom_accuracy",
                "avg_percent_unexpected_transfer")
SIDE_FAMILY_METRICS = ("margin", "accuracy", "percent_mean", "strict")


def side_by_side(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per m > 0: the baseline, the difference mask, the random control (mean and
    sample sd over its seeds) and the other masks next to each other."""
    from .report import tom_column

    summary = summary.copy()
    tom_column(summary)  # adds the headline tom_margin / tom_accuracy columns
    metrics = [c for c in SIDE_METRICS if c in summary]
    metrics += [c for c in summary.columns
                if any(c.endswith("_" + s) for s in SIDE_FAMILY_METRICS)
                and not c.startswith(("tom_", "avg_"))]
    base = summary[summary["mode"] == "none"]
    rows = []
    for m, group in summary[summary["mode"] != "none"].groupby("m", sort=True):
        row = {"m": m}
        for c in metrics:
            if not base.empty and c != "masked":
                row[f"baseline_{c}"] = base[c].iloc[0]
        for mode in [x for x in MODES if x in set(group["mode"])]:
            g = group[group["mode"] == mode]
            for c in metrics:
                values = g[c].dropna()
                if mode == "random":
                    row[f"random_{c}_mean"] = values.mean() if len(values) else float("nan")
                    row[f"random_{c}_sd"] = values.std(ddof=1) if len(values) > 1 else float("nan")
                else:
                    row[f"{mode}_{c}"] = values.iloc[0] if len(values) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def _cell_columns(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The 0/1 scenario columns of a reference results.csv (an index column, if the file was
    written with one, is dropped)."""
    cols = [c for c in frame.columns if not str(c).startswith("Unnamed")]
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
    for path in sorted(root.glob("*/*/*/results.csv")):
        rep, m, task = path.parts[-4], path.parts[-3], path.parts[-2]
        try:
            m_value = float(m)
        except ValueError:
            raise UserError(f"{path}: the folder {m!r} should be an m value "
                            "(layout <rep>/<m>/<task>/results.csv)") from None
        cells = _cell_columns(pd.read_csv(path), path)
        total = float(cells.to_numpy().sum())
        records.append({"rep": rep, "m": m_value, "task": task, "total": total,
                        "percent": 100.0 * total / cells.size})
    if not records:
        raise UserError(f"{root}: no <rep>/<m>/<task>/results.csv files (the reference's tom/ "
                        "layout)")
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


def cmd_summarize(args) -> int:
    """``tomsparse summarize DIR``: DIR is a sweep folder (ours: points/ are re-read, the
    tables, side-by-side comparison and report rewritten) or a reference output folder (its
    tom/ results summarised into the reference's summary CSV)."""
    from .report import write_report

    folder = Path(args.root or args.folder or ".")
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder; give a sweep folder (with points/) or the "
                        "reference's tom/ folder")
    if (folder / "points").is_dir():
        summary = collect(folder)
        manifest_path = folder / "sweep_manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        report = write_report(folder, summary, manifest)
        if args.out_csv:
            write_csv(args.out_csv, summary)
        print_summary(summary)
        print(f"\nwrote {folder / 'summary.csv'}, {folder / 'summary_side_by_side.csv'}, "
              f"{folder / 'sweep_points.csv'}, {folder / 'perplexity_results.csv'}"
              + (f", {args.out_csv}" if args.out_csv else "") + f"\nreport: {report.resolve()}")
        return 0
    root = folder / "tom" if (folder / "tom").is_dir() else folder
    summary = reference_summary(root)
    if args.reps is not None:
        found = len({p.parts[-4] for p in root.glob("*/*/*/results.csv")})
        if found != args.reps:
            print(f"note: --reps {args.reps}, but {root} holds {found} rep folder(s); "
                  "summarised what is there", file=sys.stderr)
    out_csv = Path(args.out_csv) if args.out_csv else root.parent / "tom_summary.csv"
    write_csv(out_csv, summary)
    print(summary.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"\nwrote {out_csv}")
    return 0
