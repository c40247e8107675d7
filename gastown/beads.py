"""Beads: bd's JSONL export (``.beads/issues.jsonl``), one issue per line.

A line is a bead when it is a JSON object with non-empty string ``id``, ``title``, ``status``,
``issue_type`` and ``updated_at`` (an ISO 8601 time), an integer ``priority`` 0–4, and — if
present — ``dependencies`` as a list of objects with a string ``depends_on_id``. bd writes all
of these for every issue; a line without them was not written by bd and is a problem.

The export is append-only: an id may appear on several lines. Every valid line is a
:class:`Bead` version; :func:`newest_beads` picks the one with the newest ``updated_at``
(a tie goes to the later line).

A bead names two roles: the role of the agent that wrote it (``created_by``, e.g.
``gastown/mayor``) and the role of the agent it is for (``assignee``, e.g.
``gastown/polecats/nux``); either is ``None`` when the address names no role.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from base.hashing import sha256_json
from gastown._read import JsonLine, first_missing, json_lines, optional_str
from gastown.layout import BEADS_FILE
from gastown.problems import Problem
from gastown.recency import Newest, newest, parse_timestamp, stamp
from gastown.roles import role_from_address

PRIORITIES = range(0, 5)
_REQUIRED = ("id", "title", "status", "issue_type", "updated_at")


@dataclass(frozen=True)
class Dependency:
    """One edge: this bead depends on ``depends_on_id`` (``type``: blocks, parent-child, …)."""

    depends_on_id: str
    type: str = ""


@dataclass(frozen=True)
class Bead:
    """One version of a bead (one valid line of the export).

    Attributes:
        id, title, status, issue_type, priority, updated_at: bd's fields, as written.
        created_by: address of the agent that created it (``gastown/mayor``), or None.
        assignee: address of the agent it is assigned to, or None.
        author_role: role named by ``created_by``, or None.
        assignee_role: role named by ``assignee``, or None.
        dependencies: its dependency edges.
        fields: the whole JSON object (description, labels, notes, …).
        rig, file, line: where it was read (file relative to the rig root, line 1-based).
        sha256: sha256 of the raw line bytes.
    """

    id: str
    title: str
    status: str
    issue_type: str
    priority: int
    updated_at: str
    created_by: str | None
    assignee: str | None
    author_role: str | None
    assignee_role: str | None
    dependencies: tuple[Dependency, ...]
    fields: dict[str, Any] = field(repr=False, compare=False)
    rig: str
    file: str
    line: int
    sha256: str
    raw: bytes = field(repr=False, compare=False)

    @property
    def updated_ts(self) -> float:
        ts = parse_timestamp(self.updated_at)
        assert ts is not None  # checked when read
        return ts

    @property
    def version(self) -> tuple[str, str, int]:
        """Newer ``updated_at`` is newer; then the later file and line."""
        return (stamp(self.updated_ts), self.file, self.line)

    @property
    def canonical_sha256(self) -> str:
        """sha256 of the bead's canonical JSON: whitespace and key order do not count."""
        return sha256_json(self.fields)


@dataclass
class BeadsRead:
    """Every line of one export: the beads (all versions, file order) and the problems."""

    beads: list[Bead] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def _dependencies(deps: Any) -> tuple[Dependency, ...] | None:
    if deps is None:
        return ()
    if not isinstance(deps, list) or not all(
        isinstance(d, dict) and isinstance(d.get("depends_on_id"), str) for d in deps
    ):
        return None
    return tuple(Dependency(d["depends_on_id"], str(d.get("type") or "")) for d in deps)


def parse_bead(item: JsonLine, rel: str, rig: str) -> Bead | Problem:
    """The bead on one JSON line, or the first rule it breaks."""
    obj, n = item.obj, item.line
    subject = f"bead {obj['id']}" if optional_str(obj.get("id")) else ""

    def problem(reason: Any, detail: str) -> Problem:
        return Problem(rel, n, n, reason, detail, subject)

    missing = first_missing(obj, *_REQUIRED)
    if missing:
        return problem("missing_field", missing)
    if parse_timestamp(obj["updated_at"]) is None:
        return problem("bad_field", f"updated_at={obj['updated_at']!r:.40}")
    prio = obj.get("priority")
    if not isinstance(prio, int) or isinstance(prio, bool) or prio not in PRIORITIES:
        return problem("bad_field", f"priority={prio!r:.20}")
    deps = _dependencies(obj.get("dependencies"))
    if deps is None:
        return problem("bad_field", "dependencies")
    created_by, assignee = optional_str(obj.get("created_by")), optional_str(obj.get("assignee"))
    return Bead(
        id=obj["id"],
        title=obj["title"],
        status=obj["status"],
        issue_type=obj["issue_type"],
        priority=prio,
        updated_at=obj["updated_at"],
        created_by=created_by,
        assignee=assignee,
        author_role=role_from_address(created_by),
        assignee_role=role_from_address(assignee),
        dependencies=deps,
        fields=obj,
        rig=rig,
        file=rel,
        line=n,
        sha256=item.sha256,
        raw=item.raw,
    )


def read_beads(root: str | Path, rel: str = BEADS_FILE, *, rig: str) -> BeadsRead:
    """Read one bd export; every line becomes one bead or one problem.

    Args:
        root: the rig directory.
        rel: the export, relative to ``root``.
        rig: the rig's name, stored with every bead.
    """
    out = BeadsRead()
    for item in json_lines(Path(root), rel):
        got = item if isinstance(item, Problem) else parse_bead(item, rel, rig)
        (out.problems if isinstance(got, Problem) else out.beads).append(got)
    return out


def newest_beads(beads: list[Bead]) -> Newest[Bead]:
    """The newest version of every bead id; the others as superseded (or identical repeats)."""
    return newest(beads, key=lambda b: b.id, content=lambda b: b.canonical_sha256)
