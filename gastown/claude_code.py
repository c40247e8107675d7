"""Claude Code session logs (``~/.claude/projects/*/<session id>.jsonl``): one event per line.

A line is an event when it is a JSON object with a non-empty string ``type``; optional
``sessionId``, ``cwd`` (strings) and ``timestamp`` (an ISO 8601 time). ``user`` and
``assistant`` events are *turns*: their ``message.content`` is a string or a list of blocks —
``text`` (``text``: str), ``tool_use`` (``name``, ``input``: object), ``tool_result``
(``content``: str, list of text blocks or null), ``thinking`` / ``redacted_thinking`` /
``image`` (kept as kinds without text). A turn whose content has another shape is a problem.
Other event types (``summary``, ``file-history-snapshot``, ``system``, …) are events without
turns; a ``summary`` event's ``summary`` string titles the session.

One file is one session: its id is the first ``sessionId`` (else the file name), its
working directory the first ``cwd``, and its role the nearest role directory of that
directory (``…/polecats/nux`` → polecat; None if it names none).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from gastown._read import JsonLine, json_lines, nonempty_str, optional_str
from gastown.problems import Problem
from gastown.recency import parse_timestamp, stamp
from gastown.roles import role_from_path

TURN_TYPES = frozenset({"user", "assistant"})
BlockKind = Literal["text", "tool_use", "tool_result", "thinking", "image"]
_SILENT = {"thinking": "thinking", "redacted_thinking": "thinking", "image": "image"}


@dataclass(frozen=True)
class Block:
    """One content block of a turn."""

    kind: BlockKind
    text: str = ""
    """The text of a ``text`` block or a ``tool_result`` (list results joined by newlines)."""
    tool: str = ""
    """The tool a ``tool_use`` block calls (``Bash``, ``Read``, …)."""
    input: dict[str, Any] = field(default_factory=dict, compare=False)
    """The arguments of a ``tool_use`` block."""


@dataclass(frozen=True)
class ClaudeEvent:
    """One valid line of a log."""

    type: str
    line: int
    session_id: str | None
    cwd: str | None
    timestamp: str | None
    blocks: tuple[Block, ...]
    """The turn's content (empty for events that are not turns)."""
    summary: str | None
    sha256: str
    raw: bytes = field(repr=False, compare=False)

    @property
    def is_turn(self) -> bool:
        return self.type in TURN_TYPES


@dataclass(frozen=True)
class ClaudeSession:
    """One log file: its valid events in file order, and what they say about the session."""

    rig: str
    file: str
    session_id: str
    cwd: str | None
    role: str | None
    title: str | None
    events: tuple[ClaudeEvent, ...]

    @property
    def turns(self) -> tuple[ClaudeEvent, ...]:
        return tuple(e for e in self.events if e.is_turn)

    @property
    def time(self) -> float | None:
        """Its last event's time (None if no event has one)."""
        times = [t for e in self.events if (t := parse_timestamp(e.timestamp)) is not None]
        return max(times) if times else None

    @property
    def version(self) -> tuple[str, str, int]:
        """A later last event is newer; then the later file."""
        return (stamp(self.time), self.file, 0)


@dataclass
class ClaudeLogRead:
    """One log file read: the session (None if no line was a valid event) and the problems."""

    session: ClaudeSession | None = None
    problems: list[Problem] = field(default_factory=list)


def _block(block: Any) -> Block | None:
    if not isinstance(block, dict):
        return None
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        return Block("text", text=block["text"])
    if kind == "tool_use":
        args = block.get("input")
        if args is not None and not isinstance(args, dict):
            return None
        return Block("tool_use", tool=str(block.get("name") or ""), input=args or {})
    if kind == "tool_result":
        res = block.get("content")
        if isinstance(res, list):
            res = "\n".join(
                b["text"] for b in res if isinstance(b, dict) and isinstance(b.get("text"), str)
            )
        elif res is not None and not isinstance(res, str):
            return None
        return Block("tool_result", text=res or "")
    if kind in _SILENT:
        return Block(_SILENT[kind])  # type: ignore[arg-type]
    return None


def _content(message: Any) -> tuple[Block, ...] | None:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return (Block("text", text=content),)
    if not isinstance(content, list):
        return None
    blocks = tuple(_block(b) for b in content)
    return None if any(b is None for b in blocks) else blocks  # type: ignore[return-value]


def parse_event(item: JsonLine, rel: str) -> ClaudeEvent | Problem:
    """The event on one JSON line, or the first rule it breaks."""
    obj, n = item.obj, item.line
    if not nonempty_str(obj.get("type")):
        return Problem(rel, n, n, "missing_field", "type")
    for name in ("sessionId", "cwd", "timestamp"):
        if obj.get(name) is not None and not isinstance(obj[name], str):
            return Problem(rel, n, n, "bad_field", name)
    if optional_str(obj.get("timestamp")) and parse_timestamp(obj["timestamp"]) is None:
        return Problem(rel, n, n, "bad_field", f"timestamp={obj['timestamp']!r:.40}")
    blocks: tuple[Block, ...] = ()
    if obj["type"] in TURN_TYPES:
        got = _content(obj.get("message"))
        if got is None:
            return Problem(rel, n, n, "bad_field", "message.content")
        blocks = got
    summary = obj.get("summary") if obj["type"] == "summary" else None
    return ClaudeEvent(
        type=obj["type"],
        line=n,
        session_id=optional_str(obj.get("sessionId")),
        cwd=optional_str(obj.get("cwd")),
        timestamp=optional_str(obj.get("timestamp")),
        blocks=blocks,
        summary=summary if isinstance(summary, str) else None,
        sha256=item.sha256,
        raw=item.raw,
    )


def read_claude_log(root: str | Path, rel: str, *, rig: str) -> ClaudeLogRead:
    """Read one log file; every line becomes one event or one problem.

    Args:
        root: the rig directory.
        rel: the log, relative to ``root``.
        rig: the rig's name, stored with the session.
    """
    out = ClaudeLogRead()
    events: list[ClaudeEvent] = []
    for item in json_lines(Path(root), rel):
        got = item if isinstance(item, Problem) else parse_event(item, rel)
        (out.problems if isinstance(got, Problem) else events).append(got)
    if not events:
        return out
    session_id = next((e.session_id for e in events if e.session_id), None)
    cwd = next((e.cwd for e in events if e.cwd), None)
    titles = [e.summary for e in events if e.summary]
    out.session = ClaudeSession(
        rig=rig,
        file=rel,
        session_id=session_id or PurePosixPath(rel).name.removesuffix(".jsonl"),
        cwd=cwd,
        role=role_from_path(cwd, is_dir=True) if cwd else None,
        title=titles[-1] if titles else None,
        events=tuple(events),
    )
    return out
