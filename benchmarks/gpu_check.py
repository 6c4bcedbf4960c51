"""The GPU check (``make gpu-check``): one prepared command that proves the GPU path correct and
times it, on random-weight models built from configs (no download) with the packaged offline
model's real tokenizer, and writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out``.

Run on a lent GPU machine (its own Python; the kit from ``make gpu-kit`` carried beside the
working tree, see docs/scaling.md, "The GPU check")::

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out $OUT/gpu-check       # cuda, Llama
    make gpu-check GPU_OUT=$OUT/gpu-check                                 # the same
    PYTHONPATH=src python3 benchmarks/gpu_check.py --device cpu --shape tiny --out /tmp/g  # CI

It first checks its imports and says in one line which are missing (exit code 3). Then, each
section guarded (an error is recorded with its traceback and the next section runs), and
within a section each check a guarded step (an error there is a failed check, named):

1. machine: GPU, driver, CUDA, torch, transformers, tokenizers, Python, the attention
   kernels on offer (flash-attn, SDPA back ends), vLLM.
2. architectures (correctness; every architecture of ``tomsparse.testing.ARCHITECTURES`` at
   its tiny config, fp32, on the device, eager and SDPA attention): the packed prefix tree
   against each sequence run alone (the task bank's prompts, ids folded into the tiny
   vocabulary); the unshared fallback where a sliding window is shorter than the sequences;
   batched per-sample scores against the loop; mask apply + restore bit for bit; 5 sampled
   reps sharing one prefill, repeatable per seed.
3. correctness-float32, correctness-bfloat16 (``--shape llama-7b``: the Llama-1B shape;
   ``tiny``: the bench's tiny Llama): the same checks on the bank's prompts with the real
   tokenizer, plus the mask's sensitivity (a plain causal row over the packed tokens, what a
   broken tree mask gives, against the tree), the attention implementation and the SDPA
   kernels the packed forward actually ran, the flash-attention fallback (where flash-attn
   is installed), and one sweep point end to end through the public API (scores, rankings,
   masks, ``perturbed``, ToM likelihood and generation, perplexity, restore). The bf16
   limit of the tree's difference is set by the bf16 model's own rounding noise (its
   sequences alone against the fp32 model's, same weights).
4. speed (``llama-7b``: the Llama-2-7B shape, bf16): scores per sample (batched B = 8 and
   B = 1, the loop), rankings at m_max 5.2e-5 (random scores drawn per matrix on the device),
   masks and apply/restore, one default-design point (the 730 prompts of ``tomsparse run``'s
   20 clusters, likelihood, + 32,768 perplexity tokens) and one reference-protocol point
   (generation with 5 reps sharing each prefill on 664 prompts + ~340k perplexity tokens,
   windows of 2 as the reference protocol batches them), each with its peak GPU memory.
   The model-running parts run in chunks until their time share is spent: a part cut short
   is timed on what ran and projected to the whole, and the table says which.
5. projection: ``tomsparse run --preset paper-7b`` and ``tomsparse run --reference-protocol``
   (counted from their own options: ``bench_sweep.run_workload``) at the measured rates,
   beside the chip's floor (the work's FLOPs / the chip's dense bf16 peak).

Time budget on one H100 or H200 (seconds; the whole check must end within 8 minutes, model
building included): machine 5, tokenizer 5, architectures 30, correctness-float32 75,
correctness-bfloat16 60, speed 240 (model 30, scores 30, rankings 20, masks 10, default point
60, reference point 90), projection 10; 425 in all. ``--budget-s`` (default 420) is the
deadline the chunked parts keep to. On 2 CPU cores, ``--device cpu --shape tiny`` takes 45-60 s
(one torch thread).

Exit code: 0 when every check passed and no section failed, 1 otherwise, 3 when an import,
the tokenizer or the device is missing.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KIT_DEFAULT = ROOT / "gpu-kit"
# What the check imports beyond the standard library (import names); all must be present.
REQUIRED = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "scipy", "pandas",
            "tqdm", "yaml")
# Recorded when present, never required.
OPTIONAL = ("accelerate", "flash_attn", "vllm", "gguf", "matplotlib")


def kit_wheels(kit: Path) -> list[Path]:
    return sorted((Path(kit) / "wheels").glob("*.whl"))


def add_wheels(kit: Path) -> list[str]:
    """Put the kit's wheels at the end of ``sys.path`` (the machine's own packages win): a
    pure-Python wheel imports from the archive itself, another is unpacked first."""
    added = []
    for wheel in kit_wheels(kit):
        if wheel.name.endswith("-none-any.whl"):
            sys.path.append(str(wheel))
        else:
            where = Path(tempfile.mkdtemp(prefix="gpu_check_wheel_"))
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(where)
            sys.path.append(str(where))
        added.append(wheel.name)
    return added


def missing_imports(names=None) -> list[str]:
    """The import names of ``names`` (default ``REQUIRED``) that cannot be found."""
    return [n for n in (REQUIRED if names is None else names)
            if importlib.util.find_spec(n) is None]


def bootstrap(argv) -> dict:
    """Before anything heavy is imported: the kit's wheels and ``src/`` on the path, then one
    line naming every missing import (exit code 3)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--kit", default=str(KIT_DEFAULT))
    known, _ = parser.parse_known_args(argv)
    wheels = add_wheels(Path(known.kit))
    if importlib.util.find_spec("tomsparse") is None:
        sys.path.insert(0, str(ROOT / "src"))
    missing = missing_imports()
    if importlib.util.find_spec("tomsparse") is None:
        missing.append("tomsparse (src/ not found)")
    if missing:
        print(f"gpu_check: missing imports: {', '.join(missing)} (Python "
              f"{platform.python_version()}; kit {known.kit}: {len(wheels)} wheel(s); build it "
              "with `make gpu-kit` and carry gpu-kit)", file=sys.stderr)
        sys.exit(3)
    return {"kit": known.kit, "wheels_added": wheels}


BOOT = bootstrap(sys.argv[1:]) if __name__ == "__main__" else {"kit": None, "wheels_added": []}

# The imports below come after the bootstrap on purpose: it reports missing ones in one line.
import torch  # noqa: E402

import tomsparse as ts  # noqa: E402
from bench_prefix_tree import task_batches  # noqa: E402
from bench_sweep import (  # noqa: E402
    MODES,
    REF_PPL_SEQLEN,
    REF_PPL_TOKENS,
    REF_PROMPTS,
    REF_REPS,
    PeakRSS,
    RandomScores,
    build_model,
    lorem_texts,
    run_terms,
    run_workload,
    timed,
)
from gpu_kit import TOKENIZER, export_tokenizer  # noqa: E402
from tomsparse.data.corpora import Corpus  # noqa: E402
from tomsparse.data.score_samples import build_generic_samples  # noqa: E402
from tomsparse.data.tasks.bank import builtin_taskset  # noqa: E402
from tomsparse.data.tasks.model import TaskSet  # noqa: E402
from tomsparse.evaluate.generate import MAX_NEW_TOKENS, generate_reps  # noqa: E402
from tomsparse.evaluate.tom import score_likelihood  # noqa: E402
from tomsparse.lm.batching import encode, pad_token_id, takes_logits_to_keep  # noqa: E402
from tomsparse.lm.prefix_tree import (  # noqa: E402
    build_prefix_tree,
    can_pack,
    pack_tree,
    row_limit,
    sequence_logprobs,
    sliding_window,
)
from tomsparse.testing import ARCHITECTURES, CharTokenizer, tiny_model  # noqa: E402

GIB = 1 << 30

# What each --shape runs. llama-7b: correctness at the Llama-1B shape, speed at Llama-2-7B's.
PLANS = {
    "llama-7b": dict(
        check_shape="llama-1b", speed_shape="llama-7b", check_clusters=2, check_batches=None,
        score_samples=4, score_batch=4, gen_texts=8, m_point=1e-3, point_families=None,
        point_ppl_seqlen=512, point_ppl_tokens=4096, speed_batch=8, speed_batched=16,
        speed_b1=4, speed_loop=4, default_clusters=20,
        default_ppl_tokens=32768, ppl_seqlen=REF_PPL_SEQLEN, ref_prompts=REF_PROMPTS,
        ref_ppl_tokens=REF_PPL_TOKENS, chunk_prompts=64, chunk_windows=8,
        shares=dict(likelihood=30, default_ppl=20, generate=50, ref_ppl=40)),
    "tiny": dict(
        check_shape="tiny", speed_shape="tiny", check_clusters=1, check_batches=1,
        score_samples=3, score_batch=2, gen_texts=4, m_point=1e-2, point_families=1,
        point_ppl_seqlen=128, point_ppl_tokens=512, speed_batch=4, speed_batched=4,
        speed_b1=1, speed_loop=1, default_clusters=1,
        default_ppl_tokens=1024, ppl_seqlen=256, ref_prompts=4, ref_ppl_tokens=1024,
        chunk_prompts=8, chunk_windows=2,
        shares=dict(likelihood=10, default_ppl=5, generate=10, ref_ppl=5)),
}
SECTION_BUDGET_S = {"machine": 5, "tokenizer": 5, "architectures": 30,
                    "correctness-float32": 75, "correctness-bfloat16": 60, "speed: model": 30,
                    "speed: scores": 30, "speed: rankings": 20, "speed: masks": 10,
                    "speed: default point": 60, "speed: reference point": 90, "projection": 10}
# Limits of the correctness checks (largest absolute difference, nats; relative for scores).
TREE_LIMIT = {"float32": 1e-3}
TREE_BF16_FLOOR, TREE_BF16_CAP = 0.02, 0.25
SCORES_RTOL = {"float32": 1e-3, "bfloat16": 5e-2}
POINT_LIMIT = {"float32": 1e-4, "bfloat16": 1e-2}
# A broken tree mask (a plain causal row) must differ from the sequences alone by more than
# this many times the tree's limit, or the tree check could not tell it from a working one.
SENSITIVITY = 3
# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, by device name.
PEAKS = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12),
         ("GH200", 989e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12))


# ------------------------------------------------------------------------------ recording


class Recorder:
    """Sections (timed, each guarded), checks (pass / fail with value and limit) and
    figures, written as one JSON and one markdown table."""

    def __init__(self, device: str):
        self.device = device
        self.sections: dict[str, dict] = {}
        self.checks: list[dict] = []
        self.figures: list[dict] = []
        self.info: dict = {}
        self.started = time.perf_counter()

    def check(self, section: str, name: str, passed: bool, value=None, limit=None,
              note: str = "") -> bool:
        self.checks.append({"section": section, "check": name, "passed": bool(passed),
                            "value": value, "limit": limit, "note": note})
        print(f"[gpu_check] {'ok  ' if passed else 'FAIL'} {section}: {name}: {fmt(value)}"
              + (f" (limit {fmt(limit)})" if limit is not None else "")
              + (f"; {note}" if note else ""), file=sys.stderr, flush=True)
        return bool(passed)

    def figure(self, section: str, what: str, value, unit: str = "", peak=None,
               note: str = "") -> None:
        self.figures.append({"section": section, "what": what, "value": value, "unit": unit,
                             "peak_memory_bytes": peak, "note": note})

    @contextmanager
    def section(self, name: str, kind: str):
        record = {"kind": kind, "budget_s": SECTION_BUDGET_S.get(name), "ok": True,
                  "error": None}
        self.sections[name] = record
        print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            yield record
        except Exception as exc:  # noqa: BLE001  (recorded; the next section runs)
            record["ok"] = False
            record["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            record["traceback"] = traceback.format_exc()[-4000:]
            print(f"[gpu_check] {name} FAILED: {record['error']}", file=sys.stderr, flush=True)
        finally:
            record["seconds"] = round(time.perf_counter() - start, 2)
            free_memory(self.device)

    @contextmanager
    def step(self, section: str, name: str):
        """A step of a section: an error in it is recorded as a failed check named ``name``
        (with the error) and the section goes on with its next step."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001  (recorded as a failed check)
            error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            self.check(section, name, False, None, None, f"raised {error}")
            self.checks[-1]["traceback"] = traceback.format_exc()[-4000:]
            free_memory(self.device)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def failed(self) -> list[str]:
        return ([f"{c['section']}: {c['check']}" for c in self.checks if not c["passed"]]
                + [f"{n}: {s['error']}" for n, s in self.sections.items() if not s["ok"]])


def fmt(value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if value == 0:
            return "0"
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def free_memory(device: str) -> None:
    gc.collect()
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()


@contextmanager
def peak_memory(device: str):
    """``{"peak": bytes}`` filled on leaving: the GPU's peak allocated memory within the
    block, or the process's peak resident memory on the CPU."""
    out = {"peak": None}
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            yield out
        finally:
            torch.cuda.synchronize(device)
            out["peak"] = torch.cuda.max_memory_allocated(device)
    else:
        with PeakRSS() as rss:
            yield out
        out["peak"] = rss.peak


# ------------------------------------------------------------------------------ helpers


def largest_gap(a, b) -> float:
    """Largest absolute difference between two nested lists of floats of one layout."""
    return max((abs(x - y) for u, v in zip(a, b) for x, y in zip(u, v)), default=0.0)


def sequences_alone(model, seqs, picks, device) -> list[list[float]]:
    """The reference: each sequence by itself in a plain forward pass (no padding, no mask,
    default positions), its picks read from the full logits."""
    out = []
    for seq, sp in zip(seqs, picks):
        rows = torch.tensor([p for p, _ in sp], device=device)
        tokens = torch.tensor([t for _, t in sp], device=device)
        if takes_logits_to_keep(model):  # the output layer at the picked rows only
            logits = model(torch.tensor([seq], device=device), logits_to_keep=rows).logits[0]
            logp = logits.float().log_softmax(-1)
        else:
            logp = model(torch.tensor([seq], device=device)).logits[0, rows].float().log_softmax(-1)
        out.append(logp.gather(-1, tokens[:, None])[:, 0].tolist())
    return out


def causal_row_values(model, seqs, picks, pad_id, device) -> list[list[float]]:
    """The packed tree's tokens under a plain causal mask over each row (every token sees
    every earlier column, its siblings' included): what a tree mask that is not applied gives.
    Its distance from the sequences alone shows how much the check could see."""
    packed = pack_tree(build_prefix_tree(seqs), row_limit(model), pad_id)
    logits = model(input_ids=packed.ids.to(device), position_ids=packed.positions.to(device),
                   attention_mask=torch.ones_like(packed.ids).to(device)).logits
    out = []
    for s, sp in enumerate(picks):
        cols = [packed.columns[s][p] for p, _ in sp]
        rows = torch.tensor([r for r, _ in cols], device=device)
        at = torch.tensor([c for _, c in cols], device=device)
        tokens = torch.tensor([t for _, t in sp], device=device)
        logp = logits[rows, at].float().log_softmax(-1)
        out.append(logp.gather(-1, tokens[:, None])[:, 0].tolist())
    return out


def fold(batches, vocab: int):
    """The batches' token ids folded into ``vocab`` (2 .. vocab-1), picks too: the same prefix
    structure for a tiny model's vocabulary."""
    def f(t):
        return 2 + t % (vocab - 2)
    return [([[f(t) for t in s] for s in seqs], [[(p, f(t)) for p, t in sp] for sp in picks])
            for seqs, picks in batches]


def attention_ops(model, run) -> list[str]:
    """The attention operators ``run()`` dispatched (the profiler's aten op names: which SDPA
    kernel, or eager's matmul + softmax)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    keys = {e.key for e in prof.key_averages()}
    return sorted(k for k in keys if "scaled_dot_product" in k or "flash" in k
                  or k in ("aten::softmax", "aten::_softmax"))


def weights_snapshot(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed_entries(model, before: dict) -> int:
    return sum(int((p.detach() != before[n]).sum()) for n, p in model.named_parameters())


def bit_exact(model, before: dict) -> bool:
    return all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())


def score_gap(a: dict, b: dict) -> float:
    """Largest relative difference of two score sets: per matrix max |a - b| / max |a|."""
    worst = 0.0
    for name in a:
        scale = a[name].abs().max().clamp_min(1e-30)
        worst = max(worst, float((a[name] - b[name].to(a[name].device)).abs().max() / scale))
    return worst


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


# ------------------------------------------------------------------------------ sections


def machine(rec: Recorder, device: str) -> dict:
    import tokenizers
    import transformers
    from transformers.utils import is_flash_attn_2_available

    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "tomsparse": ts.__version__, "device": device,
            "kit": BOOT["kit"], "kit_wheels_on_path": BOOT["wheels_added"],
            "flash_attn_2_available": bool(is_flash_attn_2_available()),
            "optional": {n: importlib.util.find_spec(n) is not None for n in OPTIONAL}}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / GIB, 1),
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), gpus=torch.cuda.device_count(),
                    driver=nvidia_driver(),
                    sdpa_backends={k: getattr(torch.backends.cuda, f"{k}_sdp_enabled")()
                                   for k in ("flash", "mem_efficient", "math", "cudnn")
                                   if hasattr(torch.backends.cuda, f"{k}_sdp_enabled")},
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    else:
        info.update(gpu=None, torch_threads=torch.get_num_threads())
    rec.info.update(info)
    return info


def nvidia_driver() -> str | None:
    """The NVIDIA driver's version: nvidia-smi's, else the kernel module's own line."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return Path("/proc/driver/nvidia/version").read_text().splitlines()[0].strip()
    except (OSError, IndexError):
        return None


def load_tokenizer(args, rec: Recorder):
    """The packaged offline model's tokenizer: from ``--tokenizer`` (default the kit's),
    else exported from the packaged GGUF into a temporary folder (the CPU machine)."""
    from transformers import AutoTokenizer

    folder = Path(args.tokenizer) if args.tokenizer else Path(args.kit) / TOKENIZER
    if (folder / "tokenizer.json").is_file():
        source = str(folder)
    else:
        folder = Path(tempfile.mkdtemp(prefix="gpu_check_tok_")) / TOKENIZER
        export_tokenizer(folder)
        source = f"exported from the packaged GGUF into {folder}"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rec.info["tokenizer"] = {"source": source, "vocab": len(tokenizer),
                             "class": type(tokenizer).__name__}
    return tokenizer


def check_tree(model, batches, pad_id, device, alone=None):
    """Packed tree (or its fallback) against the sequences alone over ``batches``; returns
    (largest gap, the sequences-alone values, the path taken per batch)."""
    with torch.inference_mode():
        if alone is None:
            alone = [sequences_alone(model, s, p, device) for s, p in batches]
        got = [sequence_logprobs(model, s, p, pad_id, device) for s, p in batches]
    paths = sorted({"packed tree" if can_pack(model, s) else "unshared rows" for s, _ in batches})
    gap = max(largest_gap(g, a) for g, a in zip(got, alone))
    return gap, alone, paths


def architectures(rec: Recorder, device: str, tokenizer, plan: dict) -> None:
    """Every supported architecture at its tiny config, fp32, on the device."""
    section = "architectures"
    _, batches = task_batches(tokenizer, 1, 16)
    texts = [p.text[:120] for p in builtin_taskset().prompts()[:4]]
    for arch in ARCHITECTURES:
        with rec.step(section, f"{arch}: its checks"):
            one_architecture(rec, section, arch, batches, texts, device)


def one_architecture(rec, section, arch, batches, texts, device) -> None:
    """One tiny architecture (fp32, positions up to 4096): the tree under eager and SDPA
    attention, then with SDPA the fallback (gemma3), scores, masks and generation."""
    char = CharTokenizer()
    limit = TREE_LIMIT["float32"]
    positions = {"n_positions": 4096} if arch == "gpt2" else {"max_position_embeddings": 4096}
    window = {"sliding_window": 4096} if arch == "gemma3" else {}  # the tree, not the fallback
    for impl in ("eager", "sdpa"):
        model = tiny_model(arch, attn_implementation=impl, **positions, **window).to(device)
        folded = fold(batches[:2], model.config.vocab_size)
        gap, _, paths = check_tree(model, folded, char.pad_token_id, device)
        rec.check(section, f"{arch} ({impl}): packed prefix tree = each sequence alone",
                  gap <= limit and paths == ["packed tree"], gap, limit,
                  f"path {', '.join(paths)}")
    if arch == "gemma3":  # its own window (16) is shorter than the sequences
        short = tiny_model(arch, attn_implementation="sdpa", **positions).to(device)
        gap, _, paths = check_tree(short, folded, char.pad_token_id, device)
        rec.check(section, f"{arch}: window {sliding_window(short)} < sequences: unshared "
                  "fallback = each sequence alone", gap <= limit and paths == ["unshared rows"],
                  gap, limit, f"path {', '.join(paths)}")
        del short
    samples = ts.build_dataset(ts.ScoreDataConfig(dataset="tom", nsamples=3, seqlen=0),
                               char, model).samples
    loop = ts.compute_scores(model, char, samples, method="loop", progress=False)
    batched = ts.compute_scores(model, char, samples, method="batched", batch_size=2,
                                progress=False)
    gap = score_gap(loop.scores, batched.scores)
    rec.check(section, f"{arch}: batched scores (B=2, padded) = the loop",
              gap <= SCORES_RTOL["float32"] and batched.padded_tokens > 0, gap,
              SCORES_RTOL["float32"], f"relative; {batched.padded_tokens} padded tokens")
    generic = build_generic_samples(char, lorem_texts(8), nsamples=2, seqlen=64, seed=0)
    gen_scores = ts.compute_scores(model, char, generic.samples, method="batched",
                                   batch_size=2, progress=False).scores
    restore_check(rec, section, arch, ts.wrap_model(model, char, f"tiny-{arch}"),
                  batched.scores, gen_scores, 0.05)
    generation_check(rec, section, arch, model, char, texts)


def restore_check(rec, section, label, lm, tom, gen, m) -> dict:
    """Masks of every mode at ``m`` from the rankings of (tom, gen) (a loaded model's):
    applied (weights move), restored bit for bit, on the model's own device. Returns the
    rankings."""
    model, desc = lm.model, lm.description
    rankings = ts.build_rankings(tom, gen, ts.matrix_names(lm), m_max=m)
    before = weights_snapshot(model)
    moved, masked, exact = [], [], True
    for mode in MODES:
        masks = ts.masks_for(rankings, m, mode, seed=1)
        with ts.perturbed(desc.matrices, masks) as saved:
            moved.append(changed_entries(model, before))
            masked.append(saved.masked)
        exact = exact and bit_exact(model, before)
    ok = exact and all(0 < c <= k for c, k in zip(moved, masked))
    rec.check(section, f"{label}: mask apply + restore bit for bit ({len(MODES)} modes)", ok,
              exact, True, f"weights moved {moved} of {masked} masked")
    del before
    return rankings


def generation_check(rec, section, label, model, tokenizer, texts) -> None:
    """5 sampled reps sharing each prefill: the same words again for the same seeds, and
    different words for different seeds (a rep's words do not follow its neighbours')."""
    with torch.inference_mode():
        five = generate_reps(model, tokenizer, texts, [0, 1, 2, 3, 4], batch_size=len(texts))
        again = generate_reps(model, tokenizer, texts, [0, 1, 2, 3, 4], batch_size=len(texts))
        two = generate_reps(model, tokenizer, texts, [3, 1], batch_size=len(texts))
    same = [a == b for a, b in zip(five, again)]
    agree = sum(x == y for x, y in zip(two[0] + two[1], five[3] + five[1]))
    rec.check(section, f"{label}: 5 reps sharing one prefill repeatable per seed",
              all(same) and five[0] != five[1], all(same), True,
              f"reps 3 and 1 alone equal theirs among 5 on {agree} of {2 * len(texts)} "
              "prompts (a different batch may pick other kernels)")


def correctness(rec: Recorder, state: dict, device: str, tokenizer, plan: dict,
                dtype: torch.dtype) -> None:
    """The checks at the correctness shape in ``dtype``, each step guarded (an error is a
    failed check and the next step runs); the bf16 pass reuses the fp32 model cast in place
    (same weights) when the fp32 pass built it."""
    name = dtype_name(dtype)
    section = f"correctness-{name}"
    shape = plan["check_shape"]
    label = f"{shape} {name}"
    if state.get("check_lm") is not None:
        lm = state["check_lm"]
        lm.model.to(dtype)
    else:
        lm = build_model(shape, device, dtype, tokenizer=tokenizer)
        state["check_lm"] = lm
    model = lm.model
    pad = pad_token_id(tokenizer)
    impl = model.config._attn_implementation
    info = rec.info.setdefault("attention", {}).setdefault(section, {"implementation": impl})
    _, batches = task_batches(tokenizer, plan["check_clusters"], 16)
    batches = batches[:plan["check_batches"]]
    work: dict = {"limit": TREE_LIMIT.get(name, TREE_BF16_FLOOR)}

    with rec.step(section, f"{label}: packed prefix tree = each sequence alone"):
        noise = None
        if name != "float32":
            if state.get("alone_fp32") is not None:
                with torch.inference_mode():
                    mine = [sequences_alone(model, s, p, device) for s, p in batches]
                noise = max(largest_gap(x, y) for x, y in zip(mine, state["alone_fp32"]))
            work["limit"] = min(max(TREE_BF16_FLOOR, 2 * (noise or 0.0)), TREE_BF16_CAP)
        limit = work["limit"]
        gap, work["alone"], paths = check_tree(model, batches, pad, device)
        if name == "float32":
            state["alone_fp32"] = work["alone"]
        tokens = sum(build_prefix_tree(s).tokens() for s, _ in batches)
        held = sum(len(x) for s, _ in batches for x in s)
        rec.check(section, f"{label} ({impl}): packed prefix tree = each sequence alone",
                  gap <= limit and paths == ["packed tree"], gap, limit,
                  f"path {', '.join(paths)}; {len(batches)} batches, {tokens:,} tree tokens for "
                  f"{held:,} sequence tokens"
                  + (f"; bf16 noise (alone, bf16 vs fp32) {fmt(noise)}" if noise is not None
                     else ""))
    alone, limit = work.get("alone"), work["limit"]
    with rec.step(section, f"{label}: the tree mask matters"):
        with torch.inference_mode():
            control = max(largest_gap(causal_row_values(model, s, p, pad, device), a)
                          for (s, p), a in zip(batches, alone))
        rec.check(section, f"{label}: the tree mask matters (a plain causal row differs from "
                  f"the sequences alone by > {SENSITIVITY}x the limit)",
                  control > SENSITIVITY * limit, control, SENSITIVITY * limit)
    with rec.step(section, f"{label}: attention kernels of the packed tree"):
        seqs, picks = batches[0]
        with torch.inference_mode():
            info["packed_tree_ops"] = attention_ops(
                model, lambda: sequence_logprobs(model, seqs, picks, pad, device))
        rec.check(section, f"{label}: attention kernels of the packed tree recorded",
                  bool(info["packed_tree_ops"]), ", ".join(info["packed_tree_ops"]))
    if impl != "eager" and hasattr(model, "set_attn_implementation"):
        with rec.step(section, f"{label} (eager): packed prefix tree = each sequence alone"):
            model.set_attn_implementation("eager")
            try:
                gap, _, paths = check_tree(model, batches[:1], pad, device, alone=alone[:1])
            finally:
                model.set_attn_implementation(impl)
            rec.check(section, f"{label} (eager): packed prefix tree = each sequence alone",
                      gap <= limit and paths == ["packed tree"], gap, limit,
                      f"path {', '.join(paths)}")
    with rec.step(section, "flash_attention_2: unshared fallback"):
        flash_fallback(rec, section, model, batches, pad, device, limit, alone, impl)

    with rec.step(section, f"{label}: batched scores = the loop"):
        # on ToM samples of unequal lengths (the batches are padded)
        samples = ts.build_dataset(ts.ScoreDataConfig(dataset="tom",
                                                      nsamples=plan["score_samples"]),
                                   tokenizer, model).samples
        loop = ts.compute_scores(model, tokenizer, samples, method="loop", progress=False)
        batched = ts.compute_scores(model, tokenizer, samples, method="batched",
                                    batch_size=plan["score_batch"], progress=False)
        gap = score_gap(loop.scores, batched.scores)
        rec.check(section, f"{label}: batched scores (B={plan['score_batch']}) = the loop",
                  gap <= SCORES_RTOL[name] and batched.padded_tokens > 0, gap,
                  SCORES_RTOL[name], f"relative, largest over {len(loop.scores)} matrices; "
                  f"{batched.padded_tokens} padded tokens")
        work["tom"] = batched.scores
        del loop, batched
        free_memory(device)
    with rec.step(section, f"{label}: mask apply + restore bit for bit"):
        generic = build_generic_samples(tokenizer, lorem_texts(16), nsamples=2, seqlen=128,
                                        seed=0)
        gen_scores = ts.compute_scores(model, tokenizer, generic.samples, method="batched",
                                       batch_size=2, progress=False).scores
        work["rankings"] = restore_check(rec, section, label, lm, work.pop("tom"), gen_scores,
                                         plan["m_point"])
        del gen_scores
        free_memory(device)
    texts = [p.text for p in builtin_taskset().prompts()[:plan["gen_texts"]]]
    with rec.step(section, f"{label}: 5 reps sharing one prefill repeatable per seed"):
        generation_check(rec, section, label, model, tokenizer, texts)
        with torch.inference_mode():
            info["generation_ops"] = attention_ops(
                model, lambda: generate_reps(model, tokenizer, texts[:2], [0, 1], batch_size=2))
    with rec.step(section, f"{label}: sweep point"):
        sweep_point(rec, section, label, lm, tokenizer, work["rankings"], plan, name)


def flash_fallback(rec, section, model, batches, pad, device, limit, alone, impl) -> None:
    """Where flash-attn is installed (bf16 only): the model switched to it takes no custom
    mask, so the sequences run unshared; they must still equal the sequences alone."""
    from transformers.utils import is_flash_attn_2_available

    info = rec.info["attention"][section]
    if not is_flash_attn_2_available():
        info["flash_attention_2"] = "not installed: its fallback (unshared rows) not run here"
        return
    if model.dtype not in (torch.bfloat16, torch.float16):
        info["flash_attention_2"] = "installed; checked in the bf16 pass"
        return
    model.set_attn_implementation("flash_attention_2")
    try:
        gap, _, paths = check_tree(model, batches[:1], pad, device, alone=alone[:1])
    finally:
        model.set_attn_implementation(impl)
    info["flash_attention_2"] = f"installed; path {', '.join(paths)}"
    rec.check(section, "flash_attention_2: custom masks refused, unshared rows = each sequence "
              "alone", gap <= limit and paths == ["unshared rows"], gap, limit,
              f"path {', '.join(paths)}")


def sweep_point(rec, section, label, lm, tokenizer, rankings, plan, name) -> None:
    """One sweep point through the public API: baseline ToM (likelihood; generation, 2 reps)
    and perplexity, the same with the difference mask applied, and again after the restore."""
    model = lm.model
    taskset = ts.load_tasks("builtin").head_clusters(1)
    if plan["point_families"]:  # the first task of the first families only (CPU)
        keep = taskset.families()[:plan["point_families"]]
        taskset = TaskSet(name=f"{taskset.name}, first task of {', '.join(keep)}",
                          tasks={f: taskset.tasks[f][:1] for f in keep})
    # A corpus object made directly: ts.load_corpus("file.txt") imports the datasets package
    # (absent on the GPU machine) before it looks at the file's type.
    corpus = Corpus(name="lorem", texts=lorem_texts(32), source="gpu_check")

    def measure(generate: bool = True):
        lik = ts.evaluate_tom(model, tokenizer, taskset, scoring="likelihood", n_boot=0)
        gen = (list(ts.evaluate_tom(model, tokenizer, taskset, scoring="generate", reps=2,
                                    n_boot=0).table["generated"]) if generate else None)
        ppl = ts.perplexity(model, tokenizer, corpus, seqlen=plan["point_ppl_seqlen"],
                            max_tokens=plan["point_ppl_tokens"])
        return list(lik.table["margin"]), gen, ppl.perplexity, ppl.unit_losses

    before_w = weights_snapshot(model)
    base = measure()
    masks = ts.masks_for(rankings, plan["m_point"], "difference")
    with ts.perturbed(lm.description.matrices, masks) as saved:
        hit = measure(generate=False)
        masked = saved.masked
    after = measure()
    exact = bit_exact(model, before_w)
    del before_w
    moved = max(largest_gap([hit[0]], [base[0]]), largest_gap([hit[3]], [base[3]]))
    back = max(largest_gap([after[0]], [base[0]]), largest_gap([after[3]], [base[3]]))
    limit = POINT_LIMIT[name]
    rec.check(section, f"{label}: sweep point (masks, apply, ToM, perplexity, restore): the "
              "perturbed point differs from the baseline by more than the restored one",
              moved > back, moved, back,
              f"{masked:,} weights masked at m = {plan['m_point']:g}; {len(base[0])} prompts "
              f"({taskset.name}); perplexity "
              f"{base[2]:.4g} -> {hit[2]:.4g}")
    rec.check(section, f"{label}: sweep point: after the restore, weights bit for bit and ToM "
              "margins, generated words and window losses as at the baseline",
              exact and back <= limit and after[1] == base[1], back, limit,
              f"weights bit-exact {exact}; words equal {after[1] == base[1]}; perplexity "
              f"{after[2]:.6g} vs {base[2]:.6g}")


# ------------------------------------------------------------------------------ speed


def run_chunks(chunks, fn, budget_s: float, device) -> tuple[int, float, int]:
    """Run ``fn(chunk)`` for chunks (each a list) in order until ``budget_s`` is spent
    (the first always runs): (units done, seconds, chunks done)."""
    done, spent, n = 0, 0.0, 0
    for chunk in chunks:
        seconds, _ = timed(lambda: fn(chunk), device)
        done, spent, n = done + len(chunk), spent + seconds, n + 1
        if spent >= budget_s:
            break
    return done, spent, n


def split(items, size: int) -> list:
    return [items[i:i + size] for i in range(0, len(items), size)]


def share(rec: Recorder, args, seconds: float) -> float:
    """A part's time share, cut to what the deadline leaves (kept at least 1 s)."""
    left = args.budget_s - rec.elapsed() - 15
    return max(1.0, min(seconds, left))


def speed(rec: Recorder, state: dict, args, device: str, tokenizer, plan: dict) -> None:
    """Stage by stage at the speed shape in bf16 (fp32 on the CPU), each stage guarded."""
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    shape = plan["speed_shape"]
    rates = state.setdefault("rates", {})
    with rec.section("speed: model", "speed"):
        with peak_memory(device) as mem:
            seconds, lm = timed(lambda: build_model(shape, device, dtype, tokenizer=tokenizer),
                                device)
        params = sum(p.numel() for p in lm.model.parameters())
        state["speed_lm"] = lm
        cfg = lm.model.config
        state["flops"] = {"params": params, "non_embedding": params - cfg.vocab_size
                          * cfg.hidden_size, "layers": cfg.num_hidden_layers,
                          "hidden": cfg.hidden_size}
        rec.figure("speed", f"build {shape} ({params / 1e9:.2f}B parameters, "
                   f"{dtype_name(dtype)}, vocab {cfg.vocab_size:,} of the real tokenizer)",
                   round(seconds, 2), "s", mem["peak"],
                   f"attention {lm.model.config._attn_implementation}")
    lm = state.get("speed_lm")
    if lm is None:
        return
    with rec.section("speed: scores", "speed"):
        n = max(plan["speed_batched"], plan["speed_b1"], plan["speed_loop"])
        data = build_generic_samples(tokenizer, lorem_texts(), nsamples=n + 1, seqlen=128, seed=0)
        ts.compute_scores(lm.model, tokenizer, data.samples[:1], matrices=lm.description.
                          matrices[:1], batch_size=1, progress=False)  # warm-up
        for method, batch, count in (("batched", plan["speed_batch"], plan["speed_batched"]),
                                     ("batched", 1, plan["speed_b1"]),
                                     ("loop", 1, plan["speed_loop"])):
            chunk = data.samples[1:1 + count]
            with peak_memory(device) as mem:
                total, result = timed(lambda: ts.compute_scores(
                    lm.model, tokenizer, chunk, matrices=lm.description.matrices,
                    batch_size=batch, method=method, progress=False), device)
            per = result.wall_time_s / len(chunk)
            fixed = total - result.wall_time_s
            del result
            free_memory(device)
            key = f"scores {method} B={batch}"
            rates[key] = {"per_sample": per, "fixed": fixed}
            if method == "batched" and batch == plan["speed_batch"]:
                rates["scores"] = {"batch": batch, **rates[key]}
            rec.figure("speed", f"{key}: s per 128-token sample ({count} samples)",
                       round(per, 4), "s", mem["peak"], f"fixed cost per set {fixed:.2f} s "
                       "(no store written)")
    with rec.section("speed: rankings", "speed"):
        mats = lm.description.matrices
        shapes = {m.name: tuple(m.shape) for m in mats}
        tom, gen = RandomScores(shapes, 1, device), RandomScores(shapes, 2, device)
        names = [m.name for m in mats]
        with peak_memory(device) as mem:
            seconds, rankings = timed(lambda: ts.build_rankings(tom, gen, names, m_max=5.2e-5),
                                      device)
        state["rankings"] = rankings
        rates["rankings"] = seconds
        rec.figure("speed", f"rankings of {len(mats)} matrices at m_max 5.2e-5", round(seconds, 2),
                   "s", mem["peak"], "random scores drawn per matrix on the device (no store "
                   "read)")
    with rec.section("speed: masks", "speed"):
        rankings = state["rankings"]
        seconds, masks = timed(lambda: ts.masks_for(rankings, 5e-5, "difference"), device)
        sums: dict = {}
        first, _ = timed(lambda: apply_restore(lm, masks, sums), device)
        with peak_memory(device) as mem:
            again, masked = timed(lambda: apply_restore(lm, masks, sums), device)
        rates["point_overhead"] = seconds + again
        rec.figure("speed", "difference mask at m = 5e-5 (masks_for)", round(seconds, 4), "s")
        rec.figure("speed", f"apply + restore ({masked:,} weights; first {first:.3f} s fills the "
                   "matrix sums)", round(again, 4), "s", mem["peak"])
    with rec.section("speed: default point", "speed"):
        default_point(rec, state, args, device, lm, tokenizer, plan)
    with rec.section("speed: reference point", "speed"):
        reference_point(rec, state, args, device, lm, tokenizer, plan)


def apply_restore(lm, masks, sums) -> int:
    with ts.perturbed(lm.description.matrices, masks, totals=sums) as saved:
        pass
    return saved.masked


def perplexity_rate(rec, args, device, lm, tokenizer, plan, tokens: int, batch: int,
                    protocol: str, seconds_share: float) -> dict:
    """Tokens/s of ``ts.perplexity`` over ``tokens`` random ids in windows of the plan's
    length, a few windows per call until the share is spent; peak memory."""
    seqlen = plan["ppl_seqlen"]
    windows = max(1, tokens // seqlen)
    corpus = Corpus(name="random ids", texts=lorem_texts(2), source="gpu_check")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(2, lm.model.config.vocab_size, (windows * seqlen,), generator=gen)
    chunks = split(list(range(windows)), plan["chunk_windows"])

    def run(chunk):
        part = ids[chunk[0] * seqlen:(chunk[-1] + 1) * seqlen]
        ts.perplexity(lm.model, tokenizer, corpus, seqlen=seqlen, token_ids=part,
                      batch_size=batch, protocol=protocol)

    run(chunks[0][:1])  # warm-up
    with peak_memory(device) as mem:
        done, seconds, _ = run_chunks(chunks, run, share(rec, args, seconds_share), device)
    return {"rate": done * seqlen / seconds, "done": done, "windows": windows,
            "seconds": seconds, "peak": mem["peak"], "seqlen": seqlen}


def default_point(rec, state, args, device, lm, tokenizer, plan) -> None:
    """``tomsparse run``'s design: likelihood on the 20 clusters' 730 prompts + 32,768 tokens."""
    prompts = builtin_taskset().head_clusters(plan["default_clusters"]).prompts()
    _, batches = task_batches(tokenizer, plan["default_clusters"], args.eval_batch_size)
    tree = sum(build_prefix_tree(s).tokens() for s, _ in batches)
    state["likelihood_tokens_per_prompt"] = tree / len(prompts)
    model = lm.model
    with torch.inference_mode():
        score_likelihood(model, tokenizer, prompts[:2], batch_size=2)  # warm-up
        with peak_memory(device) as mem:
            done, seconds, _ = run_chunks(
                split(prompts, plan["chunk_prompts"]),
                lambda chunk: score_likelihood(model, tokenizer, chunk,
                                               batch_size=args.eval_batch_size),
                share(rec, args, plan["shares"]["likelihood"]), device)
    lik = done / seconds
    state["rates"]["likelihood"] = lik
    rec.figure("speed", f"default point: likelihood ({done} of {len(prompts)} prompts timed, "
               f"batch {args.eval_batch_size}; {tree / len(prompts):.0f} tree tokens a prompt)",
               round(lik, 2), "prompts/s", mem["peak"],
               "" if done == len(prompts) else f"projected to {len(prompts)}")
    ppl = perplexity_rate(rec, args, device, lm, tokenizer, plan, plan["default_ppl_tokens"], 4,
                          "tomsparse", plan["shares"]["default_ppl"])
    state["rates"]["ppl"] = ppl["rate"]
    rec.figure("speed", f"default point: perplexity ({ppl['done']} of {ppl['windows']} windows "
               f"of {ppl['seqlen']} timed, 4 a forward)", round(ppl["rate"]), "tokens/s",
               ppl["peak"])
    point = len(prompts) / lik + plan["default_ppl_tokens"] / ppl["rate"]
    state["default_point_s"] = point
    rec.figure("speed", f"default point: {len(prompts)} prompts + "
               f"{plan['default_ppl_tokens']:,} perplexity tokens",
               round(point, 2), "s", max(mem["peak"] or 0, ppl["peak"] or 0),
               "the model-running parts; masks + apply/restore "
               f"{state['rates'].get('point_overhead', 0):.3f} s more")


def reference_point(rec, state, args, device, lm, tokenizer, plan) -> None:
    """The reference protocol's point: generation with 5 reps sharing each prefill on 664
    prompts + the whole perplexity corpus (~340k tokens, windows of 2 a forward)."""
    bank = builtin_taskset().prompts()
    step = max(1, len(bank) // plan["ref_prompts"])
    texts = [p.text for p in bank[::step][:plan["ref_prompts"]]]
    seeds = list(range(REF_REPS))
    state["prefill_tokens_per_prompt"] = sum(len(encode(tokenizer, t)) for t in texts) / len(texts)
    model = lm.model
    with torch.inference_mode():
        generate_reps(model, tokenizer, texts[:2], seeds, batch_size=2)  # warm-up
        with peak_memory(device) as mem:
            done, seconds, _ = run_chunks(
                split(texts, plan["chunk_prompts"]),
                lambda chunk: generate_reps(model, tokenizer, chunk, seeds,
                                            batch_size=args.eval_batch_size),
                share(rec, args, plan["shares"]["generate"]), device)
    gen = done / seconds
    state["rates"]["generate"] = gen
    rec.figure("speed", f"reference point: generation, {REF_REPS} reps sharing each prefill "
               f"({done} of {len(texts)} prompts timed, batch {args.eval_batch_size}, "
               f"{MAX_NEW_TOKENS} new tokens)", round(gen, 2), "prompts/s (all reps)",
               mem["peak"], "" if done == len(texts) else f"projected to {len(texts)}")
    ppl = perplexity_rate(rec, args, device, lm, tokenizer, plan, plan["ref_ppl_tokens"], 2,
                          "reference", plan["shares"]["ref_ppl"])
    state["rates"]["ppl_reference"] = ppl["rate"]
    rec.figure("speed", f"reference point: perplexity ({ppl['done']} of {ppl['windows']} "
               f"windows of {ppl['seqlen']} timed, 2 a forward)", round(ppl["rate"]),
               "tokens/s", ppl["peak"],
               "" if ppl["done"] == ppl["windows"] else f"projected to {ppl['windows']}")
    point = len(texts) / gen + plan["ref_ppl_tokens"] / ppl["rate"]
    state["reference_point_s"] = point
    rec.figure("speed", f"reference point: {len(texts)} prompts x {REF_REPS} reps + "
               f"{plan['ref_ppl_tokens']:,} perplexity tokens", round(point, 2), "s",
               max(mem["peak"] or 0, ppl["peak"] or 0))


# ------------------------------------------------------------------------------ projection


def peak_flops(rec: Recorder, args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    gpu = rec.info.get("gpu") or ""
    return next((peak for name, peak in PEAKS if name in gpu), None)


def work_flops(work: dict, state: dict, seqlen: int) -> float:
    """FLOPs of ``run_workload``'s work on the speed model: 2 N a token forward (N the
    parameters outside the input embedding), 3x that for a score sample's forward + backward,
    plus the attention's 2 L d S a token over causal windows of S; likelihood at the measured
    tree tokens a prompt, generation at the measured prompt tokens + 5 new tokens a rep."""
    f = state["flops"]
    forward = 2 * f["non_embedding"]
    attention = 2 * f["layers"] * f["hidden"] * seqlen
    scores = work["score_samples"] * 3 * 128 * forward
    if work["scoring"] == "likelihood":
        per_prompt = state["likelihood_tokens_per_prompt"] * forward
    else:
        per_prompt = (state["prefill_tokens_per_prompt"] + work["reps"] * MAX_NEW_TOKENS) * forward
    evals = work["points"] * work["prompts"] * per_prompt
    ppl = (work["points"] * work["ppl_tokens"] + work["searches"] * work["search_tokens"]) * (
        forward + attention)
    return scores + evals + ppl


def projection(rec: Recorder, state: dict, args, plan: dict) -> None:
    rates = state.get("rates", {})
    peak = peak_flops(rec, args)
    batched = rates["scores"]
    runs = (("tomsparse run --preset paper-7b", ["run", "--preset", "paper-7b"], "ppl"),
            ("tomsparse run --reference-protocol", ["run", "--reference-protocol"],
             "ppl_reference"))
    out = []
    for label, argv, ppl_key in runs:
        work = run_workload(argv)
        terms = run_terms(work, {"per_sample": batched["per_sample"], "fixed": batched["fixed"],
                                 "rankings": rates["rankings"],
                                 "likelihood": rates.get("likelihood"),
                                 "generate": rates.get("generate"), "ppl": rates[ppl_key]})
        total = sum(s for _, s in terms) + work["points"] * rates.get("point_overhead", 0.0)
        try:
            flops = work_flops(work, state, plan["ppl_seqlen"])
        except KeyError:  # a speed stage that measures its tokens failed
            flops = None
        floor = flops / peak if peak and flops else None
        out.append({"run": label, "work": work, "terms": terms, "projected_s": total,
                    "flops": flops, "floor_s": floor})
        rec.figure("projection", f"{label}: {work['points']} points x {work['prompts']} prompts "
                   f"({work['scoring']}), {work['ppl_tokens']:,} perplexity tokens a point",
                   round(total / 3600, 2), "h", None,
                   f"floor {floor / 3600:.2f} h: {flops:.3g} FLOP at {peak / 1e12:.0f} TFLOP/s "
                   "(compute only; decoding is bound by memory, so the floor of generation is "
                   "optimistic)"
                   if floor else "no floor: " + ("no peak known for this device" if flops
                                                 else "the work's tokens were not measured"))
    state["projection"] = out
    rec.info["peak_flops"] = peak


# ------------------------------------------------------------------------------ output


def write_outputs(rec: Recorder, state: dict, args, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    failed = rec.failed()
    doc = {"passed": not failed, "failed": failed, "seconds": round(rec.elapsed(), 1),
           "budget_s": args.budget_s, "args": vars(args), "machine": rec.info,
           "sections": rec.sections, "checks": rec.checks, "figures": rec.figures,
           "rates": state.get("rates", {}), "projection": state.get("projection", [])}
    json_path = out / "gpu_check.json"
    json_path.write_text(json.dumps(doc, indent=1, default=str))
    md_path = out / "gpu_check.md"
    md_path.write_text(markdown(doc))
    return json_path, md_path


def markdown(doc: dict) -> str:
    m = doc["machine"]
    passed = sum(c["passed"] for c in doc["checks"])
    lines = [f"# GPU check: {m.get('gpu') or 'cpu'} ({doc['args']['shape']})", "",
             f"**{'PASSED' if doc['passed'] else 'FAILED'}**: {passed} of {len(doc['checks'])} "
             f"checks passed, {sum(not s['ok'] for s in doc['sections'].values())} section(s) "
             f"failed; {doc['seconds']} s (budget {doc['budget_s']} s).", "",
             "| machine | |", "| --- | --- |"]
    for key in ("gpu", "gpu_memory_gib", "driver", "cuda", "torch", "transformers", "tokenizers",
                "python", "flash_attn_2_available", "tokenizer"):
        if key in m:
            lines.append(f"| {key} | {m[key]} |")
    for section, att in m.get("attention", {}).items():
        lines.append(f"| attention, {section} | {att} |")
    lines += ["", "| section | check | value | limit | result |", "| --- | --- | --- | --- | --- |"]
    for c in doc["checks"]:
        lines.append(f"| {c['section']} | {c['check']}{'; ' + c['note'] if c['note'] else ''} | "
                     f"{fmt(c['value'])} | {fmt(c['limit']) if c['limit'] is not None else ''} | "
                     f"{'ok' if c['passed'] else '**FAIL**'} |")
    lines += ["", "| speed | figure | peak memory | note |", "| --- | --- | --- | --- |"]
    for f in doc["figures"]:
        peak = f"{f['peak_memory_bytes'] / GIB:.2f} GiB" if f["peak_memory_bytes"] else ""
        lines.append(f"| {f['what']} | {fmt(f['value'])} {f['unit']} | {peak} | {f['note']} |")
    for p in doc["projection"]:
        lines += ["", f"**{p['run']}**: projected {p['projected_s'] / 3600:.2f} h"
                  + (f", floor {p['floor_s'] / 3600:.2f} h" if p["floor_s"] else ""), ""]
        lines += [f"- {label}: {sec / 60:.1f} min" for label, sec in p["terms"]]
    lines += ["", "| section | seconds | budget | status |", "| --- | --- | --- | --- |"]
    for name, s in doc["sections"].items():
        lines.append(f"| {name} | {s['seconds']} | {s['budget_s'] or ''} | "
                     f"{'ok' if s['ok'] else '**' + (s['error'] or 'failed') + '**'} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ main


SECTIONS = ("architectures", "correctness", "speed")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--out", default="runs/gpu-check", help="folder for gpu_check.json and .md")
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--shape", choices=tuple(PLANS), default="llama-7b",
                    help="llama-7b: checks at the Llama-1B shape, speed at Llama-2-7B's; "
                         "tiny: the bench's tiny Llama for both (CPU, CI)")
    ap.add_argument("--kit", default=str(KIT_DEFAULT), help="the kit (make gpu-kit)")
    ap.add_argument("--tokenizer", default=None,
                    help="a tokenizer folder (default: the kit's; else exported from the "
                         "packaged GGUF, where gguf is installed)")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="seconds the whole check keeps to: the speed parts run in chunks "
                         "until their share or this deadline is spent")
    ap.add_argument("--eval-batch-size", type=int, default=16,
                    help="prompts per batch for likelihood and generation (tomsparse run's)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the chip's dense bf16 peak, TFLOP/s (default: from its name)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: 1 on the CPU, where these small models run "
                         "fastest on one, and far faster on a loaded machine; else torch's own)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {', '.join(SECTIONS)}")
    args = ap.parse_args(argv)
    args.sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        ap.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: --device {device}: no CUDA device here (torch {torch.__version__}); "
              "use --device cpu --shape tiny for the CPU run", file=sys.stderr)
        return 3
    threads = args.threads or (1 if device == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    plan = PLANS[args.shape]
    rec = Recorder(device)
    state: dict = {}
    out = Path(args.out)
    with rec.section("machine", "info"):
        machine(rec, device)
    tokenizer = None
    with rec.section("tokenizer", "correctness"):
        tokenizer = load_tokenizer(args, rec)
    if tokenizer is None:
        write_outputs(rec, state, args, out)
        print("gpu_check: no tokenizer (see gpu_check.json)", file=sys.stderr)
        return 3
    if "architectures" in args.sections:
        with rec.section("architectures", "correctness"):
            architectures(rec, device, tokenizer, plan)
    if "correctness" in args.sections:
        for dtype in (torch.float32, torch.bfloat16):
            with rec.section(f"correctness-{dtype_name(dtype)}", "correctness"):
                correctness(rec, state, device, tokenizer, plan, dtype)
        state.pop("check_lm", None)
        state.pop("alone_fp32", None)
        free_memory(device)
    if "speed" in args.sections:
        speed(rec, state, args, device, tokenizer, plan)
        state.pop("speed_lm", None)
        state.pop("rankings", None)
        free_memory(device)
        with rec.section("projection", "speed"):
            projection(rec, state, args, plan)
    json_path, md_path = write_outputs(rec, state, args, out)
    failed = rec.failed()
    print(f"gpu_check: {'PASSED' if not failed else 'FAILED'} in {rec.elapsed():.1f} s: "
          f"{json_path}, {md_path}" + (f"; failed: {'; '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
