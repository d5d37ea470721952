"""The ways a training attempt fails that the worker names (trainerd.worker.main turns
them into exit statuses: trainerd.jobs.ExitCode)."""

from __future__ import annotations


class NonFiniteLoss(RuntimeError):
    """Loss or gradient norm became NaN/Inf; says at which step and on which examples."""


class HostMemoryExceeded(MemoryError):
    """The worker's RSS passed train.max_host_memory_gb (the CPU analogue of CUDA OOM)."""


class DiskLow(RuntimeError):
    """No room for the next checkpoint; the worker stops without writing a partial one."""
