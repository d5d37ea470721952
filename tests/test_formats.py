"""Every accepted format reads into the same shapes; files that are not JSONL are named."""

from __future__ import annotations

import gzip
import io
import json
import os
import threading

import pytest

from trainerd.config import DataMapConfig
from trainerd.formats import Chat, FormatError, PromptCompletion, Text, parse, to_json
from trainerd.validate import check_file, check_stream

ANSWER = {"role": "assistant", "content": "4"}


def test_openai_content_parts_tool_calls_and_reasoning():
    ex = parse({"messages": [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "2+2?"}, {"type": "text", "text": "quick"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 2}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
        {"role": "assistant", "content": "4", "reasoning_content": "2 plus 2"},
    ], "tools": [{"type": "function", "function": {"name": "add"}}]})
    assert isinstance(ex, Chat) and ex.uses_tools
    m = ex.messages
    assert m[0] == {"role": "system", "content": "be brief"}
    assert m[1]["content"] == "2+2?\nquick"  # text parts joined as vLLM joins them
    assert m[2]["content"] == "" and m[2]["tool_calls"][0]["function"]["arguments"] == {"a": 2, "b": 2}
    assert m[3]["tool_call_id"] == "c1" and m[4]["reasoning_content"] == "2 plus 2"
    assert parse(to_json(ex)) == ex


@pytest.mark.parametrize(("row", "says"), [
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, ANSWER]},
     r"messages\[0\].content\[0\] is an 'image_url' part; trainerd trains text models only"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}, ANSWER]}, "'input_audio' part"),
    ({"messages": [{"role": "user", "content": None}, ANSWER]}, "only an assistant turn that calls tools"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]},
     "empty content and no tool_calls"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None,
                                                        "tool_calls": [{"function": {"arguments": "{}"}}]}]},
     r"tool_calls\[0\] must be"),
    ({"conversations": [{"from": "robot", "value": "x"}]}, "conversations\\[0\\].from is 'robot'"),
    ({"instruction": "do"}, "'output' is missing"),
])
def test_bad_examples_say_what_and_where(row, says):
    with pytest.raises(FormatError, match=says):
        parse(row)


def test_sharegpt_and_alpaca():
    ex = parse({"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "hi"},
                                  {"from": "function_call", "value": "{\"name\": \"f\", \"arguments\": {}}"},
                                  {"from": "observation", "value": "ok"}, {"from": "gpt", "value": "done"}]})
    assert [m["role"] for m in ex.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert ex.format == "sharegpt" and ex.messages[2]["tool_calls"][0]["function"]["name"] == "f"
    ex = parse({"instruction": "Translate", "input": "chat", "output": "cat", "system": "You translate.",
                "history": [["hi", "hello"]]})
    assert ex.format == "alpaca" and [(m["role"], m["content"]) for m in ex.messages] == [
        ("system", "You translate."), ("user", "hi"), ("assistant", "hello"),
        ("user", "Translate\nchat"), ("assistant", "cat")]
    assert parse({"instruction": "Say hi", "output": "hi"}).messages[0] == {"role": "user", "content": "Say hi"}


def test_a_column_map_adds_a_format_beside_the_standard_ones():
    m = DataMapConfig(prompt="user_prompt", completion="expected_answer")
    seed_row = {"skill": "arith", "user_prompt": "2+2=", "expected_answer": " 4", "metadata": {"level": 1}}
    assert parse(seed_row, m) == PromptCompletion("2+2=", " 4")
    assert parse({"text": "still fine"}, m) == Text("still fine")
    with pytest.raises(FormatError, match="map your keys in \\[data.map\\]"):
        parse(seed_row)  # without the map it is an unknown format, said so
    turns = DataMapConfig(messages="dialog", role="speaker", content="said", system="persona")
    ex = parse({"persona": "p", "dialog": [{"speaker": "user", "said": "q"}, {"speaker": "assistant", "said": "a"}]},
               turns)
    assert [(x["role"], x["content"]) for x in ex.messages] == [("system", "p"), ("user", "q"), ("assistant", "a")]


def _lines(*rows) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def test_json_arrays_are_read_as_streams_with_element_numbers(tmp_path):
    good = {"instruction": "a", "output": "b"}
    p = tmp_path / "alpaca.json"
    p.write_text(json.dumps([good, {"text": "t"}, {"instruction": 3, "output": "x"}, good], indent=2))
    r = check_file(p)
    assert r.examples == 3 and r.unit == "element" and r.formats == {"alpaca": 2, "text": 1}
    assert [str(e) for e in r.errors] == ["element 3: 'instruction' must be a string, found a number"]
    # A big array is read in pieces (1 MB reads), not as one document.
    big = tmp_path / "big.json"
    big.write_text("[" + ",\n".join(json.dumps({"text": "x" * 1000 + str(i)}) for i in range(3000)) + "]")
    assert check_file(big).ok and check_file(big).examples == 3000
    (tmp_path / "lines.json").write_bytes(_lines(good, good))  # a .json holding JSONL is JSONL
    assert check_file(tmp_path / "lines.json").ok and check_file(tmp_path / "lines.json").unit == "line"
    (tmp_path / "tail.json").write_text(json.dumps([good]) + "\n{\"text\": 1}\n")
    assert "after the JSON array" in check_file(tmp_path / "tail.json").reason()
    (tmp_path / "cut.json").write_text(json.dumps([good, good])[:-10])
    assert "cut off" in check_file(tmp_path / "cut.json").reason()


@pytest.mark.parametrize(("name", "data", "says"), [
    ("a.jsonl", gzip.compress(_lines({"text": "t"})), "gzip-compressed"),
    ("a.jsonl", "\ufeff".encode("utf-16-le") + '{"text": "t"}\n'.encode("utf-16-le"), "UTF-16"),
    ("a.jsonl", json.dumps([{"text": "t"}]).encode(), "a JSON array, not one JSON object per line"),
    ("a.txt", _lines({"text": "t"}), "only .jsonl files"),
])
def test_files_that_are_not_jsonl_are_named(tmp_path, name, data, says):
    p = tmp_path / name
    p.write_bytes(data)
    r = check_file(p)
    assert not r.ok and says in r.reason() and r.error_count == 0  # one sentence, not one error per line


def test_validate_on_a_fifo_answers_at_once(tmp_path):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    done: list = []
    t = threading.Thread(target=lambda: done.append(check_file(fifo)), daemon=True)
    t.start()
    t.join(10)
    assert done and "not a regular file" in done[0].reason()


def test_stream_with_a_map_counts_formats():
    m = DataMapConfig(prompt="user_prompt", completion="expected_answer")
    r = check_stream(io.BytesIO(_lines({"user_prompt": "q", "expected_answer": "a"}, {"text": "t"})), data_map=m)
    assert r.ok and r.formats == {"prompt_completion": 1, "text": 1}
