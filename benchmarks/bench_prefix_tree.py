"""Likelihood scoring as one packed prefix tree per task against the same sequences unshared
(prints its figures; not a test). Both run ``lm.prefix_tree.sequence_logprobs`` (``shared``
True / False) on the default run's prompts (the first tasks of each family covering
``--clusters`` clusters), the same batches, alternating, ``--repeats`` times each; printed:
tokens run (the tree's, once each; unshared, padding included), median seconds and the ratio,
and the largest difference between the two (they must agree).

    python benchmarks/bench_prefix_tree.py --clusters 10 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import tomsparse.lm.prefix_tree as PT
from tomsparse.data.tasks.bank import builtin_taskset
from tomsparse.evaluate.tom import continuation_rows, task_groups, answer_text, continuation_ids
from tomsparse.lm.batching import encode, pad_token_id
from tomsparse.lm.registry import DEFAULT_MODEL, load_model


def task_batches(tokenizer, clusters: int, batch_size: int):
    """The sequences and picks of each batch, as ``score_likelihood`` forms them."""
    prompts = builtin_taskset().head_clusters(clusters).prompts()
    out = []
    for group in task_groups(prompts, batch_size):
        seqs, picks = [], []
        for n, i in enumerate(group):
            p = prompts[i]
            ids = encode(tokenizer, p.text)
            pair = [continuation_ids(tokenizer, p.text, ids, answer_text(a, "word"))[0]
                    for a in (p.expected, p.alternative)]
            for seq, sp in continuation_rows(ids, pair[0], pair[1], 2 * n):
                seqs.append(seq)
                picks.append([(pos, t) for pos, t, _ in sp])
        out.append((seqs, picks))
    return prompts, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clusters", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    lm = load_model(DEFAULT_MODEL)
    pad = pad_token_id(lm.tokenizer)
    prompts, batches = task_batches(lm.tokenizer, args.clusters, args.batch_size)
    tree_tokens = sum(PT.build_prefix_tree(s).tokens() for s, _ in batches)
    held = sum(len(x) for s, _ in batches for x in s)
    padded = sum(len(s) * max(map(len, s)) for s, _ in batches)
    print(f"{len(prompts)} prompts in {len(batches)} batches; tokens run: packed tree "
          f"{tree_tokens:,}; unshared {held:,} ({padded:,} with padding)")

    def score(shared: bool):
        with torch.inference_mode():
            return [PT.sequence_logprobs(lm.model, s, p, pad, "cpu", shared=shared)
                    for s, p in batches]

    times = {True: [], False: []}
    values = {}
    for _ in range(args.repeats):
        for shared in (True, False):
            t0 = time.perf_counter()
            values[shared] = score(shared)
            times[shared].append(time.perf_counter() - t0)
    gap = max(abs(a - b) for x, y in zip(values[True], values[False])
              for u, v in zip(x, y) for a, b in zip(u, v))
    tree_s, flat_s = statistics.median(times[True]), statistics.median(times[False])
    print(f"medians of {args.repeats}, torch threads {torch.get_num_threads()}: "
          f"packed tree {tree_s:.1f} s, unshared {flat_s:.1f} s, unshared / tree {flat_s / tree_s:.2f}x; "
          f"largest difference {gap:.2e} nats")


if __name__ == "__main__":
    main()
