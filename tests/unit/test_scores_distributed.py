"""Data-parallel scores: two CPU processes on gloo, launched by torchrun, give the
single-process result; a failure on one rank stops both with a clear message."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import torch
from test_scores import assert_scores_close, make_samples, one_thread  # noqa: F401

from tomsparse.scores.compute import compute_scores
from tomsparse.testing import tiny_model

WORKER = textwrap.dedent("""
    import sys

    import torch
    import torch.distributed as dist

    sys.path.insert(0, {tests!r})
    from test_scores import make_samples
    from tomsparse.errors import UserError
    from tomsparse.scores import methods
    from tomsparse.scores.compute import compute_scores
    from tomsparse.testing import tiny_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = tiny_model("gpt2")
    result = compute_scores(model, None, make_samples(n=9), method="{method}",
                            batch_size=2, progress=False)
    if rank == 0:
        torch.save({{"scores": result.scores, "nsamples": result.nsamples,
                    "supervised": result.supervised_tokens, "world": result.world_size}},
                   {out!r})

    # A NaN loss on rank 1 only: both ranks must stop, none may hang in the reduction.
    if rank == 1:
        methods.sample_losses = lambda model, ids, mask, labels, head=None: torch.full(
            (labels.shape[0],), float("nan"), requires_grad=True)
    try:
        compute_scores(model, None, make_samples(n=4), method="{method}", progress=False)
        print(f"rank {{rank}}: no error")
    except UserError as exc:
        print(f"rank {{rank}}: UserError: {{exc}}", flush=True)
    dist.barrier()  # neither rank leaves the group while the other still talks to it
    dist.destroy_process_group()
""")


def _torchrun(tmp_path, method):
    tests = os.path.dirname(os.path.abspath(__file__))
    script = tmp_path / "worker.py"
    out = tmp_path / "rank0.pt"
    script.write_text(WORKER.format(tests=tests, out=str(out), method=method))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + "\n".join(
        line for line in proc.stderr.splitlines() if "Loading" not in line)[-4000:]
    return torch.load(out), proc.stdout


def test_two_gloo_ranks_equal_one_process(tmp_path):
    samples = make_samples(n=9)
    single = compute_scores(tiny_model("gpt2"), None, samples, method="batched", progress=False)
    got, stdout = _torchrun(tmp_path, "batched")
    assert got["world"] == 2
    assert got["nsamples"] == 9 and got["supervised"] == single.supervised_tokens
    assert_scores_close(single.scores, got["scores"])
    # Rank 1 holds samples 2 and 3 of 4 (a contiguous shard), and names the global index.
    assert re.search(r"rank 1: UserError: non-finite loss \(nan\) on sample ([23]) \(sample \1\)",
                     stdout), stdout
    assert "rank 0: UserError: another rank failed" in stdout
