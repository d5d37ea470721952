"""How a data file is read: records (JSONL lines or JSON array elements) with bounded memory.

The file's layout, not what an example is (that is trainerd.formats): `.jsonl` is one
JSON value per line; a `.json` file holds a JSON array, read as a stream, or JSONL. A file
that is neither (gzip, UTF-16, zip, a `.jsonl` holding an array) raises FileKindError
with one sentence saying what it is. Torch-free.
"""

from __future__ import annotations

import codecs
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MAX_RECORD_BYTES = 64 * 1024 * 1024  # one example this big is a mistake, not data
BOM = b"\xef\xbb\xbf"


class FormatError(ValueError):
    """Why one record is not a trainable example (a sentence; the caller adds the line)."""


@dataclass
class Record:
    number: int  # line number (JSONL) or element number (JSON array), from 1
    raw: bytes | None  # None: over MAX_RECORD_BYTES (skipped, bounded memory)
    unit: str = "line"
    value: Any = None  # already parsed (array elements); else decode() parses raw


class FileKindError(ValueError):
    """The whole file is not something trainerd reads (gzip, UTF-16, ...)."""


def sniff(head: bytes, name: str = "") -> str:
    """'jsonl' or 'array' from a file's first bytes, or FileKindError naming what it is."""
    if head.startswith(b"\x1f\x8b"):
        raise FileKindError("a gzip-compressed file; decompress it (gunzip) and deliver the .jsonl inside")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise FileKindError("UTF-16 text; save it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8) and deliver it again")
    if head.startswith(b"PK\x03\x04"):
        raise FileKindError("a zip archive; unpack it and deliver the .jsonl files inside")
    stripped = head.removeprefix(BOM).lstrip()
    if stripped.startswith(b"["):
        if name.endswith(".jsonl"):
            raise FileKindError("a JSON array, not one JSON object per line; rename it to .json "
                                "(arrays are read from .json files) or write one object per line")
        return "array"
    return "jsonl"


def iter_records(f: Any, name: str = "") -> Iterator[Record]:
    """Every record of a binary file object, in order, with bounded memory: lines of a JSONL
    file, or elements of a top-level JSON array (as Alpaca and LLaMA-Factory ship), read as a
    stream. Raises FileKindError for what is neither."""
    if not hasattr(f, "peek"):
        f = io.BufferedReader(f)  # e.g. a BytesIO: sniffing needs to look ahead
    kind = sniff(f.peek(64)[:64], name)
    yield from (_array_records(f) if kind == "array" else _lines(f))


def _lines(f: Any) -> Iterator[Record]:
    n = 0
    while True:
        raw = f.readline(MAX_RECORD_BYTES + 1)
        if not raw:
            return
        n += 1
        if len(raw) > MAX_RECORD_BYTES:
            while raw and not raw.endswith(b"\n"):
                raw = f.readline(1 << 20)
            yield Record(n, None)
            continue
        if n == 1 and raw.startswith(BOM):
            raw = raw[len(BOM):]
        yield Record(n, raw.rstrip(b"\r\n"))


_DECODER = json.JSONDecoder()


def _array_records(f: Any) -> Iterator[Record]:
    """Elements of `[ {...}, {...} ]` one at a time, each parsed by json's C scanner from a
    buffer that holds at most one element plus a read chunk: a 10 GB array needs no more
    memory than its largest element. Bytes that are not UTF-8 are carried through
    (surrogateescape) so the element that holds them is the one reported."""
    utf8 = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    buf = utf8.decode(f.read(1 << 16)).removeprefix("\ufeff").lstrip()
    assert buf.startswith("[")
    buf, pos, n, eof = buf[1:], 0, 0, False

    def fill() -> bool:
        nonlocal buf, pos
        more = f.read(1 << 20)
        buf, pos = buf[pos:] + utf8.decode(more, final=not more), 0
        return bool(more)

    while True:
        while True:  # skip separators
            while pos < len(buf) and buf[pos] in " \t\r\n,":
                pos += 1
            if pos < len(buf) or eof:
                break
            eof = not fill()
        if pos >= len(buf):
            raise FileKindError("the JSON array is not closed with ']' (file truncated?)")
        if buf[pos] == "]":
            if (buf[pos + 1:] + utf8.decode(f.read(1 << 16), final=True)).strip():
                raise FileKindError("there is text after the JSON array's closing ']'; "
                                    "a .json file holds one array of examples, or JSONL")
            return
        n += 1
        while True:
            try:
                value, end = _DECODER.raw_decode(buf, pos)
                break
            except json.JSONDecodeError as e:
                # Cut by the read (the error is at the buffer's end, or in a string still
                # open there): read on. Anything else is a broken array.
                if not eof and (e.pos >= len(buf) - 8 or e.msg.startswith("Unterminated string")):
                    if len(buf) - pos > MAX_RECORD_BYTES:
                        raise FileKindError(f"element {n} of the JSON array is longer than "
                                            f"{MAX_RECORD_BYTES >> 20} MB; one example per element, please") from None
                    eof = not fill()
                    continue
                if eof and e.pos >= len(buf) - 8:
                    raise FileKindError(f"element {n} of the JSON array is cut off (file truncated?)") from None
                raise FileKindError(f"element {n} of the JSON array is not valid JSON ({e.msg}); "
                                    "the rest of the array cannot be read") from None
        raw = buf[pos:end].encode("utf-8", "surrogateescape")
        yield Record(n, raw, "element", value)
        pos = end


def decode(rec: Record) -> Any:
    """The JSON value of a record; FormatError with the reason when it is not JSON."""
    if rec.raw is None:
        raise FormatError(f"longer than {MAX_RECORD_BYTES >> 20} MB; one example per {rec.unit}, please")
    if rec.value is not None:
        try:
            rec.raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise FormatError(f"invalid UTF-8 at byte {e.start}") from None
        return rec.value
    try:
        text = rec.raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"invalid UTF-8 at byte {e.start}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise FormatError(f"invalid JSON: {e.msg} at column {e.colno}") from None
    except RecursionError:
        raise FormatError("invalid JSON: nested too deeply") from None
