"""``tomsparse analyze``: the five mechanistic analyses for one m, written to a folder.

Conditions: the unperturbed model (baseline), each requested mask mode at m (default: the
difference mask) and the random control (same count per matrix, one condition per seed).
Each is applied with ``perturb.apply_perturbation``, measured, and undone with ``restore``.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import UserError
from . import anatomy as A
from . import plots as P
from . import tables as T
from .probe import measure

REPORT_SECTIONS = "report_sections.json"
NOT_APPLICABLE = ("does not apply: the model has no rotary position embedding (absolute or "
                  "learned positions), so there are no rotary pairs and no with/without-RoPE "
                  "comparison")


@dataclass
class AnalysisConfig:
    m: float
    modes: list = field(default_factory=lambda: ["difference", "random"])
    random_seeds: list = field(default_factory=lambda: [0])
    perturbation: str = "mean"
    scale: float = 0.0
    reference_ties: bool = False
    sink_threshold: float = 0.01
    top_pairs: int = 4
    batch_size: int = 8
    massive_top: int = 3


@dataclass
class AnalysisResult:
    tables: dict
    headline: dict
    sections: list          # (title, html)
    files: list


def check_m(m) -> float:
    try:
        m = float(m)
    except (TypeError, ValueError):
        raise UserError(f"--m {m!r}: give a number in (0, 1]") from None
    if not 0.0 < m <= 1.0:
        raise UserError(f"--m must lie in (0, 1] (a fraction of each matrix); got {m:g}")
    return m


def conditions(cfg: AnalysisConfig) -> list[tuple[str, int]]:
    out = []
    for mode in cfg.modes:
        if mode == "random":
            out += [("random", int(s)) for s in cfg.random_seeds]
        else:
            out.append((mode, 0))
    return out


def build_masks(desc, tom_scores, gen_scores, cfg: AnalysisConfig) -> dict:
    from ..masks import MODES, build_rankings

    bad = [m for m in cfg.modes if m not in MODES]
    if bad:
        raise UserError(f"unknown mask mode(s) {bad}; choose from {', '.join(MODES)}")
    names = [m.name for m in desc.matrices]
    rankings = build_rankings(tom_scores, gen_scores, names, cfg.m, cfg.reference_ties)
    return {cond: {n: r.mask(cfg.m, cond[0], cond[1], cfg.reference_ties)
                   for n, r in rankings.items()} for cond in conditions(cfg)}


def tokenize_prompts(tokenizer, texts: list[str], max_length: int) -> tuple[list[list[int]], dict]:
    ids = []
    for t in texts:
        x = tokenizer(t, add_special_tokens=True)["input_ids"]
        ids.append(list(x)[:max_length])
    bos = getattr(tokenizer, "bos_token_id", None)
    starts_bos = sum(1 for x in ids if x and bos is not None and x[0] == bos)
    info = {"prompts": len(ids), "tokens": sum(len(x) for x in ids),
            "bos_token_id": bos, "prompts_starting_with_bos": starts_bos,
            "first_token": ("BOS" if ids and starts_bos == len(ids) else
                            "the prompt's first token (the tokenizer adds no BOS)"
                            if starts_bos == 0 else "mixed")}
    return ids, info


def analyze(model, tokenizer, desc, tom_scores, gen_scores, tokenized: list[list[int]],
            cfg: AnalysisConfig, out: Path | None = None, log=print) -> AnalysisResult:
    """Run every analysis; with ``out`` write CSVs, plots and ``analysis.html`` there."""
    from ..perturb import apply_perturbation, restore

    masks = build_masks(desc, tom_scores, gen_scores, cfg)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = pad if pad is not None else (getattr(tokenizer, "eos_token_id", None) or 0)
    probes = {}
    totals: dict = {}
    for cond in [T.BASELINE] + list(masks):
        t0 = time.time()
        saved = None
        if cond != T.BASELINE:
            saved = apply_perturbation(desc.matrices, masks[cond], mode=cfg.perturbation,
                                       scale=cfg.scale, totals=totals)
        try:
            probes[cond] = measure(model, desc, tokenized, pad_id=pad,
                                   batch_size=cfg.batch_size, massive_top=cfg.massive_top)
        finally:
            if saved is not None:
                restore(saved)
        n = sum(int(x.numel()) for x in masks.get(cond, {}).values())
        label = f"{cond[0]} seed {cond[1]}" if cond[0] == "random" else cond[0]
        log(f"[analyze] {label:>15s}: {n:>7,} weights perturbed, "
            f"{len(tokenized)} prompts measured in {time.time() - t0:.1f} s")

    mats, qk = A.mask_anatomy(desc, masks)
    tables = {"mask_anatomy_matrices": mats, "mask_anatomy_qk_pairs": qk,
              "mask_anatomy_channels": A.channel_table(desc, masks),
              "mask_rank_by_role": A.rank_by_role(mats)}
    if desc.rope is not None:
        freq, shares = T.dominant_frequencies(desc, probes, cfg.top_pairs)
        tables["dominant_frequencies"] = freq
        tables["dominant_frequencies_share"] = shares
        tables["dominant_pairs"] = T.dominant_pairs(freq, cfg.top_pairs)
        geo = T.geometry(probes)
        tables["qk_geometry"] = geo
        tables["qk_geometry_table"] = T.geometry_table(geo)
    sink_rows, sink_layers = T.sinks(probes, cfg.sink_threshold)
    tables["attention_sinks"] = sink_rows
    tables["attention_sinks_by_layer"] = sink_layers
    decode = (lambda i: tokenizer.decode([i])) if hasattr(tokenizer, "decode") else None
    tables["massive_activations"] = T.massive(probes, decode)
    headline = make_headline(tables, desc, cfg)
    files, sections = [], []
    if out is not None:
        out = Path(out)
        files, sections = write_outputs(out, tables, headline, desc, cfg)
    return AnalysisResult(tables=tables, headline=headline, sections=sections, files=files)


# ------------------------------------------------------------------ headline
def _by_mode(frame: pd.DataFrame, col: str) -> dict:
    return {m: float(g[col].mean()) for m, g in frame.groupby("mode", sort=False)}


def make_headline(tables: dict, desc, cfg: AnalysisConfig) -> dict:
    h: dict = {"m": cfg.m, "sink_threshold": cfg.sink_threshold, "rope": desc.rope is not None}
    sinks = tables["attention_sinks"]
    pert = sinks[sinks["mode"] != "baseline"]
    h["displaced_sink_share"] = _by_mode(pert.assign(d=pert["displaced"].astype(float)), "d")
    by_layer = tables["attention_sinks_by_layer"]
    h["max_layer_displaced_share"] = {}
    h["layers_half_displaced"] = {}
    for mode, g in by_layer[by_layer["mode"] != "baseline"].groupby("mode", sort=False):
        per = g.groupby("layer")["displaced_share"].mean()
        h["max_layer_displaced_share"][mode] = {"layer": int(per.idxmax()), "share": float(per.max())}
        h["layers_half_displaced"][mode] = int((per >= 0.5).sum())
    h["num_layers"] = int(by_layer["layer"].nunique())
    if "qk_geometry" in tables:
        geo = tables["qk_geometry"]
        w = geo[(geo["rope"] == "with RoPE") & (geo["mode"] != "baseline")]
        h["angle_q_kbos_change_deg"] = _by_mode(w, "angle_bos_change")
        h["abs_angle_q_kbos_change_deg"] = _by_mode(w.assign(a=w["angle_bos_change"].abs()), "a")
        h["angle_q_kothers_change_deg"] = _by_mode(w, "angle_others_change")
        b = geo[(geo["rope"] == "with RoPE") & (geo["mode"] == "baseline")]
        h["baseline_angle_q_kbos_deg"] = float(b["angle_bos"].mean())
        sh = tables["dominant_frequencies_share"]
        both = sh[sh["proj"] == "q+k"]
        h["top_pair_share_of_norm_change"] = _by_mode(both, "top_share")
        h["total_abs_norm_change"] = _by_mode(both, "total_abs_change")
        h["top_pair_null_share"] = float(both["null_share"].iloc[0]) if len(both) else None
        dp = tables["dominant_pairs"]
        h["dominant_pairs"] = {p: [int(x) for x in g["pair"]] for p, g in dp.groupby("proj")}
    mass = tables["massive_activations"]
    top = mass[mass["rank"] == 1]
    h["massive_top"] = {}
    for (mode, seed), g in top.groupby(["mode", "seed"], sort=False):
        r = g.loc[g["magnitude"].idxmax()]
        key = mode if mode != "random" else f"random_s{seed}"
        h["massive_top"][key] = {"magnitude": float(r["magnitude"]), "layer": int(r["layer"]),
                                 "position": int(r["position"]), "dim": int(r["dim"]),
                                 "token": str(r["token"])}
    ch = tables["mask_anatomy_channels"]
    h["top_channels"] = {}
    for mode, g in ch.groupby("mode", sort=False):
        per = g.groupby("channel")["masked"].sum()
        tot = float(per.sum())
        h["top_channels"][mode] = [{"channel": int(c), "share": float(v) / tot}
                                   for c, v in per.sort_values(ascending=False).head(3).items()]
    rr = tables["mask_rank_by_role"]
    h["mask_rank_by_role"] = {m: {r: round(float(v), 2) for r, v in zip(g["role"], g["mean_mask_rank"])}
                              for m, g in rr.groupby("mode", sort=False)}
    h["masked_total"] = {m: round(float(g["total_masked"].sum()), 1)
                         for m, g in rr.groupby("mode", sort=False)}
    return h


def headline_lines(h: dict) -> list[str]:
    def fmt(d, f="{:.3f}"):
        return ", ".join(f"{k} {f.format(v)}" for k, v in d.items())

    lines = [f"m = {h['m']:g}; masked weights: {fmt(h['masked_total'], '{:,.0f}')}",
             f"displaced-sink share (|change| > {h['sink_threshold']:g}, all layers x heads): "
             + fmt({k: 100 * v for k, v in h["displaced_sink_share"].items()}, "{:.1f}%"),
             "layers with >= 50% of heads displaced: " + ", ".join(
                 f"{k} {v}/{h['num_layers']}" for k, v in h["layers_half_displaced"].items())
             + "; first layer with the most: " + ", ".join(
                 f"{k} L{v['layer']} {100 * v['share']:.0f}%"
                 for k, v in h["max_layer_displaced_share"].items())]
    if h.get("rope"):
        lines += [f"q-k_first angle change (post-RoPE, mean over layers/heads; baseline "
                  f"{h['baseline_angle_q_kbos_deg']:.1f} deg): "
                  + fmt(h["angle_q_kbos_change_deg"], "{:+.2f} deg")
                  + "; mean |change|: " + fmt(h["abs_angle_q_kbos_change_deg"], "{:.2f} deg"),
                  "q-k_others angle change: " + fmt(h["angle_q_kothers_change_deg"], "{:+.2f} deg"),
                  f"share of the Q/K pair-norm change on the top pairs (null "
                  f"{100 * h['top_pair_null_share']:.1f}%): "
                  + fmt({k: 100 * v for k, v in h["top_pair_share_of_norm_change"].items()}, "{:.1f}%")
                  + "; total |change| (sum over layers, heads, pairs of Q and K): "
                  + fmt(h["total_abs_norm_change"], "{:.1f}")]
    else:
        lines.append("dominant frequencies and q-k geometry: " + NOT_APPLICABLE)
    lines.append("largest hidden-state magnitude: " + ", ".join(
        f"{k} {v['magnitude']:.1f} (L{v['layer']} pos {v['position']} dim {v['dim']})"
        for k, v in h["massive_top"].items()))
    lines.append("residual channels most hit by the mask (share of masked weights reading or "
                 "writing them): " + "; ".join(
                     f"{m}: " + " ".join(f"{c['channel']} ({100 * c['share']:.1f}%)" for c in v)
                     for m, v in h["top_channels"].items()))
    lines.append("mean mask rank per role: " + "; ".join(
        f"{m}: " + " ".join(f"{r} {v:g}" for r, v in d.items())
        for m, d in h["mask_rank_by_role"].items()))
    return lines


# ------------------------------------------------------------------ outputs
def _table_html(frame: pd.DataFrame, max_rows: int = 40) -> str:
    return frame.head(max_rows).to_html(index=False, float_format=lambda x: f"{x:.4g}")


def write_outputs(out: Path, tables: dict, headline: dict, desc, cfg) -> tuple[list, list]:
    from ..manifest import write_csv, write_json
    from ..report import _img

    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, frame in tables.items():
        files.append(write_csv(out / f"{name}.csv", frame))
    files.append(write_json(out / "headline.json", headline))
    h = headline
    esc = html.escape
    sections = []

    img = P.plot_anatomy(tables["mask_anatomy_matrices"], tables["mask_anatomy_qk_pairs"],
                         desc.rope, out / "plot_mask_anatomy.png")
    files.append(img)
    sections.append(("Analysis 1: mask anatomy", (
        f"<p>m = {cfg.m:g}. Masked weights: "
        + esc(", ".join(f"{k} {v:,.0f}" for k, v in h["masked_total"].items()))
        + ". Residual-stream channels most hit (columns of q k v gate up, rows of o down; "
        "share of the masked weights): "
        + esc("; ".join(f"{m}: " + ", ".join(f"{c['channel']} ({100 * c['share']:.1f}%)" for c in v)
                        for m, v in h["top_channels"].items()))
        + ". Mean numerical rank of "
        "each matrix's 0/1 mask, per role, and the magnitude of the masked weights (mean |w| and "
        "their mean percentile within the matrix):</p>"
        + _table_html(tables["mask_rank_by_role"]) + _img(img))))

    if desc.rope is not None:
        img = P.plot_frequencies(tables["dominant_frequencies"], out / "plot_dominant_frequencies.png")
        files.append(img)
        sh = tables["dominant_frequencies_share"]
        sections.append(("Analysis 2: dominant rotary frequencies", (
            f"<p>Mean norm of Q and K per rotary pair (layer, head), before and after. The top "
            f"{cfg.top_pairs} pairs by baseline norm in each (layer, head) are the dominant ones; "
            f"pairs with the highest norm, averaged over layers and heads: "
            + esc("; ".join(f"{p.upper()} pairs {', '.join(str(j) for j in v)}"
                            for p, v in h["dominant_pairs"].items()))
            + f". Share of the total |norm change| on them (a "
            f"perturbation blind to frequency would put about {100 * h['top_pair_null_share']:.1f}% "
            "there):</p>" + _table_html(sh) + _img(img)
            + "<p>Dominant pairs (baseline norm averaged over layers and heads; times_top = "
            "number of (layer, head) in which the pair is among the top):</p>"
            + _table_html(tables["dominant_pairs"]))))
    else:
        sections.append(("Analysis 2: dominant rotary frequencies", f"<p>{esc(NOT_APPLICABLE)}.</p>"))

    img = P.plot_sinks(tables["attention_sinks_by_layer"], cfg.sink_threshold, out / "plot_attention_sinks.png")
    files.append(img)
    disp = tables["attention_sinks_by_layer"]
    disp = disp[disp["mode"] != "baseline"].groupby(["mode", "layer"])["displaced_share"].mean().unstack(0)
    sections.append(("Analysis 3: attention sinks", (
        f"<p>Attention weight on the first token (position 0), mean over queries at positions "
        f"&ge; 1, per (layer, head); a sink is displaced when it moves by more than "
        f"{cfg.sink_threshold:g}. Displaced share over all layers and heads: "
        + esc(", ".join(f"{k} {100 * v:.1f}%" for k, v in h["displaced_sink_share"].items()))
        + ".</p>" + _img(img) + "<p>Displaced share per layer:</p>"
        + disp.reset_index().to_html(index=False, float_format=lambda x: f"{x:.3f}"))))

    if desc.rope is not None:
        img = P.plot_geometry(tables["qk_geometry"], out / "plot_qk_geometry.png")
        files.append(img)
        sections.append(("Analysis 4: query-key geometry", (
            "<p>Angles (degrees) between each query and the key of the first token, and the mean "
            "angle to the other keys it can see (positions 1..t), with the norms; means over "
            "layers, heads and queries at positions &ge; 1 (the paper's Table 2 layout). "
            "&quot;without RoPE&quot; rotates the captured q and k back with the model's own "
            "cos/sin.</p>" + _table_html(tables["qk_geometry_table"]) + _img(img))))
    else:
        sections.append(("Analysis 4: query-key geometry", f"<p>{esc(NOT_APPLICABLE)}.</p>"))

    img = P.plot_massive(tables["massive_activations"], out / "plot_massive_activations.png")
    files.append(img)
    mass = tables["massive_activations"]
    top = mass[mass["rank"] == 1].sort_values("magnitude", ascending=False).groupby(["mode", "seed"]).head(3)
    sections.append(("Analysis 5: massive activations", (
        "<p>Largest |hidden state| after each decoder layer and where it sits (prompt, token "
        "position, residual dimension), before and after; the three largest per condition:</p>"
        + _table_html(top[["mode", "seed", "layer", "magnitude", "position", "dim", "token",
                           "median_abs", "ratio_to_median"]]) + _img(img))))

    body = "\n".join(f"<h2>{esc(t)}</h2>\n{x}" for t, x in sections)
    lines = "".join(f"<li>{esc(x)}</li>" for x in headline_lines(headline))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>tomsparse analysis</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;font-size:12px}}td,th{{border:1px solid #ccc;padding:3px 6px}}
img{{max-width:100%;margin:0.5em 0}}</style></head><body>
<h1>tomsparse mechanistic analyses</h1><h2>Headline</h2><ul>{lines}</ul>
{body}</body></html>"""
    from ..manifest import atomic_write_text
    files.append(atomic_write_text(out / "analysis.html", page))
    sections = [("Mechanistic analyses: headline", f"<ul>{lines}</ul>")] + sections
    # The run's report picks these up whenever it is re-rendered (report.write_report).
    files.append(write_json(out / REPORT_SECTIONS, [list(x) for x in sections]))
    return files, sections


# ------------------------------------------------------------------ command
def select_prompts(spec: str, n: int) -> list[str]:
    from ..tasks import load_tasks

    texts = list(dict.fromkeys(p.text for p in load_tasks(spec).prompts()))
    if not texts:
        raise UserError(f"--prompts {spec}: no prompts")
    if n and n < len(texts):
        # Evenly spread over the list, so every family is represented.
        texts = [texts[i * len(texts) // n] for i in range(n)]
    return texts


def _run_options(run_dir: Path) -> dict:
    if not run_dir.is_dir():
        raise UserError(f"--run {run_dir}: no such folder (give the --out folder of a finished "
                        "`tomsparse run`)")
    path = run_dir / "manifest.json"
    if not path.is_file():
        raise UserError(f"--run {run_dir}: no manifest.json; not a finished `tomsparse run` folder")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def cmd_analyze(args) -> int:
    from ..manifest import options_dict
    from ..models import DEFAULT_MODEL, load_model
    from ..score_store import load_scores

    t0 = time.time()
    run_dir = Path(args.run) if args.run else None
    run_manifest, run_opts = {}, {}
    if run_dir is not None:
        run_manifest = _run_options(run_dir)
        run_opts = run_manifest.get("options", {})
    pick = lambda name, default: (getattr(args, name) if getattr(args, name) is not None  # noqa: E731
                                  else run_opts.get(name, default))
    model_name = args.model or run_manifest.get("model") or DEFAULT_MODEL
    scores_tom = args.scores_tom or (run_dir / "scores_tom" if run_dir else None)
    scores_gen = args.scores_generic or (run_dir / "scores_generic" if run_dir else None)
    if scores_tom is None or scores_gen is None:
        raise UserError("give --run RUN_DIR, or both --scores-tom and --scores-generic")
    m = args.m
    if m is None:
        ms = [float(x) for x in run_opts.get("m_list") or [] if float(x) > 0]
        if not ms:
            raise UserError("give --m (the fraction of each matrix to perturb)")
        m = max(ms)
    cfg = AnalysisConfig(
        m=check_m(m),
        modes=[x.strip() for x in args.modes.split(",") if x.strip()],
        random_seeds=list(args.random_seeds if args.random_seeds is not None
                          else run_opts.get("random_seeds") or [0]),
        perturbation=pick("perturbation", "mean"), scale=float(pick("scale", 0.0)),
        reference_ties=bool(args.reference_ties or run_opts.get("reference_ties", False)),
        sink_threshold=args.sink_threshold, top_pairs=args.top_pairs, batch_size=args.batch_size)
    if cfg.sink_threshold < 0:
        raise UserError("--sink-threshold must be >= 0")
    out = Path(args.out) if args.out else (run_dir / "analysis" if run_dir else Path("runs/analysis"))
    texts = select_prompts(args.prompts, args.max_prompts)

    lm = load_model(model_name, device=args.device, dtype=pick("dtype", "float32"),
                    device_map=args.device_map, attn_implementation="eager")
    tom, tom_manifest = load_scores(scores_tom, model=lm)
    gen, gen_manifest = load_scores(scores_gen, model=lm)
    analyze_loaded(lm, (tom, tom_manifest, scores_tom), (gen, gen_manifest, scores_gen), cfg,
                   texts, out, prompts_spec=args.prompts, max_length=args.max_length,
                   options=options_dict(args), run_dir=run_dir)
    if run_dir is not None:
        _add_to_run_report(run_dir, run_manifest)
    print(f"\nanalysis: {(out / 'analysis.html').resolve()}  ({time.time() - t0:.0f} s)")
    return 0


def analyze_loaded(lm, tom, gen, cfg: AnalysisConfig, texts: list[str], out: Path,
                   prompts_spec: str = "builtin", max_length: int = 256, options=None,
                   run_dir=None, log=print) -> AnalysisResult:
    """The analyses of a loaded model (``tom`` and ``gen``: (scores, store manifest, store
    path)), written to ``out`` with their manifest; prints the headline."""
    from ..manifest import build_manifest, sha256_file, sha256_texts, write_json
    from ..score_store import scores_identity

    t0 = time.time()
    tokenized, tok_info = tokenize_prompts(lm.tokenizer, texts, max_length)
    log(f"[analyze] {lm.name}: m = {cfg.m:g}, modes {cfg.modes}, random seeds "
        f"{cfg.random_seeds}, {tok_info['prompts']} prompts ({tok_info['tokens']} tokens; first "
        f"token: {tok_info['first_token']})")
    res = analyze(lm.model, lm.tokenizer, lm.description, tom[0], gen[0], tokenized, cfg,
                  out=out, log=log)

    def store(entry):
        return {"path": str(entry[2]), "manifest_sha256": sha256_file(Path(entry[2]) / "manifest.json"),
                "scores_id": scores_identity(entry[1])}

    manifest = build_manifest(
        "analysis", model=lm.name, model_fingerprint=lm.fingerprint, options=options or {},
        resolved={"m": cfg.m, "modes": cfg.modes, "random_seeds": cfg.random_seeds,
                  "perturbation": cfg.perturbation, "scale": cfg.scale,
                  "reference_ties": cfg.reference_ties, "sink_threshold": cfg.sink_threshold,
                  "top_pairs": cfg.top_pairs, "run": str(run_dir) if run_dir else None},
        scores_tom=store(tom), scores_generic=store(gen),
        prompts={"spec": prompts_spec, "sha256": sha256_texts(texts), **tok_info},
        attention="eager (probe on the attention interface)", headline=res.headline,
        seconds=round(time.time() - t0, 1))
    write_json(Path(out) / "analysis_manifest.json", manifest)
    log("")
    for line in headline_lines(res.headline):
        log("  " + line)
    return res


def _add_to_run_report(run_dir: Path, run_manifest: dict) -> None:
    """Re-render the run's report: it picks up the sections written to RUN_DIR/analysis."""
    from ..report import write_report

    summary_csv = run_dir / "sweep" / "summary.csv"
    if not summary_csv.is_file():
        print(f"[analyze] {summary_csv} missing: the run's report was not re-rendered")
        return
    summary = pd.read_csv(summary_csv)
    path = write_report(run_dir / "sweep", summary, run_manifest)
    print(f"[analyze] added the analyses to {path}")
