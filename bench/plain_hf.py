"""bench/throughput.py's plain Hugging Face variants (b, e, g) in their own process: the
script a competent user writes with Trainer + PEFT, given a JSON spec on the command line
(`python bench/plain_hf.py SPEC`); it writes its figures to spec["result"]."""

from __future__ import annotations

import json
import statistics
import sys
import time
from itertools import pairwise
from pathlib import Path

LAST_N = 10  # as bench/throughput.py: Trainer logs every LAST_N steps


def main(spec: dict) -> None:
    """The hand-written baseline: what a competent user writes with Trainer + PEFT."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        DataCollatorWithFlattening,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    torch.set_num_threads(spec["threads"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])

    def tokenize(example: dict) -> dict:
        out = tokenizer.apply_chat_template(example["messages"], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        ids, keep = list(out["input_ids"]), out["assistant_masks"]
        return {"input_ids": ids, "attention_mask": [1] * len(ids),
                "labels": [t if m else -100 for t, m in zip(ids, keep, strict=True)]}

    with open(spec["data"]) as f:
        train = [tokenize(json.loads(line)) for line in f if line.strip()]

    model = AutoModelForCausalLM.from_pretrained(spec["model"])
    model.config.use_cache = False  # training keeps no KV cache (and flattening needs none)
    model = get_peft_model(model, LoraConfig(r=spec["r"], lora_alpha=spec["alpha"], lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    args = TrainingArguments(
        output_dir=spec["out"], num_train_epochs=1, per_device_train_batch_size=spec["micro_batch"],
        learning_rate=spec["lr"], lr_scheduler_type="constant_with_warmup",
        warmup_steps=spec["warmup"], logging_steps=LAST_N, save_strategy="no", report_to=[],
        seed=spec["seed"], use_cpu=True, disable_tqdm=True,
        train_sampling_strategy="group_by_length" if spec["group_by_length"] else "random",
    )
    collator = (DataCollatorWithFlattening(return_position_ids=True) if spec["flatten"] else
                DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    batch_tokens: list[int] = []  # real tokens of each micro-batch, in training order
    padded = [0]

    def counting_collator(features):  # measurement only: two integer sums a batch
        batch = collator(features)
        mask = batch.get("attention_mask")  # a flattened row has none: every token is real
        batch_tokens.append(int(mask.sum()) if mask is not None else batch["input_ids"].numel())
        padded[0] += batch["input_ids"].numel()
        return batch

    step_ends: list[float] = []

    class StepClock(TrainerCallback):  # measurement only: one clock read a step
        def on_step_end(self, args, state, control, **kw):
            step_ends.append(time.monotonic())

    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=counting_collator,
                      callbacks=[StepClock()])
    t0 = time.monotonic()
    result = trainer.train()
    seconds = time.monotonic() - t0

    real = sum(len(x["input_ids"]) for x in train)
    assert sum(batch_tokens) == real and len(batch_tokens) == len(step_ends), "one batch a step"
    per_step = [n / (end - start) for n, (start, end) in
                zip(batch_tokens[1:], pairwise(step_ends), strict=True)]
    logs = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    Path(spec["result"]).write_text(json.dumps({
        "real_tokens": real, "steps": trainer.state.global_step, "train_s": seconds,
        "tokens_per_s": real / seconds, "step_p50_tokens_per_s": statistics.median(per_step),
        "computed_tokens": padded[0],
        "target_tokens": sum(sum(t != -100 for t in x["labels"]) for x in train),
        "final_loss": logs[-1] if logs else result.training_loss, "mean_loss": result.training_loss,
    }))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
