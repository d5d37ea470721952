"""SIGTERM once or twice at random points, then a restart (CI: 3 points)."""

from __future__ import annotations

import pytest

from tests.chaos import signals
from tests.chaos.harness import CI_SCENARIO, chaos_seed

pytestmark = pytest.mark.slow


def test_sigterm_at_random_points_exits_0_and_resumes_exactly(tmp_path, tiny_model, ci_reference):
    tally = signals.campaign(tiny_model, tmp_path, ci_reference, points=3, seed=chaos_seed(), sc=CI_SCENARIO,
                             log=print)
    assert tally.counts["points"] >= 1
    assert tally.violations == [], f"seed {tally.counts['seed']}:\n" + "\n".join(tally.violations[:10])
