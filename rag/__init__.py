"""Retrieval-augmented prompts: a ChromaDB store of a rig's beads, configs, formulas and
sessions, incremental indexing, retrieval, and the one prompt-assembly function.

Importing this package does not import chromadb or torch; the names below load lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RagConfig": "rag.config",
    "load_rag_config": "rag.config",
    "RagStore": "rag.store",
    "MiniLMEmbeddingFunction": "rag.embedding",
    "index_rig": "rag.indexer",
    "IndexReport": "rag.indexer",
    "read_rig": "rag.sources",
    "retrieve": "rag.retrieval",
    "RetrievalSettings": "rag.retrieval",
    "Hit": "rag.retrieval",
    "assemble_context": "rag.context",
    "assemble_prompt": "rag.context",
    "ContextBlock": "rag.context",
    "AssembledPrompt": "rag.context",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rag' has no attribute {name!r}")
