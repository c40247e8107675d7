"""Acceptance: recall@5 >= 0.9 over the labeled query set on the shipped sample rig."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rag.retrieval import Hit, RetrievalSettings, retrieve
from rag.store import RagStore

QUERIES = Path(__file__).parent / "data" / "gastown_queries.yaml"
RIG = "gastown"
K = 5


def _parse(item: str) -> tuple[str, str, str]:
    key, _, phrase = item.partition(" :: ")
    collection, _, unit = key.partition("/")
    return collection, unit, phrase


def _matches(hit: Hit, collection: str, unit: str, phrase: str) -> bool:
    hit_unit = hit.id.split("/", 2)[2].split("#", 1)[0]
    return hit.collection == collection and hit_unit == unit and phrase in hit.text


def test_labeled_set_is_well_formed(sample_store: RagStore):
    queries = yaml.safe_load(QUERIES.read_text())
    assert len(queries) >= 50
    assert len({q["q"] for q in queries}) == len(queries)
    for q in queries:
        for item in q["relevant"]:
            collection, unit, phrase = _parse(item)
            docs = [
                d
                for d in sample_store.metadata_of(collection, rig=RIG)
                if d.split("/", 2)[2].split("#", 1)[0] == unit
            ]
            assert docs, f"{item}: no such document in the store"
            if phrase:
                texts = [h.text for h in sample_store.get(collection, docs)]
                assert any(phrase in t for t in texts), f"{item}: phrase not in any chunk"


def test_recall_at_5(sample_store: RagStore, capsys: pytest.CaptureFixture):
    queries = yaml.safe_load(QUERIES.read_text())
    settings = RetrievalSettings(k=K)
    per_query = []
    misses = []
    for q in queries:
        hits = retrieve(sample_store, q["q"], rig=RIG, role=q.get("role"), settings=settings)
        assert len(hits) == K
        found = [any(_matches(h, *_parse(item)) for h in hits) for item in q["relevant"]]
        per_query.append(sum(found) / len(found))
        if not all(found):
            misses.append(f"  {q['q']!r}: wanted {q['relevant']}, got {[h.id for h in hits]}")
    recall = sum(per_query) / len(per_query)
    with capsys.disabled():  # the figure is shown even without -s
        print(
            f"\nrecall@{K} = {recall:.3f} over {len(queries)} labeled queries "
            f"({sum(r == 1.0 for r in per_query)} fully answered); misses:"
        )
        print("\n".join(misses))
    assert recall >= 0.9
