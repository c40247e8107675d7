"""Incremental indexing: unchanged skipped, changed replaced, deleted removed, other rigs kept."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rag.indexer import index_rig
from rag.store import RagStore
from tests.fixtures import SAMPLE_RIG, make_small_rig


def _embeddings(store: RagStore, collection: str) -> dict[str, np.ndarray]:
    ids = list(store.metadata_of(collection))
    return {h.id: h.embedding for h in store.get(collection, ids, embeddings=True)}


def _edit_bead(rig: Path, bead_id: str, **changes) -> None:
    path = rig / ".beads" / "issues.jsonl"
    lines = path.read_bytes().split(b"\n")
    for i, line in enumerate(lines):
        try:
            bead = json.loads(line)
        except ValueError:
            continue  # keep malformed lines as they are
        if isinstance(bead, dict) and bead.get("id") == bead_id:
            bead.update(changes)
            lines[i] = json.dumps(bead).encode()
    path.write_bytes(b"\n".join(lines))


def test_first_index_then_unchanged_then_edits(tmp_path: Path, embedder):
    rig = make_small_rig(tmp_path / "testrig")
    with RagStore(tmp_path / "store", embedder=embedder, writable=True) as store:
        first = index_rig(store, rig, rig="testrig")
        assert {n: c.added for n, c in first.collections.items()} == {
            "beads": 3,
            "configs": 2,
            "formulas": 1,
            "sessions": 1,
        }
        assert store.count() == first.docs_written == 3 + 3 + 1 + 1  # CLAUDE.md has 2 chunks
        assert not first.problems

        again = index_rig(store, rig, rig="testrig")
        assert not again.wrote_anything and again.changed_units == []
        assert sum(c.unchanged for c in again.collections.values()) == 7

        before = _embeddings(store, "beads")
        _edit_bead(rig, "tr-b2", title="Witness nudges polecats idle for five minutes")
        edited = index_rig(store, rig, rig="testrig")
        assert edited.changed_units == ["beads/tr-b2"]
        assert edited.collections["beads"].docs_added == 1
        assert edited.collections["beads"].docs_deleted == 1
        after = _embeddings(store, "beads")
        assert set(after) == set(before)
        for doc_id in ("testrig/beads/tr-a1", "testrig/beads/tr-c3"):
            np.testing.assert_array_equal(after[doc_id], before[doc_id])
        assert not np.allclose(after["testrig/beads/tr-b2"], before["testrig/beads/tr-b2"])
        (hit,) = store.get("beads", ["testrig/beads/tr-b2"])
        assert "five minutes" in hit.text

        (rig / "polecats" / "CLAUDE.md").unlink()
        (rig / "AGENTS.md").write_text("# Agents\nUse bd, not raw edits.\n")
        changed = index_rig(store, rig, rig="testrig")
        assert changed.removed_units == ["configs/polecats/CLAUDE.md"]
        assert changed.changed_units == ["configs/AGENTS.md"]
        assert changed.collections["configs"].added == 1
        ids = set(store.metadata_of("configs"))
        assert "testrig/configs/polecats/CLAUDE.md#0" not in ids
        assert "testrig/configs/AGENTS.md#0" in ids


def test_other_rigs_are_left_alone(tmp_path: Path, embedder):
    one = make_small_rig(tmp_path / "one")
    two = make_small_rig(tmp_path / "two")
    with RagStore(tmp_path / "store", embedder=embedder, writable=True) as store:
        index_rig(store, one, rig="one")
        index_rig(store, two, rig="two")
        shutil.rmtree(one / "transcripts")
        report = index_rig(store, one, rig="one")
        assert report.removed_units == ["sessions/ses-1"]
        assert list(store.metadata_of("sessions", rig="two")) == ["two/sessions/ses-1"]
        assert store.metadata_of("sessions", rig="one") == {}


def test_sample_rig_reindex_unchanged_and_one_bead_edit(
    tmp_path: Path, sample_store_dir: Path, embedder, monkeypatch: pytest.MonkeyPatch
):
    """Acceptance: re-indexing the unchanged sample rig writes and embeds nothing; editing one
    bead re-embeds and rewrites exactly that document. (Its time: ``bench/rag.py``.)"""
    rig = shutil.copytree(SAMPLE_RIG, tmp_path / "gastown-rig")
    store_dir = shutil.copytree(sample_store_dir, tmp_path / "store")
    embedded: list[str] = []
    real_embed = embedder.embed
    monkeypatch.setattr(
        embedder, "embed", lambda texts: embedded.extend(texts) or real_embed(texts)
    )
    with RagStore(store_dir, embedder=embedder, writable=True) as store:
        total = store.count()
        report = index_rig(store, rig, rig="gastown")
        assert not report.wrote_anything and report.changed_units == []
        assert store.count() == total
        assert embedded == []  # reading + metadata comparison only

        _edit_bead(rig, "gt-q265", status="closed", close_reason="Hooked into bd sync")
        report = index_rig(store, rig, rig="gastown")
        assert len(embedded) == 1 and "Hooked into bd sync" in embedded[0]
        assert report.changed_units == ["beads/gt-q265"] and report.removed_units == []
        assert report.docs_written == 1
        assert sum(c.docs_deleted for c in report.collections.values()) == 1
        (hit,) = store.get("beads", ["gastown/beads/gt-q265"])
        assert "Hooked into bd sync" in hit.text


class _NoSanitizer:
    def clean(self, text: str):
        raise AssertionError("an unchanged unit was sanitized again")


def test_unchanged_units_are_not_sanitized_again_unless_the_scrubber_changed(
    tmp_path: Path, embedder, monkeypatch: pytest.MonkeyPatch
):
    from rag import indexer
    from rag.documents import RigRead
    from rag.sources import read_rig

    rig = make_small_rig(tmp_path / "testrig")
    with RagStore(tmp_path / "store", embedder=embedder, writable=True) as store:
        index_rig(store, rig, rig="testrig")
        read: RigRead = read_rig(rig, rig="testrig")
        report = indexer.apply_rig(store, read, sanitizer=_NoSanitizer())
        assert not report.wrote_anything

        monkeypatch.setattr(indexer, "sanitizer_fingerprint", lambda: "a-new-scrubber")
        monkeypatch.setattr("rag.sanitize.sanitizer_fingerprint", lambda: "a-new-scrubber")
        report = indexer.apply_rig(store, read_rig(rig, rig="testrig"))
        assert sum(c.changed for c in report.collections.values()) == 7
        assert {m["sanitizer"] for m in store.metadata_of("beads").values()} == {"a-new-scrubber"}
