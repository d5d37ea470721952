import io
import json

from hypothesis import example, given, settings
from hypothesis import strategies as st

from trainerd.records import BOM
from trainerd.validate import MAX_ERRORS, check_file, check_stream


def v(text: bytes):
    return check_stream(io.BytesIO(text), name="t.jsonl")


def line(obj) -> bytes:
    return (json.dumps(obj) + "\n").encode()


GOOD_MSG = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                         {"role": "assistant", "content": "a"}], "metadata": {"kept": True}}


def test_three_formats_accepted_and_extra_keys_kept():
    r = v(line(GOOD_MSG) + line({"prompt": "p", "completion": "c"}) + line({"text": "t", "id": 3}))
    assert r.ok and r.examples == 3
    assert dict(r.formats) == {"messages": 1, "prompt_completion": 1, "text": 1}


def test_bom_crlf_and_blank_lines():
    r = v(b"\xef\xbb\xbf" + line({"text": "a"}).replace(b"\n", b"\r\n") + b"\r\n\n  \n" + line({"text": "b"}))
    assert r.ok and r.examples == 2


def test_each_bad_line_reports_its_number_and_reason():
    data = (line({"text": "ok"})
            + b"\xff\xfe bad utf8\n"
            + b'{"text": "unterminated\n'
            + b"[1, 2]\n"
            + line({"foo": 1})
            + line({"messages": [{"role": "robot", "content": "x"}]})
            + line({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}]})
            + line({"messages": [{"role": "user", "content": "x"}]})
            + line({"prompt": "p"})
            + line({"text": 5}))
    r = v(data)
    assert not r.ok and r.examples == 1
    got = {e.line: e.reason for e in r.errors}
    assert "UTF-8" in got[2]
    assert "invalid JSON" in got[3]
    assert "JSON object" in got[4]
    assert "unknown format" in got[5]
    assert "'robot'" in got[6] and "allowed" in got[6]
    assert "empty content" in got[7]
    assert "no assistant turn" in got[8]
    assert "'completion' is missing" in got[9]
    assert "must be a string" in got[10]
    assert "line 2:" in r.reason() and "deliver the file again" in r.reason()


def test_empty_and_blank_only_files_have_no_examples(tmp_path):
    for content in (b"", b"\n\n   \n"):
        p = tmp_path / "e.jsonl"
        p.write_bytes(content)
        r = check_file(p)
        assert not r.ok and "no examples" in r.reason()


def test_identical_errors_are_grouped_and_the_list_is_capped_but_counted():
    r = v(line({"text": "ok"}) + line({"text": 5}) * 18 + line({"text": "ok"}) + line({"text": 5}))
    assert r.error_count == 19 and [str(e) for e in r.errors] == [
        "lines 2–19: 'text' must be a string, found a number", "line 21: 'text' must be a string, found a number"]
    assert "19 bad line(s): lines 2–19:" in r.reason()
    # Different reasons are kept apart, the first MAX_ERRORS groups listed, every line counted.
    r = v(b"".join(line({"text": i}) + b"nope\n" for i in range(50)))
    assert len(r.errors) == MAX_ERRORS and r.error_count == 100 and "(and 80 more)" in r.reason()


def test_unreadable_file_is_a_file_error(tmp_path):
    r = check_file(tmp_path / "missing.jsonl")
    assert not r.ok and "cannot read" in r.reason()


MAGIC = {b"\x1f\x8b": "gzip", b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16", b"PK\x03\x04": "zip"}


def expected_verdict(data: bytes) -> tuple[str | None, int, set[int], set[int]]:
    """The verdict on a .jsonl from the rules as documented, read the simple way (the whole
    buffer at once): (the file error's key word, examples, bad lines, blank lines). A file
    is refused whole by its first bytes (compression, UTF-16, zip, or a JSON array after an
    optional BOM and whitespace); else lines end at \\n (a \\r before it is dropped, a BOM
    before the first), whitespace-only lines are skipped, and every other line must be one
    JSON value that trainerd.formats.parse accepts."""
    from trainerd.formats import parse

    for magic, kind in MAGIC.items():
        if data.startswith(magic):
            return kind, 0, set(), set()
    if data[:64].removeprefix(BOM).lstrip().startswith(b"["):
        return "JSON array", 0, set(), set()
    pieces = data.split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()  # the end of the last line, not a line
    examples, bad, blank = 0, set(), set()
    for n, raw in enumerate(pieces, 1):
        raw = (raw.removeprefix(BOM) if n == 1 else raw).rstrip(b"\r")
        if not raw.strip():
            blank.add(n)
            continue
        try:
            parse(json.loads(raw.decode("utf-8")))
        except (ValueError, RecursionError):  # not UTF-8, not JSON, or not an example
            bad.add(n)
            continue
        examples += 1
    return None, examples, bad, blank


def assert_verdict(data: bytes) -> None:
    """check_stream gives exactly the verdict expected_verdict derives, line by line."""
    r = v(data)
    kind, examples, bad, blank = expected_verdict(data)
    if kind is not None:
        assert r.file_error and kind in r.file_error and not r.ok, (kind, r.file_error)
        return
    assert r.file_error is None, r.file_error
    assert (r.examples, r.error_count) == (examples, len(bad))
    assert r.ok == (not bad and examples > 0)
    assert all(e.line in bad and e.reason for e in r.errors)
    # A group runs from its first line to its last with the same reason; blank lines
    # between are inside its range. Uncapped, the groups cover exactly the bad lines.
    covered = {n for e in r.errors for n in range(e.line, (e.last or e.line) + 1)}
    assert covered - blank <= bad
    if len(r.errors) < MAX_ERRORS:
        assert covered - blank == bad


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_get_the_verdict_their_lines_call_for(data):
    assert_verdict(data)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"", b"  ", b"\r", b"\xef\xbb\xbf", b"{", b"[1]", b"\xff", b'{"text": "a"}',
                                 b'{"prompt": "p", "completion": "c"}', b'{"text": 3}', b"null"]), max_size=30))
def test_mixed_good_bad_and_blank_lines_get_the_exact_verdict(pieces):
    """Random bytes are nearly always bad; these lines are good as often as not."""
    assert_verdict(b"\n".join(pieces))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["messages", "role", "content", "prompt", "completion", "text", "x"]), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(json_values, min_size=1, max_size=20))
@example([{"messages": [{"role": []}]}])  # once crashed check_stream (an unhashable role)
def test_random_json_lines_are_accepted_or_have_a_reason_with_a_line(values):
    r = v(b"".join(line(x) for x in values))
    if isinstance(values[0], list):  # a .jsonl that starts like a JSON array is named as one
        assert r.file_error and "JSON array" in r.file_error
        return
    assert r.examples + r.error_count == len(values)
    assert_verdict(b"".join(line(x) for x in values))


def test_a_giant_line_is_an_error_read_in_bounded_memory(monkeypatch):
    import trainerd.records as F

    monkeypatch.setattr(F, "MAX_RECORD_BYTES", 1000)
    r = v(line({"text": "a"}) + b'{"text": "' + b"x" * 5000 + b'"}\n' + line({"text": "b"}))
    assert r.examples == 2 and r.error_count == 1
    assert r.errors[0].line == 2 and "longer than" in r.errors[0].reason
