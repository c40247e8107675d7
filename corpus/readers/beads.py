"""Beads from bd's JSONL export (``.beads/issues.jsonl``): one issue per line.

Required: ``id``, ``title``, ``status``, ``issue_type``, ``priority`` (0–4), ``updated_at``.
The same id may appear more than once (an append-only export); recency decides later.
"""

from __future__ import annotations

from corpus.ledger import Ledger
from corpus.readers.common import iter_json_lines, require_str, sha
from corpus.rig import Rig
from corpus.units import Unit


def bead_role(created_by: object, roles: list[str], default: str) -> str:
    """``gastown/mayor`` → ``mayor``; ``gastown/polecats/nux`` → ``polecat``; else ``default``."""
    if isinstance(created_by, str):
        for part in reversed(created_by.split("/")):
            name = part[:-1] if part.endswith("s") and part[:-1] in roles else part
            if name in roles:
                return name
    return default


def read_beads(
    rig: Rig, files: list[str], ledger: Ledger, roles: list[str], default_role: str
) -> list[Unit]:
    units: list[Unit] = []
    for rel in files:
        for ref, raw, obj in iter_json_lines(rig, rel, "bead", ledger):
            missing = require_str(obj, "id", "title", "status", "issue_type", "updated_at")
            if missing:
                ledger.mark([ref], "quarantined", "missing_field", missing)
                continue
            prio = obj.get("priority")
            if not isinstance(prio, int) or isinstance(prio, bool) or not 0 <= prio <= 4:
                ledger.mark([ref], "quarantined", "bad_field", f"priority={prio!r:.20}")
                continue
            deps = obj.get("dependencies") or []
            if not isinstance(deps, list) or not all(
                isinstance(d, dict) and isinstance(d.get("depends_on_id"), str) for d in deps
            ):
                ledger.mark([ref], "quarantined", "bad_field", "dependencies")
                continue
            units.append(
                Unit(
                    kind="bead",
                    rig=rig.name,
                    refs=[ref],
                    role=bead_role(obj.get("created_by"), roles, default_role),
                    artifact=f"bead:{obj['id']}",
                    version=(obj["updated_at"], rel, ref.line),
                    turns=[],
                    sha256=sha(raw),
                    bead_id=obj["id"],
                    task="bead-creation",
                    extra={"bead": obj},
                )
            )
    return units
