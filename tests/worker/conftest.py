"""Fixtures shared by the worker tests."""

import pytest


@pytest.fixture(scope="module")
def tok(tiny_model):
    """The tiny model's tokenizer (with its chat template)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)
