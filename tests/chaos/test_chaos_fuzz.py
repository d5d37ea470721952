"""Fuzzed bad files dropped into a running daemon with good ones (CI: 100 bad, 2 good;
bench/chaos.py --campaign fuzz --n 1000 runs the full count)."""

from __future__ import annotations

import pytest

from tests.chaos import fuzz
from tests.chaos.harness import chaos_seed

pytestmark = pytest.mark.slow


def test_fuzzed_files_are_rejected_with_a_line_and_good_ones_train(tmp_path, tiny_model):
    tally = fuzz.campaign(tiny_model, tmp_path, n_bad=100, n_good=2, seed=chaos_seed(), log=print)
    assert tally.counts["rejected_ok"] == 100 and tally.counts["good_trained"] == 2
    assert tally.violations == [], f"seed {tally.counts['seed']}:\n" + "\n".join(tally.violations[:10])


def test_every_generated_file_is_bad_and_the_kinds_are_all_there():
    """The generator itself: what it calls bad, the validator rejects, on the line it names."""
    import io

    from trainerd.validate import check_stream

    bads = fuzz.generate(300, seed=1)
    assert {b.kind for b in bads} == set(fuzz.strategies())
    for b in bads:
        r = check_stream(io.BytesIO(b.data), name="fuzz.jsonl")
        assert not r.ok, b
        if b.data.removeprefix(fuzz.BOM).lstrip().startswith(b"["):
            assert r.file_error and "JSON array" in r.file_error
        elif b.line is not None:
            assert any(e.line <= b.line <= (e.last or e.line) for e in r.errors), (b.kind, r.errors[:3])
