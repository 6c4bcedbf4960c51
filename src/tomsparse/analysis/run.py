"""``tomsparse analyze``: the five mechanistic analyses for one m, written to a folder.

Conditions: the unperturbed model (baseline), each requested mask mode at m (default: the
difference mask), the random control (same count per matrix, one condition per seed) and the
damage-matched controls (issue 15): masks whose perplexity change matches the difference
mask's, each at its own m (``AnalysisConfig.matched``, from the sweep's ``matched.json``).
Each is applied with ``perturb.perturbed``, measured, and undone bit for bit.

A condition's key in the tables is ``(label, seed)``: the label is the mask mode for the
conditions at m and ``"<mode> (matched, m=2.31e-04)"`` for a matched control; every table
with a ``mode`` column also has an ``m`` column (the baseline's is 0).
"""

from __future__ import annotations

import math
import operator
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tomsparse.analysis import anatomy as A
from tomsparse.analysis import tables as T
from tomsparse.analysis.folder import AnalysisFolder
from tomsparse.analysis.page import headline_lines, write_outputs
from tomsparse.analysis.probe import measure
from tomsparse.data.tasks import load_tasks
from tomsparse.errors import UserError
from tomsparse.lm.activations import massive_channels
from tomsparse.files import write_json
from tomsparse.manifest import build_manifest, sha256_file, sha256_texts
from tomsparse.masks import SEEDED_MODES, build_rankings, masks_for, mode_seeds, parse_mode
from tomsparse.perturb import perturbed
from tomsparse.scores.store import scores_identity, store_manifest
from tomsparse.sweep.folder import SweepFolder
from tomsparse.lm.registry import model_identity


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
    # Damage-matched controls: (mode, m, seed) triples, each measured at its own m.
    matched: list = field(default_factory=list)
    # The model's massive-activation channels (most massive first), for -x<n> mask variants.
    channels: list | None = None

    def __post_init__(self) -> None:
        self.m = check_m(self.m)
        self.modes = list(self.modes)
        for mode in self.modes:
            parse_mode(mode)   # a UserError naming the bad mode
        self.matched = check_matched(self.matched)
        if self.sink_threshold < 0:
            raise UserError(f"--sink-threshold must be >= 0, got {self.sink_threshold}")
        for name in ("top_pairs", "batch_size", "massive_top"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got "
                                f"{getattr(self, name)}")


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


def check_matched(items) -> list[tuple[str, float, int]]:
    """Validated (mode, m, seed) triples, duplicates dropped, in the given order."""
    if items is None:
        return []
    if isinstance(items, (str, bytes)) or not hasattr(items, "__iter__"):
        raise UserError(f"matched controls: give a list of (mode, m, seed) triples, got {items!r}")
    out = []
    for item in items:
        if isinstance(item, (str, bytes)) or not hasattr(item, "__len__") or len(item) != 3:
            raise UserError(f"matched control {item!r}: give a (mode, m, seed) triple, e.g. "
                            "('generic-only', 2.31e-4, 0)")
        mode, m, seed = item
        spec = parse_mode(mode)
        try:
            m = float(m)
        except (TypeError, ValueError):
            raise UserError(f"matched control {item!r}: m must be a number in (0, 1]") from None
        if not 0.0 < m <= 1.0:   # also refuses nan
            raise UserError(f"matched control {item!r}: m must lie in (0, 1] (a fraction of "
                            f"each matrix); got {m:g}")
        try:
            if isinstance(seed, bool):
                raise TypeError
            seed = operator.index(seed)
        except TypeError:
            raise UserError(f"matched control {item!r}: the seed must be an integer") from None
        out.append((spec.name, m, seed))
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class Condition:
    """One perturbed condition: the mask ``mode`` at ``m`` with ``seed``; ``label`` is its
    name in the tables (their ``mode`` column) and ``key`` = (label, seed) its key."""

    mode: str
    seed: int
    m: float
    label: str
    matched: bool = False

    @property
    def key(self) -> tuple[str, int]:
        return (self.label, self.seed)


def conditions(cfg: AnalysisConfig) -> list[Condition]:
    """The perturbed conditions, in order: the modes at ``cfg.m`` (seeded ones once per random
    seed), then the matched controls at their own m."""
    out = []
    for mode in cfg.modes:
        out += [Condition(mode, s, cfg.m, mode) for s in mode_seeds(mode, cfg.random_seeds)]
    # Enough digits of m that distinct matched controls of one mode get distinct labels.
    pairs = list(dict.fromkeys((mode, m) for mode, m, _ in cfg.matched))
    digits = 2
    while len({T.matched_label(mo, m, digits) for mo, m in pairs}) < len(pairs) and digits < 16:
        digits += 1
    out += [Condition(mode, seed, m, T.matched_label(mode, m, digits), matched=True)
            for mode, m, seed in cfg.matched]
    return out


def ranking_depth(conds: list[Condition], m: float) -> tuple[float, float]:
    """(m_max, generic factor) the rankings must be built for: every condition's m (random-
    fraction masks need no ranking) and the largest -p factor."""
    ranked = [c for c in conds if parse_mode(c.mode).base != "random-fraction"]
    m_max = max([m] + [c.m for c in ranked])
    factor = max([1.0] + [parse_mode(c.mode).generic_factor for c in ranked])
    return m_max, factor


def build_masks(desc, tom_scores, gen_scores, cfg: AnalysisConfig,
                conds: list[Condition] | None = None) -> dict:
    """{(label, seed): {matrix: flat indices}} for every condition, each at its own m."""
    conds = conditions(cfg) if conds is None else conds
    names = [m.name for m in desc.matrices]
    m_max, factor = ranking_depth(conds, cfg.m)
    rankings = build_rankings(tom_scores, gen_scores, names, m_max, cfg.reference_ties,
                              generic_factor=factor)
    return {c.key: masks_for(rankings, c.m, c.mode, seed=c.seed,
                             reference_ties=cfg.reference_ties, channels=cfg.channels)
            for c in conds}


def add_m_column(tables: dict, m_of: dict) -> dict:
    """Insert an ``m`` column (after ``seed``, else after ``mode``) into every table with a
    ``mode`` column: each condition's own m, 0 for the baseline."""
    for name, frame in tables.items():
        if "mode" not in frame.columns or "m" in frame.columns:
            continue
        at = list(frame.columns).index("seed" if "seed" in frame.columns else "mode") + 1
        frame = frame.copy()
        frame.insert(at, "m", frame["mode"].map(lambda x: m_of.get(x, math.nan)).astype(float))
        tables[name] = frame
    return tables


def matched_at(targets: dict[str, dict], m: float, rel_tol: float = 1e-6,
               where: str | Path = SweepFolder.MATCHED) -> list[tuple[str, float, int]]:
    """The damage-matched controls of a sweep (the targets of its ``matched.json``, read by
    ``SweepFolder.read_matched``) for the difference mask at ``m``: (mode, m, seed) triples of
    the controls marked ``"matched": true``; [] when there is no difference target at that m."""
    out = []
    for label, t in targets.items():
        try:
            if (t.get("mode") != "difference"
                    or not math.isclose(float(t["m"]), m, rel_tol=rel_tol)):
                continue
            controls = [c for c in t.get("controls", []) if c.get("matched") is True]
            out += [(c["mode"], float(c["m"]), int(c.get("seed", 0))) for c in controls]
        except (AttributeError, KeyError, TypeError, ValueError):
            raise UserError(f"{where}: target {label!r} is malformed (each target needs mode "
                            "and m, each control mode, m, seed and matched)") from None
    return check_matched(out)


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

    conds = conditions(cfg)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = pad if pad is not None else (getattr(tokenizer, "eos_token_id", None) or 0)
    left_out = max(parse_mode(c.mode).exclude_channels for c in conds)
    if left_out and not cfg.channels:
        # an -x<n> mode leaves out the massive channels: found on the analysis prompts
        found = massive_channels(model, desc, tokenized, pad, left_out)
        cfg.channels = [c["channel"] for c in found]
        log(f"[analyze] massive-activation channels left out by -x masks: {cfg.channels}")
    masks = build_masks(desc, tom_scores, gen_scores, cfg, conds)
    by_key = {c.key: c for c in conds}
    probes = {}
    totals: dict = {}
    for cond in [T.BASELINE] + list(masks):
        t0 = time.time()
        # The baseline has no masks: the model is measured as it is.
        with perturbed(desc.matrices, masks.get(cond, {}), mode=cfg.perturbation,
                       scale=cfg.scale, totals=totals):
            probes[cond] = measure(model, desc, tokenized, pad_id=pad,
                                   batch_size=cfg.batch_size, massive_top=cfg.massive_top)
        n = sum(int(x.numel()) for x in masks.get(cond, {}).values())
        c = by_key.get(cond)
        label = cond[0] if c is None else (
            f"{c.label} seed {c.seed}" if parse_mode(c.mode).base in SEEDED_MODES else c.label)
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
    add_m_column(tables, {T.BASELINE[0]: 0.0, **{c.label: c.m for c in conds}})
    headline = make_headline(tables, desc, cfg, conds)
    files, sections = [], []
    if out is not None:
        out = Path(out)
        files, sections = write_outputs(out, tables, headline, desc, cfg)
    return AnalysisResult(tables=tables, headline=headline, sections=sections, files=files)


# ------------------------------------------------------------------ headline
def _by_mode(frame: pd.DataFrame, col: str) -> dict:
    return {m: float(g[col].mean()) for m, g in frame.groupby("mode", sort=False)}


def make_headline(tables: dict, desc, cfg: AnalysisConfig,
                  conds: list[Condition] | None = None) -> dict:
    conds = conditions(cfg) if conds is None else conds
    h: dict = {"m": cfg.m, "sink_threshold": cfg.sink_threshold, "rope": desc.rope is not None}
    h["conditions"] = {}
    for c in conds:
        entry = h["conditions"].setdefault(c.label, {"mask": c.mode, "m": c.m,
                                                     "matched": c.matched, "seeds": []})
        entry["seeds"].append(c.seed)
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
        seeds = h["conditions"].get(mode, {}).get("seeds", [])
        key = f"{mode}_s{seed}" if mode == "random" or len(seeds) > 1 else mode
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


# ------------------------------------------------------------------ outputs


# ------------------------------------------------------------------ command
def select_prompts(spec: str, n: int) -> list[str]:

    texts = list(dict.fromkeys(p.text for p in load_tasks(spec).prompts()))
    if not texts:
        raise UserError(f"--prompts {spec}: no prompts")
    if n and n < len(texts):
        # Evenly spread over the list, so every family is represented.
        texts = [texts[i * len(texts) // n] for i in range(n)]
    return texts


def analyze_loaded(lm, tom, gen, cfg: AnalysisConfig, texts: list[str], out: Path,
                   prompts_spec: str = "builtin", max_length: int = 256, options=None,
                   run_dir=None, log=print) -> AnalysisResult:
    """The analyses of a loaded model (``tom`` and ``gen``: (scores, store manifest, store
    path)), written to ``out`` with their manifest; prints the headline."""

    t0 = time.time()
    tokenized, tok_info = tokenize_prompts(lm.tokenizer, texts, max_length)
    log(f"[analyze] {lm.name}: m = {cfg.m:g}, modes {cfg.modes}, random seeds "
        f"{cfg.random_seeds}, {tok_info['prompts']} prompts ({tok_info['tokens']} tokens; first "
        f"token: {tok_info['first_token']})")
    if cfg.matched:
        log("[analyze] damage-matched controls (each at its own m): " + ", ".join(
            f"{mode} m={m:.3g} seed {seed}" for mode, m, seed in cfg.matched))
    res = analyze(lm.model, lm.tokenizer, lm.description, tom[0], gen[0], tokenized, cfg,
                  out=out, log=log)

    def store(entry):
        return {"path": str(entry[2]), "manifest_sha256": sha256_file(store_manifest(entry[2])),
                "scores_id": scores_identity(entry[1])}

    manifest = build_manifest(
        "analysis", **model_identity(lm), options=options or {},
        resolved={"m": cfg.m, "modes": cfg.modes, "random_seeds": cfg.random_seeds,
                  "perturbation": cfg.perturbation, "scale": cfg.scale,
                  "reference_ties": cfg.reference_ties, "sink_threshold": cfg.sink_threshold,
                  "top_pairs": cfg.top_pairs, "run": str(run_dir) if run_dir else None,
                  "matched": [list(x) for x in cfg.matched], "channels": cfg.channels},
        scores_tom=store(tom), scores_generic=store(gen),
        prompts={"spec": prompts_spec, "sha256": sha256_texts(texts), **tok_info},
        attention="eager (probe on the attention interface)", headline=res.headline,
        seconds=round(time.time() - t0, 1))
    write_json(AnalysisFolder(out).manifest, manifest)
    log("")
    for line in headline_lines(res.headline):
        log("  " + line)
    return res


