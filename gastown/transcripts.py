"""Session transcripts in the ``gastown.transcript/1`` format: one session per JSONL line.

A line is a transcript when it is a JSON object with ``schema`` = ``gastown.transcript/1``;
non-empty string ``session_id``, ``rig``, ``role`` (one of :data:`gastown.roles.ROLES`) and
``outcome`` (``success`` | ``failure``); and a non-empty ``turns`` list of
``{"speaker": system|user|assistant|tool, "text": str}``. Optional: ``bead_id``, ``task``,
``failure_mode``, ``agent`` (strings; ``null`` or ``""`` = not given) and ``started_at``,
``ended_at`` (ISO 8601 times). Anything else is a problem, reported with the first rule the
line breaks. The format is documented in docs/corpus.md.

A session id may be written more than once; a session's time is its ``ended_at``, else its
``started_at`` (see :attr:`Transcript.version`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gastown._read import JsonLine, first_missing, json_lines, optional_str
from gastown.problems import Problem
from gastown.recency import parse_timestamp, stamp
from gastown.roles import is_role

SCHEMA = "gastown.transcript/1"
SPEAKERS = frozenset({"system", "user", "assistant", "tool"})
OUTCOMES = frozenset({"success", "failure"})


@dataclass(frozen=True)
class Turn:
    speaker: str
    """``system``, ``user``, ``assistant`` or ``tool`` (tool output)."""
    text: str


@dataclass(frozen=True)
class Transcript:
    """One session (one valid line).

    ``rig`` is the rig the record names (which may differ from the rig it was found in);
    ``file``/``line`` say where it was read; ``sha256`` is that of the raw line bytes.
    """

    session_id: str
    rig: str
    role: str
    outcome: str
    turns: tuple[Turn, ...]
    bead_id: str | None
    task: str | None
    failure_mode: str | None
    agent: str | None
    started_at: str | None
    ended_at: str | None
    file: str
    line: int
    sha256: str
    raw: bytes = field(repr=False, compare=False)

    @property
    def time(self) -> float | None:
        """When the session happened: ``ended_at``, else ``started_at``, else None."""
        return parse_timestamp(self.ended_at) or parse_timestamp(self.started_at)

    @property
    def version(self) -> tuple[str, str, int]:
        """A later session time is newer (unknown = oldest); then the later file and line."""
        return (stamp(self.time), self.file, self.line)


@dataclass
class TranscriptsRead:
    """Every line of one transcript file: the sessions (file order) and the problems."""

    transcripts: list[Transcript] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def parse_transcript(item: JsonLine, rel: str) -> Transcript | Problem:
    """The transcript on one JSON line, or the first rule it breaks."""
    obj, n = item.obj, item.line
    subject = f"session {obj['session_id']}" if optional_str(obj.get("session_id")) else ""

    def problem(reason: Any, detail: str) -> Problem:
        return Problem(rel, n, n, reason, detail, subject)

    if obj.get("schema") != SCHEMA:
        return problem("unknown_schema", repr(obj.get("schema"))[:40])
    missing = first_missing(obj, "session_id", "rig", "role", "outcome")
    if missing:
        return problem("missing_field", missing)
    if not is_role(obj["role"]):
        return problem("unknown_role", obj["role"][:40])
    if obj["outcome"] not in OUTCOMES:
        return problem("bad_field", f"outcome={obj['outcome']!r:.40}")
    raw_turns = obj.get("turns")
    if not isinstance(raw_turns, list) or not raw_turns:
        return problem("missing_field", "turns")
    for i, t in enumerate(raw_turns):
        if (
            not isinstance(t, dict)
            or t.get("speaker") not in SPEAKERS
            or not isinstance(t.get("text"), str)
        ):
            return problem("bad_field", f"turns[{i}]")
    for name in ("bead_id", "task", "failure_mode", "agent", "started_at", "ended_at"):
        value = obj.get(name)
        if value is not None and not isinstance(value, str):
            return problem("bad_field", name)
    for name in ("started_at", "ended_at"):
        if optional_str(obj.get(name)) and parse_timestamp(obj[name]) is None:
            return problem("bad_field", f"{name}={obj[name]!r:.40}")
    return Transcript(
        session_id=obj["session_id"],
        rig=obj["rig"],
        role=obj["role"],
        outcome=obj["outcome"],
        turns=tuple(Turn(t["speaker"], t["text"]) for t in raw_turns),
        bead_id=optional_str(obj.get("bead_id")),
        task=optional_str(obj.get("task")),
        failure_mode=optional_str(obj.get("failure_mode")),
        agent=optional_str(obj.get("agent")),
        started_at=optional_str(obj.get("started_at")),
        ended_at=optional_str(obj.get("ended_at")),
        file=rel,
        line=n,
        sha256=item.sha256,
        raw=item.raw,
    )


def read_transcripts(root: str | Path, rel: str) -> TranscriptsRead:
    """Read one transcript file; every line becomes one transcript or one problem."""
    out = TranscriptsRead()
    for item in json_lines(Path(root), rel):
        got = item if isinstance(item, Problem) else parse_transcript(item, rel)
        (out.problems if isinstance(got, Problem) else out.transcripts).append(got)
    return out
