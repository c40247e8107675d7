"""Sessions as RAG documents: one summary document per session id.

The files are read by :mod:`gastown`: transcript records (``gastown.transcript/1``, one session
a line, :mod:`gastown.transcripts`) and Claude Code logs (one session a file,
:mod:`gastown.claude_code`); which of the two a JSONL file holds is judged from its first
record (:func:`gastown.layout.jsonl_format`). What RAG adds: a session that names another rig
is skipped, a repeated session id keeps its newest version (an identical repeat is reported
as such), and a session with no text is skipped — each reported, like every line the readers
could not use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gastown import (
    Block,
    ClaudeSession,
    Problem,
    Transcript,
    jsonl_format,
    newest,
    read_claude_log,
    read_transcripts,
)
from provenance import sha256_bytes
from rag.documents import Document, ReadProblem, RigRead, SourceUnit, doc_id


@dataclass
class _Session:
    key: str
    source: str
    line: int
    version: tuple
    sha256: str
    time: float | None
    meta: dict[str, Any] = field(default_factory=dict)
    turns: list[tuple[str, str]] = field(default_factory=list)  # (speaker, text)


def _block_text(block: Block) -> str:
    """Text of one Claude Code content block (text, tool call, tool result)."""
    if block.kind in ("text", "tool_result"):
        return block.text
    if block.kind == "tool_use":
        if "command" in block.input:
            return f"$ {block.input['command']}"
        target = block.input.get("file_path") or block.input.get("path") or ""
        return f"[{block.tool or 'tool'} {target}]".replace(" ]", "]")
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


def _from_transcript(t: Transcript) -> _Session:
    return _Session(
        key=t.session_id,
        source=t.file,
        line=t.line,
        version=t.version,
        sha256=t.sha256,
        time=t.time,
        meta={
            "role": t.role,
            "agent": t.agent,
            "bead_id": t.bead_id,
            "task": t.task,
            "outcome": t.outcome,
            "failure_mode": t.failure_mode,
            "rig": t.rig,
        },
        turns=[(turn.speaker, turn.text) for turn in t.turns],
    )


def _from_claude_log(s: ClaudeSession) -> _Session:
    turns = []
    for event in s.turns:
        speaker = "tool" if any(b.kind == "tool_result" for b in event.blocks) else event.type
        text = " ".join(t for t in (_block_text(b).strip() for b in event.blocks) if t)
        if text:
            turns.append((speaker, text))
    return _Session(
        key=s.session_id,
        source=s.file,
        line=1,
        version=s.version,
        sha256=sha256_bytes(b"\n".join(e.raw for e in s.events)),
        time=s.time,
        meta={"title": s.title, "role": s.role or ""},
        turns=turns,
    )


def _report(problems: list[Problem], out: RigRead) -> None:
    out.problems.extend(ReadProblem.of(p) for p in problems if p.reason != "blank_line")


def read_sessions(paths: list[Path], root: Path, rig: str, limit: int, out: RigRead) -> None:
    """Add one ``sessions`` unit per session id found in ``paths`` (JSONL files under ``root``)."""
    found: list[_Session] = []
    for path in paths:
        rel = path.relative_to(root).as_posix()
        kind = jsonl_format(root, rel)
        if kind == "transcript":
            got = read_transcripts(root, rel)
            _report(got.problems, out)
            for t in got.transcripts:
                if t.rig != rig:
                    out.problems.append(
                        ReadProblem(
                            rel,
                            t.line,
                            f"session {t.session_id} belongs to rig {t.rig!r}, not {rig!r}",
                        )
                    )
                else:
                    found.append(_from_transcript(t))
        elif kind == "claude_code":
            log = read_claude_log(root, rel, rig=rig)
            _report(log.problems, out)
            if log.session is not None:
                found.append(_from_claude_log(log.session))
        else:
            out.problems.append(
                ReadProblem(rel, None, "neither transcript records nor a Claude Code log")
            )
    chosen = newest(found, key=lambda s: s.key, content=lambda s: s.sha256)
    for lost in chosen.superseded:
        first, then = sorted((lost.old, lost.winner), key=lambda s: (s.source, s.line))
        out.problems.append(
            ReadProblem(
                then.source,
                then.line,
                f"session {lost.old.key} repeats {first.source}:{first.line}"
                + (
                    ""
                    if lost.identical
                    else f"; the newer one, {lost.winner.source}:{lost.winner.line}, is used"
                ),
            )
        )
    for key, session in chosen.winners.items():
        if not any(text.strip() for speaker, text in session.turns if speaker != "system"):
            out.problems.append(
                ReadProblem(session.source, session.line, f"session {key} has no turns with text")
            )
            continue
        doc = Document(
            id=doc_id(rig, "sessions", key),
            collection="sessions",
            text=session_summary(key, session.meta, session.turns, limit),
            unit=key,
            source=session.source,
            source_sha256=session.sha256,
            rig=rig,
            role=session.meta.get("role") or "",
            bead_id=str(session.meta.get("bead_id") or ""),
            updated_ts=session.time,
            title=str(session.meta.get("title") or f"session {key}"),
        )
        out.units.append(SourceUnit("sessions", key, session.sha256, [doc]))
