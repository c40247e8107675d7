"""Fixtures for the checkpoint gather tests: tiny seeded LLaMAs, tied and untied."""

from __future__ import annotations

from pathlib import Path

import pytest
from gather_helpers import NUM_LAYERS


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[bool, Path]:
    """``{tied: checkpoint dir}`` for an untied and a tied tiny LLaMA."""
    from models.tiny import build_tiny_llama

    root = tmp_path_factory.mktemp("gather-tiny")
    return {
        tied: build_tiny_llama(
            root / f"tiny-tied-{tied}", seed=3, num_layers=NUM_LAYERS, tie_word_embeddings=tied
        )
        for tied in (False, True)
    }
