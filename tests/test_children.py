"""trainerd.children between two real processes: progress and the result arrive, a stray
print cannot garble them, and a child that dies without a sentence is still explained."""

from __future__ import annotations

import sys

import pytest

from trainerd import children

CHILD = """
import sys
from trainerd.children import Channel
c = Channel()
print("a library's own print")  # after Channel: goes to stderr, not into the records
c.progress(1, 2)
c.progress(2, 2)
if sys.argv[1] == "ok":
    c.result({"answer": 42})
else:
    c.error("the base dir is not writable; fix its permissions")
    sys.exit(5)
"""


def test_progress_then_the_result_and_stray_prints_go_to_stderr(capfd):
    seen: list[tuple[int, int]] = []
    got = children.run([sys.executable, "-c", CHILD, "ok"], "the test child",
                       on_progress=lambda d, t: seen.append((d, t)))
    assert got == {"answer": 42} and seen == [(1, 2), (2, 2)]
    assert "a library's own print" in capfd.readouterr().err


def test_the_childs_sentence_and_exit_status_reach_the_caller():
    with pytest.raises(children.ChildFailed) as e:
        children.run([sys.executable, "-c", CHILD, "refuse"], "the test child")
    assert str(e.value) == "the base dir is not writable; fix its permissions" and e.value.exit_code == 5


def test_a_child_that_dies_without_a_record_is_named_with_its_status(capfd):
    with pytest.raises(children.ChildFailed) as e:
        children.run([sys.executable, "-c", "import sys; print('not json'); sys.exit(3)"], "building the thing")
    assert e.value.exit_code == 3
    assert str(e.value).startswith("building the thing failed: its process exited with status 3")
    assert "not json" in capfd.readouterr().err  # not ours: passed on to the person
