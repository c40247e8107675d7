"""Prompt assembly: the block never exceeds its budget; RAG off gives the plain prompt;
filtering by rig and role; recency preference; dedup.

Unit tests count tokens with simple counters (words, characters) and with a real WordPiece
tokenizer (the embedding model's, which is on disk); the agent client passes the serving
model's tokenizer in the same way.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from rag.context import (
    BEGIN_MARKER,
    END_MARKER,
    TRUNCATION_MARK,
    assemble_context,
    assemble_prompt,
    fit_context,
)
from rag.indexer import index_rig
from rag.retrieval import Hit, RetrievalSettings, retrieve
from rag.store import RagStore
from tests.fixtures import write_beads


def words(text: str) -> int:
    return len(text.split())


def quarter_chars(text: str) -> int:
    return math.ceil(len(text) / 4)


@pytest.fixture(scope="module")
def wordpiece():
    from transformers import AutoTokenizer

    from rag.embedding import default_model_path

    tok = AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True)
    return lambda text: len(tok.encode(text, add_special_tokens=False))


def _hit(i: int, text: str) -> Hit:
    return Hit(
        id=f"r/beads/b{i}",
        collection="beads",
        text=text,
        similarity=0.5,
        score=0.5,
        rig="r",
        role="",
        bead_id=f"b{i}",
        updated_at="",
        source=".beads/issues.jsonl",
        source_sha256="0" * 64,
        title="",
    )


def test_fit_never_exceeds_budget_random_hits():
    rng = random.Random(1234)
    vocab = [
        "bead",
        "polecat",
        "gt",
        "done",
        "witness",
        "--status",
        "in_progress",
        "x" * 30,
        "naïve",
        "日本語",
        "\n",
        "merge",
        "queue",
    ]
    header = f"{BEGIN_MARKER} rig=r role=*>>>"
    for trial in range(60):
        hits = [
            _hit(i, " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 400))))
            for i in range(rng.randint(0, 8))
        ]
        budget = rng.choice([0, 5, 12, 40, 64, 100, 300, 1000, 2048, 3000])
        counter = words if trial % 2 else quarter_chars
        block = fit_context(
            hits, header=header, budget_tokens=budget, count_tokens=counter, min_entry_tokens=8
        )
        assert block.tokens == counter(block.text) <= budget
        if block.text:
            assert block.text.startswith(BEGIN_MARKER) and block.text.endswith(END_MARKER)
            assert [d.id for d in block.documents] == [
                h.id for h in hits if h.id in {d.id for d in block.documents}
            ]  # order kept
        else:
            assert block.documents == ()


def test_fit_truncates_only_the_entry_that_does_not_fit():
    hits = [_hit(1, "alpha " * 20), _hit(2, "beta " * 500), _hit(3, "gamma " * 10)]
    block = fit_context(
        hits, header="<<<H>>>", budget_tokens=120, count_tokens=words, min_entry_tokens=16
    )
    assert [(d.id, d.truncated) for d in block.documents] == [
        ("r/beads/b1", False),
        ("r/beads/b2", True),
    ]
    assert TRUNCATION_MARK.strip() in block.text and block.tokens <= 120
    assert block.tokens >= 110  # the budget is used, not wasted
    # a budget too small for any entry (below min_entry_tokens of room) gives no block
    empty = fit_context(
        hits, header="<<<H>>>", budget_tokens=10, count_tokens=words, min_entry_tokens=16
    )
    assert empty.text == "" and empty.tokens == 0


QUERIES = [
    "Your hook has gt-q2vk. Start working.",
    "what should I run before gt done?",
    "witness: slit has been idle for 48 minutes",
    "plan the registry CLI epic into child beads",
    "",
]


@pytest.mark.parametrize("budget", [0, 16, 64, 200, 512, 2048])
def test_assembled_block_never_exceeds_budget(sample_store, wordpiece, budget):
    for counter in (words, quarter_chars, wordpiece):
        for role in (None, "polecat", "witness"):
            for query in QUERIES:
                block = assemble_context(
                    query,
                    store=sample_store,
                    rig="gastown",
                    role=role,
                    budget_tokens=budget,
                    count_tokens=counter,
                )
                assert block.tokens == counter(block.text) <= budget
                if query:  # a real budget holds real context
                    assert len(block.documents) >= {512: 2, 2048: 4}.get(budget, 0)
                if not query:
                    assert block.text == ""


def test_rag_off_gives_the_plain_prompt(sample_store):
    prompt = "Your hook has gt-q2vk. Start working."
    off = assemble_prompt(prompt, store=None, rig="gastown", role="polecat", count_tokens=words)
    assert off.text == prompt and off.context is None
    on = assemble_prompt(
        prompt,
        store=sample_store,
        rig="gastown",
        role="polecat",
        budget_tokens=400,
        count_tokens=words,
    )
    assert on.text.startswith(BEGIN_MARKER) and on.text.endswith("\n\n" + prompt)
    assert on.context is not None and on.context.tokens <= 400
    assert on.text == on.context.text + "\n\n" + prompt
    assert on.context.documents[0].id == "gastown/beads/gt-q2vk"
    # the same turn gives the same block (deterministic ranking)
    again = assemble_prompt(
        prompt,
        store=sample_store,
        rig="gastown",
        role="polecat",
        budget_tokens=400,
        count_tokens=words,
    )
    assert again.text == on.text


def test_role_and_rig_filters(sample_store):
    for role in ("polecat", "witness", "mayor"):
        hits = retrieve(
            sample_store,
            "patrol the rig and check polecats",
            rig="gastown",
            role=role,
            settings=RetrievalSettings(k=10),
        )
        assert hits and all(h.role in (role, "") for h in hits)
    assert retrieve(sample_store, "polecats", rig="no-such-rig") == []
    unfiltered = retrieve(sample_store, "patrol the rig", settings=RetrievalSettings(k=10))
    assert len({h.role for h in unfiltered}) > 2


def _bead(bead_id: str, updated: str) -> dict:
    return {
        "id": bead_id,
        "title": "Witness escalates stuck polecats to the mayor",
        "status": "open",
        "priority": 2,
        "issue_type": "task",
        "updated_at": updated,
        "description": "After three failed nudges the witness mails the mayor.",
    }


def test_recency_preference_and_dedup(tmp_path: Path, embedder):
    rig = tmp_path / "rr"
    write_beads(
        rig,
        [
            _bead("rr-old", "2025-01-01T00:00:00Z"),
            _bead("rr-new", "2025-03-01T00:00:00Z"),
            {
                **_bead("rr-other", "2025-01-01T00:00:00Z"),
                "title": "Deacon rotates log files",
                "description": "Daily.",
            },
        ],
    )
    with RagStore(tmp_path / "store", embedder=embedder, writable=True) as store:
        index_rig(store, rig, rig="rr")
        query = "witness escalates a stuck polecat to the mayor"
        no_dedup = RetrievalSettings(k=3, dedup_similarity=1.0, recency_weight=0.05)
        ranked = [h.id for h in retrieve(store, query, settings=no_dedup)]
        assert ranked[:2] == ["rr/beads/rr-new", "rr/beads/rr-old"]  # newer first
        no_recency = RetrievalSettings(k=3, dedup_similarity=1.0, recency_weight=0.0)
        hits = retrieve(store, query, settings=no_recency)
        assert abs(hits[0].similarity - hits[1].similarity) < 0.05  # near-equal without it
        deduped = [h.id for h in retrieve(store, query, settings=RetrievalSettings(k=3))]
        assert deduped == ["rr/beads/rr-new", "rr/beads/rr-other"]  # near-duplicate dropped


def test_python_side_filter_matches_chromadb_filter(sample_store, embedder):
    """The fast path (filter applied to over-fetched neighbours) returns exactly what a
    ChromaDB ``where`` query returns."""
    from rag.retrieval import where_clause

    texts = ["patrol the rig", "Your hook has gt-19fz", "formula for polecat work", "deacon"]
    for vector in embedder.embed(texts):
        for rig, role in (
            ("gastown", None),
            ("gastown", "polecat"),
            (None, "witness"),
            ("gastown", "refinery"),
            ("elsewhere", None),
        ):
            where = where_clause(rig, role)
            for name in ("beads", "configs", "sessions"):
                fast = sample_store.nearest(name, vector, 5, where=where, overfetch=8)
                exact = sample_store.nearest(name, vector, 5, where=where, overfetch=1)
                assert [h.id for h in fast] == [h.id for h in exact]
