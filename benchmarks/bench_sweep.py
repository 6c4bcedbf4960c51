"""Every stage of a sweep on a random-weight model built from a config (no download), timed
through the public API, and the projected time of the reference protocol for that shape
(prints its figures; not a test).

Shapes (``--shape``): ``llama-7b`` (Llama-2-7B: hidden 4096, 32 layers, 32 heads,
intermediate 11008, vocab 32000), ``llama-1b`` (hidden 2048, 16 layers, 32 heads, 8 KV heads,
intermediate 8192, vocab 32000) and ``tiny`` (a few MB, for a smoke run). The tokenizer is
``testing.CharTokenizer``: one id per character, so prompts are about 4x longer in tokens than
with a real tokenizer and the likelihood / generate figures are pessimistic.

Stages, in order (medians of ``--repeats`` for the cheap ones; the model-running ones run
``--eval-repeats`` times after a small warm-up):

1. scores: seconds per 128-token sample, batched (B = ``--batch-size``) and the loop, each on
   its own ``--score-samples`` windows of lorem text, and the fixed cost per score set (what
   compute_scores spends outside its sample loop, plus save_scores to a temporary store);
2. rankings: build_rankings of every target matrix at ``--m-max`` from the two stores written
   in 1 (the batched set as ToM scores, the loop's as generic), opened with open_scores (read
   one matrix at a time), with the process's peak host memory during it (a thread sampling
   VmRSS every 10 ms, and VmHWM after a reset where /proc/self/clear_refs allows it) against
   the target 1.2 x (model on the host + two matrices' fp32 scores). ``--no-stores`` writes no
   store: the rankings read a mapping that draws each matrix's random scores on access;
3. masks_for at ``--m`` for each mode;
4. apply + restore of the difference mask (perturbed(), mode mean, the per-sweep sums
   cached), and the sweep-point overhead (masks + apply + restore) as a share of a point
   (likelihood ToM eval scaled to 664 prompts + perplexity projected to ~340k tokens);
5. ToM likelihood (prompts/s) and generate (prompts/s for 1 rep and for 5 reps sharing one
   prefill; the 5-rep / 1-rep time ratio) on the first ``--prompts`` prompts of the bank;
6. perplexity (window_losses with the chunked output head): tokens/s on ``--ppl-windows``
   random windows of ``--ppl-seqlen`` tokens;
7. the reference protocol projected: 200 score samples (2 sets of 100), rankings once, 131
   points (baseline + 26 m values x (difference + 3 random seeds + tom-only)), each point =
   masks + apply/restore + generate with 5 reps on 664 prompts + perplexity on ~340k tokens;
8. ``tomsparse run --preset paper-7b`` projected the same way (likelihood scoring on every
   prompt of the bank, the damage-matched controls and the score replicate included).

    .venv/bin/python benchmarks/bench_sweep.py --shape tiny
    .venv/bin/python benchmarks/bench_sweep.py --shape llama-1b --score-samples 4 \\
        --batch-size 4 --prompts 8 --ppl-seqlen 512 --ppl-windows 2   # ~11 min on 2 CPUs
    python benchmarks/bench_sweep.py --shape llama-7b      # on a GPU: bfloat16, cuda
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Mapping

import torch

SHAPES = {
    "llama-7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, intermediate_size=11008, vocab_size=32000,
                     max_position_embeddings=4096),
    "llama-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, intermediate_size=8192, vocab_size=32000,
                     max_position_embeddings=4096),
    "tiny": dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=688, vocab_size=1024,
                 max_position_embeddings=4096),
}

# The reference protocol (issue 14).
REF_SCORE_SAMPLES = 200       # 100 ToM + 100 generic
REF_SCORE_SETS = 2
REF_M_VALUES = 26             # nonzero m values
REF_RANDOM_SEEDS = 3
REF_POINTS = 1 + REF_M_VALUES * (1 + REF_RANDOM_SEEDS + 1)  # 131
REF_PROMPTS = 664
REF_PPL_SEQLEN = 2048
REF_PPL_TOKENS = 166 * REF_PPL_SEQLEN  # WikiText-2 test (~340k tokens) in 2048-token windows
REF_REPS = 5
MODES = ("difference", "random", "tom-only", "generic-only", "random-fraction")

GIB = 1 << 30
MIB = 1 << 20


# ------------------------------------------------------------------------------ helpers


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device):
    """(seconds, fn()) with the device synchronised on both sides."""
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def release_freed_memory() -> bool:
    """Hand the C heap's freed pages back to the OS (glibc malloc_trim), so that the RSS
    measured next counts what is live, not what earlier stages freed but the heap kept."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    return (kib or 0) * 1024


class PeakRSS:
    """The process's peak resident memory within a ``with`` block: a thread reads VmRSS every
    ``interval`` s, and where /proc/self/clear_refs can reset the high-water mark, VmHWM read
    at the end covers what the sampling may miss between two reads."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.peak = 0
        self.hwm_reset = False
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        if self.hwm_reset:
            self.peak = max(self.peak, (_status_kib("VmHWM") or 0) * 1024)
        return False


class RandomScores(Mapping):
    """Uniform random fp32 scores per matrix, drawn on access (seeded by seed and name) on
    ``device``: a score set that is never held whole, for ``--no-stores``."""

    def __init__(self, shapes: dict, seed: int, device):
        self.shapes, self.seed, self.device = shapes, seed, device

    def __len__(self) -> int:
        return len(self.shapes)

    def __iter__(self):
        return iter(self.shapes)

    def __contains__(self, name) -> bool:  # Mapping's default would draw the tensor
        return name in self.shapes

    def __getitem__(self, name):
        if name not in self.shapes:
            raise KeyError(name)
        digest = hashlib.sha256(f"{self.seed}:{name}".encode()).digest()
        gen = torch.Generator(device=self.device).manual_seed(
            int.from_bytes(digest[:8], "little") & (2 ** 63 - 1))
        return torch.rand(self.shapes[name], generator=gen, device=self.device)


def lorem_texts(n: int = 64, words: int = 400, seed: int = 0) -> list[str]:
    vocab = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
             "incididunt ut labore et dolore magna aliqua enim ad minim veniam quis nostrud "
             "exercitation ullamco laboris nisi aliquip ex ea commodo consequat duis aute irure "
             "in reprehenderit voluptate velit esse cillum fugiat nulla pariatur").split()
    rng = random.Random(seed)
    return [" ".join(rng.choice(vocab) for _ in range(words)).capitalize() + "."
            for _ in range(n)]


def fmt_b(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if abs(n) >= GIB else f"{n / MIB:.1f} MiB"


def med(xs) -> float:
    return statistics.median(xs)


def fmt_s(x: float) -> str:
    return f"{x:.4f} s" if x < 10 else f"{x:.1f} s"


def line(label: str, value: str, note: str = "") -> None:
    print(f"  {label:<58s} {value:>18s}" + (f"   {note}" if note else ""), flush=True)


def stage(text: str) -> None:
    print(f"[bench_sweep] {text} ...", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ the model


def build_model(shape: str, device: str, dtype: torch.dtype, tokenizer=None):
    """A random-weight LlamaForCausalLM of ``shape`` on ``device`` (seed 0), wrapped as a
    loaded model. Its tokenizer is ``tokenizer`` (the vocabulary sized to it) or a
    ``CharTokenizer`` of the shape's vocabulary."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tomsparse.lm.registry import wrap_model
    from tomsparse.testing import CharTokenizer

    vocab = len(tokenizer) if tokenizer is not None else SHAPES[shape]["vocab_size"]
    cfg = LlamaConfig(**{**SHAPES[shape], "vocab_size": vocab}, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.eval()
    if tokenizer is None:
        tokenizer = CharTokenizer(vocab_size=cfg.vocab_size)
    return wrap_model(model, tokenizer, f"random-{shape}")


# ------------------------------------------------------------------------------ stages


def bench_scores(lm, args, device, store_root):
    """Stage 1. Returns (figures, [ToM store dir, generic store dir] or None)."""
    from tomsparse.data.score_samples import build_generic_samples
    from tomsparse.scores.compute import compute_scores
    from tomsparse.scores.store import save_scores

    mats = lm.description.matrices
    n = args.score_samples
    data = build_generic_samples(lm.tokenizer, lorem_texts(), nsamples=1 + 2 * n,
                                 seqlen=args.score_seqlen, seed=0)
    samples = data.samples
    # Warm-up on one sample and one matrix: the output-head probe, lazy initialisation.
    compute_scores(lm.model, lm.tokenizer, samples[:1], matrices=mats[:1], batch_size=1,
                   method="batched", progress=False)
    _sync(device)
    out = {}
    stores = []
    runs = (("batched", args.batch_size, samples[1:1 + n], "tom"),
            ("loop", 1, samples[1 + n:], "generic"))
    for method, batch, chunk, label in runs:
        stage(f"scores, {method}, {len(chunk)} samples")
        total, result = timed(lambda: compute_scores(
            lm.model, lm.tokenizer, chunk, matrices=mats, batch_size=batch, method=method,
            progress=False), device)
        per_sample = result.wall_time_s / len(chunk)
        rest = total - result.wall_time_s
        save = None
        nbytes = sum(t.numel() for t in result.scores.values()) * (
            2 if args.store_dtype == "bfloat16" else 4)
        if store_root is not None:
            folder = os.path.join(store_root, label)
            manifest = {"model": lm.name, "fingerprint": lm.fingerprint,
                        **result.manifest_fields()}
            scores = result.scores
            save, _ = timed(lambda: save_scores(folder, scores, manifest,
                                                store_dtype=args.store_dtype), device)
            del scores
            stores.append(folder)
        out[method] = {"per_sample": per_sample, "rest": rest, "save": save, "bytes": nbytes,
                       "n": len(chunk)}
        del result
        gc.collect()
        if str(device).startswith("cuda"):
            torch.cuda.empty_cache()
    return out, (stores if store_root is not None else None)


def bench_rankings(lm, args, device, stores, runtime_rss):
    """Stage 2."""
    from tomsparse.masks import build_rankings
    from tomsparse.scores.store import open_scores

    mats = lm.description.matrices
    names = [m.name for m in mats]
    if stores is not None:
        tom = open_scores(stores[0], model=lm, device=device)
        gen = open_scores(stores[1], model=lm, device=device)
        source = "stores on disk (open_scores, one matrix at a time)"
    else:
        shapes = {m.name: tuple(m.shape) for m in mats}
        tom = RandomScores(shapes, 1, device)
        gen = RandomScores(shapes, 2, device)
        source = "random scores drawn on access (--no-stores)"
    trimmed = release_freed_memory()
    before = rss_bytes()
    with PeakRSS() as peak:
        seconds, rankings = timed(lambda: build_rankings(tom, gen, names, m_max=args.m_max,
                                                         reference_ties=False), device)

    def read_all():  # what the rankings spend getting the scores, without ranking them
        for name in names:
            tom[name], gen[name]

    read_s, _ = timed(read_all, device)
    on_host = device == "cpu"
    model_bytes = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    biggest = max(m.numel for m in mats)
    target = 1.2 * ((model_bytes if on_host else 0) + 2 * 4 * biggest)
    return rankings, {"seconds": seconds, "read": read_s, "trimmed": trimmed,
                      "source": source, "before": before,
                      "peak": peak.peak, "hwm": peak.hwm_reset, "target": target,
                      "runtime": runtime_rss, "model_bytes": model_bytes,
                      "biggest": biggest, "on_host": on_host}


def bench_masks(rankings, args):
    """Stage 3: {mode: (median seconds, weights selected)}."""
    from tomsparse.masks import masks_for

    out = {}
    for mode in MODES:
        times, count = [], 0
        for r in range(args.repeats):
            t = time.perf_counter()
            masks = masks_for(rankings, args.m, mode, seed=r)
            times.append(time.perf_counter() - t)
            count = sum(x.numel() for x in masks.values())
        out[mode] = (med(times), count)
    return out


def bench_apply(lm, rankings, args, device):
    """Stage 4: (first apply filling the sums, median apply, median restore, masked)."""
    from tomsparse.masks import masks_for
    from tomsparse.perturb import perturbed

    mats = lm.description.matrices
    masks = masks_for(rankings, args.m, "difference")
    sums: dict = {}

    def once():
        ctx = perturbed(mats, masks, mode="mean", totals=sums)
        _sync(device)
        t0 = time.perf_counter()
        saved = ctx.__enter__()
        _sync(device)
        t1 = time.perf_counter()
        ctx.__exit__(None, None, None)
        _sync(device)
        return t1 - t0, time.perf_counter() - t1, saved.masked

    first, _, masked = once()  # fills the per-sweep cache of matrix sums, as a sweep does
    applies, restores = [], []
    for _ in range(args.repeats):
        a, r, _ = once()
        applies.append(a)
        restores.append(r)
    return first, med(applies), med(restores), masked


def bench_eval(lm, args, device):
    """Stage 5: likelihood and generate timings on the first --prompts prompts."""
    from tomsparse.data.tasks.bank import builtin_taskset
    from tomsparse.evaluate.generate import generate_reps
    from tomsparse.evaluate.tom import score_likelihood

    prompts = builtin_taskset().prompts()[:args.prompts]
    texts = [p.text for p in prompts]
    tokens = [len(lm.tokenizer.encode(t)) for t in texts]
    model, tok, bs = lm.model, lm.tokenizer, args.eval_batch_size
    with torch.inference_mode():
        # warm-up: one prompt through each path
        score_likelihood(model, tok, prompts[:1], batch_size=1)
        generate_reps(model, tok, texts[:1], [0], batch_size=1, sample=True)
        lik, one, five = [], [], []
        for _ in range(args.eval_repeats):
            stage(f"likelihood, {len(prompts)} prompts")
            lik.append(timed(lambda: score_likelihood(model, tok, prompts, batch_size=bs),
                             device)[0])
            stage(f"generate, 1 rep, {len(prompts)} prompts")
            one.append(timed(lambda: generate_reps(model, tok, texts, [0], batch_size=bs,
                                                   sample=True), device)[0])
            stage(f"generate, 5 reps, {len(prompts)} prompts")
            five.append(timed(lambda: generate_reps(model, tok, texts, [0, 1, 2, 3, 4],
                                                    batch_size=bs, sample=True), device)[0])
    return {"n": len(prompts), "mean_tokens": statistics.mean(tokens),
            "likelihood": med(lik), "gen1": med(one), "gen5": med(five)}


def bench_perplexity(lm, args, device):
    """Stage 6: seconds for --ppl-windows windows of --ppl-seqlen tokens (random ids)."""
    from tomsparse.evaluate.perplexity import window_losses
    from tomsparse.lm.head import output_head

    model = lm.model
    head = output_head(model)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(2, vocab, (args.ppl_windows, args.ppl_seqlen), generator=gen)
    times = []
    with torch.inference_mode():
        window_losses(model, ids[:1, :64].to(device), head)  # warm-up
        for _ in range(args.eval_repeats):
            stage(f"perplexity, {args.ppl_windows} x {args.ppl_seqlen} tokens")

            def run():
                for start in range(0, ids.shape[0], args.ppl_batch):
                    window_losses(model, ids[start:start + args.ppl_batch].to(device), head)
            times.append(timed(run, device)[0])
    return {"seconds": med(times), "tokens": ids.numel(), "chunked": head is not None}


# ------------------------------------------------------------------------------ main


def run_workload(argv: list[str]) -> dict:
    """What ``tomsparse <argv>`` (a ``run`` command line) computes, counted from its own options
    (presets applied): its points by the sweep's own expansion (``sweep_points``) plus the
    matched controls and the replicates' difference points, each an evaluation of every prompt
    of its tasks and a perplexity over its tokens (the whole corpus, ~340k tokens as
    WikiText-2's test split, where ``ppl_max_tokens`` is None); the matched searches at most
    ``match_steps`` + 2 perplexities of the held-apart tokens each (of the reported ones where
    nothing is held apart); the score samples and sets; the rankings (sweep + mask overlap per
    replicate)."""
    from tomsparse.cli.main import build_parser
    from tomsparse.cli.options import apply_presets, sweep_config
    from tomsparse.data.tasks import load_tasks
    from tomsparse.sweep.matched import match_seeds
    from tomsparse.sweep.runner import sweep_points

    a = build_parser().parse_args(argv)
    cfg = sweep_config(a, apply_presets(a))
    tasks = load_tasks(cfg.tasks)
    tasks = (tasks.head_clusters(cfg.cluster_limit) if cfg.cluster_limit
             else tasks.head(cfg.task_limit) if cfg.task_limit else tasks)
    matched = len(cfg.match_m) * sum(len(match_seeds(mode, cfg.match_seeds))
                                     for mode in cfg.matched_controls)
    replicates = a.score_replicates or 1
    ppl_tokens = cfg.ppl_max_tokens or REF_PPL_TOKENS
    search_tokens = cfg.match_search_tokens or ppl_tokens
    return {"argv": list(argv), "sweep_points": len(sweep_points(cfg)), "matched": matched,
            "replicates": replicates,
            "points": len(sweep_points(cfg)) + matched + (replicates - 1),
            "prompts": len(tasks.prompts()), "scoring": cfg.scoring,
            "reps": cfg.reps if cfg.scoring == "generate" else 1,
            "ppl_tokens": ppl_tokens, "whole_corpus": cfg.ppl_max_tokens is None,
            "searches": len(cfg.match_m) * len(cfg.matched_controls) * (cfg.match_steps + 2),
            "search_tokens": search_tokens,
            "score_samples": replicates * (a.nsamples_tom + a.nsamples_generic),
            "score_sets": 2 * replicates, "rankings": 2 * replicates}


def run_terms(work: dict, rates: dict) -> list[tuple[str, float]]:
    """(label, seconds) of each part of ``run_workload``'s ``work`` at ``rates``: ``per_sample``
    (s a score sample), ``fixed`` (s a score set), ``rankings`` (s), ``likelihood`` (prompts/s),
    ``generate`` (prompts/s, all reps of a prompt), ``ppl`` (tokens/s)."""
    points, prompts = work["points"], work["prompts"]
    if work["scoring"] == "likelihood":
        eval_label, rate = "likelihood", rates["likelihood"]
    else:
        eval_label, rate = f"{work['scoring']} x {work['reps']} reps", rates["generate"]
    corpus = " (whole corpus)" if work["whole_corpus"] else ""
    return [
        (f"scores: {work['score_samples']} samples ({work['replicates']} replicates) x "
         f"{rates['per_sample']:.4f} s, + {work['score_sets']} x {rates['fixed']:.2f} s fixed",
         work["score_samples"] * rates["per_sample"] + work["score_sets"] * rates["fixed"]),
        (f"rankings: {work['rankings']} x {rates['rankings']:.2f} s",
         work["rankings"] * rates["rankings"]),
        (f"{eval_label}: {points} points x {prompts} prompts at {rate:.3g} prompts/s",
         points * prompts / rate),
        (f"perplexity: {points} points x {work['ppl_tokens']:,} tokens{corpus} at "
         f"{rates['ppl']:,.0f} tokens/s", points * work["ppl_tokens"] / rates["ppl"]),
        (f"matched searches: at most {work['searches']} x {work['search_tokens']:,} tokens",
         work["searches"] * work["search_tokens"] / rates["ppl"]),
    ]


def project_paper_7b(args, b, fixed, rk, lik_rate, tok_rate) -> None:
    """8. ``tomsparse run --preset paper-7b`` projected from the rates measured above
    (``run_workload``, ``run_terms``)."""
    work = run_workload(["run", "--preset", "paper-7b"])
    terms = run_terms(work, {"per_sample": b["per_sample"], "fixed": fixed,
                             "rankings": rk["seconds"], "likelihood": lik_rate, "ppl": tok_rate})
    print(f"\n8. tomsparse run --preset paper-7b projected for {args.shape} on this device "
          f"({work['points']} points: {work['sweep_points']} sweep points, {work['matched']} "
          f"matched, {work['replicates'] - 1} replicate)")
    for label, sec in terms:
        print(f"  {label:<86s} {sec / 60:10.2f} min", flush=True)
    total_s = sum(sec for _, sec in terms)
    print(f"  {'total':<86s} {total_s / 60:10.2f} min  ({total_s / 3600:.2f} h)")
    print("  (likelihood at the character tokenizer's ~4x longer prompts: pessimistic)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--shape", choices=tuple(SHAPES), default="tiny")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda[:N]")
    ap.add_argument("--dtype", default="auto",
                    help="float32, bfloat16, float16; auto: float32 on CPU, bfloat16 on GPU")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads; default torch's own (tiny: 1, which a model that "
                         "small runs as fast, and far faster on a loaded machine)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="repeats of the cheap stages (masks, apply/restore); medians")
    ap.add_argument("--eval-repeats", type=int, default=1,
                    help="repeats of likelihood, generate and perplexity; medians")
    ap.add_argument("--score-samples", type=int, default=None,
                    help="128-token samples scored by each method (batched, loop); default 8 "
                         "(tiny: 4)")
    ap.add_argument("--score-seqlen", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="batched scores' B; default 8 (tiny: 4)")
    ap.add_argument("--store-dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--no-stores", action="store_true",
                    help="write no score store: rank random scores drawn per matrix on access "
                         "(the fixed cost per set then leaves out the store's write)")
    ap.add_argument("--tmp-dir", default=None, help="where the temporary stores go")
    ap.add_argument("--m", type=float, default=5e-5, help="m of the masks")
    ap.add_argument("--m-max", type=float, default=5.2e-5, help="depth of the rankings")
    ap.add_argument("--prompts", type=int, default=None,
                    help="ToM prompts timed (the first of the built-in bank), scaled to 664; "
                         "default 64 (tiny: 16)")
    ap.add_argument("--eval-batch-size", type=int, default=0,
                    help="prompts per batch for likelihood and generate (0: 64 on GPU, 8 on CPU)")
    ap.add_argument("--ppl-seqlen", type=int, default=None,
                    help="perplexity window; default 2048 (tiny: 512)")
    ap.add_argument("--ppl-windows", type=int, default=None, help="default 4 (tiny: 2)")
    ap.add_argument("--ppl-batch", type=int, default=4, help="perplexity windows per forward")
    args = ap.parse_args(argv)
    small = args.shape == "tiny"  # a smoke run: seconds, not minutes
    for key, full, tiny in (("score_samples", 8, 4), ("batch_size", 8, 4), ("prompts", 64, 16),
                            ("ppl_seqlen", 2048, 512), ("ppl_windows", 4, 2),
                            ("threads", 0, 1)):
        if getattr(args, key) is None:
            setattr(args, key, tiny if small else full)

    import transformers
    from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: F401  (runtime RSS)

    import tomsparse.data.score_samples  # noqa: F401
    import tomsparse.evaluate.generate  # noqa: F401
    import tomsparse.evaluate.perplexity  # noqa: F401
    import tomsparse.evaluate.tom  # noqa: F401
    import tomsparse.masks  # noqa: F401
    import tomsparse.perturb  # noqa: F401
    import tomsparse.scores.compute  # noqa: F401
    import tomsparse.scores.store  # noqa: F401
    from tomsparse.lm.registry import resolve_device, resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(("bfloat16" if device.startswith("cuda") else "float32")
                          if args.dtype == "auto" else args.dtype)
    if not args.eval_batch_size:
        args.eval_batch_size = 64 if device.startswith("cuda") else 8
    runtime_rss = rss_bytes()

    stage(f"building the {args.shape} model")
    build_s, lm = timed(lambda: build_model(args.shape, device, dtype), device)
    mats = lm.description.matrices
    total = sum(p.numel() for p in lm.model.parameters())
    target = sum(m.numel for m in mats)
    model_bytes = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    shape = SHAPES[args.shape]
    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    print(f"bench_sweep: torch {torch.__version__}, transformers {transformers.__version__}, "
          f"device {device} ({gpu}), dtype {str(dtype).replace('torch.', '')}, "
          f"torch threads {torch.get_num_threads()} (of {os.cpu_count()} CPUs)")
    print(f"shape {args.shape}: random-weight LlamaForCausalLM, hidden {shape['hidden_size']}, "
          f"{shape['num_hidden_layers']} layers, {shape['num_attention_heads']} heads "
          f"({shape['num_key_value_heads']} KV), intermediate {shape['intermediate_size']}, "
          f"vocab {shape['vocab_size']}; {total:,} parameters ({model_bytes / GIB:.2f} GiB), "
          f"{target:,} in {len(mats)} target matrices; built in {build_s:.1f} s")
    print("tokenizer: CharTokenizer (one id per character): prompts are ~4x longer in tokens "
          "than with a real tokenizer, so the likelihood and generate figures are pessimistic")
    print(f"repeats: {args.repeats} for masks and apply/restore, {args.eval_repeats} for "
          "likelihood/generate/perplexity (medians); scores and rankings once", flush=True)

    store_root = None if args.no_stores else tempfile.mkdtemp(prefix="bench_sweep_",
                                                              dir=args.tmp_dir)
    try:
        # 1. scores
        stage("scores")
        scores, stores = bench_scores(lm, args, device, store_root)
        b, lp = scores["batched"], scores["loop"]
        print(f"\n1. scores ({args.score_seqlen}-token windows, {b['n']} samples per method, "
              "each method on its own samples)")
        line(f"batched, B={args.batch_size}", f"{b['per_sample']:.4f} s/sample")
        line("loop", f"{lp['per_sample']:.4f} s/sample",
             f"(batched {lp['per_sample'] / b['per_sample']:.2f}x faster)")
        for method in ("batched", "loop"):
            r = scores[method]
            line(f"fixed cost per set ({method}): rest of compute_scores", fmt_s(r["rest"]))
            if r["save"] is not None:
                line(f"  save_scores ({fmt_b(r['bytes'])}, {args.store_dtype})",
                     fmt_s(r["save"]))
                line("  total per set", fmt_s(r["rest"] + r["save"]))
            else:
                line("  save_scores", "not timed", "(--no-stores)")
        fixed = b["rest"] + (b["save"] or 0.0)

        # 2. rankings
        stage("rankings")
        rankings, rk = bench_rankings(lm, args, device, stores, runtime_rss)
        if stores is not None:  # the rankings are all later stages need
            shutil.rmtree(store_root, ignore_errors=True)
        print(f"\n2. rankings (build_rankings, {len(mats)} matrices, m_max {args.m_max:g}, "
              f"from {rk['source']})")
        line("build_rankings", fmt_s(rk["seconds"]))
        line("  of which reading both score sets (timed alone after)", fmt_s(rk["read"]),
             "(every matrix once, nothing ranked)")
        line("host RSS: runtime (imports, before the model)", fmt_b(rk["runtime"]))
        line("host RSS: before the rankings", fmt_b(rk["before"]),
             "(after malloc_trim)" if rk["trimmed"] else "")
        line("host RSS: peak during the rankings", fmt_b(rk["peak"]),
             "(sampled every 10 ms" + (" + VmHWM after a reset)" if rk["hwm"] else ")"))
        host_model = rk["model_bytes"] if rk["on_host"] else 0
        attributed = host_model + rk["peak"] - rk["before"]
        upper = rk["peak"] - rk["runtime"]
        what = "model + " if rk["on_host"] else ""
        line(f"target 1.2 x ({what}two matrices' fp32 scores)", fmt_b(rk["target"]),
             f"(largest matrix {rk['biggest']:,} entries = {4 * rk['biggest'] / MIB:.0f} MiB "
             "of scores)")
        line(f"attributed: {what}(peak - before)", fmt_b(attributed),
             f"(target {'met' if attributed <= rk['target'] else 'NOT met'})")
        line("upper bound: peak - runtime", fmt_b(upper),
             f"({'within' if upper <= rk['target'] else 'above'} the target; counts what "
             "earlier stages left allocated)")

        # 3. masks
        stage("masks")
        masks = bench_masks(rankings, args)
        print(f"\n3. masks_for, all {len(mats)} matrices, m = {args.m:g} "
              f"(median of {args.repeats})")
        for mode, (sec, count) in masks.items():
            line(mode, fmt_s(sec), f"({count:,} weights)")

        # 4. apply + restore
        stage("apply + restore")
        first, apply_s, restore_s, masked = bench_apply(lm, rankings, args, device)
        print(f"\n4. perturbed() with the difference mask ({masked:,} weights, mode mean), "
              f"median of {args.repeats}")
        line("first apply (fills the per-sweep matrix sums)", fmt_s(first))
        line("apply", fmt_s(apply_s))
        line("restore", fmt_s(restore_s))

        # 5. likelihood and generate
        stage("ToM evaluation")
        ev = bench_eval(lm, args, device)
        n = ev["n"]
        lik_rate, rate1, rate5 = n / ev["likelihood"], n / ev["gen1"], n / ev["gen5"]
        # 6. perplexity
        stage("perplexity")
        pp = bench_perplexity(lm, args, device)
        tok_rate = pp["tokens"] / pp["seconds"]

        # 4 (continued): the overhead of a point
        mask_point = (masks["difference"][0] + REF_RANDOM_SEEDS * masks["random"][0]
                      + masks["tom-only"][0]) / (2 + REF_RANDOM_SEEDS)
        overhead = mask_point + apply_s + restore_s
        point = REF_PROMPTS / lik_rate + REF_PPL_TOKENS / tok_rate
        line("sweep-point overhead: masks + apply + restore", fmt_s(overhead),
             "(masks: the mean over difference, 3 x random, tom-only)")
        line(f"a point: likelihood on {REF_PROMPTS} prompts + ppl on {REF_PPL_TOKENS:,} tokens",
             fmt_s(point))
        share = 100 * overhead / (overhead + point)
        line("overhead share of a point", f"{share:.3f} %",
             f"(target < 1%: {'met' if share < 1 else 'NOT met'})")

        print(f"\n5. ToM evaluation, the first {n} prompts of the built-in bank (mean "
              f"{ev['mean_tokens']:.0f} tokens each with the character tokenizer), batch "
              f"{args.eval_batch_size}, median of {args.eval_repeats}")
        line("likelihood", f"{lik_rate:.3f} prompts/s", f"({ev['likelihood']:.2f} s)")
        line("generate, 1 rep", f"{rate1:.3f} prompts/s", f"({ev['gen1']:.2f} s)")
        line("generate, 5 reps (one shared prefill)", f"{rate5:.3f} prompts/s",
             f"({ev['gen5']:.2f} s)")
        ratio = ev["gen5"] / ev["gen1"]
        line("time of 5 reps / time of 1 rep", f"{ratio:.2f} x",
             f"(target < 1.5x on GPU: {'met' if ratio < 1.5 else 'not met'})")

        how = "chunked output head" if pp["chunked"] else "the model's own logits"
        print(f"\n6. perplexity (window_losses, {how}), {args.ppl_windows} windows x "
              f"{args.ppl_seqlen} tokens, {args.ppl_batch} per forward, median of "
              f"{args.eval_repeats}")
        line("perplexity", f"{tok_rate:,.0f} tokens/s", f"({pp['seconds']:.2f} s)")
        if args.ppl_seqlen != REF_PPL_SEQLEN:
            print(f"  (measured on {args.ppl_seqlen}-token windows; the protocol's are "
                  f"{REF_PPL_SEQLEN}, whose attention costs more per token)")

        # 7. projection
        n_mask_m = REF_M_VALUES
        terms = [
            (f"scores: {REF_SCORE_SAMPLES} samples x {b['per_sample']:.4f} s (batched)",
             REF_SCORE_SAMPLES * b["per_sample"]),
            (f"scores: {REF_SCORE_SETS} sets x {fixed:.2f} s fixed"
             + (" (store write not timed)" if stores is None else ""),
             REF_SCORE_SETS * fixed),
            ("rankings, once", rk["seconds"]),
            (f"masks: {n_mask_m} x (difference + {REF_RANDOM_SEEDS} random + tom-only)",
             n_mask_m * (masks["difference"][0] + REF_RANDOM_SEEDS * masks["random"][0]
                         + masks["tom-only"][0])),
            (f"apply + restore: {REF_POINTS - 1} points x {apply_s + restore_s:.4f} s, "
             f"+ {first - apply_s:.2f} s once for the matrix sums",
             (REF_POINTS - 1) * (apply_s + restore_s) + max(first - apply_s, 0.0)),
            (f"generate: {REF_POINTS} points x {REF_PROMPTS} prompts, {REF_REPS} reps, at "
             f"{rate5:.3g} prompts/s", REF_POINTS * REF_PROMPTS / rate5),
            (f"perplexity: {REF_POINTS} points x {REF_PPL_TOKENS:,} tokens at "
             f"{tok_rate:,.0f} tokens/s", REF_POINTS * REF_PPL_TOKENS / tok_rate),
        ]
        print(f"\n7. the reference protocol projected for {args.shape} on this device "
              f"({REF_POINTS} points: baseline + {REF_M_VALUES} m x (difference + "
              f"{REF_RANDOM_SEEDS} random + tom-only))")
        for label, sec in terms:
            print(f"  {label:<86s} {sec / 60:10.2f} min", flush=True)
        total_s = sum(sec for _, sec in terms)
        print(f"  {'total':<86s} {total_s / 60:10.2f} min  ({total_s / 3600:.2f} h)")
        print("  (generate at the character tokenizer's ~4x longer prompts: pessimistic)")
        project_paper_7b(args, b, fixed, rk, lik_rate, tok_rate)
    finally:
        if store_root is not None:
            shutil.rmtree(store_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
