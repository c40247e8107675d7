"""Session transcripts (``gastown.transcript/1``), read by :mod:`gastown.transcripts`.

The format and its required fields are the reader's (see docs/corpus.md). Here a session
becomes a unit: tool output becomes a user turn prefixed ``[tool output]``, consecutive turns
of one speaker are merged, and a role outside the build's ``roles`` is quarantined.
"""

from __future__ import annotations

from corpus.ledger import Ledger
from corpus.readers.common import record, register_problem
from corpus.units import Unit
from gastown import read_transcripts as read_transcript_file
from gastown.rig import Rig


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
        got = read_transcript_file(rig.root, rel)
        for problem in got.problems:
            register_problem(rig, problem, "transcript", ledger)
        for t in got.transcripts:
            ref = record(rig, rel, t.line, t.line, "transcript", ledger)
            if t.role not in roles:
                ledger.mark([ref], "quarantined", "unknown_role", t.role)
                continue
            units.append(
                Unit(
                    kind="transcript",
                    rig=t.rig,
                    refs=[ref],
                    role=t.role,
                    artifact=f"session:{t.session_id}",
                    version=t.version,
                    turns=to_turns([(turn.speaker, turn.text) for turn in t.turns]),
                    sha256=t.sha256,
                    task=t.task,
                    session_id=t.session_id,
                    bead_id=t.bead_id,
                    outcome=t.outcome,
                    failure_mode=t.failure_mode,
                    content="\n".join(f"{turn.speaker}: {turn.text}" for turn in t.turns),
                )
            )
    return units
