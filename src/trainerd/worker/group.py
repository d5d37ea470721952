"""The torchrun group as the recipe needs it: joining early, barriers, and flags every rank
agrees on (a stop or a save decided on one rank alone would leave the others waiting in a
collective forever). One process without a group: all of these are no-ops."""

from __future__ import annotations

import os


def world_rank_size() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed() -> None:
    """Join the torchrun group early (gloo on the CPU, NCCL on GPUs): the data preparation
    below needs barriers before Trainer would set the group up itself."""
    import torch
    import torch.distributed as dist

    if world_rank_size()[1] == 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def agree(*flags: bool) -> tuple[bool, ...]:
    """Each flag true on any rank becomes true on all ranks (identity in one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return tuple(flags)
    import torch

    t = torch.tensor([int(f) for f in flags], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(x) for x in t.tolist())


def rank0_first(fn):
    """fn() on rank 0, then on the others (which then find its cache ready)."""
    rank, world = world_rank_size()
    if world > 1 and rank != 0:
        barrier()
    try:
        return fn()
    finally:
        if world > 1 and rank == 0:
            barrier()
