"""The RAG configuration: one pydantic model, validated at construction.

YAML files under ``configs/rag/`` only name values; :func:`load_rag_config` reads one and fails
closed (:class:`~base.errors.ConfigError`) on unknown keys or invalid values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from base.config_loader import load_yaml_config

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "configs" / "rag" / "default.yaml"


class RagConfig(BaseModel):
    """Settings of the RAG store, the indexer, retrieval and prompt assembly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store_path: Path = Field(
        default=Path("runs/rag-store"),
        description="Directory of the ChromaDB PersistentClient (one process writes it at a time).",
    )
    embed_batch_size: int = Field(
        default=32, ge=1, le=1024, description="Texts embedded per forward pass."
    )
    add_batch_size: int = Field(
        default=1000, ge=1, le=5000, description="Documents per ChromaDB add call (max ~5,461)."
    )
    embed_threads: int = Field(
        default=1,
        ge=1,
        description="torch threads while embedding (restored afterwards); 1 is fastest.",
    )
    chunk_words: int = Field(
        default=160,
        ge=16,
        le=1000,
        description="Config/formula files are split into chunks of at most this many words "
        "(the embedding model reads 256 word pieces).",
    )
    session_summary_chars: int = Field(
        default=1500, ge=200, description="Characters of a session transcript kept in its summary."
    )
    k: int = Field(default=5, ge=1, le=100, description="Documents retrieved per query.")
    candidates_per_collection: int = Field(
        default=10,
        ge=1,
        le=500,
        description="Nearest neighbours fetched per collection before re-ranking and dedup.",
    )
    recency_weight: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="Score bonus of the newest document; it halves every recency_half_life_days "
        "of age relative to the newest candidate (the ranking stays deterministic).",
    )
    recency_half_life_days: float = Field(
        default=14.0, gt=0.0, description="Half-life of the recency bonus, in days."
    )
    dedup_similarity: float = Field(
        default=0.97,
        gt=0.0,
        le=1.0,
        description="Two hits whose embeddings have at least this cosine similarity are duplicates "
        "(identical text is always a duplicate).",
    )
    mention_bonus: float = Field(
        default=1.0,
        ge=0.0,
        description="Score bonus of a bead the query names by id (e.g. 'Your hook has gt-q2vk').",
    )
    filter_overfetch: int = Field(
        default=8,
        ge=1,
        le=100,
        description="A rig/role filter is applied in Python to this many times the candidates "
        "(fast); ChromaDB filters only when fewer pass (1 = always filter in ChromaDB).",
    )
    budget_tokens: int = Field(
        default=2048, ge=0, description="Token budget of the context block, markers included."
    )
    min_entry_tokens: int = Field(
        default=48,
        ge=1,
        description="A hit is truncated to fit the remaining budget only if at least this many "
        "tokens remain; otherwise it is left out.",
    )
    lock_timeout_s: float = Field(
        default=30.0, ge=0.0, description="Seconds to wait for the store's lock before failing."
    )

    @model_validator(mode="after")
    def _check(self) -> RagConfig:
        if self.candidates_per_collection < self.k:
            raise ValueError(
                f"candidates_per_collection ({self.candidates_per_collection}) must be >= k "
                f"({self.k})"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def load_rag_config(path: str | Path | None = None, **overrides: Any) -> RagConfig:
    """Read a RAG config YAML (default ``configs/rag/default.yaml``) and apply overrides.

    Overrides whose value is ``None`` are ignored, so CLI options can be passed through as-is.

    Raises:
        ConfigError: the file is missing, not a mapping, or fails validation.
    """
    path = path if path is not None else DEFAULT_CONFIG_PATH
    given = {key: value for key, value in overrides.items() if value is not None}
    return load_yaml_config(path, RagConfig, overrides=given)[0]
