"""Session transcripts in the corpus collector's format (``gastown.transcript/1``).

``node0-inference`` records each turn and, when the session ends, appends one JSON line to a
transcript file that ``node0 corpus build`` reads (``<rig>/transcripts/**/*.jsonl``). The
append holds an exclusive lock so concurrent sessions never interleave lines.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gastown.roles import ROLES
from gastown.transcripts import SCHEMA


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class SessionTranscript:
    rig: str
    role: str
    agent: str | None = None
    bead_id: str | None = None
    task: str | None = None
    session_id: str = field(default_factory=lambda: f"ses-node0-{secrets.token_hex(6)}")
    started_at: str = field(default_factory=_now)
    turns: list[dict[str, Any]] = field(default_factory=list)
    errors: int = 0

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")

    def add(self, speaker: str, text: str, **extra: Any) -> None:
        """Record a turn; ``extra`` keys (JSON values) go beside ``speaker`` and ``text``, e.g. a
        tool call's id and exit code (see :mod:`inference.tool_agent`)."""
        self.turns.append({"speaker": speaker, "text": text, **extra})

    def record(self, *, outcome: str | None = None, failure_mode: str | None = None) -> dict:
        answered = any(t["speaker"] == "assistant" for t in self.turns)
        if outcome is None:  # technical outcome of the session; --outcome overrides
            outcome = "success" if answered and not self.errors else "failure"
            if outcome == "failure" and failure_mode is None:
                failure_mode = "errors" if self.errors else "no_answer"
        return {
            "schema": SCHEMA,
            "session_id": self.session_id,
            "rig": self.rig,
            "role": self.role,
            "agent": self.agent,
            "bead_id": self.bead_id,
            "task": self.task,
            "outcome": outcome,
            "failure_mode": failure_mode,
            "started_at": self.started_at,
            "ended_at": _now(),
            "turns": self.turns,
        }

    def append_to(self, path: Path, **kwargs) -> dict:
        record = self.record(**kwargs)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with open(path, "a", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return record
