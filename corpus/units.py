"""Intermediate units between the readers and the dataset records.

A :class:`RecordRef` is one input record (a JSONL line, or a whole Markdown/TOML file). A
:class:`Unit` is what a reader makes of one or more records: a session, a bead version, a
document version, a formula version. Units carry raw text until the scrubber has run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dataload.schema import SourceKind


@dataclass(frozen=True, order=True)
class RecordRef:
    """One input record; ``line``/``line_end`` are 1-based, a whole file is 1..N."""

    rig: str
    file: str
    line: int
    line_end: int
    kind: SourceKind

    @property
    def source(self) -> str:
        """The source this record is reconciled under: ``<rig>:<file>``."""
        return f"{self.rig}:{self.file}"

    def __str__(self) -> str:
        span = f"{self.line}" if self.line == self.line_end else f"{self.line}-{self.line_end}"
        return f"{self.rig}:{self.file}:{span}"


@dataclass
class Unit:
    """A candidate for one or more examples.

    ``artifact`` groups versions of the same thing (a bead id, a session id, a document path,
    a formula name); ``version`` orders them (later sorts newer).
    """

    kind: SourceKind
    rig: str
    refs: list[RecordRef]
    role: str
    artifact: str
    version: tuple
    turns: list[tuple[str, str]]
    """(speaker, text) with speakers system/user/assistant."""
    sha256: str
    """sha256 of the raw record bytes."""
    task: str | None = None
    session_id: str | None = None
    bead_id: str | None = None
    outcome: str | None = None
    failure_mode: str | None = None
    content: str = ""
    """Raw artifact text used for recency and reversion checks (documents, formulas)."""
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return str(self.refs[0])
