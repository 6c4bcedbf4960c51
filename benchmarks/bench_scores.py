"""Speed and peak memory of the sensitivity scores on the default model (prints its figures;
not a test).

Configurations, each on the same ``--nsamples`` equal-length generic windows (``--seqlen``
tokens, every token supervised, as for the generic score set):

* ``bare``: plain forward + backward per sample with gradients on the target weights only, no
  squaring or accumulation: the floor any exact method pays;
* ``loop``: the plain exact loop (``compute_scores(method="loop")``);
* ``b4`` / ``b8``: the batched implementation at B = 4 and 8.

Speed: samples/s from the median per-step time (a step is one sample, or one batch of B);
the total wall time is printed too. Targets: loop overhead over bare <= 25%; batched at B=8
>= 1.5x the loop.

Ceilings (``ceiling``). Speed: the matrix products one loop step and one B=8 step execute are recorded
(shape, strides, count) and each is then timed alone with its output preallocated. Their summed
time per sample, over their FLOPs, is what an exact method doing nothing but those products
would take on this machine: 1 / that time is an upper bound on any exact method's samples/s
(attention and every elementwise op are left out, so the true bound is lower still). The
report divides it by the loop's measured rate: the most batching could gain here. Memory: one B=4 step records every tensor autograd saves
for backward (saved-tensor hooks, parameters excluded, each storage once) and every target
input the batched method holds for its per-sample products: the bytes a sample keeps alive
until backward, the least a batch of B needs beside the model and the accumulator, so the
budget's room for them bounds B.

Memory: every configuration runs in its own process. After the model and data are loaded (and
every weight read once, so its pages are resident) the process resets its resident-set high-water mark (writing 5 to /proc/self/clear_refs) and reads
VmHWM from /proc/self/status when done, so the peak covers the scoring only. Attributed peak =
model bytes + (peak RSS - RSS after loading): the Python/torch runtime is not counted. Target:
attributed peak <= 1.2 x (model + target-weight gradients + one fp32 accumulator).

    python benchmarks/bench_scores.py                # 32 samples x 128 tokens, 1 thread
    python benchmarks/bench_scores.py --threads 2 --configs loop,b8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CONFIGS = ("bare", "loop", "b4", "b8", "ceiling")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _bare_steps(model, tokenizer, samples, matrices):
    """Forward + backward per sample, gradients on the target weights, nothing accumulated."""
    import torch

    from tomsparse.scores import _collate, _input_device, _pad_id, _scoring_state, sample_losses

    weights = {id(m.module.weight): m.module.weight for m in matrices}
    device = _input_device(model)
    steps = []
    with _scoring_state(model, set(weights)), torch.enable_grad():
        for sample in samples:
            started = time.perf_counter()
            ids, mask, labels = _collate([sample], _pad_id(tokenizer), device)
            sample_losses(model, ids, mask, labels).sum().backward()
            for w in weights.values():
                w.grad = None
            steps.append((1, time.perf_counter() - started))
    return steps


_GEMMS = ("mm", "addmm", "bmm", "baddbmm")


def _record_gemms(run) -> dict:
    """Run ``run()`` and return {(op, shapes, strides): calls} for every matrix product it
    executes (below autograd, so forward, backward and the hooks' products alike)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    calls: dict = {}

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in _GEMMS:
                tensors = tuple(a for a in args if isinstance(a, torch.Tensor))
                key = (name, tuple(tuple(t.shape) for t in tensors),
                       tuple(t.stride() for t in tensors), str(tensors[0].dtype))
                calls[key] = calls.get(key, 0) + 1
            return func(*args, **(kwargs or {}))

    with Recorder():
        run()
    return calls


def _gemm_flops(op: str, shapes) -> float:
    if op in ("mm", "addmm"):
        (m, k), (_, n) = shapes[-2], shapes[-1]
        return 2.0 * m * k * n
    (b, m, k), (_, _, n) = shapes[-2], shapes[-1]
    return 2.0 * b * m * k * n


def _time_gemms(calls: dict, repeats: int = 7) -> tuple[float, float]:
    """(FLOPs, seconds) of the recorded products, each timed alone (median of ``repeats``)
    on random operands with the recorded shapes and strides and a preallocated output."""
    import torch

    flops = seconds = 0.0
    for (op, shapes, strides, dtype), count in calls.items():
        dt = getattr(torch, dtype.replace("torch.", ""))
        args = []
        for shape, stride in zip(shapes, strides):
            # Storage for the recorded layout (a broadcast bias has stride 0), then a view.
            extent = 1 + sum((n - 1) * st for n, st in zip(shape, stride) if n > 0)
            args.append(torch.randn(extent, dtype=dt).as_strided(shape, stride))
        fn = getattr(torch, op)
        out = fn(*args)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn(*args, out=out)
            times.append(time.perf_counter() - started)
        flops += count * _gemm_flops(op, shapes)
        seconds += count * statistics.median(times)
    return flops, seconds


def _kept_bytes_per_sample(lm, samples, matrices, batch: int = 4) -> dict:
    """Bytes per sample kept for backward in one batched step: what autograd saves and the
    target inputs the batched method holds, each storage counted once, parameters excluded."""
    import torch

    from tomsparse.scores import compute_scores

    params = {p.untyped_storage().data_ptr() for p in lm.model.parameters()}
    saved: dict = {}
    held: dict = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    def on_input(module, args):
        storage = args[0].untyped_storage()
        held[storage.data_ptr()] = storage.nbytes()

    hooks = [m.register_forward_pre_hook(on_input)
             for m in {id(m.module): m.module for m in matrices}.values()]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            compute_scores(lm.model, lm.tokenizer, samples[:batch], matrices=matrices,
                           method="batched", batch_size=batch, progress=False)
        batch = len(samples[:batch])
    finally:
        for h in hooks:
            h.remove()
    extra = sum(n for ptr, n in held.items() if ptr not in saved)
    return {"autograd": sum(saved.values()) / batch, "inputs": extra / batch}


def _gemm_ceiling(lm, samples, matrices) -> dict:
    from tomsparse.scores import compute_scores

    out = {}
    for label, method, batch in (("loop", "loop", 1), ("b8", "batched", 8)):
        chosen = samples[:batch]
        calls = _record_gemms(lambda: compute_scores(lm.model, lm.tokenizer, chosen,
                                                     matrices=matrices, method=method,
                                                     batch_size=batch, progress=False))
        flops, seconds = _time_gemms(calls)
        out[label] = {"gflop_per_sample": flops / len(chosen) / 1e9,
                      "seconds_per_sample": seconds / len(chosen),
                      "distinct_products": len(calls)}
    return out


def worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from tomsparse.corpora import DEFAULT_GENERIC, load_corpus
    from tomsparse.models import load_model
    from tomsparse.score_data import build_generic_samples
    from tomsparse.scores import compute_scores

    lm = load_model(args.model, device="cpu", log=lambda *a: None)
    data = build_generic_samples(lm.tokenizer, load_corpus(DEFAULT_GENERIC),
                                 nsamples=args.nsamples, seqlen=args.seqlen, seed=0)
    matrices = lm.description.matrices
    params = list({id(p): p for p in lm.model.parameters()}.values())
    model_bytes = sum(p.numel() * p.element_size() for p in params)
    weights = {id(m.module.weight): m.module.weight for m in matrices}.values()
    grad_bytes = sum(w.numel() * 4 for w in weights)
    acc_bytes = sum(m.numel * 4 for m in matrices)
    # Weights loaded from safetensors may still be unread file pages; reading them once makes
    # them resident now, so that they count in the loaded RSS and not in the scoring peak.
    with torch.no_grad():
        for p in params:
            p.sum()
    if args.worker == "ceiling":
        return {"config": "ceiling", "model": lm.name, "threads": torch.get_num_threads(),
                "nsamples": len(data), "ceiling": _gemm_ceiling(lm, data.samples, matrices),
                "kept": _kept_bytes_per_sample(lm, data.samples, matrices),
                "model_bytes": model_bytes, "grad_bytes": grad_bytes, "acc_bytes": acc_bytes}
    rss_loaded = _status_kib("VmRSS") * 1024
    peak_reset = _reset_peak()
    started = time.perf_counter()
    if args.worker == "bare":
        steps = _bare_steps(lm.model, lm.tokenizer, data.samples, matrices)
    elif args.worker == "loop":
        steps = compute_scores(lm.model, lm.tokenizer, data, method="loop",
                               progress=False).step_times
    else:
        steps = compute_scores(lm.model, lm.tokenizer, data, method="batched",
                               batch_size=int(args.worker[1:]), progress=False).step_times
    total = time.perf_counter() - started
    peak = _status_kib("VmHWM") * 1024
    return {"config": args.worker, "model": lm.name, "threads": torch.get_num_threads(),
            "steps": steps, "total_s": total, "rss_loaded": rss_loaded, "peak_rss": peak,
            "peak_reset": peak_reset, "model_bytes": model_bytes, "grad_bytes": grad_bytes,
            "acc_bytes": acc_bytes, "nsamples": len(data)}


def _run_config(config: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", config, "--model", args.model,
           "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
           "--threads", str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{config} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median_rate(steps) -> float:
    per_sample = [seconds / n for n, seconds in steps]
    return 1.0 / statistics.median(per_sample)


def report(results: list[dict]) -> str:
    mb = 1 << 20
    first = results[0]
    budget = 1.2 * (first["model_bytes"] + first["grad_bytes"] + first["acc_bytes"])
    by = {r["config"]: r for r in results}
    ceiling = by.pop("ceiling", None)
    results = [r for r in results if r["config"] != "ceiling"]
    loop_rate = _median_rate(by["loop"]["steps"]) if "loop" in by else None
    bare_rate = _median_rate(by["bare"]["steps"]) if "bare" in by else None
    lines = [
        f"sensitivity scores, {first['model']}: {first['nsamples']} generic windows x "
        f"{first.get('seqlen', '')} tokens, {first['threads']} CPU thread(s)",
        f"model {first['model_bytes'] / mb:.0f} MB, target-weight gradients "
        f"{first['grad_bytes'] / mb:.0f} MB, fp32 accumulator {first['acc_bytes'] / mb:.0f} MB; "
        f"memory budget 1.2 x their sum = {budget / mb:.0f} MB",
        "",
        f"{'config':8s} {'samples/s':>10s} {'(total)':>9s} {'vs loop':>8s} {'peak RSS':>9s} "
        f"{'attributed':>11s} {'budget':>7s}",
    ]
    for r in results:
        rate = _median_rate(r["steps"])
        overall = r["nsamples"] / r["total_s"]
        attributed = r["model_bytes"] + r["peak_rss"] - r["rss_loaded"]
        ratio = f"{rate / loop_rate:.2f}x" if loop_rate else "-"
        lines.append(f"{r['config']:8s} {rate:10.3f} {overall:9.3f} {ratio:>8s} "
                     f"{r['peak_rss'] / mb:8.0f}M {attributed / mb:10.0f}M "
                     f"{'ok' if attributed <= budget else 'OVER':>7s}")
    lines.append("")
    if loop_rate and bare_rate:
        overhead = bare_rate / loop_rate - 1
        lines.append(f"loop overhead over bare fwd+bwd: {100 * overhead:+.1f}% (target <= 25%: "
                     f"{'met' if overhead <= 0.25 else 'not met'})")
    if loop_rate and "b8" in by:
        speedup = _median_rate(by["b8"]["steps"]) / loop_rate
        lines.append(f"batched B=8 vs loop: {speedup:.2f}x (target >= 1.5x: "
                     f"{'met' if speedup >= 1.5 else 'not met'})")
    if ceiling is not None:
        c = ceiling["ceiling"]
        best = min(c["loop"]["seconds_per_sample"], c["b8"]["seconds_per_sample"])
        lines += [
            "",
            f"ceiling ({ceiling['threads']} thread(s)): matrix products per sample "
            f"{c['loop']['gflop_per_sample']:.1f} GFLOP as the loop runs them, "
            f"{c['b8']['gflop_per_sample']:.1f} GFLOP at B=8",
            f"  timed alone: {c['loop']['seconds_per_sample']:.3f} s/sample in the loop's "
            f"shapes ({c['loop']['gflop_per_sample'] / c['loop']['seconds_per_sample']:.0f} "
            f"GFLOP/s), {c['b8']['seconds_per_sample']:.3f} s/sample in B=8's "
            f"({c['b8']['gflop_per_sample'] / c['b8']['seconds_per_sample']:.0f} GFLOP/s)",
            f"  => no exact method exceeds {1 / best:.3f} samples/s here"
            + (f" = {1 / best / loop_rate:.2f}x the loop; the 1.5x target is "
               f"{'within' if 1 / best / loop_rate >= 1.5 else 'beyond'} that ceiling"
               if loop_rate else ""),
        ]
        if loop_rate and ceiling["threads"] != by.get("loop", {}).get("threads"):
            lines.append("  (the ceiling and the loop ran with different thread counts)")
        kept = ceiling["kept"]
        per_sample = kept["autograd"] + kept["inputs"]
        room = budget - first["model_bytes"] - first["acc_bytes"]
        lines += [
            f"memory: a sample keeps {per_sample / mb:.0f} MB alive until backward (autograd "
            f"{kept['autograd'] / mb:.0f} MB + held target inputs {kept['inputs'] / mb:.0f} MB); "
            f"the budget leaves {room / mb:.0f} MB beside the model and the accumulator",
            f"  => without recomputing activations, at most {int(room // per_sample)} "
            f"sample(s) per batch can fit the budget (B=4 needs "
            f"{4 * per_sample / mb:.0f} MB, B=8 {8 * per_sample / mb:.0f} MB, before "
            "transients)",
        ]
    if not all(r["peak_reset"] for r in results):
        lines.append("note: /proc/self/clear_refs was not writable; peaks include model loading")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: stable timings on a shared machine)")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = worker(args)
        result["seqlen"] = args.seqlen
        print(json.dumps(result))
        return 0
    results = []
    for config in args.configs.split(","):
        if config not in CONFIGS:
            raise SystemExit(f"unknown config {config!r}; choose from {', '.join(CONFIGS)}")
        print(f"running {config} ...", file=sys.stderr, flush=True)
        results.append(_run_config(config, args))
    print(report(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
