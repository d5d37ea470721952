"""QLoRA: LoRA trained on a base loaded in 4 bits (`[train] quantization = "4bit"`).

The base is quantized as it loads (bitsandbytes NF4 with double quantization, bf16
compute), so an 8B model's weights take ~5 GB instead of 16 and LoRA trains on one 24 GB
card. Only the adapter trains and only the adapter is saved: checkpoints, resume and
publish are LoRA's own, and a published version is an adapter on the *unquantized* base
id (what `base` in its manifest names), which serving loads at any precision.

Quantization needs bitsandbytes and a CUDA GPU. Where either is missing the daemon's
preflight (worker/preflight.py, run before any job is claimed) and each worker refuse
with `problem()`'s sentence, instead of failing three attempts deep inside a load.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

from trainerd.config import TrainConfig


def problem(quantization: str) -> str | None:
    """Why `train.quantization = quantization` cannot be honoured here; None when it can."""
    if quantization == "none":
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        return (f'train.quantization = "{quantization}" needs the bitsandbytes package, which is not '
                f"installed for {sys.executable}; install it there (`pip install bitsandbytes`, on a "
                'machine with a CUDA GPU) or set quantization = "none" to train LoRA on the full-precision base')
    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        return (f'train.quantization = "{quantization}" needs a CUDA GPU for bitsandbytes\' 4-bit kernels, '
                f"and torch {torch.__version__} ({build}) sees none; run the daemon on a GPU machine "
                'or set quantization = "none" to train LoRA on the full-precision base')
    return None


class QuantizationUnavailable(RuntimeError):
    """train.quantization is set where it cannot work; the message says what to change."""


def load_kwargs(train: TrainConfig) -> dict[str, Any]:
    """Extra from_pretrained arguments: a 4-bit base on this rank's GPU, or nothing."""
    if train.quantization == "none":
        return {}
    why = problem(train.quantization)
    if why:
        raise QuantizationUnavailable(why)
    import torch
    from transformers import BitsAndBytesConfig

    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    # A quantized model cannot be moved after loading: it is placed on this rank's GPU now.
    return {"quantization_config": bnb, "device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))}}


def prepare(model: Any, train: TrainConfig) -> Any:
    """Ready a quantized base for LoRA (norms in fp32, input grads on for checkpointing);
    an unquantized one is returned unchanged."""
    if train.quantization == "none":
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=train.gradient_checkpointing)
