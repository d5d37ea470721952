"""Security sweep against a live daemon (no training; seconds)."""

from __future__ import annotations

from tests.chaos import security
from tests.chaos.harness import chaos_seed


def test_security_sweep_nothing_gets_through(tmp_path, tiny_model):
    tally = security.campaign(tiny_model, tmp_path, random_names=10, seed=chaos_seed(), log=print)
    print(tally.summary())
    assert tally.counts["probes"] > 200 and tally.counts["daemon_up"] == 1
    assert tally.violations == [], f"seed {tally.counts['seed']}:\n" + "\n".join(tally.violations[:10])
