"""The commented trainerd.toml that `trainerd init` writes, generated from the schema
(trainerd.config.schema): every key with its default and its Field description, every
section with its docstring. Nothing here is written by hand, so it cannot drift.

DEFAULT_TOML is a str.format template: {base_model} and {learning_rate} are filled in by
`init`; every other brace is doubled.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

from pydantic import BaseModel

from trainerd.config.schema import Config

WIDTH = 100  # lines of the file, comments included
COMMENT_COL = 29  # where a key's comment starts (after a short `key = value`)
# Values `init` fills in: (section path, key) -> the placeholder's name.
PLACEHOLDERS = {((), "base_model"): "base_model", (("train",), "learning_rate"): "learning_rate"}
PREAMBLE = """\
# trainerd configuration. Every key is optional except base_model; the values shown are
# the defaults. A bad key or value stops `trainerd run` with a list of every problem.
# Each key's comment is its description in the schema (trainerd.config.schema).
"""


def toml_value(v: Any) -> str:
    """A default as TOML (the defaults are booleans, numbers, strings and lists of them)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a TOML basic string, escapes included
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for a default of type {type(v).__name__}: {v!r}")


def _comment(text: str, indent: int = 0) -> list[str]:
    return [" " * indent + "# " + ln for ln in textwrap.wrap(" ".join(text.split()), WIDTH - indent - 2)]


def _key_lines(key: str, value: str, description: str) -> list[str]:
    """`key = value  # description`, the description wrapped under itself."""
    head = f"{key} = {value}"
    col = max(COMMENT_COL, len(head) + 1)
    wrapped = textwrap.wrap(" ".join(description.split()), WIDTH - col - 2) or [""]
    lines = [head.ljust(col) + "# " + wrapped[0]]
    return lines + [" " * col + "# " + ln for ln in wrapped[1:]]


def _section(model: type[BaseModel], path: tuple[str, ...]) -> list[str]:
    """One table (and the tables nested in it): its docstring, then its keys."""
    out: list[str] = []
    keys: list[str] = []
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            nested.append((name, ann))
            continue
        description = field.description or ""
        placeholder = PLACEHOLDERS.get((path, name))
        if placeholder is not None:
            # Filled in by `init`, so of unknown width: the description goes above the key.
            # \x01 \x02 become the braces once every other brace is doubled.
            value = f"\x01{placeholder}\x02"
            keys += _comment(description) + [f'{name} = "{value}"' if name == "base_model" else f"{name} = {value}"]
            continue
        elif field.is_required():
            raise ValueError(f"{'.'.join((*path, name))} is required but has no placeholder")
        else:
            default = field.get_default(call_default_factory=True)
            if default is None:  # unset means "not used": show an example, commented out
                example = (field.examples or [""])[0]
                keys += _key_lines(f"# {name}", toml_value(example), description)
                continue
            value = toml_value(default)
        keys += _key_lines(name, value, description)
    if path and keys:  # a table of tables only (such as [data]) needs no header of its own
        out += [""] + (_comment(model.__doc__) if model.__doc__ else []) + [f"[{'.'.join(path)}]"]
    out += keys
    for name, sub in nested:
        out += _section(sub, (*path, name))
    return out


def render() -> str:
    """The template: the generated file with {base_model} and {learning_rate} left open."""
    text = PREAMBLE + "\n" + "\n".join(_section(Config, ())) + "\n"
    return text.replace("{", "{{").replace("}", "}}").replace("\x01", "{").replace("\x02", "}")


DEFAULT_TOML = render()
