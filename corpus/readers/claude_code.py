"""Claude Code session logs (``~/.claude/projects/*/<session>.jsonl``): one event per line.

Events of type ``user`` / ``assistant`` become turns: text blocks as text, ``tool_use`` as
``$ <command>`` for Bash and ``[<Tool>] <input JSON>`` otherwise, ``tool_result`` as a user
turn prefixed ``[tool output]``. Thinking blocks are not training text (the line still counts
as used). Other event types (``summary``, ``file-history-snapshot``, …) are rejected as
carrying no training content. The agent role comes from the session's working directory
(``…/polecats/<name>``, ``…/crew/<name>``, ``…/witness``, ``…/mayor``, ``…/deacon``,
``…/boot``); the bead id from the first user message; the outcome is unknown.
"""

from __future__ import annotations

import json
import re
from typing import Any

from corpus.ledger import Ledger
from corpus.readers.common import iter_json_lines, sha
from corpus.readers.transcripts import to_turns
from corpus.rig import Rig
from corpus.units import RecordRef, Unit

_ROLE_DIRS = {
    "polecats": "polecat",
    "crew": "crew",
    "witness": "witness",
    "mayor": "mayor",
    "deacon": "deacon",
    "boot": "boot",
}


def role_from_cwd(cwd: str) -> str | None:
    parts = [p for p in re.split(r"[/\\]", cwd) if p]
    for part in reversed(parts):
        if part in _ROLE_DIRS:
            return _ROLE_DIRS[part]
    return None


def _blocks(content: Any, speaker: str) -> list[tuple[str, str]] | None:
    """Turns from a message's content; None if the content has an unknown shape."""
    if isinstance(content, str):
        return [(speaker, content)]
    if not isinstance(content, list):
        return None
    out: list[tuple[str, str]] = []
    for block in content:
        if not isinstance(block, dict):
            return None
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            out.append((speaker, block["text"]))
        elif kind == "tool_use":
            inp = block.get("input") or {}
            if block.get("name") == "Bash" and isinstance(inp.get("command"), str):
                out.append(("assistant", f"$ {inp['command']}"))
            else:
                out.append(
                    (
                        "assistant",
                        f"[{block.get('name')}] "
                        + json.dumps(inp, sort_keys=True, ensure_ascii=False),
                    )
                )
        elif kind == "tool_result":
            res = block.get("content")
            if isinstance(res, list):
                res = "\n".join(b.get("text", "") for b in res if isinstance(b, dict))
            out.append(("tool", str(res if res is not None else "")))
        elif kind in ("thinking", "redacted_thinking", "image"):
            continue
        else:
            return None
    return out


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
        used: list[RecordRef] = []
        raw_used: list[bytes] = []
        turns: list[tuple[str, str]] = []
        session_id = cwd = None
        for ref, raw, obj in iter_json_lines(rig, rel, "claude_code", ledger):
            kind = obj.get("type")
            if kind not in ("user", "assistant"):
                ledger.mark([ref], "rejected", "no_training_content", f"type={kind!r:.40}")
                continue
            msg = obj.get("message")
            got = _blocks(msg.get("content") if isinstance(msg, dict) else None, kind)
            if got is None:
                ledger.mark([ref], "quarantined", "bad_field", "message.content")
                continue
            session_id = session_id or obj.get("sessionId")
            cwd = cwd or obj.get("cwd")
            turns.extend(got)
            used.append(ref)
            raw_used.append(raw)
        if not used:
            continue
        merged = to_turns(turns)
        role = role_from_cwd(cwd or "")
        if role is None:
            ledger.mark(
                used,
                "quarantined",
                "unknown_role",
                "cwd has no polecats/crew/witness/mayor/deacon/boot component",
            )
            continue
        if unknown_outcome == "reject":
            ledger.mark(used, "rejected", "unknown_outcome", "claude_code_unknown_outcome=reject")
            continue
        first_user = next((t for s, t in merged if s == "user"), "")
        bead = bead_re.search(first_user) if bead_re else None
        units.append(
            Unit(
                kind="claude_code",
                rig=rig.name,
                refs=used,
                role=role,
                artifact=f"session:{session_id or rel}",
                version=("", rel, 0),
                turns=merged,
                sha256=sha(b"\n".join(raw_used)),
                session_id=session_id,
                bead_id=bead.group() if bead else None,
                outcome="unknown",
            )
        )
    return units
