"""What a training example is: every accepted file format, read into one of three shapes.

The one definition of a valid example (DESIGN.md seams): intake, `trainerd validate`, the
tokenizing stage, the worker, replay and the probe set all call `parse`. Torch-free.

Shapes, whatever the file's format:
- Chat: a conversation (system, user, assistant, tool turns; optional tools), rendered
  with the model's chat template; every assistant turn is trained.
- PromptCompletion: raw text; the completion (+ EOS) is trained.
- Text: raw text; all of it (+ EOS) is trained.

Formats read into them (docs/FORMATS.md; how a file splits into records is
trainerd.records): OpenAI/HF `messages` (content parts,
tool_calls, the tool role, reasoning_content), ShareGPT `conversations`, Alpaca
`instruction/input/output`, `prompt/completion`, `text`, and `[data.map]`, the user's own
key names. The user's file is never rewritten: this only reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from trainerd.config import DataMapConfig
from trainerd.records import (  # noqa: F401  (re-exported: one import for callers)
    MAX_RECORD_BYTES,
    FileKindError,
    FormatError,
    Record,
    decode,
    iter_records,
)

ROLES = ("system", "user", "assistant", "tool")
ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system turn
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "tool": "tool", "observation": "tool",
                  "function_call": "assistant"}
NO_MAP = DataMapConfig()


@dataclass(frozen=True)
class Chat:
    messages: list[dict[str, Any]]  # role, content (str) and, where given, tool_calls,
    tools: list[dict[str, Any]] | None = None  # reasoning_content, name, tool_call_id
    format: str = "messages"

    @property
    def uses_tools(self) -> bool:
        return bool(self.tools) or any(m["role"] == "tool" or m.get("tool_calls") for m in self.messages)


@dataclass(frozen=True)
class PromptCompletion:
    prompt: str
    completion: str
    format: str = "prompt_completion"


@dataclass(frozen=True)
class Text:
    text: str
    format: str = "text"


Example = Chat | PromptCompletion | Text


# ------------------------------------------------------------------ one example
def parse(obj: Any, data_map: DataMapConfig = NO_MAP) -> Example:
    """The example a JSON object holds, in any accepted format; FormatError otherwise.
    Standard formats first, so files in them train beside a `[data.map]` format."""
    if not isinstance(obj, dict):
        raise FormatError(f"expected a JSON object, found {_type(obj)}")
    if "messages" in obj:
        return _chat(obj["messages"], obj.get("tools"), "messages", data_map.role or "role",
                     data_map.content or "content", _opt_str(obj, data_map.system) if data_map.system else None)
    if "conversations" in obj:
        return _sharegpt(obj)
    if "prompt" in obj or "completion" in obj:
        return _prompt_completion(obj, "prompt", "completion")
    if "instruction" in obj or "output" in obj:
        return _alpaca(obj, "instruction", "input", "output", "system")
    if "text" in obj:
        return _text(obj, "text")
    mapped = _mapped(obj, data_map)
    if mapped is not None:
        return mapped
    keys = ", ".join(sorted(map(str, obj))[:6]) or "none"
    hint = " or map your keys in [data.map]" if data_map == NO_MAP else " or the keys named in [data.map]"
    raise FormatError(f"unknown format (keys: {keys}); expected 'messages', 'conversations', "
                      f"'prompt'+'completion', 'instruction'+'output' or 'text'{hint}")


def _mapped(obj: dict, m: DataMapConfig) -> Example | None:
    if m.messages and m.messages in obj:
        system = _opt_str(obj, m.system) if m.system else None
        return _chat(obj[m.messages], obj.get("tools"), m.messages, m.role or "role",
                     m.content or "content", system)
    if (m.prompt and m.prompt in obj) or (m.completion and m.completion in obj):
        return _prompt_completion(obj, m.prompt or "prompt", m.completion or "completion")
    if (m.instruction and m.instruction in obj) or (m.output and m.output in obj):
        return _alpaca(obj, m.instruction or "instruction", m.input or "input", m.output or "output",
                       m.system or "system")
    if m.text and m.text in obj:
        return _text(obj, m.text)
    return None


def _type(x: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null", bool: "true/false",
            int: "a number", float: "a number"}.get(type(x), type(x).__name__)


def _opt_str(obj: dict, key: str) -> str | None:
    v = obj.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise FormatError(f"'{key}' must be a string, found {_type(v)}")
    return v


def _prompt_completion(obj: dict, pk: str, ck: str) -> PromptCompletion:
    for key in (pk, ck):
        if key not in obj:
            raise FormatError(f"'{pk}' and '{ck}' go together; '{key}' is missing")
        if not isinstance(obj[key], str):
            raise FormatError(f"'{key}' must be a string, found {_type(obj[key])}")
    if not obj[ck].strip():
        raise FormatError(f"'{ck}' is empty: there would be nothing to train")
    return PromptCompletion(obj[pk], obj[ck])


def _text(obj: dict, key: str) -> Text:
    if not isinstance(obj[key], str):
        raise FormatError(f"'{key}' must be a string, found {_type(obj[key])}")
    if not obj[key].strip():
        raise FormatError(f"'{key}' is empty")
    return Text(obj[key])


def _alpaca(obj: dict, ik: str, nk: str, ok: str, sk: str) -> Chat:
    """Alpaca: the instruction and its input (joined by a newline, as LLaMA-Factory does)
    are the user turn, the output the assistant turn; `history` ([[q, a], ...]) comes first."""
    for key in (ik, ok):
        if key not in obj:
            raise FormatError(f"'{ik}' and '{ok}' go together (Alpaca format); '{key}' is missing")
        if not isinstance(obj[key], str):
            raise FormatError(f"'{key}' must be a string, found {_type(obj[key])}")
    extra = _opt_str(obj, nk) or ""
    system = _opt_str(obj, sk)
    msgs: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    history = obj.get("history") or []
    if not isinstance(history, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in history):
        raise FormatError("'history' must be a list of [question, answer] string pairs")
    for q, a in history:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    user = obj[ik] + ("\n" + extra if extra else "")
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": obj[ok]}]
    return _chat(msgs, None, "messages", "role", "content", None, fmt="alpaca")


def _sharegpt(obj: dict) -> Chat:
    turns = obj["conversations"]
    if not isinstance(turns, list) or not turns:
        raise FormatError("'conversations' must be a non-empty list")
    msgs: list[dict[str, Any]] = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise FormatError(f"conversations[{i}] must be an object with 'from' and 'value'")
        if "from" not in t and "role" in t:  # conversations in the messages shape
            msgs.append(t)
            continue
        who = t.get("from")
        role = SHAREGPT_ROLES.get(who) if isinstance(who, str) else None
        if role is None:
            raise FormatError(f"conversations[{i}].from is {who!r}; allowed: {', '.join(SHAREGPT_ROLES)}")
        value = t.get("value")
        if who == "function_call":  # LLaMA-Factory: the value is the call as JSON
            msgs.append({"role": "assistant", "content": None, "tool_calls": [_call_from_json(value, i)]})
        else:
            msgs.append({"role": role, "content": value})
    system = _opt_str(obj, "system")  # LLaMA-Factory keeps it beside the turns
    tools = obj.get("tools")
    if isinstance(tools, str):
        tools = _json_value(tools, "'tools'")
    return _chat(msgs, tools, "conversations", "role", "content", system, fmt="sharegpt")


def _json_value(s: str, what: str) -> Any:
    try:
        return json.loads(s)
    except ValueError:
        raise FormatError(f"{what} is a string but not valid JSON") from None


def _call_from_json(value: Any, i: int) -> dict[str, Any]:
    call = _json_value(value, f"conversations[{i}].value") if isinstance(value, str) else value
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise FormatError(f"conversations[{i}] is a function_call whose value is not "
                          "{\"name\": ..., \"arguments\": ...}")
    return {"type": "function", "function": {"name": call["name"], "arguments": call.get("arguments", {})}}


def _content(v: Any, where: str) -> str | None:
    """A message's text: a string, or OpenAI content parts whose text parts are joined by
    newlines (as vLLM's chat API joins them, so training matches serving)."""
    if v is None or isinstance(v, str):
        return v
    if not isinstance(v, list):
        raise FormatError(f"{where} must be a string or a list of content parts, found {_type(v)}")
    texts = []
    for j, part in enumerate(v):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif isinstance(kind, str) and kind != "text":
            raise FormatError(f"{where}[{j}] is an {kind!r} part; trainerd trains text models only: "
                              "remove the part (or describe it in text)")
        else:
            raise FormatError(f"{where}[{j}] must be {{\"type\": \"text\", \"text\": \"...\"}}")
    return "\n".join(texts)


def _tool_calls(v: Any, where: str) -> list[dict[str, Any]]:
    """OpenAI tool calls, with `arguments` as an object: chat templates (Qwen, Llama 3.1)
    render it with `tojson`, so the JSON string OpenAI sends would be quoted twice."""
    if not isinstance(v, list) or not v:
        raise FormatError(f"{where} must be a non-empty list of tool calls")
    out = []
    for j, call in enumerate(v):
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise FormatError(f"{where}[{j}] must be {{\"type\": \"function\", \"function\": "
                              "{\"name\": ..., \"arguments\": {...}}}")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            args = _json_value(args, f"{where}[{j}].function.arguments") if args.strip() else {}
        c = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
        if isinstance(call, dict) and isinstance(call.get("id"), str):
            c["id"] = call["id"]
        out.append(c)
    return out


def _chat(msgs: Any, tools: Any, key: str, rk: str, ck: str, system: str | None,
          fmt: str = "messages") -> Chat:
    if not isinstance(msgs, list) or not msgs:
        raise FormatError(f"'{key}' must be a non-empty list")
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    has_assistant = False
    for i, m in enumerate(msgs):
        where = f"{key}[{i}]"
        if not isinstance(m, dict):
            raise FormatError(f"{where} must be an object with '{rk}' and '{ck}'")
        role = m.get(rk, m.get("role"))
        role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role  # a list: unhashable
        if role not in ROLES:
            raise FormatError(f"{where}.{rk} is {role!r}; allowed: {', '.join(ROLES)}")
        content = _content(m.get(ck, m.get("content")), f"{where}.{ck}")
        msg: dict[str, Any] = {"role": role, "content": content}
        if role == "assistant":
            if m.get("tool_calls") is not None:
                msg["tool_calls"] = _tool_calls(m["tool_calls"], f"{where}.tool_calls")
            reasoning = m.get("reasoning_content")
            if reasoning is not None:
                if not isinstance(reasoning, str):
                    raise FormatError(f"{where}.reasoning_content must be a string, found {_type(reasoning)}")
                msg["reasoning_content"] = reasoning
            if not (content or "").strip() and not msg.get("tool_calls"):
                raise FormatError(f"{where} is an assistant turn with empty content and no tool_calls")
            msg["content"] = content or ""
            has_assistant = True
        elif content is None:
            raise FormatError(f"{where}.{ck} is null; only an assistant turn that calls tools may have no content")
        if role == "tool":
            for k in ("tool_call_id", "name"):
                if isinstance(m.get(k), str):
                    msg[k] = m[k]
        out.append(msg)
    if not has_assistant:
        raise FormatError("no assistant turn: there would be nothing to train")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise FormatError("'tools' must be a list of tool (function) schemas")
    return Chat(out, tools or None, fmt)


def to_json(ex: Example) -> dict[str, Any]:
    """The example in a standard format (what trainerd writes into its own files, such as
    a job's replay.jsonl): parse(to_json(ex)) == ex, whatever format it was read from."""
    if isinstance(ex, Text):
        return {"text": ex.text}
    if isinstance(ex, PromptCompletion):
        return {"prompt": ex.prompt, "completion": ex.completion}
    return {"messages": ex.messages, **({"tools": ex.tools} if ex.tools else {})}


# ------------------------------------------------------------------ sizes
def chars(ex: Example) -> int:
    """Characters the example renders from (before the template adds its markup): the
    bound on its work before tokenizing (see worker.data.char_limit)."""
    if isinstance(ex, Text):
        return len(ex.text)
    if isinstance(ex, PromptCompletion):
        return len(ex.prompt) + len(ex.completion)
    n = sum(len(json.dumps(t)) for t in ex.tools or [])
    for m in ex.messages:
        n += len(m.get("content") or "") + len(m.get("reasoning_content") or "")
        n += sum(len(json.dumps(c)) for c in m.get("tool_calls") or [])
    return n


def cut(ex: Example, limit: int) -> Example | None:
    """The example cut to at most `limit` characters of its text, keeping the beginning
    (as token truncation does); None when nothing trainable would be left."""
    if isinstance(ex, Text):
        return Text(ex.text[:limit])
    if isinstance(ex, PromptCompletion):
        if len(ex.prompt) >= limit:
            return None
        return PromptCompletion(ex.prompt, ex.completion[: limit - len(ex.prompt)])
    out, left = [], limit
    for m in ex.messages:
        n = len(m.get("content") or "") + len(m.get("reasoning_content") or "")
        if n <= left:
            out.append(m)
            left -= n
            continue
        if m["role"] == "assistant" and left > 0 and not m.get("tool_calls"):
            r = (m.get("reasoning_content") or "")[:left]
            out.append({**m, "content": (m.get("content") or "")[: left - len(r)],
                        **({"reasoning_content": r} if "reasoning_content" in m else {})})
        break
    while out and out[-1]["role"] != "assistant":
        out.pop()
    if not out or not any(m["role"] == "assistant" for m in out):
        return None
    return Chat(out, ex.tools, ex.format)
