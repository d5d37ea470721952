"""Tests of the chat-template fixtures in templates.py: each behaves as the published template.

Fast (no training): the tokenizer of the session's tiny model is dressed as each family.
"""

from __future__ import annotations

import pytest

from tests.worker import templates as T

SYS, PLAIN, TOOLS = T.SYS, T.PLAIN, T.TOOLS
CONV = [SYS, *T.REASONING]


def render(tok, msgs, **kw) -> str:
    return tok.apply_chat_template(msgs, tokenize=False, **kw)


def test_tables_cover_every_template():
    for table in (T.SPECIAL_TOKENS, T.EOS, T.BOS):
        assert set(table) == set(T.TEMPLATES)
    for fam, plain in T.PLAIN_TOKENS.items():
        assert plain <= set(T.SPECIAL_TOKENS[fam])
    for fam, src in T.TEMPLATES.items():
        assert T.EOS[fam] in T.SPECIAL_TOKENS[fam]
        assert ("bos_token" in src) == (T.BOS[fam] is not None), fam


@pytest.mark.parametrize("family", T.FAMILIES)
def test_make_tokenizer_markers_are_single_tokens(toks, family):
    tok = toks(family)
    assert tok.chat_template == T.TEMPLATES[family]
    assert tok.eos_token == T.EOS[family]
    if T.BOS[family]:
        assert tok.bos_token == T.BOS[family]
    special = set(tok.all_special_tokens)
    for t in T.SPECIAL_TOKENS[family]:
        ids = tok.encode(t, add_special_tokens=False)
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids) == [t], t
        assert (t in special) == (t not in T.PLAIN_TOKENS.get(family, set())), t
    msgs = PLAIN if family in ("gemma", "gemma2", "mistral") else [SYS, *PLAIN]
    text = render(tok, msgs)
    ids = tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]
    assert tok.decode(ids) == text  # renders and round-trips through the tokenizer
    assert T.EOS[family] in text


def test_qwen2_5_injects_default_system_prompt(toks):
    tok = toks("qwen2_5")
    assert render(tok, PLAIN[:2]) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n")
    assert render(tok, [SYS, PLAIN[0]], add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n")
    with_tools = render(tok, PLAIN[:1], tools=TOOLS)
    assert with_tools.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    assert '"name": "get_time"' in with_tools and "<tool_call>" in with_tools
    # Reasoning is not special to Qwen2.5: it stays in every turn.
    assert render(tok, CONV).count("<think>") == 2


@pytest.mark.parametrize("family", ["qwen3", "qwen3_original"])
def test_qwen3_keeps_reasoning_only_after_last_user_query(toks, family):
    tok = toks(family)
    assert render(tok, CONV) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nsay bye\n</think>\n\nGoodbye!<|im_end|>\n")
    prefix = render(tok, CONV[:4], add_generation_prompt=True)
    assert prefix == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert render(tok, CONV).startswith(prefix)
    assert render(tok, CONV[:4], add_generation_prompt=True, enable_thinking=False) == (
        prefix + "<think>\n\n</think>\n\n")
    # The last assistant turn always gets a think block, empty when there is no reasoning;
    # earlier turns never do.
    assert render(tok, PLAIN) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nGoodbye!<|im_end|>\n")
    # reasoning_content, tool calls and the tool role; a tool response does not count as a
    # user query, so the reasoning of the turn after it is kept.
    msgs = [
        {"role": "user", "content": "time?"},
        {"role": "assistant", "content": "", "reasoning_content": "ask the tool",
         "tool_calls": [{"type": "function", "function": {"name": "get_time", "arguments": {}}}]},
        {"role": "tool", "content": "12:00"},
        {"role": "assistant", "content": "Noon.", "reasoning_content": "read it"},
    ]
    text = render(tok, msgs, tools=TOOLS)
    assert text.startswith("<|im_start|>system\n# Tools\n")
    assert ("<|im_start|>assistant\n<think>\nask the tool\n</think>\n\n<tool_call>\n"
            '{"name": "get_time", "arguments": {}}\n</tool_call><|im_end|>\n') in text
    assert "<|im_start|>user\n<tool_response>\n12:00\n</tool_response><|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n<think>\nread it\n</think>\n\nNoon.<|im_end|>\n")


def test_deepseek_r1_drops_reasoning_of_every_assistant_turn(toks):
    tok = toks("deepseek_r1")
    full = render(tok, CONV)
    assert full == (
        "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜>\n\nHello!<｜end▁of▁sentence｜>"
        "<｜User｜>Bye<｜Assistant｜>\n\nGoodbye!<｜end▁of▁sentence｜>")
    prefix = render(tok, CONV[:4], add_generation_prompt=True)
    assert prefix == (
        "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜>\n\nHello!<｜end▁of▁sentence｜>"
        "<｜User｜>Bye<｜Assistant｜><think>\n")
    assert not full.startswith(prefix)  # the prompt opens a <think> the rendered turn lacks
    old = toks("deepseek_r1_original")
    assert render(old, CONV) == full
    assert render(old, CONV[:4], add_generation_prompt=True) == prefix.removesuffix("<think>\n")


def test_llama3_headers(toks):
    tok = toks("llama3")
    assert render(tok, PLAIN[:2]) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>")
    assert render(tok, [SYS, PLAIN[0]], add_generation_prompt=True).endswith(
        "Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    # Tools go into the first user message (tools_in_user_message defaults to true).
    text = render(tok, PLAIN[:2], tools=TOOLS)
    assert "Environment: ipython\n" in text
    assert '"name": "get_time"' in text.split("<|start_header_id|>user<|end_header_id|>")[1]
    assert render(toks("llama3_0"), PLAIN[:2]) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>")


@pytest.mark.parametrize("family", ["gemma2", "gemma"])
def test_gemma2_rejects_system_role(toks, family):
    tok = toks(family)
    with pytest.raises(Exception, match="System role not supported"):
        render(tok, CONV)
    assert render(tok, PLAIN[:1], add_generation_prompt=True) == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n")
    with pytest.raises(Exception, match="Conversation roles must alternate"):
        render(tok, [PLAIN[0], PLAIN[2]])


def test_gemma3_folds_system_into_first_user_turn(toks):
    tok = toks("gemma3")
    assert render(tok, [SYS, *PLAIN[:2]]) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n")
    with pytest.raises(Exception, match="Conversation roles must alternate"):
        render(tok, [PLAIN[0], PLAIN[2]])


def test_mistral_requires_alternating_roles(toks):
    tok = toks("mistral")
    assert render(tok, PLAIN) == "<s>[INST] Hi [/INST]Hello!</s>[INST] Bye [/INST]Goodbye!</s>"
    # No generation prompt: the prompt of a turn ends with [/INST] already.
    assert render(tok, PLAIN[:3], add_generation_prompt=True) == (
        "<s>[INST] Hi [/INST]Hello!</s>[INST] Bye [/INST]")
    with pytest.raises(Exception, match="Conversation roles must alternate user/assistant/user/"):
        render(tok, [PLAIN[0], PLAIN[2], PLAIN[1]])
    with pytest.raises(Exception, match="Conversation roles must alternate"):
        render(tok, [SYS, *PLAIN])  # a system message counts as a non-user first turn


def _masked_spans(tok, msgs) -> list[str]:
    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    spans, cur = [], []
    for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True):
        if m:
            cur.append(i)
        elif cur:
            spans.append(tok.decode(cur))
            cur = []
    if cur:
        spans.append(tok.decode(cur))
    return spans


def test_generation_markers_mask_assistant_tokens(toks):
    tok = toks("generation_markers")
    assert _masked_spans(tok, [SYS, *PLAIN]) == ["\nHello!<|im_end|>\n", "\nGoodbye!<|im_end|>\n"]
    assert render(tok, [SYS, *PLAIN]) == render(toks("qwen2_5"), [SYS, *PLAIN])
    tok3 = toks("qwen3_generation")
    assert _masked_spans(tok3, PLAIN) == [
        "<think>\n\n</think>\n\nHello!<|im_end|>\n", "<think>\n\n</think>\n\nGoodbye!<|im_end|>\n"]
    # Published templates carry no markers: the mask is all zeros.
    assert _masked_spans(toks("qwen2_5"), PLAIN) == []


def test_gen_prompt_differs_from_rendered_header(toks):
    tok = toks("gen_prompt_differs")
    prefix = render(tok, PLAIN[:1], add_generation_prompt=True)
    assert prefix == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    full = render(tok, PLAIN[:2])
    assert full == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    assert not full.startswith(prefix)


def test_no_tools_template_ignores_tools(toks):
    tok = toks("no_tools")
    assert "tools" not in T.TEMPLATES["no_tools"]
    assert render(tok, PLAIN, tools=TOOLS) == render(tok, PLAIN)
    assert render(tok, PLAIN[:1], add_generation_prompt=True) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_save_model_with_template(tiny_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dst = T.save_model_with_template("llama3", tiny_model, tmp_path / "llama3")
    tok = AutoTokenizer.from_pretrained(dst)
    assert tok.chat_template == T.LLAMA3
    assert (tok.eos_token, tok.bos_token) == ("<|eot_id|>", "<|begin_of_text|>")
    model = AutoModelForCausalLM.from_pretrained(dst)
    assert model.get_input_embeddings().weight.shape[0] >= len(tok)
    assert model.config.eos_token_id == tok.eos_token_id
    ids = tok.apply_chat_template(PLAIN, tokenize=True, return_dict=True)["input_ids"]
    assert max(ids) >= len(AutoTokenizer.from_pretrained(tiny_model))  # uses added tokens
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]))
    assert out.logits.shape[:2] == (1, len(ids))
