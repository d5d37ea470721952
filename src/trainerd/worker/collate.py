"""Micro-batches as the model sees them: padding-free packed rows (the default) or padded
ones, and on packed rows logits only where a trained token is predicted. The order the
examples come in is worker/data.py's (training_order)."""

from __future__ import annotations

from typing import Any

from trainerd.config import Config


def collator(cfg: Config, tokenizer: Any, model: Any = None):
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if cfg.train.packing:
        # Padding-free: one row per micro-batch, position ids restart at every example.
        # HF builds the block-diagonal mask from those position ids only when the forward
        # has no KV cache; with a cache, attention silently crosses examples. So every
        # batch carries use_cache=False itself, whatever the model's config says.
        flatten = DataCollatorWithFlattening(return_position_ids=True)
        trim = model is not None and keeps_logits(model)

        def packed(features: list[dict]) -> dict:
            batch = {**flatten(features), "use_cache": False}
            return trained_logits_only(batch) if trim else batch

        return packed
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt")


def keeps_logits(model: Any) -> bool:
    """Whether the model's forward takes `logits_to_keep` (transformers' causal LMs do)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def trained_logits_only(batch: dict) -> dict:
    """Logits, and the loss, only at the positions that predict a trained token: a prompt
    token's logits cost a vocabulary-wide projection and cross-entropy, forward and
    backward, for a label of -100. `shift_labels` are the targets of exactly those
    positions, so the loss is the same sum over the same tokens (and Trainer counts them
    for its token-weighted mean). One packed row only: the positions index the sequence."""
    import torch

    labels = batch["labels"]
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    keep = torch.nonzero(shifted[0] != -100).flatten()
    return {**batch, "logits_to_keep": keep, "shift_labels": shifted[:, keep]}
