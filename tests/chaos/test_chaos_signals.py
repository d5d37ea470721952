"""SIGTERM once or twice at random points, then a restart (CI: 3 points)."""

from __future__ import annotations

import pytest

from tests.chaos import signals
from tests.chaos.harness import CI_SCENARIO, chaos_seed

pytestmark = pytest.mark.slow


def test_sigterm_at_random_points_exits_0_and_resumes_exactly(tmp_path, tiny_model, ci_reference):
    tally = signals.campaign(tiny_model, tmp_path, ci_reference, points=3, seed=chaos_seed(), sc=CI_SCENARIO,
                             log=print)
    c = tally.counts
    # 3 points, fewer only when the queue was finished before the third.
    assert c["points"] == 3 or (c["points"] < 3 and c["done_before_restart"] == CI_SCENARIO.files), c
    # Each point is one SIGTERM'd daemon: one exit status and one phase tallied.
    assert sum(v for k, v in c.items() if k.startswith("exit:")) == c["points"]
    assert sum(v for k, v in c.items() if k.startswith(("warm:", "cold:"))) == c["points"]
    # Every warm stop that caught a worker training checkpointed within one step + one
    # save (+ the relay allowance) of the signal.
    assert c.get("warm_stops_judged", 0) <= c.get("warm:training", 0)
    assert c.get("warm_over_bound", 0) == 0, tally.summary()
    assert tally.violations == [], f"seed {tally.counts['seed']}:\n" + "\n".join(tally.violations[:10])
