"""Incremental indexing of a rig into a RAG store.

How a unit (one bead, one file, one session) is decided, per collection and rig:

- **unchanged**: the store holds exactly the unit's document ids, all with the unit's
  ``source_sha256``, the current document format, the same text as read (``raw_sha256``) and
  the current sanitizer fingerprint -> nothing is sanitized, embedded or written;
- **changed**: anything else -> its old documents are deleted, the new ones sanitized
  (:mod:`rag.sanitize`), embedded and added;
- **added**: the store has no document of the unit;
- **removed**: the store holds a unit the rig no longer has -> its documents are deleted.

Only documents of the indexed rig are touched; other rigs in the same store are left alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rag.documents import (
    COLLECTIONS,
    DOC_FORMAT_VERSION,
    Document,
    ReadProblem,
    RigRead,
    SourceUnit,
)
from rag.sanitize import Sanitizer, sanitize_documents, sanitizer_fingerprint
from rag.sources import read_rig
from rag.store import RagStore

logger = logging.getLogger(__name__)


@dataclass
class CollectionCounts:
    """Units per decision, and documents written/deleted, for one collection."""

    unchanged: int = 0
    changed: int = 0
    added: int = 0
    removed: int = 0
    docs_added: int = 0
    docs_deleted: int = 0


@dataclass
class IndexReport:
    """The outcome of one index run."""

    rig: str
    root: str
    collections: dict[str, CollectionCounts] = field(
        default_factory=lambda: {name: CollectionCounts() for name in COLLECTIONS}
    )
    problems: list[ReadProblem] = field(default_factory=list)
    sanitized: list[str] = field(default_factory=list)  # scrub notes of the documents written
    changed_units: list[str] = field(default_factory=list)  # "<collection>/<unit>" written
    removed_units: list[str] = field(default_factory=list)
    seconds: float = 0.0
    embed_seconds: float = 0.0

    @property
    def docs_written(self) -> int:
        return sum(c.docs_added for c in self.collections.values())

    @property
    def wrote_anything(self) -> bool:
        return any(c.docs_added or c.docs_deleted for c in self.collections.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "rig": self.rig,
            "root": self.root,
            "collections": {k: asdict(v) for k, v in self.collections.items()},
            "problems": [str(p) for p in self.problems],
            "sanitized": self.sanitized,
            "changed_units": self.changed_units,
            "removed_units": self.removed_units,
            "seconds": round(self.seconds, 3),
            "embed_seconds": round(self.embed_seconds, 3),
        }

    def summary_lines(self) -> list[str]:
        lines = []
        for name, c in self.collections.items():
            lines.append(
                f"{name:9s} unchanged {c.unchanged:5d}  changed {c.changed:4d}  added "
                f"{c.added:4d}  removed {c.removed:4d}  (docs +{c.docs_added} -{c.docs_deleted})"
            )
        lines.append(
            f"problems: {len(self.problems)}; scrub notes: {len(self.sanitized)}; "
            f"{self.seconds:.2f} s"
        )
        return lines


def index_rig(
    store: RagStore,
    root: str | Path,
    *,
    rig: str,
    chunk_words: int = 160,
    session_summary_chars: int = 1500,
    add_batch_size: int = 1000,
) -> IndexReport:
    """Bring the store's documents of one rig up to date with the rig directory.

    Pipeline: :func:`~rag.sources.read_rig` -> :func:`apply_rig` (which sanitizes what it
    writes).
    """
    started = time.perf_counter()
    read = read_rig(
        root, rig=rig, chunk_words=chunk_words, session_summary_chars=session_summary_chars
    )
    report = apply_rig(store, read, add_batch_size=add_batch_size)
    report.seconds = time.perf_counter() - started
    return report


def apply_rig(
    store: RagStore,
    read: RigRead,
    *,
    add_batch_size: int = 1000,
    sanitizer: Sanitizer | None = None,
) -> IndexReport:
    """Apply what :func:`~rag.sources.read_rig` found to the store (the decision logic)."""
    report = IndexReport(rig=read.rig, root=str(read.root), problems=list(read.problems))
    fingerprint = sanitizer_fingerprint()
    to_add: list[Document] = []
    for name in COLLECTIONS:
        counts = report.collections[name]
        stored: dict[str, dict[str, list[tuple[str, dict[str, Any]]]]] = {}
        for doc_id, meta in store.metadata_of(name, rig=read.rig).items():
            stored.setdefault(str(meta.get("unit", "")), []).append((doc_id, meta))
        current = {unit.key: unit for unit in read.units if unit.collection == name}
        to_delete: list[str] = []
        for key, unit in current.items():
            old = stored.pop(key, None)
            if old is None:
                counts.added += 1
            elif _same(old, unit, fingerprint):
                counts.unchanged += 1
                continue
            else:
                counts.changed += 1
                to_delete.extend(doc_id for doc_id, _ in old)
            report.changed_units.append(f"{name}/{key}")
            to_add.extend(unit.documents)
            counts.docs_added += len(unit.documents)
        for key, old in stored.items():
            counts.removed += 1
            report.removed_units.append(f"{name}/{key}")
            to_delete.extend(doc_id for doc_id, _ in old)
        counts.docs_deleted = len(to_delete)
        store.delete(name, to_delete)
    if to_add:
        to_add, report.sanitized = sanitize_documents(to_add, sanitizer)
        t0 = time.perf_counter()
        store.add(to_add, batch_size=add_batch_size)
        report.embed_seconds = time.perf_counter() - t0
    for problem in report.problems:
        logger.warning("rag index %s: skipped %s", read.rig, problem)
    for note in report.sanitized:
        logger.warning("rag index %s: scrubbed %s", read.rig, note)
    return report


def _same(old: list[tuple[str, dict[str, Any]]], unit: SourceUnit, fingerprint: str) -> bool:
    """Whether the stored documents of a unit are exactly what indexing it now would write."""
    raw = {d.id: d.text_sha256 for d in unit.documents}  # documents as read, not yet sanitized
    return {doc_id: meta.get("raw_sha256") for doc_id, meta in old} == raw and all(
        meta.get("source_sha256") == unit.source_sha256
        and meta.get("format") == DOC_FORMAT_VERSION
        and meta.get("sanitizer") == fingerprint
        for _, meta in old
    )
