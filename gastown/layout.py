"""What a Gas Town rig contains, and where (paths relative to the rig root).

- beads: ``.beads/issues.jsonl``, bd's export (:mod:`gastown.beads`);
- formulas: ``*.formula.toml``, usually in ``.beads/formulas/``; ``archive/`` holds older
  copies (:mod:`gastown.formulas`);
- convention documents: ``CLAUDE.md`` and ``AGENTS.md`` anywhere, older versions in
  ``history/<doc path>/<UTC stamp>.md`` (:mod:`gastown.documents`);
- session transcripts: ``transcripts/**/*.jsonl``, ``gastown.transcript/1``
  (:mod:`gastown.transcripts`);
- Claude Code logs: ``claude-sessions/**/*.jsonl``, one session per file
  (:mod:`gastown.claude_code`);
- rig settings: ``rig.toml`` (``[rig] name, bead_prefix``, ``[corpus] share_across_rigs``).

Roles are read off paths by :mod:`gastown.roles` (``polecats/<name>/``, ``witness/``, …).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

BEADS_FILE = ".beads/issues.jsonl"
FORMULA_SUFFIX = ".formula.toml"
DOC_NAMES: frozenset[str] = frozenset({"CLAUDE.md", "AGENTS.md"})
HISTORY_DIR = "history"
RIG_SETTINGS = "rig.toml"

JsonlFormat = Literal["transcript", "claude_code"]


def jsonl_format(root: str | Path, rel: str) -> JsonlFormat | None:
    """Which session format a JSONL file holds, judged by its first JSON object line.

    ``transcript`` when that line carries a ``schema`` or ``session_id`` key
    (``gastown.transcript/1``), ``claude_code`` when it carries a ``type`` or ``sessionId``
    key; None when no line is a JSON object or the first one is neither.
    """
    try:
        data = (Path(root) / rel).read_bytes()
    except OSError:
        return None
    for raw in data.split(b"\n"):
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            continue
        if not isinstance(obj, dict):
            continue
        if "schema" in obj or "session_id" in obj:
            return "transcript"
        if "type" in obj or "sessionId" in obj:
            return "claude_code"
        return None
    return None
