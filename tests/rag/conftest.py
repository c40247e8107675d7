"""Fixtures of the RAG tests: small hand-written rigs and one indexed copy of the sample rig.

The embedding model is loaded once per process (rag.embedding caches it); store directories
live under pytest's tmp paths. No fixture touches the network (HF_HUB_OFFLINE is set here too).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from rag_helpers import SAMPLE_RIG, make_small_rig

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def small_rig(tmp_path: Path) -> Path:
    return make_small_rig(tmp_path / "testrig")


@pytest.fixture(scope="session")
def embedder():
    from rag.embedding import MiniLMEmbeddingFunction

    return MiniLMEmbeddingFunction()


@pytest.fixture(scope="session")
def sample_store_dir(tmp_path_factory: pytest.TempPathFactory, embedder) -> Path:
    """The sample rig indexed once per test session (a copy, so the original is never touched)."""
    from rag.indexer import index_rig
    from rag.store import RagStore

    if not SAMPLE_RIG.is_dir():
        pytest.fail(f"sample rig missing at {SAMPLE_RIG}")
    base = tmp_path_factory.mktemp("sample")
    rig = shutil.copytree(SAMPLE_RIG, base / "gastown-rig")
    store_dir = base / "store"
    with RagStore(store_dir, embedder=embedder, writable=True) as store:
        index_rig(store, rig, rig="gastown")
    return store_dir


@pytest.fixture
def sample_store(sample_store_dir: Path, embedder):
    from rag.store import RagStore

    with RagStore(sample_store_dir, embedder=embedder) as store:
        yield store
