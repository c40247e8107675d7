"""Helpers shared by the RAG tests (a uniquely named module: tests/ has no packages)."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAMPLE_RIG = REPO / "samples" / "gastown-rig"


def write_beads(root: Path, beads: list[dict]) -> None:
    path = root / ".beads" / "issues.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(b) + "\n" for b in beads))


SMALL_BEADS = [
    {
        "id": "tr-a1",
        "title": "Retry gt mail send on transient errors",
        "status": "open",
        "priority": 1,
        "issue_type": "bug",
        "updated_at": "2025-03-01T10:00:00Z",
        "description": "Sending mail fails when the router restarts.",
    },
    {
        "id": "tr-b2",
        "title": "Witness nudges polecats idle for ten minutes",
        "status": "closed",
        "priority": 2,
        "issue_type": "feature",
        "updated_at": "2025-03-02T10:00:00Z",
        "description": "Patrol checks last activity.",
        "assignee": "testrig/witness",
    },
    {
        "id": "tr-c3",
        "title": "Deacon compacts issues.jsonl monthly",
        "status": "open",
        "priority": 3,
        "issue_type": "chore",
        "updated_at": "2025-03-03T10:00:00Z",
        "description": "Housekeeping.",
    },
]


def make_small_rig(root: Path, rig: str | None = None) -> Path:
    """A rig with 3 beads, two convention files, a formula and a session transcript."""
    root.mkdir(parents=True, exist_ok=True)
    write_beads(root, SMALL_BEADS)
    (root / "CLAUDE.md").write_text(
        "# Conventions\n\n## Git\nNever push to main; submit with gt done.\n\n"
        "## Mail\nReport blockers to the witness with gt mail send.\n"
    )
    (root / "polecats").mkdir()
    (root / "polecats" / "CLAUDE.md").write_text(
        "# Polecat\nWork one slung bead at a time, run go test, then gt done.\n"
    )
    formulas = root / ".beads" / "formulas"
    formulas.mkdir(parents=True)
    (formulas / "mol-witness-patrol.formula.toml").write_text(
        'formula = "mol-witness-patrol"\ndescription = "Survey, nudge, escalate."\n'
        '[[steps]]\nid = "survey"\ntitle = "Survey polecats"\ndescription = "gt polecat list"\n'
    )
    (root / "transcripts").mkdir()
    record = {
        "schema": "gastown.transcript/1",
        "session_id": "ses-1",
        "rig": rig or root.name,
        "role": "polecat",
        "bead_id": "tr-a1",
        "outcome": "success",
        "ended_at": "2025-03-01T12:00:00Z",
        "turns": [
            {"speaker": "user", "text": "Your hook has tr-a1."},
            {"speaker": "assistant", "text": "Added retry with backoff; tests pass."},
        ],
    }
    (root / "transcripts" / "day1.jsonl").write_text(json.dumps(record) + "\n")
    return root
