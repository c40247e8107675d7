"""What the store holds: one retrievable document and the source unit it came from.

A *source unit* is the smallest thing whose change is detected on its own: one bead (a line of
``.beads/issues.jsonl``), one config or formula file, one session. A unit yields one or more
documents (long files are chunked); all of them carry the unit's sha256, and the unit is
replaced as a whole when that sha256 changes. :class:`RigRead` collects a rig's units and the
:class:`ReadProblem` s met while reading it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gastown import Problem, parse_timestamp

COLLECTIONS: tuple[str, ...] = ("beads", "configs", "formulas", "sessions")

# Bumped when the text a reader produces from the same source changes: every unit whose stored
# format differs is re-embedded on the next index run.
DOC_FORMAT_VERSION = 1

__all__ = [
    "COLLECTIONS",
    "DOC_FORMAT_VERSION",
    "Document",
    "ReadProblem",
    "RigRead",
    "SourceUnit",
    "doc_id",
    "iso_utc",
    "parse_timestamp",
]


def iso_utc(ts: float | None) -> str:
    if ts is None:
        return ""
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Document:
    """One retrievable document with the metadata every collection shares.

    Attributes:
        id: stable id, ``<rig>/<collection>/<unit key>[#<chunk>]``.
        collection: one of :data:`COLLECTIONS`.
        text: what is embedded and shown in a context block.
        unit: the source unit's key within its rig (see module docstring).
        source: path of the source file relative to the rig root.
        source_sha256: sha256 of the unit's source bytes (a bead: its canonical JSON).
        rig: rig name.
        role: the Gas Town role the document belongs to; ``""`` means every role.
        bead_id: the bead it is about, ``""`` if none.
        updated_ts: last change, seconds since the epoch (None if the source has no time).
        title: one-line label for listings.
        raw_sha256: sha256 of the text as read, before sanitizing (set by rag.sanitize).
        sanitizer: fingerprint of the sanitizer that produced ``text``.
    """

    id: str
    collection: str
    text: str
    unit: str
    source: str
    source_sha256: str
    rig: str
    role: str = ""
    bead_id: str = ""
    updated_ts: float | None = None
    title: str = ""
    raw_sha256: str = ""
    sanitizer: str = ""

    @property
    def text_sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def metadata(self) -> dict[str, Any]:
        """Flat ChromaDB metadata (no None values; an unknown time is ``updated_ts = 0``)."""
        return {
            "rig": self.rig,
            "role": self.role,
            "bead_id": self.bead_id,
            "updated_at": iso_utc(self.updated_ts),
            "updated_ts": float(self.updated_ts or 0.0),
            "source": self.source,
            "source_sha256": self.source_sha256,
            "text_sha256": self.text_sha256,
            "raw_sha256": self.raw_sha256,
            "sanitizer": self.sanitizer,
            "unit": self.unit,
            "title": self.title[:300],
            "format": DOC_FORMAT_VERSION,
        }


@dataclass
class SourceUnit:
    """One change-detection unit of a rig and the documents it yields."""

    collection: str
    key: str
    source_sha256: str
    documents: list[Document] = field(default_factory=list)


@dataclass(frozen=True)
class ReadProblem:
    """A source (or one line of it) the readers could not use; reported, never dropped silently."""

    source: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.reason}"

    @classmethod
    def of(cls, problem: Problem) -> ReadProblem:
        """The report line of a problem a :mod:`gastown` reader met."""
        return cls(problem.file, None if problem.whole_file else problem.line, problem.message)


@dataclass
class RigRead:
    """Everything read from one rig: units by collection, and the problems met."""

    rig: str
    root: Path
    units: list[SourceUnit] = field(default_factory=list)
    problems: list[ReadProblem] = field(default_factory=list)

    def documents(self) -> list[Document]:
        return [doc for unit in self.units for doc in unit.documents]


def doc_id(rig: str, collection: str, key: str, chunk: int | None = None) -> str:
    """The stable document id ``<rig>/<collection>/<unit key>[#<chunk>]``."""
    return f"{rig}/{collection}/{key}" + (f"#{chunk}" if chunk is not None else "")
