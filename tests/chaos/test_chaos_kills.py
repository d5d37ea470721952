"""Random SIGKILLs of the daemon and the worker (CI version; bench/chaos.py --campaign kill
runs hundreds)."""

from __future__ import annotations

import pytest

from tests.chaos import kills
from tests.chaos.harness import CI_SCENARIO, chaos_seed

pytestmark = pytest.mark.slow


def test_random_sigkills_lose_nothing_and_equal_the_uninterrupted_run(tmp_path, tiny_model, ci_reference):
    tally = kills.campaign(tiny_model, tmp_path, ci_reference, n=10, per_round=10,
                           seed=chaos_seed(), sc=CI_SCENARIO, log=print)
    summary = tally.summary()
    print(summary)
    assert tally.counts["kills"] == 10
    assert tally.counts["jobs_done"] == CI_SCENARIO.files * tally.counts["rounds"]
    assert tally.violations == [], f"seed {tally.counts['seed']}:\n" + "\n".join(tally.violations[:10])
