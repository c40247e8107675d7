"""Training jobs as beads: one bead per formula run in the rig's tracker (bd's JSONL format).

bd's export (``.beads/issues.jsonl``) is append-only: every change of the job appends a new
version of the same bead (same ``id``, newer ``updated_at``), which :mod:`gastown.beads` reads
back. The bead's ``status`` follows the training lifecycle of the spec::

    corpus-validating → ready → training → syncing → checkpointing → evaluating
        → done | failed | degraded

The live states (``ready``/``training``/``syncing``/``checkpointing``/``degraded``) come from
the trainer's ``state.json`` (:func:`state_from_trainer`). A job that finished after its
trainer was ``degraded`` (it lost peers and rerouted) ends ``degraded``, not ``done``. The bead
depends on the corpus bead (``dependencies``), and its ``notes`` carry the registered version
and the eval scores when it closes, or the failure reason.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from base.errors import DataError
from gastown.beads import newest_beads, read_beads
from gastown.layout import BEADS_FILE

LIFECYCLE = (
    "corpus-validating",
    "ready",
    "training",
    "syncing",
    "checkpointing",
    "evaluating",
    "done",
    "failed",
    "degraded",
)
FINAL = frozenset({"done", "failed", "degraded"})
_TRAINER_STATES = {  # the trainer's state.json -> the job's lifecycle
    "ready": "ready",
    "training": "training",
    "syncing": "syncing",
    "checkpointing": "checkpointing",
    "degraded": "degraded",
    "done": "checkpointing",  # the trainer is done; the job goes on to evaluate
    "failed": "failed",
}


def _stamp() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def state_from_trainer(run_dir: str | Path) -> str | None:
    """The job state that a training run directory's ``state.json`` says, or None."""
    try:
        data = json.loads((Path(run_dir) / "state.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return _TRAINER_STATES.get(data.get("state"))


@dataclass
class JobBead:
    """A training job's bead in ``<rig>/.beads/issues.jsonl``."""

    rig_root: Path
    id: str
    title: str
    depends_on: list[str] = field(default_factory=list)
    status: str = "corpus-validating"
    notes: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    was_degraded: bool = False

    @classmethod
    def create(cls, rig_root: str | Path, *, prefix: str, title: str, depends_on=()) -> JobBead:
        bead = cls(
            rig_root=Path(rig_root),
            id=f"{prefix or 'node0'}-{secrets.token_hex(3)}",
            title=title,
            depends_on=list(depends_on),
            created_at=_stamp(),
        )
        bead._append()
        return bead

    @classmethod
    def load(cls, rig_root: str | Path, bead_id: str) -> JobBead:
        """The newest version of bead ``bead_id`` (to resume a job)."""
        read = read_beads(rig_root, rig=Path(rig_root).name)
        bead = newest_beads(read.beads).winners.get(bead_id)
        if bead is None:
            raise DataError(f"no bead {bead_id} in {Path(rig_root) / BEADS_FILE}")
        notes = bead.fields.get("notes") or "{}"
        try:
            notes_obj = json.loads(notes)
        except json.JSONDecodeError:
            notes_obj = {"text": notes}
        return cls(
            rig_root=Path(rig_root),
            id=bead.id,
            title=bead.title,
            depends_on=[d.depends_on_id for d in bead.dependencies],
            status=bead.status,
            notes=notes_obj,
            created_at=str(bead.fields.get("created_at", "")),
            was_degraded=bool(notes_obj.get("degraded")),
        )

    def set(self, status: str, **notes: Any) -> None:
        """Move to ``status`` (appending a new version of the bead); ``notes`` are merged."""
        if status not in LIFECYCLE:
            raise ValueError(f"unknown job state {status!r}")
        if status == "degraded":
            self.was_degraded = True
            notes["degraded"] = True
        if status == self.status and not notes:
            return
        self.status = status
        self.notes.update(notes)
        self._append()

    def finish(self, **notes: Any) -> None:
        """Close the job: ``degraded`` if its trainer ever was, else ``done``."""
        self.set("degraded" if self.was_degraded else "done", **notes)

    def line(self) -> dict[str, Any]:
        now = _stamp()
        line: dict[str, Any] = {
            "id": self.id,
            "title": self.title,
            "description": "node0 training job (formula train-role-model)",
            "status": self.status,
            "priority": 2,
            "issue_type": "task",
            "labels": ["training-job", "node0"],
            "created_at": self.created_at or now,
            "updated_at": now,
            "created_by": "node0/formula",
            "notes": json.dumps(self.notes, sort_keys=True),
            "dependencies": [
                {
                    "issue_id": self.id,
                    "depends_on_id": dep,
                    "type": "blocks",
                    "created_at": self.created_at or now,
                    "created_by": "node0/formula",
                }
                for dep in self.depends_on
            ],
        }
        if self.status in FINAL:
            line["closed_at"] = now
        return line

    def _append(self) -> None:
        path = self.rig_root / BEADS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        data = (json.dumps(self.line(), sort_keys=True) + "\n").encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:  # one write() of one line: appends from concurrent writers do not interleave
            os.write(fd, data)
        finally:
            os.close(fd)
