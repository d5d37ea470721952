"""The commented trainerd.toml `init` writes is generated from the schema: parsed back, it
is every default; every key of every section is in it, with its description."""

from __future__ import annotations

import tomllib
from typing import Any

from pydantic import BaseModel

from trainerd.config import DEFAULT_TOML, Config, load_config
from trainerd.config.default import toml_value


def leaves(model: type[BaseModel], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str, Any]]:
    """(table path, key, field) of every non-table field, nested tables included."""
    out = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out += leaves(field.annotation, (*path, name))
        else:
            out.append((path, name, field))
    return out


def comment_of(text: str, table: tuple[str, ...], key: str) -> tuple[str, str]:
    """The line of `key` in `table` (commented out or not) and the comment that describes
    it: after it on its line and the aligned lines below, or on the lines just above."""
    lines = text.splitlines()
    start = lines.index(f"[{'.'.join(table)}]") + 1 if table else 0
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
    for i in range(start, end):
        head = lines[i].split("#")[1].strip() if lines[i].startswith("# ") else lines[i]
        if head.startswith(f"{key} = "):
            break
    else:
        raise AssertionError(f"{'.'.join((*table, key))} is not in the generated file")
    line = lines[i]
    body = line[2:] if line.startswith("# ") else line
    if " # " in body:  # inline: this line and the aligned continuation lines
        col = line.index("# ", len(line) - len(body) + body.index(" # "))
        parts = [line[col + 2:]]
        for nxt in lines[i + 1:end]:
            if nxt[:col].strip() or not nxt[col:].startswith("# "):
                break
            parts.append(nxt[col + 2:])
    else:  # above the key
        parts = []
        for prev in reversed(lines[start:i]):
            if not prev.startswith("# ") or " = " in prev:
                break
            parts.insert(0, prev[2:])
    return line, " ".join(parts)


def test_the_generated_file_parses_back_to_the_defaults(tmp_path):
    p = tmp_path / "trainerd.toml"
    p.write_text(DEFAULT_TOML.format(base_model="some/model", learning_rate="2e-4"))
    cfg = load_config(p)
    assert cfg.model_dump() == Config(base_model="some/model").model_dump()


def test_every_key_appears_with_its_default_and_its_description():
    text = DEFAULT_TOML.format(base_model="some/model", learning_rate="0.0002")
    data = tomllib.loads(text)
    fields = leaves(Config)
    assert len(fields) > 80  # every section's keys, not just a few
    for table, key, field in fields:
        where = ".".join((*table, key))
        assert field.description, f"{where} has no description in the schema: add one to its Field"
        line, described = comment_of(text, table, key)
        assert " ".join(described.split()) == " ".join(field.description.split()), where
        if field.is_required():
            assert data[key] == "some/model", where
            continue
        default = field.get_default(call_default_factory=True)
        value = data
        for t in table:
            value = value.get(t, {})
        if default is None:  # commented out, with an example of its value
            assert key not in value and line.startswith(f"# {key} = "), where
        else:
            assert value[key] == default, where
            assert line.startswith(f"{key} = {toml_value(default)}"), where


def test_a_field_added_to_the_schema_appears_without_editing_the_file():
    """What the generator does with a new section and key, shown on a model of its own."""
    from pydantic import Field

    from trainerd.config import default
    from trainerd.config.schema import _Section

    class Extra(_Section):
        """A section nobody wrote a template line for."""

        knob: int = Field(7, description="turns things {up}")

    lines = default._section(Extra, ("extra",))
    assert lines == ["", "# A section nobody wrote a template line for.", "[extra]",
                     "knob = 7                     # turns things {up}"]
