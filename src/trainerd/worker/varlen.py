"""Packed attention through torch's own flash-attention varlen kernel (`attention = "varlen"`).

`torch.nn.attention.varlen.varlen_attn` (torch >= 2.9, CUDA, fp16/bf16) is flash
attention's variable-length kernel shipped inside torch: one call per layer for the
whole packed row, with cumulative sequence lengths marking where each example starts,
causal within each example and never across -- what `flash_attention_2` does with the
flash-attn package, which has no wheel on PyPI. packed_sdpa (worker/attention.py) gets
the same result with one SDPA call per example; this is its one-kernel form on a GPU.

Anything else (the CPU, fp32, dropout, a torch without the kernel, and what packed_sdpa
itself hands to SDPA: padded batches, a KV cache, sliding windows) goes to packed_sdpa, so
a packed row never attends across examples whichever path it takes.
bench/gpu.sh measures it beside packed_sdpa on the same examples (equal losses expected).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

from trainerd.worker import attention

NAME = "trainerd_varlen"

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # torch < 2.9
    varlen_attn = None


def varlen_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                   sliding_window: int | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    position_ids = kwargs.get("position_ids")
    usable = (
        varlen_attn is not None and query.is_cuda and query.dtype in (torch.float16, torch.bfloat16)
        and position_ids is not None and query.shape[0] == 1 and attention_mask is None
        and sliding_window is None and not (dropout and module.training)
        and query.shape[2] == key.shape[2] == position_ids.shape[-1]
    )
    if not usable:  # packed_sdpa: per example for a packed row (never across), SDPA otherwise
        return attention.packed_sdpa_forward(module, query, key, value, attention_mask, dropout=dropout,
                                             scaling=scaling, sliding_window=sliding_window, **kwargs)
    bounds = attention.segments(position_ids)
    cu = torch.tensor([0, *(e for _, e in bounds)], dtype=torch.int32, device=query.device)
    longest = max(e - s for s, e in bounds)
    # (1, heads, tokens, dim) -> (tokens, heads, dim), the kernel's layout; KV heads stay
    # grouped (enable_gqa) instead of being repeated as packed_sdpa must.
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    out = varlen_attn(q, k, v, cu, cu, longest, longest, scale=scaling, window_size=(-1, 0),
                      enable_gqa=k.shape[1] != q.shape[1])
    return out.unsqueeze(0), None  # (1, tokens, heads, dim), as transformers expects


def register() -> str:
    """Make NAME a valid `attn_implementation` in this process; returns it."""
    AttentionInterface.register(NAME, varlen_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, attention._mask)  # no mask for a packed row
    return NAME
