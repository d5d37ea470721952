"""Security sweep against a live daemon (no training; seconds)."""

from __future__ import annotations

import random

from tests.chaos import security
from tests.chaos.harness import chaos_seed


def test_security_sweep_nothing_gets_through(tmp_path, tiny_model):
    tally = security.campaign(tiny_model, tmp_path, random_names=10, seed=chaos_seed(), log=print)
    print(tally.summary())
    # The campaign's first draws from its seed are the names (random ones are kept only
    # when they climb out or are absolute): the same list again, to count the probes.
    names = security.traversal_names(random.Random(tally.counts["seed"]), 10)
    assert tally.counts["probes"] == (
        2  # listening: the default host, the sockets
        + len(security.CONTROL) * 5 + 3  # 5 wrong tokens per control action; upload; wish kept; right token
        + 3  # the 2 GB upload with and without the token; no temp file kept
        + len(names) * (1 + 4 + 7) + 1  # per name: upload, 4 GETs, 7 CLI commands; nothing outside changed
        + 4 + 2 + 1  # symlinks: 4 links rejected, 2 targets untouched, nothing trained
    ), tally.summary()
    assert tally.counts["daemon_up"] == 1
    assert tally.violations == [], f"seed {tally.counts['seed']}:\n" + "\n".join(tally.violations[:10])
