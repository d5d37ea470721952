"""Fixtures shared by the worker tests."""

import pytest


@pytest.fixture(scope="module")
def tok(tiny_model):
    """The tiny model's tokenizer (with its chat template)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def toks(tiny_model):
    """family -> the tiny model's tokenizer dressed with that family's published template."""
    from tests.worker import templates as T

    cache: dict = {}

    def get(family: str):
        if family not in cache:
            cache[family] = T.make_tokenizer(family, tiny_model)
        return cache[family]

    return get
