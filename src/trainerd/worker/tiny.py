"""Build a tiny causal LM and tokenizer locally: no download, seconds on a CPU.

Used by `trainerd init --tiny-model` (as `python -m trainerd.worker.tiny OUT`, a child
process: the CLI never imports torch), the demo and the tests. Real users point
`base_model` at a real model instead. The model is a random-init Qwen2 (the architecture
of many small chat models) warmed by a fixed number of full fine-tuning steps (a few
seconds; a step count, not a time, so the model is the same on a loaded machine) on a
built-in corpus, so that LoRA on the demo data shows a loss that visibly falls.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from trainerd import children

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML with {% generation %} markers: `apply_chat_template(..., return_assistant_tokens_mask=True)`
# then marks exactly the assistant tokens (content + end marker) as trainable.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{% generation %}{{- message['content'] + '<|im_end|>' -}}{% endgeneration %}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_SUBJECTS = ["the river", "a small robot", "my neighbour", "the old library", "a quiet train",
             "the garden", "our team", "the first snow", "a paper boat", "the city lights"]
_VERBS = ["watches", "remembers", "follows", "builds", "finds", "carries", "paints", "answers"]
_OBJECTS = ["a long letter", "the morning light", "every small question", "a box of tools",
            "the last page", "an open window", "the quiet hills", "a map of the stars"]
_QUESTIONS = ["What do you see?", "Tell me something.", "Describe the scene.", "What happens next?",
              "Can you explain?", "Say it simply."]


def warm_corpus(n: int, seed: int = 0) -> Iterator[list[dict[str, str]]]:
    """Generic chat turns (not the sample data) that teach the template and some English."""
    rng = random.Random(seed)
    for _ in range(n):
        s = f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}."
        t = f"Then {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}."
        yield [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": rng.choice(_QUESTIONS)},
            {"role": "assistant", "content": f"{s} {t}"},
        ]


def _sample_texts(samples_dir: Path | None) -> Iterator[str]:
    if samples_dir is None:
        return
    for p in sorted(samples_dir.glob("*.jsonl")):
        for line in p.read_text().splitlines():
            if line.strip():
                obj = json.loads(line)
                for m in obj.get("messages", []):
                    yield m["content"]
                for k in ("prompt", "completion", "text"):
                    if k in obj:
                        yield obj[k]


def build_tokenizer(extra_text: list[str], vocab_size: int = 1024):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [m["content"] for conv in warm_corpus(2000) for m in conv] + extra_text
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, bos_token=None, model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(out_dir: Path, *, samples_dir: Path | None = None, hidden_size: int = 64,
                     layers: int = 2, warm_steps: int = 300, seed: int = 0,
                     on_step: Callable[[int, int], None] | None = None) -> dict:
    """Write a tiny Qwen2 model + tokenizer to `out_dir` with save_pretrained.
    on_step(done, total) after each warm-up step (a progress bar)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    texts = list(_sample_texts(samples_dir))
    tokenizer = build_tokenizer(texts)
    words = sorted({w for t in texts for w in t.split()})
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 4,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2048, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None, use_cache=True,
    )
    model = AutoModelForCausalLM.from_config(config)
    losses = _warm(model, tokenizer, warm_steps, seed, words, on_step) if warm_steps > 0 else []
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"path": str(out_dir), "params": sum(p.numel() for p in model.parameters()),
            "vocab": len(tokenizer), "warm_steps": len(losses),
            "warm_loss_first": losses[0] if losses else None, "warm_loss_last": losses[-1] if losses else None}


def salad_corpus(words: list[str], n: int, seed: int) -> Iterator[list[dict[str, str]]]:
    """Chats of shuffled words: the template and the token frequencies of the data's
    language, but none of its facts or sentence structure (those are for LoRA to learn)."""
    rng = random.Random(seed)
    for _ in range(n):
        def phrase() -> str:
            return " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))

        yield [{"role": "user", "content": phrase()}, {"role": "assistant", "content": phrase()}]


def _warm(model, tokenizer, steps: int, seed: int, words: list[str],
          on_step: Callable[[int, int], None] | None = None) -> list[float]:
    """A few seconds of full fine-tuning, so the base is not pure noise."""
    import torch

    convs = list(warm_corpus(2000, seed + 1))
    if words:
        convs += list(salad_corpus(words, 2000, seed + 2))
    rows = [tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"] for c in convs]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses: list[float] = []
    rng = random.Random(seed)
    for _ in range(steps):
        batch = rng.sample(rows, 16)
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        for i, r in enumerate(batch):
            ids[i, : len(r)] = torch.tensor(r)
            labels[i, : len(r)] = torch.tensor(r)
        out = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
        if on_step is not None:
            on_step(len(losses), steps)
    model.eval()
    return losses


def main(argv: list[str] | None = None) -> int:
    """`python -m trainerd.worker.tiny OUT [--samples-dir D] [--warm-steps N]`: build the
    model, saying each warm-up step and then the model's facts (trainerd.children)."""
    ap = argparse.ArgumentParser(prog="python -m trainerd.worker.tiny")
    ap.add_argument("out", type=Path)
    ap.add_argument("--samples-dir", type=Path, default=None)
    ap.add_argument("--warm-steps", type=int, default=300)
    args = ap.parse_args(argv)
    channel = children.Channel()
    try:
        info = build_tiny_model(args.out, samples_dir=args.samples_dir, warm_steps=args.warm_steps,
                                on_step=channel.progress)
    except OSError as e:
        channel.error(f"could not write the tiny model into {args.out}: {e.strerror or e}; "
                      "check that the base dir is writable and has free space")
        return 1
    channel.result(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
