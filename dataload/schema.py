"""Canonical dataset records: role-tagged SFT examples and DPO preference pairs.

These are the formats that `node0 corpus build` writes (one JSON object per line) and that the
training data loader reads. Every record carries its provenance, so any example can be traced to
the input line it came from. Records are frozen and reject unknown fields: a file written by a
different schema version fails loudly instead of loading half-understood data.

Turn speakers are ``system``, ``user`` and ``assistant`` (tool output is folded into a ``user``
turn by the corpus readers). The *agent role* of an example (``mayor``, ``polecat``, …) is a
separate field, ``role``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gastown.roles import ROLES as GASTOWN_ROLES

SFT_SCHEMA = "node0.sft/1"
DPO_SCHEMA = "node0.dpo/1"

#: Role partitions of a dataset: the Gas Town roles (``gastown.roles.ROLES``) and the pseudo-role
#: ``all``, which marks role-agnostic knowledge (e.g. a rig-wide CLAUDE.md).
ROLES: tuple[str, ...] = (*GASTOWN_ROLES, "all")

SourceKind = Literal["transcript", "claude_code", "bead", "doc", "formula"]
Speaker = Literal["system", "user", "assistant"]

_SHA256 = r"^[0-9a-f]{64}$"
_NAME = r"^[a-z0-9][a-z0-9_.\-]*$"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Turn(_Record):
    """One turn of a conversation."""

    speaker: Speaker
    """Who speaks: ``system`` (instructions), ``user`` (task, tool output) or ``assistant``."""
    text: str
    """The turn's text, already scrubbed (secrets replaced by ``<SECRET:type>`` placeholders)."""


class Provenance(_Record):
    """Where an example came from; paths are relative to the rig root, never absolute."""

    source_kind: SourceKind
    """Which reader produced it."""
    file: str = Field(min_length=1)
    """Source file, relative to the rig root (POSIX separators)."""
    line: int = Field(ge=1)
    """First source line (1-based); 1 for a whole-file source."""
    line_end: int = Field(ge=1)
    """Last source line (inclusive)."""
    rig: str = Field(min_length=1)
    """Rig the source belongs to."""
    role: str = Field(min_length=1)
    """Agent role of the source (``all`` for role-agnostic artifacts)."""
    session_id: str | None = None
    """Session id for transcripts and Claude Code sessions."""
    bead_id: str | None = None
    """Bead the work was about, when known."""
    outcome: str | None = None
    """Session outcome (``success``, ``failure``, ``unknown``) for session sources."""
    sha256: str = Field(pattern=_SHA256)
    """sha256 of the raw source bytes (the line(s) or file) before scrubbing."""

    @model_validator(mode="after")
    def _line_range(self) -> Provenance:
        if self.line_end < self.line:
            raise ValueError(f"line_end {self.line_end} < line {self.line}")
        return self


class SFTExample(_Record):
    """A role-tagged supervised fine-tuning example: the model learns the assistant turns."""

    schema_version: Literal["node0.sft/1"] = SFT_SCHEMA
    id: str = Field(pattern=r"^sft-[0-9a-f]{16}$")
    """Stable id derived from the source and content (same input → same id)."""
    role: str = Field(pattern=_NAME)
    """Agent role partition (``mayor``, ``polecat``, …, or ``all``)."""
    task: str = Field(pattern=_NAME)
    """Task partition (``bead-creation``, ``code-review``, ``git-workflow``, ``planning``, …)."""
    turns: list[Turn] = Field(min_length=2)
    """Conversation; ends with an assistant turn."""
    quality_score: float = Field(ge=0.0, le=1.0)
    """Quality score assigned by the corpus gates (1.0 = no penalties)."""
    provenance: Provenance

    @model_validator(mode="after")
    def _shape(self) -> SFTExample:
        if self.turns[-1].speaker != "assistant":
            raise ValueError("the last turn must be an assistant turn")
        if not any(t.speaker == "user" for t in self.turns):
            raise ValueError("an example needs at least one user turn")
        return self


class DPOPair(_Record):
    """A preference pair: the same prompt, a chosen (successful) and a rejected (failed) answer."""

    schema_version: Literal["node0.dpo/1"] = DPO_SCHEMA
    id: str = Field(pattern=r"^dpo-[0-9a-f]{16}$")
    role: str = Field(pattern=_NAME)
    task: str = Field(pattern=_NAME)
    prompt: list[Turn] = Field(min_length=1)
    """Shared prompt turns (system + task)."""
    chosen: list[Turn] = Field(min_length=1)
    """Continuation from the successful session (starts with an assistant turn)."""
    rejected: list[Turn] = Field(min_length=1)
    """Continuation from the failed session (starts with an assistant turn)."""
    failure_mode: str = Field(pattern=_NAME)
    """Why the rejected session failed (``timeout``, ``broke_tests``, ``ignored_conventions``)."""
    quality_score: float = Field(ge=0.0, le=1.0)
    chosen_provenance: Provenance
    rejected_provenance: Provenance

    @model_validator(mode="after")
    def _shape(self) -> DPOPair:
        for name in ("chosen", "rejected"):
            turns = getattr(self, name)
            if turns[0].speaker != "assistant" or turns[-1].speaker != "assistant":
                raise ValueError(f"{name} must start and end with an assistant turn")
        if self.prompt[-1].speaker != "user":
            raise ValueError("the prompt must end with a user turn")
        return self


__all__ = [
    "DPO_SCHEMA",
    "ROLES",
    "SFT_SCHEMA",
    "DPOPair",
    "Provenance",
    "SFTExample",
    "SourceKind",
    "Speaker",
    "Turn",
]
