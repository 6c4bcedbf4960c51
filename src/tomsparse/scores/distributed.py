"""Data parallelism for the scores under ``torchrun``: joining and leaving the process group,
each rank's contiguous shard of the samples and its device, agreeing on a failure before the
reduction, and the one all-reduce of the sums at the end (gloo on CPU, NCCL on GPUs).
Without torchrun everything here is a no-op on a world of one."""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from tomsparse.errors import UserError


def dist_world():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist, dist.get_rank(), dist.get_world_size()
    return None, 0, 1


def shard_of(n: int, rank: int, world: int) -> slice:
    return slice(n * rank // world, n * (rank + 1) // world)


def _reduce_device(dist) -> str:
    # Gloo reduces host tensors, NCCL device tensors.
    return "cpu" if dist.get_backend() == "gloo" else "cuda"


def all_reduce(dist, tensors: list[torch.Tensor]) -> None:
    """Sum every tensor over the ranks, in place; a tensor on the wrong side for the backend
    makes a round trip."""
    where = _reduce_device(dist)
    for t in tensors:
        if t.device.type != where:
            moved = t.to(where)
            dist.all_reduce(moved)
            t.copy_(moved)
        else:
            dist.all_reduce(t)


def agree_on_failure(dist, error: BaseException | None) -> None:
    """Every rank learns whether any rank failed before the big reduction, so a failure on
    one rank stops all of them instead of leaving the others waiting."""
    flag = torch.tensor([1.0 if error is not None else 0.0], device=_reduce_device(dist))
    dist.all_reduce(flag)
    if error is not None:
        raise error
    if flag.item() > 0:
        raise UserError("another rank failed while computing scores; see its message")


def init_distributed() -> bool:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on
    GPUs). Returns True when this call created it."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        # One GPU per process; "cuda" then means this rank's own GPU.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def rank_device(device: str) -> str:
    """Under torchrun on GPUs, ``auto`` and ``cuda`` mean this rank's own GPU."""
    _, rank, world = dist_world()
    if world > 1 and torch.cuda.is_available() and device in ("auto", "cuda"):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    return device


@contextmanager
def process_group():
    """Join the process group torchrun describes (nothing without torchrun) for the block;
    on a clean exit the ranks wait for each other, and a group this created is destroyed."""
    import torch.distributed as dist

    created = init_distributed()
    try:
        yield
        if dist_world()[2] > 1:
            dist.barrier()
    finally:
        if created:
            dist.destroy_process_group()
