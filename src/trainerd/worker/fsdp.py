"""FSDP for full fine-tunes that do not fit one device (`[train] fsdp = ["full_shard", ...]`).

Trainer gets `fsdp=True` and an fsdp_config: FSDP2 (torch's fully_shard) where torch has
it, FSDP1 otherwise. Each rank saves its own shard of weights and optimizer state
(SHARDED_STATE_DICT) into checkpoint-N; rank 0 commits that folder after a barrier, with
every rank's files in the manifest, exactly like a DDP group's checkpoint, so no rank
ever holds the whole state to checkpoint. Publishing gathers the full weights on rank 0
(a collective all ranks join) and writes a normal full version.

Why only on GPUs: Trainer hands FSDP to accelerate, and accelerate (1.x, state.py)
turns its FSDP plugin on only for GPU-class groups (MULTI_GPU, XPU, NPU, HPU, ...). A
CPU group over gloo is MULTI_CPU, where the plugin is silently dropped and the job would
train unsharded as plain DDP -- so it is refused instead, and cannot be tested with CPU
processes (torch's fully_shard itself runs on gloo; accelerate does not use it there).
"""

from __future__ import annotations

import logging
from typing import Any

from trainerd.config import TrainConfig

log = logging.getLogger("trainerd.worker.fsdp")


def problem(fsdp: bool) -> str | None:
    """Why `train.fsdp` cannot shard here; None when it can."""
    if not fsdp:
        return None
    import torch

    if torch.cuda.is_available():
        return None
    return ("train.fsdp is set but torch sees no CUDA GPU: Trainer's FSDP goes through accelerate, which "
            "applies it only to GPU groups (on the CPU it would silently train unsharded, as DDP); run the "
            "daemon on GPUs or set fsdp = [] (a CPU group trains with DDP, see nproc)")


def arguments(t: TrainConfig) -> dict[str, Any]:
    """TrainingArguments for `t.fsdp` (none when it is empty)."""
    if not t.fsdp:
        return {}
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401  (FSDP2: torch >= 2.6)

        version = 2
    except ImportError:
        version = 1
    conf: dict[str, Any] = {"version": version, "state_dict_type": "SHARDED_STATE_DICT",
                            "cpu_offload": "offload" in t.fsdp}
    # full_shard re-shards parameters after each forward (least memory); shard_grad_op keeps
    # them gathered until the backward (faster, more memory).
    if version == 2:
        conf["reshard_after_forward"] = "shard_grad_op" not in t.fsdp
    else:
        conf["reshard_after_forward"] = "shard_grad_op" if "shard_grad_op" in t.fsdp else "full_shard"
    return {"fsdp": True, "fsdp_config": conf}


def check_applied(trainer: Any, t: TrainConfig) -> None:
    """Never train unsharded while the config says sharded (another accelerate may differ)."""
    if t.fsdp and not getattr(trainer, "is_fsdp_enabled", False):
        raise RuntimeError(f"train.fsdp = {t.fsdp} was not applied by Trainer/accelerate on this machine "
                           "(distributed type " f"{trainer.accelerator.distributed_type}); set fsdp = [] "
                           "or run on GPUs")


def gather(trainer: Any, t: TrainConfig) -> dict[str, Any] | None:
    """The full weights of a sharded model, on rank 0 (a collective every rank must join;
    the other ranks get an empty dict); None without FSDP."""
    if not t.fsdp:
        return None
    kind = type(next(trainer.model.parameters())).__name__  # DTensor under FSDP2
    log.info("trained with FSDP (parameters: %s); gathering the full weights on rank 0", kind)
    return trainer.accelerator.get_state_dict(trainer.model)
