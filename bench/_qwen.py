"""A random-init model with the shapes of a real 0.5B-class model, built locally (no download).

The shapes are Qwen2.5-0.5B's (hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate
4864, vocab 151,936, tied embeddings, 32K positions, rope theta 1e6), so the compute,
memory, checkpoint and version sizes are a real model's; only the weights are noise,
which throughput and sizes do not depend on. The tokenizer is trainerd's tiny BPE one
(worker/tiny.py): its ids (< 1,024) all fit in the 151,936-row embedding, and the output
layer still computes all 151,936 logits per token, as the real model does.

`TINY` is the same architecture at test size, for `--dry-run`s.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

QWEN25_05B: dict[str, Any] = {
    "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
    "intermediate_size": 4864, "vocab_size": 151_936, "max_position_embeddings": 32_768,
    "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
}
TINY: dict[str, Any] = {**QWEN25_05B, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                        "intermediate_size": 256, "vocab_size": 2048, "max_position_embeddings": 2048}


def build(out: Path, shapes: dict[str, Any], dtype: str = "bfloat16", seed: int = 0) -> dict[str, Any]:
    """Write the model (safetensors, in `dtype` as the real one ships) and the tokenizer to
    `out`; returns its parameter count, sizes and how long the save took."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from trainerd.worker.tiny import build_tokenizer

    torch.manual_seed(seed)
    tokenizer = build_tokenizer([])
    if len(tokenizer) > shapes["vocab_size"]:
        raise ValueError(f"tokenizer has {len(tokenizer)} ids, more than the model's vocab {shapes['vocab_size']}")
    shapes = dict(shapes)
    theta = shapes.pop("rope_theta")
    config = Qwen2Config(**shapes, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None, use_cache=True)
    # transformers 5 keeps the rope settings in rope_parameters; 4.x in rope_theta.
    if isinstance(getattr(config, "rope_parameters", None), dict):
        config.rope_parameters["rope_theta"] = theta
    else:
        config.rope_theta = theta
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    model.save_pretrained(out)
    save_s = time.monotonic() - t0
    tokenizer.save_pretrained(out)
    weights = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    return {"path": str(out), "params": sum(p.numel() for p in model.parameters()), "dtype": dtype,
            "weights_bytes": weights, "save_s": save_s, "tokenizer_vocab": len(tokenizer),
            "layers": shapes["num_hidden_layers"], "hidden": shapes["hidden_size"],
            "vocab": shapes["vocab_size"]}
