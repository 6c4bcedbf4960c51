"""Speed and peak memory of the sensitivity scores on the default model (prints its figures;
not a test).

Configurations, on equal-length generic windows (``--seqlen`` tokens, every token supervised,
as for the generic score set):

* ``bare``: plain forward + backward per sample with gradients on the target weights only, no
  squaring or accumulation: the floor any exact method pays;
* ``loop``: the plain exact loop (``compute_scores(method="loop")``);
* ``b4`` / ``b8``: the batched implementation at B = 4 and 8.

Speed, side by side in one process: ``--rounds`` rounds (default 4, so 32 samples per config);
in each, every config scores that round's ``--per-round`` samples (8), in an order rotated from
round to round, so a drift of the shared machine hits every config alike. Reported: samples/s
from the median time per sample, and each config's speed over the loop's as the median of the
per-round ratios. Targets: loop overhead over bare <= 25%; batched at B=8 >= 1.5x the loop.

Memory: each configuration scores one round's samples in a fresh process. After the model and
data are loaded (every weight read once, so its pages are resident) the process resets its
resident-set high-water mark (writing 5 to /proc/self/clear_refs) and reads VmHWM from
/proc/self/status when done, so the peak covers the scoring only. Attributed peak = model bytes
+ (peak RSS - RSS after loading): the Python/torch runtime is not counted. With ``--device
cuda`` the peak is the CUDA allocator's instead (``max_memory_allocated`` after a reset, less
what was allocated after loading). Target: attributed peak <= 1.2 x (model + target-weight
gradients + one fp32 accumulator).

Ceilings, in a third process. Speed: the matrix products of one loop step and one B=8 step are
recorded (shape, strides, count) and each is then timed alone with its output preallocated.
Their summed time per sample is what an exact method doing nothing but those products would
take on this machine, so 1 / that time bounds any exact method's samples/s from above
(attention, the loss and every elementwise op are left out: the true bound is lower still).
Memory: one B=4 step records every tensor autograd saves for backward (saved-tensor hooks,
parameters excluded, each storage once) and every target input the batched method holds for
its per-sample products: what a sample keeps alive until backward, which the budget's room
beside the model and the accumulator must hold B times.

    python benchmarks/bench_scores.py                  # 4 rounds x 8 samples x 128 tokens, 1 thread
    python benchmarks/bench_scores.py --threads 2 --configs loop,b8 --skip ceiling
    python benchmarks/bench_scores.py --device cuda --dtype bfloat16 --model PATH_OR_HUB_ID
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CONFIGS = ("bare", "loop", "b4", "b8")


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


def _bare_steps(model, tokenizer, samples, matrices) -> None:
    """Forward + backward per sample, gradients on the target weights, nothing accumulated."""
    import torch

    from tomsparse.lm.batching import input_device, pad_token_id
    from tomsparse.scores.compute import output_head
    from tomsparse.scores.losses import sample_losses
    from tomsparse.scores.methods import collate, scoring_state

    weights = {id(m.module.weight): m.module.weight for m in matrices}
    device = input_device(model)
    head = output_head(model)  # the same output layer and loss as the exact methods
    with scoring_state(model, set(weights)), torch.enable_grad():
        for sample in samples:
            ids, mask, labels = collate([sample], pad_token_id(tokenizer), device)
            sample_losses(model, ids, mask, labels, head).sum().backward()
            for w in weights.values():
                w.grad = None


def _sync() -> None:
    """Wait for queued GPU work, so the clock measures it (nothing to wait for on a CPU)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


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
                       tuple(t.stride() for t in tensors), str(tensors[0].dtype),
                       str(tensors[0].device))
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
    for (op, shapes, strides, dtype, device), count in calls.items():
        dt = getattr(torch, dtype.replace("torch.", ""))
        args = []
        for shape, stride in zip(shapes, strides):
            # Storage for the recorded layout (a broadcast bias has stride 0), then a view.
            extent = 1 + sum((n - 1) * st for n, st in zip(shape, stride) if n > 0)
            args.append(torch.randn(extent, dtype=dt, device=device).as_strided(shape, stride))
        fn = getattr(torch, op)
        out = fn(*args)
        times = []
        for _ in range(repeats):
            _sync()
            started = time.perf_counter()
            fn(*args, out=out)
            _sync()
            times.append(time.perf_counter() - started)
        flops += count * _gemm_flops(op, shapes)
        seconds += count * statistics.median(times)
    return flops, seconds


def _kept_bytes_per_sample(lm, samples, matrices, batch: int = 4) -> dict:
    """Bytes per sample kept for backward in one batched step: what autograd saves and the
    target inputs the batched method holds, each storage counted once, parameters excluded."""
    import torch

    from tomsparse.scores.compute import compute_scores

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

    chosen = samples[:batch]
    hooks = [m.register_forward_pre_hook(on_input)
             for m in {id(m.module): m.module for m in matrices}.values()]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            compute_scores(lm.model, lm.tokenizer, chosen, matrices=matrices,
                           method="batched", batch_size=batch, progress=False)
    finally:
        for h in hooks:
            h.remove()
    extra = sum(n for ptr, n in held.items() if ptr not in saved)
    return {"autograd": sum(saved.values()) / len(chosen), "inputs": extra / len(chosen)}


def _gemm_ceiling(lm, samples, matrices) -> dict:
    from tomsparse.scores.compute import compute_scores, output_head

    output_head(lm.model)  # its one-off probe of the model is not part of a step
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


def _load(args):
    import torch

    torch.set_num_threads(args.threads)
    from tomsparse.data.corpora import DEFAULT_GENERIC, load_corpus
    from tomsparse.data.score_samples import build_generic_samples
    from tomsparse.lm.registry import load_model

    lm = load_model(args.model, device=args.device, dtype=args.dtype, log=lambda *a: None)
    data = build_generic_samples(lm.tokenizer, load_corpus(DEFAULT_GENERIC),
                                 nsamples=args.rounds * args.per_round, seqlen=args.seqlen, seed=0)
    params = list({id(p): p for p in lm.model.parameters()}.values())
    # Weights loaded from safetensors may still be unread file pages; reading them once makes
    # them resident now, so that they count in the loaded RSS and not in the scoring peak.
    with torch.no_grad():
        for p in params:
            p.sum()
    matrices = lm.description.matrices
    weights = {id(m.module.weight): m.module.weight for m in matrices}.values()
    sizes = {"model_bytes": sum(p.numel() * p.element_size() for p in params),
             "grad_bytes": sum(w.numel() * w.element_size() for w in weights),
             "acc_bytes": sum(m.numel * 4 for m in matrices),
             "model": lm.name, "threads": torch.get_num_threads(), "seqlen": args.seqlen,
             "device": str(next(lm.model.parameters()).device),
             "dtype": str(next(lm.model.parameters()).dtype).replace("torch.", "")}
    return lm, data.samples, sizes


def _run(config: str, lm, samples) -> None:
    from tomsparse.scores.compute import compute_scores

    if config == "bare":
        _bare_steps(lm.model, lm.tokenizer, samples, lm.description.matrices)
    elif config == "loop":
        compute_scores(lm.model, lm.tokenizer, samples, method="loop", progress=False)
    else:
        compute_scores(lm.model, lm.tokenizer, samples, method="batched",
                       batch_size=int(config[1:]), progress=False)


def speed_worker(args) -> dict:
    """Every config on the same samples, interleaved: round r runs each config (in an order
    rotated by r) on that round's samples, so drifts of a shared machine hit all configs."""
    lm, samples, sizes = _load(args)
    configs = args.configs.split(",")
    for config in configs:  # warm-up: allocator, caches, lazy initialisation
        _run(config, lm, samples[:args.per_round])
    seconds: dict = {c: [] for c in configs}
    for r in range(args.rounds):
        chunk = samples[r * args.per_round:(r + 1) * args.per_round]
        for config in configs[r % len(configs):] + configs[:r % len(configs)]:
            _sync()
            started = time.perf_counter()
            _run(config, lm, chunk)
            _sync()
            seconds[config].append((time.perf_counter() - started) / len(chunk))
    return dict(sizes, config="speed", seconds_per_sample=seconds)


def memory_worker(args) -> dict:
    """One config on one round's samples in a fresh process: its peak resident memory (on a
    GPU: the peak of the CUDA caching allocator's allocated bytes)."""
    import torch

    lm, samples, sizes = _load(args)
    cuda = sizes["device"].startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        loaded, peak_reset = torch.cuda.memory_allocated(), True
    else:
        loaded, peak_reset = _status_kib("VmRSS") * 1024, _reset_peak()
    _run(args.worker.split(":")[1], lm, samples[:args.per_round])
    peak = torch.cuda.max_memory_allocated() if cuda else _status_kib("VmHWM") * 1024
    return dict(sizes, config=args.worker, rss_loaded=loaded, peak_rss=peak,
                peak_reset=peak_reset)


def ceiling_worker(args) -> dict:
    lm, samples, sizes = _load(args)
    matrices = lm.description.matrices
    return dict(sizes, config="ceiling", ceiling=_gemm_ceiling(lm, samples, matrices),
                kept=_kept_bytes_per_sample(lm, samples, matrices))


def _run_worker(worker: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker, "--model", args.model,
           "--seqlen", str(args.seqlen), "--threads", str(args.threads),
           "--rounds", str(args.rounds), "--per-round", str(args.per_round),
           "--configs", args.configs, "--device", args.device, "--dtype", args.dtype]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{worker} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(speed: dict | None, memory: list[dict], ceiling: dict | None) -> str:
    mb = 1 << 20
    first = speed or (memory[0] if memory else ceiling)
    budget = 1.2 * (first["model_bytes"] + first["grad_bytes"] + first["acc_bytes"])
    seconds = speed["seconds_per_sample"] if speed else {}
    rounds = len(next(iter(seconds.values()))) if seconds else 0

    def ratio(config: str, base: str = "loop") -> float | None:
        # The median over rounds of the per-round speed ratio: both configs ran on the same
        # samples within minutes of each other.
        if config not in seconds or base not in seconds:
            return None
        return statistics.median(b / c for b, c in zip(seconds[base], seconds[config]))

    peaks = {r["config"].split(":")[1]: r for r in memory}
    lines = [
        f"sensitivity scores, {first['model']} ({first['dtype']}): generic windows of "
        f"{first['seqlen']} tokens, "
        + (first["device"] if first["device"].startswith("cuda")
           else f"{first['threads']} CPU thread(s)"),
        f"model {first['model_bytes'] / mb:.0f} MB, target-weight gradients "
        f"{first['grad_bytes'] / mb:.0f} MB, fp32 accumulator {first['acc_bytes'] / mb:.0f} MB; "
        f"memory budget 1.2 x their sum = {budget / mb:.0f} MB",
    ]
    if speed:
        lines.append(f"speed: {rounds} rounds, each config on the round's "
                     f"{speed.get('per_round', '')} samples, configs interleaved; medians")
    peak = "peak CUDA" if first["device"].startswith("cuda") else "peak RSS"
    lines += ["", f"{'config':8s} {'samples/s':>10s} {'vs loop':>8s} {peak:>9s} "
                  f"{'attributed':>11s} {'budget':>7s}"]
    for config in dict.fromkeys(list(seconds) + list(peaks)):
        rate = (f"{1 / statistics.median(seconds[config]):10.3f}" if config in seconds
                else f"{'-':>10s}")
        r = ratio(config)
        row = f"{config:8s} {rate} {f'{r:.2f}x' if r else '-':>8s}"
        if config in peaks:
            p = peaks[config]
            attributed = p["model_bytes"] + p["peak_rss"] - p["rss_loaded"]
            row += (f" {p['peak_rss'] / mb:8.0f}M {attributed / mb:10.0f}M "
                    f"{'ok' if attributed <= budget else 'OVER':>7s}")
        lines.append(row)
    lines.append("")
    overhead = ratio("bare")
    if overhead:
        overhead = overhead - 1  # bare's speed over the loop's, minus one
        lines.append(f"loop overhead over bare fwd+bwd: {100 * overhead:+.1f}% (target <= 25%: "
                     f"{'met' if overhead <= 0.25 else 'not met'})")
    speedup = ratio("b8")
    if speedup:
        lines.append(f"batched B=8 vs loop: {speedup:.2f}x (target >= 1.5x: "
                     f"{'met' if speedup >= 1.5 else 'not met'})")
    if ceiling is not None:
        c = ceiling["ceiling"]
        best = min(c["loop"]["seconds_per_sample"], c["b8"]["seconds_per_sample"])
        loop_rate = 1 / statistics.median(seconds["loop"]) if "loop" in seconds else None
        lines += [
            "",
            f"ceiling: matrix products per sample {c['loop']['gflop_per_sample']:.1f} GFLOP as "
            f"the loop runs them, {c['b8']['gflop_per_sample']:.1f} GFLOP at B=8",
            f"  timed alone: {c['loop']['seconds_per_sample']:.3f} s/sample in the loop's "
            f"shapes ({c['loop']['gflop_per_sample'] / c['loop']['seconds_per_sample']:.0f} "
            f"GFLOP/s), {c['b8']['seconds_per_sample']:.3f} s/sample in B=8's "
            f"({c['b8']['gflop_per_sample'] / c['b8']['seconds_per_sample']:.0f} GFLOP/s)",
            f"  => no exact method exceeds {1 / best:.3f} samples/s here"
            + (f" = {1 / best / loop_rate:.2f}x the loop's median; the 1.5x target is "
               f"{'within' if 1 / best / loop_rate >= 1.5 else 'beyond'} that ceiling"
               if loop_rate else ""),
        ]
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
    if memory and not all(r["peak_reset"] for r in memory):
        lines.append("note: /proc/self/clear_refs was not writable; peaks include model loading")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--per-round", dest="per_round", type=int, default=8,
                        help="samples each config scores per round (>= 8 for B=8)")
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: stable timings on a shared machine)")
    parser.add_argument("--device", default="cpu",
                        help="cpu (default), cuda or cuda:N; on a GPU the memory column is the "
                             "CUDA allocator's peak, not the process's RSS")
    parser.add_argument("--dtype", default="float32", help="the model's dtype")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--skip", default="",
                        help="parts to leave out: speed, memory, ceiling (comma-separated)")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    workers = {"speed": speed_worker, "ceiling": ceiling_worker}
    if args.worker:
        run = workers.get(args.worker, memory_worker)
        print(json.dumps(dict(run(args), per_round=args.per_round)))
        return 0
    unknown = set(args.configs.split(",")) - set(CONFIGS)
    if unknown:
        raise SystemExit(f"unknown config {sorted(unknown)[0]!r}; choose from "
                         f"{', '.join(CONFIGS)}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: no CUDA device here; use --device cpu")
    skip = set(filter(None, args.skip.split(",")))
    speed = memory = ceiling = None
    if "speed" not in skip:
        print("timing the configs side by side ...", file=sys.stderr, flush=True)
        speed = _run_worker("speed", args)
    memory = []
    if "memory" not in skip:
        for config in args.configs.split(","):
            print(f"peak memory of {config} ...", file=sys.stderr, flush=True)
            memory.append(_run_worker(f"memory:{config}", args))
    if "ceiling" not in skip:
        print("ceilings ...", file=sys.stderr, flush=True)
        ceiling = _run_worker("ceiling", args)
    print(report(speed, memory, ceiling))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"speed": speed, "memory": memory, "ceiling": ceiling}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
