"""A conversation to training sequences: each assistant turn as the model sees it at inference.

At inference a chat model sees its history rendered by the template with the generation
prompt, then writes its turn up to the end-of-turn marker. So for assistant turn i:

  prompt_i = render(turns before i, add_generation_prompt=True)     (masked)
  target_i = turn i as the template renders it, up to its end-of-turn marker (trained)

Templates differ in how target_i is found (docs/FORMATS.md):
- `{% generation %}` markers: the template marks the assistant tokens itself (HF's
  return_assistant_tokens_mask) and that is trusted.
- render(turns up to i) starts with prompt_i (ChatML, Qwen2.5, Llama 3, Gemma, Mistral,
  Qwen3's last turn): target_i is the rest.
- The generation prompt differs from the header the template renders before an assistant
  turn (an empty think block, R1's "<think>\\n"), or the template drops the turn's own
  reasoning (DeepSeek-R1 distills): target_i is the turn's text as the model writes it
  after that prompt, plus the end-of-turn marker.

Sequences are shared where they can be: the whole conversation rendered once trains every
turn whose prompt_i + target_i it contains token for token (all turns, for prefix-stable
templates); a turn that a template rewrites later (Qwen3 and R1 drop earlier reasoning)
gets a sequence of its own. N assistant turns are then 1 to N sequences.
"""

from __future__ import annotations

import re
from typing import Any

from trainerd.formats import Chat

SENTINEL = "TRAINERD_END_OF_TURN_PROBE"
_SPACE = re.compile(r"\s+")
_MARKERS = re.compile(r"{%-?\s*generation\s*-?%}")


class TemplateRefused(Exception):
    """The model's chat template cannot render this conversation (its own message)."""


def _squash(s: str) -> str:
    return _SPACE.sub("", s)


def _fold_reasoning(m: dict[str, Any]) -> dict[str, Any]:
    """reasoning_content into the content, in the <think> form reasoning models write, for
    a template that does not read reasoning_content itself."""
    if not m.get("reasoning_content"):
        return m
    out = {k: v for k, v in m.items() if k != "reasoning_content"}
    out["content"] = f"<think>\n{m['reasoning_content'].strip()}\n</think>\n\n{m.get('content') or ''}"
    return out


def _trim(ids: list[int], mask: list[int]) -> tuple[list[int], list[int]]:
    """Without the tokens after the last trained one: under causal attention they change no
    loss, so computing them (the newline after a final end-of-turn) is waste."""
    end = len(mask) - mask[::-1].index(1)
    return ids[:end], mask[:end]


class ChatEncoder:
    """Renders and masks conversations for one tokenizer (its template read once)."""

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        self.template = tokenizer.chat_template or ""
        if not self.template:
            raise TemplateRefused("the model's tokenizer has no chat template, so conversations cannot be "
                                  "rendered; use a chat (instruct) model or train prompt/completion or text")
        self.markers = bool(_MARKERS.search(self.template))
        self.tools = "tool" in self.template
        self.reasoning = "reasoning_content" in self.template
        self.eot = self._end_of_turn()

    # --------------------------------------------------------------- rendering
    def render(self, msgs: list[dict[str, Any]], tools: list[dict] | None, gen: bool) -> str:
        try:
            return self.tok.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=gen)
        except Exception as e:  # jinja's raise_exception, or a template tripping on the input
            raise TemplateRefused(f"the model's chat template refuses this conversation: {e}") from None

    def ids(self, text: str) -> list[int]:
        # The rendered text carries the template's own BOS; the tokenizer must not add one.
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def _end_of_turn(self) -> str:
        """What the template writes right after an assistant turn's text, trimmed: the
        marker the model must learn to emit ("<|im_end|>", "<|eot_id|>", "<end_of_turn>")."""
        try:
            text = self.render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": SENTINEL}],
                               None, False)
        except TemplateRefused:
            text = ""
        tail = text.split(SENTINEL, 1)[1].strip() if SENTINEL in text else ""
        return tail or (self.tok.eos_token or "")

    # --------------------------------------------------------------- targets
    def _prepare(self, ex: Chat) -> list[dict[str, Any]]:
        if ex.uses_tools and not self.tools:
            raise TemplateRefused("the conversation uses tools (tool_calls, the tool role or 'tools') but the "
                                  "model's chat template has no tool support; use a tool-calling model's "
                                  "template or remove the tool turns")
        return ex.messages if self.reasoning else [_fold_reasoning(m) for m in ex.messages]

    def _keeps(self, rendered: str, m: dict[str, Any]) -> bool:
        """Does the rendered turn hold the turn's own text (whitespace aside)?"""
        have = _squash(rendered)
        return all(_squash(x) in have for x in (m.get("content") or "", m.get("reasoning_content") or ""))

    def _cut(self, text: str) -> str:
        k = text.rfind(self.eot) if self.eot else -1
        return text[: k + len(self.eot)] if k >= 0 else text

    def target(self, prompt: str, upto: str, m: dict[str, Any]) -> str:
        """Turn text trained after `prompt`, from the render of the conversation up to it."""
        if upto.startswith(prompt) and self._keeps(upto[len(prompt):], m):
            return self._cut(upto[len(prompt):])
        k = 0  # common prefix: the history both renders share
        while k < min(len(prompt), len(upto)) and prompt[k] == upto[k]:
            k += 1
        gen_tail, turn = prompt[k:], upto[k:]
        if turn.startswith(gen_tail) and self._keeps(turn[len(gen_tail):], m):
            return self._cut(turn[len(gen_tail):])
        if prompt.startswith(upto[:k]) and self._keeps(turn, m) and not upto.startswith(prompt):
            # Only the assistant header differs (e.g. the prompt adds an empty think block):
            # the rendered turn after the shared history, minus its own header.
            return self._cut(self._after_header(turn, m))
        # The template rewrites the turn's own text (R1 drops its reasoning): the model writes
        # it as the content holds it, minus what the generation prompt already says.
        text = m.get("content") or ""
        for n in range(min(len(text), len(prompt)), 0, -1):
            if prompt.endswith(text[:n]):
                text = text[n:]
                break
        return text + self.eot

    def _after_header(self, turn: str, m: dict[str, Any]) -> str:
        first = (m.get("reasoning_content") or m.get("content") or "").strip()[:16]
        k = turn.find(first) if first else -1
        return turn[k:] if k > 0 else turn

    # --------------------------------------------------------------- sequences
    def encode(self, ex: Chat) -> list[tuple[list[int], list[int]]]:
        """(input_ids, trainable mask) of every sequence the conversation trains."""
        msgs = self._prepare(ex)
        if self.markers:
            try:
                out = self.tok.apply_chat_template(msgs, tools=ex.tools, tokenize=True, return_dict=True,
                                                   return_assistant_tokens_mask=True)
            except Exception as e:
                raise TemplateRefused(f"the model's chat template refuses this conversation: {e}") from None
            marked = [int(x) for x in out["assistant_masks"]]
            return [_trim(list(out["input_ids"]), marked)] if any(marked) else []
        full = self.ids(self.render(msgs, ex.tools, False))
        mask = [0] * len(full)
        extra: list[tuple[list[int], list[int]]] = []
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            prompt = self.render(msgs[:i], ex.tools, True)
            target = self.target(prompt, self.render(msgs[: i + 1], ex.tools, False), m)
            p, t = self.ids(prompt), self.ids(target)
            if full[: len(p)] == p and full[len(p): len(p) + len(t)] == t:
                mask[len(p): len(p) + len(t)] = [1] * len(t)
            else:
                extra.append((p + t, [0] * len(p) + [1] * len(t)))
        return ([_trim(full, mask)] if any(mask) else []) + extra

    def prompt(self, ex: Chat) -> tuple[list[int], dict[str, Any]]:
        """(ids of the history before the last assistant turn, with the generation prompt;
        that turn): what a probe asks the model, and the answer it expects."""
        msgs = self._prepare(ex)
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        return self.ids(self.render(msgs[:last], ex.tools, True)), msgs[last]
