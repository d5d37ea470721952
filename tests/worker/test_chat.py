"""Masks token by token, for every model family's published chat template (tests/worker/templates.py).

For each trained span the test checks two things against the template itself: the tokens
before it are exactly the prompt the model sees at inference (the history rendered with
the generation prompt, tokenized), and the trained tokens are exactly the turn the model
must write, up to its end-of-turn marker.
"""

from __future__ import annotations

import pytest

from tests.worker import templates as T
from trainerd.formats import parse
from trainerd.worker.chat import TemplateRefused
from trainerd.worker.data import DataError, encode, tokenize_file

SYS, PLAIN, REASONING = T.SYS, T.PLAIN, T.REASONING
NO_SYSTEM = ("gemma", "gemma2", "mistral")  # their templates raise on a system turn


def spans(ids: list[int], mask: list[int]) -> list[tuple[int, int]]:
    out, start = [], None
    for k, m in enumerate([*mask, 0]):
        if m and start is None:
            start = k
        if not m and start is not None:
            out.append((start, k))
            start = None
    return out


def check(tok, msgs: list[dict], expected: list[str], sequences: int | None = None, tools=None) -> None:
    """Every assistant turn trained once, as `expected` says, after its exact inference prompt."""
    ex = parse({"messages": msgs, **({"tools": tools} if tools else {})})
    seqs = encode(ex, tok)
    turns = [i for i, m in enumerate(ex.messages) if m["role"] == "assistant"]
    prompts = [tok(tok.apply_chat_template(ex.messages[:i], tools=tools, tokenize=False, add_generation_prompt=True),
                   add_special_tokens=False)["input_ids"] for i in turns]
    got: dict[int, str] = {}
    for ids, mask in seqs:
        assert len(ids) == len(mask)
        for a, b in spans(ids, mask):
            # Which turn: the one whose inference prompt is exactly the tokens before the span.
            match = [t for t, p in enumerate(prompts) if ids[:a] == p]
            assert len(match) == 1, f"tokens before a trained span are no turn's prompt: {tok.decode(ids[:a])!r}"
            assert match[0] not in got, "a turn trained twice"
            got[match[0]] = tok.decode(ids[a:b])
    assert [got.get(t) for t in range(len(turns))] == expected
    if sequences is not None:
        assert len(seqs) == sequences


PREFIX_STABLE = ["qwen2_5", "llama3", "llama3_0", "gemma2", "gemma3", "mistral", "no_tools"]


@pytest.mark.parametrize("family", PREFIX_STABLE)
def test_prefix_stable_templates_train_every_turn_in_one_sequence(toks, family):
    tok = toks(family)
    eot = T.EOS[family]
    msgs = PLAIN if family in NO_SYSTEM else [SYS, *PLAIN]
    check(tok, msgs, [f"Hello!{eot}", f"Goodbye!{eot}"], sequences=1)
    check(tok, PLAIN[:2], [f"Hello!{eot}"], sequences=1)


def test_qwen2_5_default_system_prompt_is_masked_not_trained(toks):
    tok = toks("qwen2_5")
    [(ids, mask)] = encode(parse({"messages": PLAIN}), tok)
    masked = tok.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    assert "You are Qwen, created by Alibaba Cloud" in masked


@pytest.mark.parametrize("family", ["qwen3", "qwen3_original"])
def test_qwen3_trains_each_turn_with_its_reasoning_as_at_inference(toks, family):
    """Qwen3 drops an earlier turn's reasoning once the conversation goes on: that turn gets
    its own sequence (history + its reasoning + answer); the last turn trains in the full one."""
    tok = toks(family)
    check(tok, [SYS, *REASONING], ["<think>\ngreet back\n</think>\n\nHello!<|im_end|>",
                                   "<think>\nsay bye\n</think>\n\nGoodbye!<|im_end|>"], sequences=2)
    # reasoning_content is the template's own field: the same tokens as reasoning in content.
    split = [{**m, "content": m["content"].split("</think>\n\n")[1],
              "reasoning_content": m["content"].split("\n")[1]} if m["role"] == "assistant" else m
             for m in REASONING]
    assert encode(parse({"messages": split}), tok) == encode(parse({"messages": REASONING}), tok)


def test_qwen3_without_reasoning_trains_the_empty_think_block_it_generates(toks):
    tok = toks("qwen3")
    check(tok, PLAIN, ["<think>\n\n</think>\n\nHello!<|im_end|>", "<think>\n\n</think>\n\nGoodbye!<|im_end|>"],
          sequences=2)


def test_deepseek_r1_trains_the_reasoning_its_template_drops(toks):
    """R1 distills strip reasoning from every rendered turn and open <think> in the
    generation prompt: each turn trains after that prompt, reasoning and all."""
    tok = toks("deepseek_r1")
    eos = T.EOS["deepseek_r1"]
    check(tok, [SYS, *REASONING], [f"greet back\n</think>\n\nHello!{eos}", f"say bye\n</think>\n\nGoodbye!{eos}"],
          sequences=2)
    check(toks("deepseek_r1_original"), REASONING,
          [f"<think>\ngreet back\n</think>\n\nHello!{eos}", f"<think>\nsay bye\n</think>\n\nGoodbye!{eos}"],
          sequences=2)


def test_generation_prompt_that_differs_from_the_rendered_header(toks):
    """The prompt ends in an empty think block the rendered turn never has: the turn trains
    after the prompt the model really gets."""
    check(toks("gen_prompt_differs"), [SYS, *PLAIN], ["Hello!<|im_end|>", "Goodbye!<|im_end|>"], sequences=2)


@pytest.mark.parametrize("family", ["generation_markers", "qwen3_generation"])
def test_generation_markers_are_trusted(toks, family):
    tok = toks(family)
    [(ids, mask)] = encode(parse({"messages": [SYS, *PLAIN]}), tok)
    trained = [tok.decode(ids[a:b]) for a, b in spans(ids, mask)]
    assert len(trained) == 2 and "Hello!<|im_end|>" in trained[0] and "Goodbye!<|im_end|>" in trained[1]
    assert all("Hi" not in t and "Bye" not in t for t in trained)


def test_reasoning_content_is_folded_for_a_template_without_it(toks):
    msgs = [{"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!", "reasoning_content": "greet back"}]
    check(toks("llama3"), msgs, ["<think>\ngreet back\n</think>\n\nHello!<|eot_id|>"], sequences=1)


TOOLS = T.TOOLS
TOOL_CONV = [
    {"role": "user", "content": "What time is it?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": "{\"tz\": \"UTC\"}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "12:00"},
    {"role": "assistant", "content": "It is noon."},
]


def test_tool_calls_and_tool_turns(toks):
    tok = toks("qwen2_5")
    check(tok, TOOL_CONV, ['<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call><|im_end|>',
                           "It is noon.<|im_end|>"], sequences=1, tools=TOOLS)
    with pytest.raises(TemplateRefused, match="no tool support"):
        encode(parse({"messages": TOOL_CONV, "tools": TOOLS}), toks("no_tools"))


@pytest.mark.parametrize(("family", "msgs", "says"), [
    ("gemma2", [SYS, *PLAIN], "System role not supported"),
    ("mistral", [PLAIN[0], PLAIN[0], PLAIN[1]], "Conversation roles must alternate"),
])
def test_a_template_that_refuses_is_a_data_error_with_its_message_and_line(toks, tmp_path, family, msgs, says):
    import json

    from trainerd.config import TrainConfig

    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"messages": PLAIN}) + "\n" + json.dumps({"messages": msgs}) + "\n")
    with pytest.raises(DataError, match=f"line 2: the model's chat template refuses this conversation: {says}"):
        tokenize_file(p, toks(family), TrainConfig(max_seq_len=512))
