"""Claude Code session logs, read by :mod:`gastown.claude_code`: one unit per log file.

Turn events become turns: text blocks as text, ``tool_use`` as ``$ <command>`` for Bash and
``[<Tool>] <input JSON>`` otherwise, ``tool_result`` as a user turn prefixed
``[tool output]``. Thinking and image blocks are not training text (the line still counts as
used). Other event types (``summary``, ``file-history-snapshot``, …) are rejected as carrying
no training content. The role is the session's (its first working directory, see
:mod:`gastown.roles`); a session whose directory names no role is quarantined. The bead id
comes from the first user message; the outcome is unknown.
"""

from __future__ import annotations

import json
import re

from base.hashing import sha256_bytes
from corpus.ledger import Ledger
from corpus.readers.common import record, register_problem
from corpus.readers.transcripts import to_turns
from corpus.units import RecordRef, Unit
from gastown import ROLE_DIRS, Block, read_claude_log, role_from_path
from gastown.rig import Rig

_NO_ROLE = f"cwd has no {'/'.join(d for d in ROLE_DIRS if d != 'polecat')} component"


def role_from_cwd(cwd: str) -> str | None:
    """The role of a session's working directory (nearest role directory), None if none."""
    return role_from_path(cwd, is_dir=True)


def _turn(speaker: str, block: Block) -> tuple[str, str] | None:
    if block.kind == "text":
        return (speaker, block.text)
    if block.kind == "tool_use":
        if block.tool == "Bash" and isinstance(block.input.get("command"), str):
            return ("assistant", f"$ {block.input['command']}")
        args = json.dumps(block.input, sort_keys=True, ensure_ascii=False)
        return ("assistant", f"[{block.tool}] {args}")
    if block.kind == "tool_result":
        return ("tool", block.text)
    return None  # thinking, images


def read_claude_code(
    rig: Rig, files: list[str], ledger: Ledger, *, unknown_outcome: str
) -> list[Unit]:
    units: list[Unit] = []
    bead_re = (
        re.compile(rf"\b{re.escape(rig.bead_prefix)}-[a-z0-9]{{3,8}}\b")
        if rig.bead_prefix
        else None
    )
    for rel in files:
        got = read_claude_log(rig.root, rel, rig=rig.name)
        for problem in got.problems:
            register_problem(rig, problem, "claude_code", ledger)
        session = got.session
        if session is None:
            continue
        used: list[RecordRef] = []
        turns: list[tuple[str, str]] = []
        for event in session.events:
            ref = record(rig, rel, event.line, event.line, "claude_code", ledger)
            if not event.is_turn:
                ledger.mark([ref], "rejected", "no_training_content", f"type={event.type!r:.40}")
                continue
            turns.extend(t for b in event.blocks if (t := _turn(event.type, b)) is not None)
            used.append(ref)
        if not used:
            continue
        if session.role is None:
            ledger.mark(used, "quarantined", "unknown_role", _NO_ROLE)
            continue
        if unknown_outcome == "reject":
            ledger.mark(used, "rejected", "unknown_outcome", "claude_code_unknown_outcome=reject")
            continue
        merged = to_turns(turns)
        first_user = next((t for s, t in merged if s == "user"), "")
        bead = bead_re.search(first_user) if bead_re else None
        units.append(
            Unit(
                kind="claude_code",
                rig=rig.name,
                refs=used,
                role=session.role,
                artifact=f"session:{session.session_id}",
                version=session.version,
                turns=merged,
                sha256=sha256_bytes(b"\n".join(e.raw for e in session.turns)),
                session_id=session.session_id,
                bead_id=bead.group() if bead else None,
                outcome="unknown",
            )
        )
    return units
