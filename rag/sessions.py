"""Session transcript readers: one summary document per session.

Two formats are read:

- ``gastown.transcript/1``: one session per line, ``{"session_id", "rig", "role", "agent",
  "bead_id", "task", "outcome", "failure_mode", "started_at", "ended_at", "turns":
  [{"speaker", "text"}]}`` (docs/corpus.md);
- Claude Code logs: one event per line, ``{"sessionId", "type": "user"|"assistant", "cwd",
  "timestamp", "message": {"role", "content": str | [blocks]}}``; ``summary`` events give the
  session a title, other bookkeeping events (``file-history-snapshot``, ...) carry no text.

A session that names another rig is skipped, a repeated session id is reported (an identical
repeat is dropped, otherwise the later session wins), and so is every unreadable line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provenance import sha256_bytes
from rag.documents import (
    Document,
    ReadProblem,
    RigRead,
    SourceUnit,
    doc_id,
    parse_timestamp,
    read_lines,
)
from rag.roles import ROLE_DIRS, role_from_path

_CLAUDE_META_TYPES = frozenset({"summary", "file-history-snapshot", "system"})


@dataclass
class _Session:
    key: str
    source: str
    line: int
    meta: dict[str, Any] = field(default_factory=dict)
    turns: list[tuple[str, str]] = field(default_factory=list)  # (speaker, text)
    stamps: list[float] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)


def _block_text(block: Any) -> str:
    """Text of one Claude Code content block (text, tool call, tool result)."""
    if isinstance(block, str):
        return block
    if not isinstance(block, dict):
        return ""
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text") or "")
    if kind == "tool_use":
        args = block.get("input") if isinstance(block.get("input"), dict) else {}
        if "command" in args:
            return f"$ {args['command']}"
        target = args.get("file_path") or args.get("path") or ""
        return f"[{block.get('name', 'tool')} {target}]".replace(" ]", "]")
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, list):
            return " ".join(_block_text(b) for b in content)
        return str(content or "")
    return ""  # thinking, images: not part of the summary


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def session_summary(
    session_id: str, meta: dict[str, Any], turns: list[tuple[str, str]], limit: int
) -> str:
    """A session's summary: a header of facts, then its turns (tool output clipped)."""
    facts = [f"Session {session_id}"]
    for key in ("title", "role", "agent", "bead_id", "task", "outcome", "failure_mode"):
        if meta.get(key):
            facts.append(f"{key.replace('_id', '')}: {meta[key]}")
    lines = [" | ".join(facts)]
    for speaker, text in turns:
        if speaker == "system" or not text.strip():
            continue
        lines.append(f"{speaker}: {_clip(text, 200 if speaker == 'tool' else 600)}")
    text = "\n".join(lines)
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _session_from_record(
    rec: dict[str, Any], rel: str, lineno: int, line: str, out: RigRead
) -> _Session | None:
    turns = rec.get("turns")
    if not isinstance(turns, list):
        out.problems.append(ReadProblem(rel, lineno, "transcript without a turns list"))
        return None
    session = _Session(str(rec["session_id"]), rel, lineno, raw=[line])
    role = rec.get("role")
    session.meta = {
        "role": ROLE_DIRS.get(role, role) if isinstance(role, str) else "",
        **{k: rec.get(k) for k in ("agent", "bead_id", "task", "outcome", "failure_mode", "rig")},
    }
    for turn in turns:
        if isinstance(turn, dict) and isinstance(turn.get("text"), str):
            session.turns.append((str(turn.get("speaker") or "?"), turn["text"]))
    stamp = parse_timestamp(rec.get("ended_at")) or parse_timestamp(rec.get("started_at"))
    if stamp is not None:
        session.stamps.append(stamp)
    return session


def read_sessions(paths: list[Path], root: Path, rig: str, limit: int, out: RigRead) -> None:
    sessions: dict[str, _Session] = {}
    for path in paths:
        rel = path.relative_to(root).as_posix()
        for lineno, line in read_lines(path, rel, out):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                out.problems.append(ReadProblem(rel, lineno, f"not JSON: {exc.msg}"))
                continue
            if not isinstance(rec, dict):
                out.problems.append(ReadProblem(rel, lineno, "not a JSON object"))
            elif rec.get("session_id"):
                _add_record(rec, rel, lineno, line, rig, sessions, out)
            elif rec.get("type") in _CLAUDE_META_TYPES or rec.get("sessionId"):
                _add_claude_event(rec, rel, line, sessions)
            else:
                out.problems.append(
                    ReadProblem(rel, lineno, "neither a transcript record nor a Claude Code event")
                )
    for key, session in sorted(sessions.items()):
        if not any(text.strip() for speaker, text in session.turns if speaker != "system"):
            out.problems.append(
                ReadProblem(session.source, session.line, f"session {key} has no turns with text")
            )
            continue
        role = session.meta.get("role") or ""
        sha = sha256_bytes("\n".join(session.raw).encode())
        doc = Document(
            id=doc_id(rig, "sessions", key),
            collection="sessions",
            text=session_summary(key, session.meta, session.turns, limit),
            unit=key,
            source=session.source,
            source_sha256=sha,
            rig=rig,
            role=role,
            bead_id=str(session.meta.get("bead_id") or ""),
            updated_ts=max(session.stamps) if session.stamps else None,
            title=str(session.meta.get("title") or f"session {key}"),
        )
        out.units.append(SourceUnit("sessions", key, sha, [doc]))


def _add_record(
    rec: dict[str, Any],
    rel: str,
    lineno: int,
    line: str,
    rig: str,
    sessions: dict[str, _Session],
    out: RigRead,
) -> None:
    own_rig = rec.get("rig")
    if own_rig and own_rig != rig:
        out.problems.append(
            ReadProblem(
                rel, lineno, f"session {rec['session_id']} belongs to rig {own_rig!r}, not {rig!r}"
            )
        )
        return
    session = _session_from_record(rec, rel, lineno, line, out)
    if session is None:
        return
    previous = sessions.get(session.key)
    if previous is not None:
        same = previous.raw == session.raw
        out.problems.append(
            ReadProblem(
                rel,
                lineno,
                f"session {session.key} repeats {previous.source}:{previous.line}"
                + ("" if same else "; the later one is used"),
            )
        )
        if same or max(previous.stamps, default=0.0) > max(session.stamps, default=0.0):
            return
    sessions[session.key] = session


def _add_claude_event(
    rec: dict[str, Any], rel: str, line: str, sessions: dict[str, _Session]
) -> None:
    key = str(rec.get("sessionId") or Path(rel).stem)
    session = sessions.setdefault(key, _Session(key, rel, 1))
    session.raw.append(line)
    if rec.get("type") == "summary" and isinstance(rec.get("summary"), str):
        session.meta["title"] = rec["summary"]
    if not session.meta.get("role") and isinstance(rec.get("cwd"), str):
        session.meta["role"] = role_from_path(rec["cwd"], is_dir=True)
    stamp = parse_timestamp(rec.get("timestamp"))
    if stamp is not None:
        session.stamps.append(stamp)
    message = rec.get("message")
    if not isinstance(message, dict):
        return
    content = message.get("content")
    blocks = content if isinstance(content, list) else [content]
    speaker = str(message.get("role") or rec.get("type") or "?")
    if any(isinstance(b, dict) and b.get("type") == "tool_result" for b in blocks):
        speaker = "tool"
    text = " ".join(t for t in (_block_text(b).strip() for b in blocks) if t)
    if text:
        session.turns.append((speaker, text))
