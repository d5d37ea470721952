"""Loading a model of the line for training, and writing trained weights as its next
version. Which model a name stands for, versions and the `current` pointer are
trainerd.line's (torch-free); this module is the part that needs torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainerd.config import TrainConfig
from trainerd.jobs import JobMeta
from trainerd.line.commit import commit
from trainerd.line.refs import ModelRef
from trainerd.paths import Layout
from trainerd.worker.errors import NonFiniteLoss


def torch_dtype(cfg: TrainConfig):
    import torch

    if cfg.precision == "fp32":
        return torch.float32
    if cfg.precision == "bf16":
        return torch.bfloat16
    if cfg.precision == "fp16":
        return torch.float16
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(ref: ModelRef):
    from transformers import AutoTokenizer

    return with_pad_token(AutoTokenizer.from_pretrained(ref.tokenizer_source))


def with_pad_token(tok: Any) -> Any:
    """Batches need a pad token; a tokenizer without one pads with its EOS."""
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def attention_implementation(cfg: TrainConfig) -> str:
    """What `train.attention` means on this machine (see worker/attention.py for why
    packed batches get their own SDPA path)."""
    import importlib.util

    import torch

    choice = cfg.attention
    if choice == "auto":
        if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
        choice = "packed_sdpa" if cfg.packing else "sdpa"
    if choice == "packed_sdpa":
        from trainerd.worker import attention

        return attention.register()
    if choice == "varlen":
        from trainerd.worker import varlen

        return varlen.register()
    return choice


def for_saving(model: Any) -> None:
    """Undo training-only settings before weights leave the worker, so a published model
    loads anywhere: the KV cache back on, and no attention name only this process knows."""
    from trainerd.worker import attention, varlen

    model.config.use_cache = True
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "_attn_implementation", None) in (attention.NAME, varlen.NAME):
        base.set_attn_implementation("sdpa")


def load_for_training(ref: ModelRef, cfg: TrainConfig):
    """The current model, ready to train: the line's adapter made trainable, a fresh LoRA
    on a full model, or (method = full) the full weights with any adapter merged in."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from trainerd.worker import quant

    model = AutoModelForCausalLM.from_pretrained(ref.base, dtype=torch_dtype(cfg),
                                                 attn_implementation=attention_implementation(cfg),
                                                 **quant.load_kwargs(cfg))
    model = quant.prepare(model, cfg)  # a 4-bit base (QLoRA); otherwise unchanged
    model.config.use_cache = False  # required by padding-free batches; useless in training
    if cfg.method == "lora":
        if ref.kind == "adapter":
            return PeftModel.from_pretrained(model, str(ref.path), is_trainable=True)
        lora = LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM",
        )
        return get_peft_model(model, lora)
    if ref.kind == "adapter":
        return PeftModel.from_pretrained(model, str(ref.path)).merge_and_unload()
    return model


def publish(layout: Layout, model: Any, tokenizer: Any, parent: ModelRef, meta: JobMeta,
            extra: dict[str, Any] | None = None, make_current: bool = True,
            preempted_by: str | None = None, state_dict: dict[str, Any] | None = None) -> str:
    """Write the trained weights as the next version and make it current, atomically
    (make_current=False: the eval gate holds it; it is written and verified, not current;
    `preempted_by`: see trainerd.line.commit). The numbering, manifest and pointer are
    trainerd.line.commit's. `state_dict`: the full weights of a sharded (FSDP) model,
    gathered on this rank."""
    import torch

    named = state_dict.items() if state_dict is not None else \
        ((n, p) for n, p in model.named_parameters() if p.requires_grad)
    bad = [n for n, p in named if p.is_floating_point() and not torch.isfinite(p).all()]
    if bad:  # never let NaN weights become the current model
        raise NonFiniteLoss(f"refusing to publish: non-finite values in {', '.join(bad[:5])}")

    def save(folder: Path) -> str:
        model.save_pretrained(folder, state_dict=state_dict)  # adapter weights only for a PEFT model
        tokenizer.save_pretrained(folder)
        return "adapter" if hasattr(model, "peft_config") else "full"

    return commit(layout, save, parent, meta, extra, make_current, preempted_by)
