"""What a ``bd`` call does to a rig's ``.beads/issues.jsonl`` when the real ``bd`` is absent.

The recording shim (:mod:`evaluation.shim`) applies each parsed call here so that the model
sees a consistent tracker (``bd show`` after ``bd create`` finds the new bead), and the
scorers read the same file with the one beads reader (:mod:`gastown.beads`). Writes follow
bd's export: append-only, one JSON object per line with ``id``, ``title``, ``description``,
``status``, ``priority``, ``issue_type``, ``created_at``, ``updated_at``, ``closed_at``,
``close_reason``, ``assignee``, ``labels`` and ``dependencies`` (``issue_id``,
``depends_on_id``, ``type``); the newest ``updated_at`` of an id wins.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any

from evaluation.grammar import Invocation, parse_deps
from gastown.beads import newest_beads, read_beads
from gastown.layout import BEADS_FILE

ACTOR = "gastown/eval"


class BeadsCommandError(Exception):
    """A call bd would refuse at run time (an unknown id, a dependency cycle)."""


def current(rig: Path) -> dict[str, dict[str, Any]]:
    """The newest version of every bead in ``rig``'s export, as bd's JSON objects."""
    read = read_beads(rig, rig=rig.name)
    return {k: dict(b.fields) for k, b in newest_beads(read.beads).winners.items()}


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _prefix(beads: dict[str, dict]) -> str:
    for bead_id in beads:
        return bead_id.rsplit("-", 1)[0]
    return "gt"


def _new_id(beads: dict[str, dict], title: str) -> str:
    """A bd-style id (``prefix-xxxx``), derived from the title and the count (deterministic)."""
    prefix = _prefix(beads)
    n = 0
    while True:
        digest = hashlib.sha256(f"{title}\0{len(beads)}\0{n}".encode()).hexdigest()
        candidate = f"{prefix}-{int(digest[:8], 16) % 36**4:04x}"[: len(prefix) + 5]
        if candidate not in beads:
            return candidate
        n += 1


def _append(rig: Path, bead: dict[str, Any]) -> None:
    path = rig / BEADS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(bead, ensure_ascii=False) + "\n")


def _get(beads: dict[str, dict], bead_id: str) -> dict[str, Any]:
    if bead_id not in beads:
        raise BeadsCommandError(f"no issue found matching {bead_id!r}")
    return dict(beads[bead_id])


def _reaches(beads: dict[str, dict], start: str, goal: str) -> bool:
    """Does ``start`` depend, transitively, on ``goal``?"""
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node in seen:
            continue
        seen.add(node)
        todo += [d["depends_on_id"] for d in beads.get(node, {}).get("dependencies") or []]
    return False


def _dep(issue: str, target: str, kind: str, when: str) -> dict[str, str]:
    return {"issue_id": issue, "depends_on_id": target, "type": kind, "created_at": when,
            "created_by": ACTOR}  # fmt: skip


def apply(rig: Path, call: Invocation) -> str:
    """Apply a parsed ``bd`` call to ``rig`` and return what bd prints.

    Raises:
        BeadsCommandError: what bd would refuse (unknown id, cycle, self-dependency).
    """
    beads = current(rig)
    a, when = call.args, _now()
    if call.command == "create":
        bead_id = _new_id(beads, a["title"])
        deps = [_dep(bead_id, t, k, when) for t, k in parse_deps(a["deps"])]
        if a["parent"]:
            deps.append(_dep(bead_id, a["parent"], "parent-child", when))
        for d in deps:
            _get(beads, d["depends_on_id"])
        bead = {"id": bead_id, "title": a["title"], "description": a["description"],
                "status": "open", "priority": a["priority"], "issue_type": a["type"],
                "created_at": when, "updated_at": when, "created_by": ACTOR,
                "assignee": a["assignee"],
                "labels": [x.strip() for x in (a["labels"] or "").split(",") if x.strip()],
                "dependencies": deps}  # fmt: skip
        _append(rig, bead)
        return _json(bead) if a["json"] else f"✓ Created issue: {bead_id}\n  Title: {a['title']}\n"
    if call.command in ("update", "close", "reopen"):
        lines = []
        for bead_id in a["ids"]:
            bead = _get(beads, bead_id)
            if call.command == "update":
                for key, field in (("status", "status"), ("priority", "priority"),
                                   ("title", "title"), ("assignee", "assignee"),
                                   ("description", "description"), ("notes", "notes")):  # fmt: skip
                    if a.get(key) is not None:
                        bead[field] = a[key]
                if bead["status"] == "closed":
                    bead["closed_at"] = when
                lines.append(f"✓ Updated issue: {bead_id}")
            elif call.command == "close":
                bead.update(status="closed", closed_at=when, close_reason=a["reason"] or "")
                lines.append(f"✓ Closed {bead_id}: {a['reason'] or 'Closed'}")
            else:
                bead.update(status="open", closed_at=None)
                lines.append(f"✓ Reopened {bead_id}")
            bead["updated_at"] = when
            _append(rig, bead)
        return "\n".join(lines) + "\n"
    if call.command in ("dep add", "dep remove"):
        issue, target = a["issue"], a["depends_on"]
        bead = _get(beads, issue)
        _get(beads, target)
        deps = [d for d in bead.get("dependencies") or [] if d["depends_on_id"] != target]
        if call.command == "dep add":
            if issue == target or _reaches(beads, target, issue):
                raise BeadsCommandError(f"adding {issue} -> {target} would create a cycle")
            deps.append(_dep(issue, target, a["type"], when))
        bead.update(dependencies=deps, updated_at=when)
        _append(rig, bead)
        verb = "Added" if call.command == "dep add" else "Removed"
        return f"✓ {verb} dependency: {issue} depends on {target}\n"
    return _query(beads, call)


def _ready(beads: dict[str, dict]) -> list[dict]:
    """Open beads none of whose ``blocks`` dependencies is still open."""

    def blocked(bead: dict) -> bool:
        return any(
            d.get("type", "blocks") in ("blocks", "")
            and beads.get(d["depends_on_id"], {}).get("status", "closed") != "closed"
            for d in bead.get("dependencies") or []
        )

    return [b for b in beads.values() if b["status"] == "open" and not blocked(b)]


def _line(b: dict) -> str:
    return f"{b['id']} [P{b['priority']}] [{b['issue_type']}] {b['status']} - {b['title']}"


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def _query(beads: dict[str, dict], call: Invocation) -> str:
    a = call.args
    ordered = sorted(beads.values(), key=lambda b: (b["priority"], b["id"]))
    if call.command in ("list", "ready"):
        rows = _ready(beads) if call.command == "ready" else ordered
        rows = sorted(rows, key=lambda b: (b["priority"], b["id"]))
        for key in ("status", "type", "priority", "assignee"):
            field = "issue_type" if key == "type" else key
            if a.get(key) is not None:
                rows = [b for b in rows if b.get(field) == a[key]]
        if a.get("label"):
            rows = [b for b in rows if a["label"] in (b.get("labels") or [])]
        rows = rows[: a["limit"]] if a.get("limit") else rows
        if a["json"]:
            return _json(rows)
        if call.command == "ready":
            head = f"Ready work ({len(rows)} issues with no blockers):\n"
            return head + "".join(f"{i}. [P{b['priority']}] {b['id']}: {b['title']}\n"
                                  for i, b in enumerate(rows, 1))  # fmt: skip
        return "".join(_line(b) + "\n" for b in rows) or "No issues found.\n"
    if call.command == "show":
        shown = [_get(beads, i) for i in a["ids"]]
        if a["json"]:
            return _json(shown)
        out = []
        for b in shown:
            deps = ", ".join(f"{d['depends_on_id']} ({d.get('type')})"
                             for d in b.get("dependencies") or [])  # fmt: skip
            out.append(f"{b['id']}: {b['title']}\nStatus: {b['status']}\nPriority: "
                       f"P{b['priority']}\nType: {b['issue_type']}\n"
                       + (f"Depends on: {deps}\n" if deps else "")
                       + (f"\nDescription:\n{b.get('description')}\n"
                          if b.get("description") else ""))  # fmt: skip
        return "\n".join(out)
    if call.command == "dep tree":
        root = _get(beads, a["issue"])
        return (
            _line(root)
            + "\n"
            + "".join(
                f"  └─ {d['depends_on_id']} ({d.get('type')})\n"
                for d in root.get("dependencies") or []
            )
        )
    if call.command == "blocked":
        ready = {b["id"] for b in _ready(beads)}
        rows = [b for b in ordered if b["status"] == "open" and b["id"] not in ready]
        return "".join(_line(b) + "\n" for b in rows) or "No blocked issues.\n"
    counts: dict[str, int] = {}
    for b in beads.values():
        counts[b["status"]] = counts.get(b["status"], 0) + 1
    return f"Total issues: {len(beads)}\n" + "".join(f"{k}: {v}\n" for k, v in counts.items())
