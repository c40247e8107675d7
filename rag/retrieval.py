"""Retrieval for one query: nearest neighbours from every collection, filtered by rig and role,
re-ranked with a recency bonus, deduplicated, best first.

Score of a hit = cosine similarity + ``recency_weight * 0.5 ** (age_days / half_life_days)``,
where the age is measured from the newest candidate of the same collection for this query (not
from the wall clock, and not across collections: bead and session times come from their
records, file times from the file system), so the same store and query always give the same
ranking. Documents without a time get no bonus.

A bead named in the query by its id (``gt-q2vk``) is fetched directly, whatever its similarity,
and gets ``mention_bonus`` on top: an agent's turn "Your hook has gt-q2vk" needs that bead, and
a sentence embedding does not match identifiers.

Duplicates: a hit whose text is identical to, or whose embedding has cosine similarity of at
least ``dedup_similarity`` with, a better-ranked hit is dropped.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from rag.documents import COLLECTIONS
from rag.store import RagStore, StoredHit

logger = logging.getLogger(__name__)

_DAY_S = 86400.0
_BEAD_ID = re.compile(r"\b[a-z][a-z0-9]{0,15}-[a-z0-9]{2,12}\b")  # gt-q2vk, bd-7k2p
_MAX_MENTIONS = 20


def mentioned_bead_ids(text: str) -> list[str]:
    """Tokens of a text shaped like bead ids, in order of first appearance."""
    return list(dict.fromkeys(_BEAD_ID.findall(text)))[:_MAX_MENTIONS]


@dataclass(frozen=True)
class RetrievalSettings:
    """Knobs of :func:`retrieve` (built from :class:`~rag.config.RagConfig` by the caller)."""

    k: int = 5
    candidates_per_collection: int = 10
    recency_weight: float = 0.05
    recency_half_life_days: float = 14.0
    dedup_similarity: float = 0.97
    mention_bonus: float = 1.0
    filter_overfetch: int = 8

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> RetrievalSettings:
        values = {name: getattr(config, name) for name in cls.__dataclass_fields__}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass(frozen=True)
class Hit:
    """One retrieved document, with its similarity and final score."""

    id: str
    collection: str
    text: str
    similarity: float
    score: float
    rig: str
    role: str
    bead_id: str
    updated_at: str
    source: str
    source_sha256: str
    title: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "collection": self.collection,
            "score": round(self.score, 4),
            "similarity": round(self.similarity, 4),
            "rig": self.rig,
            "role": self.role,
            "bead_id": self.bead_id,
            "updated_at": self.updated_at,
            "source": self.source,
            "source_sha256": self.source_sha256,
        }


def where_clause(rig: str | None, role: str | None) -> dict[str, Any] | None:
    """ChromaDB filter: the rig's documents, and those of the role or of every role (``""``)."""
    parts: list[dict[str, Any]] = []
    if rig:
        parts.append({"rig": rig})
    if role:
        parts.append({"role": {"$in": [role, ""]}})
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else {"$and": parts}


def retrieve(
    store: RagStore,
    query: str,
    *,
    rig: str | None = None,
    role: str | None = None,
    settings: RetrievalSettings | None = None,
    collections: Sequence[str] = COLLECTIONS,
) -> list[Hit]:
    """The best ``settings.k`` documents for a query (fewer if the store has fewer)."""
    settings = settings or RetrievalSettings()
    vector = store.embedder.embed_one(query)
    return retrieve_by_vector(
        store,
        vector,
        rig=rig,
        role=role,
        settings=settings,
        collections=collections,
        mentions=mentioned_bead_ids(query),
    )


def retrieve_by_vector(
    store: RagStore,
    vector: np.ndarray,
    *,
    rig: str | None = None,
    role: str | None = None,
    settings: RetrievalSettings | None = None,
    collections: Sequence[str] = COLLECTIONS,
    mentions: Sequence[str] = (),
) -> list[Hit]:
    """:func:`retrieve` for an already embedded query; ``mentions`` are bead ids it names."""
    settings = settings or RetrievalSettings()
    where = where_clause(rig, role)
    by_id: dict[str, StoredHit] = {}
    for name in collections:
        for hit in store.nearest(
            name,
            vector,
            settings.candidates_per_collection,
            where=where,
            with_embeddings=True,
            overfetch=settings.filter_overfetch,
        ):
            by_id[hit.id] = hit
    mentioned: set[str] = set()
    if mentions and "beads" in collections:
        clause = {"bead_id": {"$in": list(mentions)}}
        for hit in store.matching("beads", {"$and": [clause, where]} if where else clause):
            similarity = float(np.dot(vector, hit.embedding))
            by_id[hit.id] = replace(hit, similarity=similarity)
            mentioned.add(hit.id)
    candidates = list(by_id.values())
    if not candidates:
        return []
    newest: dict[str, float] = {}
    for c in candidates:
        ts = float(c.metadata.get("updated_ts") or 0.0)
        newest[c.collection] = max(newest.get(c.collection, 0.0), ts)
    scored = sorted(
        (
            (
                _score(c, newest[c.collection], settings)
                + (settings.mention_bonus if c.id in mentioned else 0.0),
                c,
            )
            for c in candidates
        ),
        key=lambda pair: (-pair[0], pair[1].id),  # ties broken by id: deterministic
    )
    kept: list[tuple[float, StoredHit]] = []
    seen_text: set[str] = set()
    for score, cand in scored:
        digest = hashlib.sha256(" ".join(cand.text.split()).encode()).hexdigest()
        if digest in seen_text or any(
            float(np.dot(cand.embedding, k.embedding)) >= settings.dedup_similarity for _, k in kept
        ):
            continue
        seen_text.add(digest)
        kept.append((score, cand))
        if len(kept) == settings.k:
            break
    return [_hit(score, cand) for score, cand in kept]


def _score(cand: StoredHit, newest: float, settings: RetrievalSettings) -> float:
    ts = float(cand.metadata.get("updated_ts") or 0.0)
    if ts <= 0.0 or settings.recency_weight == 0.0:
        return cand.similarity
    age_days = max(0.0, newest - ts) / _DAY_S
    return cand.similarity + settings.recency_weight * 0.5 ** (
        age_days / settings.recency_half_life_days
    )


def _hit(score: float, cand: StoredHit) -> Hit:
    meta = cand.metadata
    return Hit(
        id=cand.id,
        collection=cand.collection,
        text=cand.text,
        similarity=cand.similarity,
        score=score,
        rig=str(meta.get("rig", "")),
        role=str(meta.get("role", "")),
        bead_id=str(meta.get("bead_id", "")),
        updated_at=str(meta.get("updated_at", "")),
        source=str(meta.get("source", "")),
        source_sha256=str(meta.get("source_sha256", "")),
        title=str(meta.get("title", "")),
    )
