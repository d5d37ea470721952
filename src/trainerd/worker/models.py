"""The model line: resolve the current model, load it for training, publish a new version.

models/vNNNN/ is a version (adapter or full weights + tokenizer + manifest written last);
models/current is a symlink swapped atomically, so a reader sees the old model or the new
one, never a mix. An adapter version records the full weights it applies to (`base`),
which stays the configured base_model until a consolidation makes a new full version.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainerd import __version__, atomic
from trainerd.config import Config, TrainConfig
from trainerd.jobs import JobMeta
from trainerd.paths import Layout

log = logging.getLogger("trainerd.worker.models")


@dataclass
class ModelRef:
    version: str  # "base" or "vNNNN"
    kind: str  # "base", "adapter" or "full"
    base: str  # where the full weights live (local dir or hub id)
    path: Path | None = None  # the version dir (None for the configured base)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenizer_source(self) -> str:
        return str(self.path) if self.path is not None else self.base


def _version_number(name: str) -> int | None:
    """v0012 -> 12. Four digits at least, as many as it takes after v9999 (v10000)."""
    if len(name) >= 5 and name[0] == "v" and name[1:].isdigit():
        return int(name[1:])
    return None


def versions(layout: Layout) -> list[str]:
    """Version names in numeric order (v0010 after v0009, never by string accident)."""
    names = [n for n in os.listdir(layout.models) if _version_number(n) is not None] \
        if layout.models.is_dir() else []
    return sorted(names, key=lambda n: _version_number(n) or 0)


def current(layout: Layout, cfg: Config) -> ModelRef:
    link = layout.current_model
    if not os.path.lexists(link):
        return ModelRef("base", "base", cfg.base_model)
    name = os.readlink(link)
    path = layout.models / name
    manifest = atomic.verify_manifest(path, check_hashes=False)
    kind = manifest["kind"]
    base = str(path) if kind == "full" else manifest["base"]
    return ModelRef(name, kind, base, path, manifest)


class NoSuchModel(LookupError):
    """A version name, `current`, `base` or a path that names no loadable model (with what to do)."""


def resolve(layout: Layout, cfg: Config, spec: str) -> ModelRef:
    """The model `spec` names: `current`, `base`, a version (v0003), or the path of a
    model folder (a version, snapshot or export with a manifest, or any HF folder: an
    adapter is loaded on the base its adapter_config names). Torch-free: reads files only."""
    if spec == "current":
        return current(layout, cfg)
    if spec == "base":
        return ModelRef("base", "base", cfg.base_model)
    if _version_number(spec) is not None:
        path = layout.models / spec
        if not path.is_dir():
            raise NoSuchModel(f"no version {spec} in {layout.models}; `trainerd models list` shows them")
    else:
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise NoSuchModel(f"{spec!r} is not a version (vNNNN), 'current', 'base' or a model folder")
        path = path.resolve()
    try:
        man = atomic.verify_manifest(path, check_hashes=False)
    except atomic.ManifestError as e:
        if (path / atomic.MANIFEST).exists() or _version_number(spec) is not None:
            raise NoSuchModel(f"{spec} cannot be loaded: {e}; `trainerd models show {spec}` says more") from None
        man = {}
    kind = man.get("kind")
    if kind is None:  # a plain HF folder
        kind = "adapter" if (path / "adapter_config.json").is_file() else "full"
    if kind == "full":
        return ModelRef(man.get("version") or path.name, "full", str(path), path, man)
    from trainerd.lifecycle import resolve_base  # torch-free; a moved base dir still resolves

    base = resolve_base(layout, man) if man.get("base") else None
    if base is None:
        try:
            base = atomic.read_json(path / "adapter_config.json")["base_model_name_or_path"]
        except (OSError, ValueError, KeyError):
            base = cfg.base_model
    return ModelRef(man.get("version") or path.name, "adapter", str(base), path, man)


def set_current(layout: Layout, name: str) -> None:
    tmp = layout.models / f".current-{os.getpid()}"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(name, tmp)
    os.replace(tmp, layout.current_model)
    atomic.fsync_dir(layout.models)


def published_version(layout: Layout, cfg: Config, meta: JobMeta) -> str | None:
    """The current version if it already contains this job: a worker that published and
    then died before exiting must not train the same examples into the line twice."""
    ref = current(layout, cfg)
    since = max([h.get("at", 0.0) for h in meta.history if h.get("event") == "requeued"] or [0.0])
    for j in ref.manifest.get("jobs", []):
        if j.get("id") == meta.id and ref.manifest.get("created_at", 0) > since:
            return ref.version
    # ... or a version the eval gate held: published, just not current.
    from trainerd import forgetting, gate

    found = forgetting.version_of_job(layout, meta.id)
    if found and gate.is_held(found[1]) and found[1].get("created_at", 0) > since:
        return found[0]
    return None


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
            state_dict: dict[str, Any] | None = None) -> str:
    """Write the trained weights as the next version and make it current, atomically
    (make_current=False: the eval gate holds it; it is written and verified, not current).
    `state_dict`: the full weights of a sharded (FSDP) model, gathered on this rank."""
    import torch

    named = state_dict.items() if state_dict is not None else \
        ((n, p) for n, p in model.named_parameters() if p.requires_grad)
    bad = [n for n, p in named if p.is_floating_point() and not torch.isfinite(p).all()]
    if bad:  # never let NaN weights become the current model
        from trainerd.worker.train import NonFiniteLoss

        raise NonFiniteLoss(f"refusing to publish: non-finite values in {', '.join(bad[:5])}")
    from trainerd.config import load_config
    from trainerd.lifecycle import models_lock

    # Under the models lock (snapshot, gc, rollback, consolidation take it too): number the
    # version and move `current` only if it is still the parent this job trained from.
    with models_lock(layout, f"publish {meta.id}", timeout=600):
        now = current(layout, load_config(layout.config))
        if now.version != parent.version:
            raise RuntimeError(f"current moved from {parent.version} to {now.version} while {meta.id} trained; "
                               "not publishing over it (the retry trains from the new current)")
        return _publish_locked(layout, model, tokenizer, parent, meta, extra, make_current, state_dict)


def _publish_locked(layout: Layout, model: Any, tokenizer: Any, parent: ModelRef, meta: JobMeta,
                    extra: dict[str, Any] | None, make_current: bool = True,
                    state_dict: dict[str, Any] | None = None) -> str:
    existing = versions(layout)
    name = f"v{(_version_number(existing[-1]) or 0) + 1 if existing else 1:04d}"
    tmp = layout.models / f"{atomic.TMP_PREFIX}{name}-{meta.id}"
    shutil.rmtree(tmp, ignore_errors=True)  # our own leftover from a crash mid-publish
    is_adapter = hasattr(model, "peft_config")
    model.save_pretrained(tmp, state_dict=state_dict)  # adapter weights only for a PEFT model; safetensors
    tokenizer.save_pretrained(tmp)
    jobs = [{"id": meta.id, "name": meta.original_name, "examples": meta.examples}]
    atomic.make_readable(tmp)  # a serving user reads versions (safetensors are written 0600)
    atomic.write_manifest(tmp, {
        "version": name,
        "parent": parent.version,
        "kind": "adapter" if is_adapter else "full",
        "base": parent.base if is_adapter else None,
        "jobs": jobs,
        "created_at": time.time(),
        "trainerd_version": __version__,
        **(extra or {}),
    })
    atomic.rename(tmp, layout.models / name)
    if not make_current:
        # Held: read back and hashed now, so a later override makes a sound version current.
        atomic.verify_manifest(layout.models / name, check_hashes=True)
        log.info("wrote %s (parent %s), held by the eval gate: current stays %s", name, parent.version,
                 parent.version)
        return name
    set_current(layout, name)
    log.info("published %s (parent %s)", name, parent.version)
    return name
