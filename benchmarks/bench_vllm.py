"""Throughput of vLLM against our HF decoding loop on the same prompts (prints medians; not a
test). Runs in .venv-vllm (``make test-vllm`` builds it):

    .venv-vllm/bin/python benchmarks/bench_vllm.py --prompts 32 --repeats 5

Both backends decode greedily ``MAX_NEW_TOKENS`` (5) new tokens for the same prompts, a
spread over the built-in bank's families, all in one batch: the HF loop with
``batch_size`` = the number of prompts, vLLM in one ``generate`` call (its scheduler batches
them). vLLM's prefix cache is dropped before each timed call, so both backends run every
prefill, as the first rep of a sweep point does. Also printed: the engine's start-up time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; plenty for 5-token continuations


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def spread_prompts(count: int) -> list[str]:
    from tomsparse.data.tasks.bank import builtin_taskset

    prompts = builtin_taskset().prompts()
    return [p.text for p in prompts[::max(1, len(prompts) // count)][:count]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=32, help="prompts per timed call")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per backend")
    args = ap.parse_args()

    import torch

    from tomsparse.evaluate.generate import MAX_NEW_TOKENS, generate_reps, vllm_generator
    from tomsparse.lm.batching import encode
    from tomsparse.lm.registry import load_model

    lm = load_model("smollm2-135m", device="cpu", log=lambda *_: None)
    texts = spread_prompts(args.prompts)
    prompt_tokens = sum(len(encode(lm.tokenizer, t)) for t in texts)

    def hf():
        with torch.inference_mode():
            generate_reps(lm.model, lm.tokenizer, texts, [None], batch_size=len(texts),
                          sample=False)

    start = time.perf_counter()
    engine = vllm_generator(lm.model, lm.tokenizer)
    started = time.perf_counter() - start

    def vllm():
        engine.llm.reset_prefix_cache()
        engine.generate(texts, sample=False, seed=None)

    hf(), vllm()  # warm-up: first-call allocations, kernel selection
    times = {"hf": [timed(hf) for _ in range(args.repeats)],
             "vllm": [timed(vllm) for _ in range(args.repeats)]}
    print(f"{len(texts)} prompts ({prompt_tokens} prompt tokens), greedy, {MAX_NEW_TOKENS} new "
          f"tokens each, one batch; medians of {args.repeats}; torch threads "
          f"{torch.get_num_threads()}")
    for name, secs in times.items():
        median = statistics.median(secs)
        print(f"{name:5s} {median:7.2f} s  {len(texts) / median:7.2f} prompts/s  "
              f"{len(texts) * MAX_NEW_TOKENS / median:7.1f} new tokens/s  "
              f"{(prompt_tokens + len(texts) * MAX_NEW_TOKENS) / median:8.1f} tokens/s (all)")
    ratio = statistics.median(times["hf"]) / statistics.median(times["vllm"])
    print(f"vllm / hf throughput: {ratio:.2f}x")
    print(f"vllm engine start: {started:.1f} s")
    engine.close()


if __name__ == "__main__":  # vLLM starts its engine in a child process
    main()
