"""One sweep point's masking overhead: in-memory apply + undo vs the reference's
save-the-perturbed-model-and-load-it-back, on the default model; and the share of a sweep
point's time that masking takes. Prints medians over --repeats runs, measured side by side.

    .venv/bin/python benchmarks/bench_masking.py [--m 1e-4] [--repeats 3]
"""

import argparse
import statistics
import tempfile
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--m", type=float, default=1e-4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--task-limit", type=int, default=12)
    args = ap.parse_args()

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
