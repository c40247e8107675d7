"""Session transcripts in the ``gastown.transcript/1`` format: one session per JSONL line.

Required: ``schema``, ``session_id``, ``rig``, ``role``, ``outcome`` (success/failure),
``turns`` (list of {speaker: system|user|assistant|tool, text}). Optional: ``bead_id``,
``task``, ``failure_mode``, ``agent``, ``started_at``, ``ended_at``. Tool output becomes a
user turn prefixed ``[tool output]``. See docs/corpus.md.
"""

from __future__ import annotations

from corpus.ledger import Ledger
from corpus.readers.common import iter_json_lines, require_str, sha
from corpus.rig import Rig
from corpus.units import Unit

SCHEMA = "gastown.transcript/1"
_SPEAKERS = {"system", "user", "assistant", "tool"}
_OUTCOMES = {"success", "failure"}


def to_turns(raw_turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Map tool turns to user turns and merge consecutive turns of the same speaker."""
    turns: list[tuple[str, str]] = []
    for speaker, text in raw_turns:
        if speaker == "tool":
            speaker, text = "user", f"[tool output]\n{text}"
        if turns and turns[-1][0] == speaker:
            turns[-1] = (speaker, turns[-1][1] + "\n\n" + text)
        else:
            turns.append((speaker, text))
    return turns


def read_transcripts(rig: Rig, files: list[str], ledger: Ledger, roles: list[str]) -> list[Unit]:
    units: list[Unit] = []
    for rel in files:
        for ref, raw, obj in iter_json_lines(rig, rel, "transcript", ledger):
            if obj.get("schema") != SCHEMA:
                ledger.mark([ref], "quarantined", "unknown_schema", repr(obj.get("schema"))[:40])
                continue
            missing = require_str(obj, "session_id", "rig", "role", "outcome")
            if missing:
                ledger.mark([ref], "quarantined", "missing_field", missing)
                continue
            if obj["role"] not in roles:
                ledger.mark([ref], "quarantined", "unknown_role", obj["role"][:40])
                continue
            if obj["outcome"] not in _OUTCOMES:
                ledger.mark([ref], "quarantined", "bad_field", f"outcome={obj['outcome']!r:.40}")
                continue
            raw_turns = obj.get("turns")
            if not isinstance(raw_turns, list) or not raw_turns:
                ledger.mark([ref], "quarantined", "missing_field", "turns")
                continue
            bad = next(
                (
                    i
                    for i, t in enumerate(raw_turns)
                    if not isinstance(t, dict)
                    or t.get("speaker") not in _SPEAKERS
                    or not isinstance(t.get("text"), str)
                ),
                None,
            )
            if bad is not None:
                ledger.mark([ref], "quarantined", "bad_field", f"turns[{bad}]")
                continue
            units.append(
                Unit(
                    kind="transcript",
                    rig=obj["rig"],
                    refs=[ref],
                    role=obj["role"],
                    artifact=f"session:{obj['session_id']}",
                    version=(str(obj.get("ended_at") or ""), rel, ref.line),
                    turns=to_turns([(t["speaker"], t["text"]) for t in raw_turns]),
                    sha256=sha(raw),
                    task=obj.get("task") or None,
                    session_id=obj["session_id"],
                    bead_id=obj.get("bead_id") or None,
                    outcome=obj["outcome"],
                    failure_mode=obj.get("failure_mode") or None,
                    content="\n".join(f"{t['speaker']}: {t['text']}" for t in raw_turns),
                )
            )
    return units
