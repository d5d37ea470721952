"""Packed attention that costs what the examples cost, not what the packed row costs.

Padding-free batches put a micro-batch's examples end to end in one row, with position
ids restarting at each example. With `sdpa`, transformers turns that into a dense
block-diagonal mask over the whole row: attention then costs (sum of lengths)^2 instead
of the sum of each length^2, and a masked SDPA cannot use its fused causal kernels. On a
CPU with 8 examples of ~200 tokens, that ate the whole gain of not computing padding
(bench/throughput.py measured packed at 0.92x padded).

`trainerd_packed_sdpa` runs SDPA once per example, with `is_causal=True` on exactly that
example's tokens: no mask, no cross-example attention, no quadratic blow-up. Flash
attention's varlen kernels do the same on a GPU (choose `attn_implementation =
"flash_attention_2"` there, where the package is installed). Anything that is not a
single packed row (padded batches, a KV cache, sliding windows) goes to transformers'
own SDPA path unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "trainerd_packed_sdpa"


def segments(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each example in a packed row: a new example starts where the
    position id does not follow the previous one (0 at every start, from the collator)."""
    pos = position_ids.reshape(-1)
    starts = torch.nonzero(pos[1:] != pos[:-1] + 1).flatten().add(1).tolist()
    bounds = [0, *starts, pos.numel()]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


_last: tuple[torch.Tensor, list[int]] | None = None  # (position_ids, lengths) of the last row


def _lengths(position_ids: torch.Tensor) -> list[int]:
    """Example lengths of a packed row, found once per forward: every layer gets the same
    position_ids tensor, so the other layers reuse the first one's answer."""
    global _last
    if _last is None or _last[0] is not position_ids:
        _last = (position_ids, [e - s for s, e in segments(position_ids)])
    return _last[1]


def packed_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                        value: torch.Tensor, attention_mask: torch.Tensor | None,
                        dropout: float = 0.0, scaling: float | None = None,
                        sliding_window: int | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    position_ids = kwargs.get("position_ids")
    single_packed_row = (
        position_ids is not None and query.shape[0] == 1 and attention_mask is None
        and sliding_window is None and query.shape[2] == key.shape[2] == position_ids.shape[-1]
    )
    if not single_packed_row:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, sliding_window=sliding_window, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    # split, not one slice per example: a slice's backward writes a zero tensor the size of
    # the whole row for each example; split's backward is a single concatenation.
    lengths = _lengths(position_ids)
    parts = [
        torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling,
                                                         is_causal=q.shape[2] > 1)
        for q, k, v in zip(query.split(lengths, dim=2), key.split(lengths, dim=2),
                           value.split(lengths, dim=2), strict=True)
    ]
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    return out.transpose(1, 2).contiguous(), None


def _mask(*, attention_mask: torch.Tensor | None = None, q_length: int, kv_length: int,
          **kwargs: Any) -> torch.Tensor | None:
    """No mask for a padding-free training row (the forward above splits it by position
    ids); transformers' SDPA mask for everything else, which the forward hands to SDPA."""
    if attention_mask is None and q_length == kv_length:
        return None
    return sdpa_mask(attention_mask=attention_mask, q_length=q_length, kv_length=kv_length, **kwargs)


def register() -> str:
    """Make NAME a valid `attn_implementation` in this process; returns it."""
    AttentionInterface.register(NAME, packed_sdpa_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, _mask)
    return NAME
