"""Fixtures shared by the chaos campaigns' CI versions (tests/chaos/test_*.py)."""

from __future__ import annotations

import pytest

from tests.chaos.harness import CI_SCENARIO, Reference, reference_run


@pytest.fixture(scope="session")
def ci_reference(tiny_model, tmp_path_factory) -> Reference:
    """The CI scenario trained without interruption, once per session."""
    return reference_run(CI_SCENARIO, tiny_model, tmp_path_factory.mktemp("chaos-ref"))
