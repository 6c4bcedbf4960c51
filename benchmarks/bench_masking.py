"""One sweep point's masking overhead: in-memory apply + undo vs the reference's
save-the-perturbed-model-and-load-it-back, on the default model; and the share of a sweep
point's time that masking takes. Prints medians over --repeats runs, measured side by side.

``--part random`` (no model loaded, only matrix shapes): the random control masks for every
target matrix of a llama-1b-shaped model (16 layers, hidden 2048, intermediate 8192, 32 heads,
8 KV heads) at --random-m, the old per-matrix randperm (restated below) against
masks.random_indices, side by side.

    .venv/bin/python benchmarks/bench_masking.py [--part all|model|random] [--m 1e-4] [--repeats 3]
"""

import argparse
import hashlib
import statistics
import tempfile
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("all", "model", "random"), default="all")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--m", type=float, default=1e-4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--task-limit", type=int, default=12)
    ap.add_argument("--random-m", type=float, default=5e-5)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    args = ap.parse_args()
    if args.part in ("all", "random"):
        bench_random(args)
    if args.part in ("all", "model"):
        bench_model(args)


def old_random(numel: int, count: int, seed: int, name: str) -> torch.Tensor:
    """The random mask before issue 14: a permutation of all entries per matrix, on the host."""
    s = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little")
    gen = torch.Generator().manual_seed(s & (2**63 - 1))
    return torch.randperm(numel, generator=gen)[:count]


def llama_shapes(layers, hidden, intermediate, heads, kv_heads) -> dict[str, tuple[int, int]]:
    """{matrix name: (out_features, in_features)} for the target matrices."""
    kv = hidden // heads * kv_heads
    roles = {"q": (hidden, hidden), "k": (kv, hidden), "v": (kv, hidden), "o": (hidden, hidden),
             "gate": (intermediate, hidden), "up": (intermediate, hidden),
             "down": (hidden, intermediate)}
    return {f"layers.{i}.{r}": s for i in range(layers) for r, s in roles.items()}


def bench_random(args):
    from tomsparse.masks import k_for, random_indices

    shapes = llama_shapes(args.layers, args.hidden, args.intermediate, args.heads, args.kv_heads)
    numels = {n: a * b for n, (a, b) in shapes.items()}
    counts = {n: k_for(d, args.random_m) for n, d in numels.items()}

    def run(sample):
        t = time.perf_counter()
        out = {n: sample(numels[n], counts[n], 0, n) for n in shapes}
        dt = time.perf_counter() - t
        assert all(out[n].numel() == counts[n] for n in shapes)
        return dt

    run(random_indices)  # warm-up (imports, first allocations)
    old, new = [], []
    for _ in range(args.repeats):  # interleaved, so that both see the same machine load
        old.append(run(old_random))
        new.append(run(random_indices))
    med = statistics.median
    print(f"random masks, {len(shapes)} matrices of a llama-1b-shaped model "
          f"({sum(numels.values()):,} weights), m = {args.random_m:g}, "
          f"{sum(counts.values()):,} entries drawn, medians of {args.repeats} "
          f"(torch threads {torch.get_num_threads()})")
    print(f"  old: randperm of every matrix     {med(old):10.4f} s")
    print(f"  new: masks.random_indices         {med(new):10.4f} s   (target < 1 s)")
    print(f"  ratio old / new                   {med(old) / med(new):10.0f} x   (target >= 100x)")


def bench_model(args):

    from transformers import AutoModelForCausalLM

    from tomsparse.data.tasks import load_tasks
    from tomsparse.evaluate.tom import evaluate
    from tomsparse.lm.registry import load_model
    from tomsparse.masks import build_rankings
    from tomsparse.perturb import apply_perturbation, restore

    lm = load_model(args.model, device="cpu", log=lambda *_: None)
    mats = lm.description.matrices
    gen = torch.Generator().manual_seed(0)
    # Random scores stand in for real ones: the cost of masking does not depend on them.
    tom = {m.name: torch.rand(m.shape, generator=gen) for m in mats}
    generic = {m.name: torch.rand(m.shape, generator=gen) for m in mats}
    t = time.perf_counter()
    rankings = build_rankings(tom, generic, [m.name for m in mats], m_max=args.m)
    t_rank = time.perf_counter() - t

    mask_t, inmem, saveload = [], [], []
    sums = {}
    restore(apply_perturbation(mats, {n: r.mask(args.m, "difference") for n, r in rankings.items()},
                               totals=sums))  # fills the per-sweep cache of matrix sums
    for _ in range(args.repeats):
        t = time.perf_counter()
        masks = {n: r.mask(args.m, "difference") for n, r in rankings.items()}
        mask_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        saved = apply_perturbation(mats, masks, totals=sums)
        restore(saved)
        inmem.append(time.perf_counter() - t)
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            saved = apply_perturbation(mats, masks)
            lm.model.save_pretrained(d)
            restore(saved)
            AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
            saveload.append(time.perf_counter() - t)

    tasks = load_tasks("builtin").head(args.task_limit)
    t = time.perf_counter()
    evaluate(lm.model, lm.tokenizer, tasks, model_name=lm.name)
    t_eval = time.perf_counter() - t

    med = statistics.median
    masking = med(mask_t) + med(inmem)
    print(f"model {args.model}, m = {args.m:g}, masked weights: "
          f"{sum(x.numel() for x in masks.values()):,}, repeats {args.repeats} (medians)")
    print(f"  ranking once per sweep           {t_rank:8.3f} s")
    print(f"  mask selection per point         {med(mask_t):8.4f} s")
    print(f"  apply + undo in memory           {med(inmem):8.4f} s")
    print(f"  save perturbed model + load back {med(saveload):8.3f} s")
    print(f"  ratio save-and-load / in-memory  {med(saveload) / med(inmem):8.0f} x   (target >= 50x)")
    print(f"  ToM evaluation of one point      {t_eval:8.2f} s ({args.task_limit} tasks per family)")
    print(f"  masking share of a point         {100 * masking / (masking + t_eval):8.3f} %   (target < 2%)")


if __name__ == "__main__":
    main()
