"""The local embedding model: shape, normalisation, batching, semantics, ChromaDB registration."""

from __future__ import annotations

import numpy as np
import torch
from chromadb.utils.embedding_functions import known_embedding_functions

from rag.embedding import EMBEDDING_DIM, EMBEDDING_FUNCTION_NAME, MiniLMEmbeddingFunction


def test_unit_vectors_and_batch_invariance(embedder):
    texts = [
        "gt done hands the branch to the refinery",
        "short",
        "a much longer sentence about witnesses nudging idle polecats " * 5,
    ]
    batch = embedder.embed(texts)
    assert batch.shape == (3, EMBEDDING_DIM) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    singles = np.stack([embedder.embed_one(t) for t in texts])
    np.testing.assert_allclose(batch, singles, atol=1e-5)  # padding does not leak into pooling
    assert embedder.embed([]).shape == (0, EMBEDDING_DIM)


def test_paraphrase_is_closer_than_unrelated(embedder):
    a, b, c = embedder.embed(
        [
            "never push to the main branch",
            "do not git push directly to main",
            "the deacon rotates log files every day",
        ]
    )
    assert float(a @ b) > float(a @ c) + 0.2


def test_threads_restored(embedder):
    before = torch.get_num_threads()
    MiniLMEmbeddingFunction(threads=before + 1).embed_one("x")
    assert torch.get_num_threads() == before


def test_registered_and_rebuildable():
    cls = known_embedding_functions[EMBEDDING_FUNCTION_NAME]
    assert cls is MiniLMEmbeddingFunction
    ef = MiniLMEmbeddingFunction(batch_size=8)
    rebuilt = cls.build_from_config(ef.get_config())
    assert rebuilt.get_config() == ef.get_config()
    assert not ef.is_legacy()
