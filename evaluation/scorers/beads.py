"""Bead management: scored per field and structurally from the rig's ``.beads/issues.jsonl``
(the real ``bd``'s, or the shim's, which applies each parsed call in bd's format).

- ``bead_created``: a new bead with the asked title words, type, priority, status, description
  words, parent and dependencies; the score is the share of those fields the best new bead has.
- ``bead_updated``: an existing bead reaches the asked status (through the asked transitions,
  read from its versions in the append-only export), with a close reason, priority, assignee.
- ``bead_epic``: an epic with the asked children linked to it (parent-child) and typed.
- ``bead_deps``: the asked dependency edges exist (and not reversed).
"""

from __future__ import annotations

from typing import Any

from evaluation.scorers.common import Attempt, Params, Score, words_in
from gastown.beads import read_beads


class BeadFields(Params):
    title: list[str] = []
    type: str | None = None
    priority: int | None = None
    status: str | None = None
    description: list[str] = []
    parent: str | None = None
    depends_on: list[str] = []
    assignee: str | None = None


def _deps(bead: dict[str, Any], kind: str | None = None) -> set[str]:
    return {
        d["depends_on_id"]
        for d in bead.get("dependencies") or []
        if kind is None or d.get("type") == kind
    }


def field_checks(bead: dict[str, Any], want: BeadFields) -> dict[str, bool]:
    """One check per field the task asks for."""
    checks: dict[str, bool] = {}
    if want.title:
        checks["title"] = words_in(bead.get("title"), want.title)
    if want.type is not None:
        checks["type"] = bead.get("issue_type") == want.type
    if want.priority is not None:
        checks["priority"] = bead.get("priority") == want.priority
    if want.status is not None:
        checks["status"] = bead.get("status") == want.status
    if want.description:
        checks["description"] = words_in(bead.get("description"), want.description)
    if want.parent is not None:
        checks["parent"] = want.parent in _deps(bead, "parent-child")
    if want.depends_on:
        checks["dependencies"] = set(want.depends_on) <= _deps(bead)
    if want.assignee is not None:
        checks["assignee"] = words_in(bead.get("assignee"), [want.assignee])
    return checks


class BeadCreated(BeadFields):
    kind: str = "bead_created"


def bead_created(p: BeadCreated, attempt: Attempt) -> Score:
    best = Score(0.0, {"new_beads": 0})
    new = attempt.new_beads()
    for bead in new:
        score = Score.of_checks(field_checks(bead, p), bead=bead["id"], new_beads=len(new))
        if score.score > best.score:
            best = score
    return best


class BeadUpdated(Params):
    id: str
    status: str | None = None
    transitions: list[str] = []
    reason: list[str] = []
    priority: int | None = None
    assignee: str | None = None


def _statuses(attempt: Attempt, bead_id: str) -> list[str]:
    """The bead's status in each version of the export, in file order, repeats folded."""
    read = read_beads(attempt.sandbox.work, rig=attempt.sandbox.work.name)
    seen: list[str] = []
    for bead in read.beads:
        if bead.id == bead_id and (not seen or seen[-1] != bead.status):
            seen.append(bead.status)
    return seen


def bead_updated(p: BeadUpdated, attempt: Attempt) -> Score:
    bead = attempt.beads().get(p.id)
    if bead is None or bead.get("updated_at") == attempt.sandbox.initial.get("bead_stamps", {}).get(
        p.id
    ):
        return Score(0.0, {"changed": False})
    checks = field_checks(bead, BeadFields(kind="x", status=p.status, priority=p.priority,
                                           assignee=p.assignee))  # fmt: skip
    if p.reason:
        checks["reason"] = words_in(bead.get("close_reason"), p.reason)
    if p.transitions:
        history, at = _statuses(attempt, p.id), 0
        for status in history:
            if at < len(p.transitions) and status == p.transitions[at]:
                at += 1
        checks["transitions"] = at == len(p.transitions)
    return Score.of_checks(checks, changed=True)


class BeadEpic(Params):
    epic: list[str]
    children: list[list[str]]
    child_type: str | None = None


def bead_epic(p: BeadEpic, attempt: Attempt) -> Score:
    new = attempt.new_beads()
    epics = [b for b in new if b.get("issue_type") == "epic" and words_in(b["title"], p.epic)]
    if not epics:
        return Score(0.0, {"epic": False, "new_beads": len(new)})
    epic = epics[0]["id"]
    checks: dict[str, bool] = {"epic": True}
    for words in p.children:
        name = " ".join(words)
        kids = [b for b in new if b["id"] != epic and words_in(b["title"], words)]
        checks[f"child {name}"] = bool(kids)
        checks[f"child {name} under epic"] = any(epic in _deps(b, "parent-child") for b in kids)
        if p.child_type is not None:
            checks[f"child {name} type"] = any(b.get("issue_type") == p.child_type for b in kids)
    return Score.of_checks(checks, epic_id=epic)


class BeadDeps(Params):
    edges: list[tuple[str, str]]


def bead_deps(p: BeadDeps, attempt: Attempt) -> Score:
    beads = attempt.beads()
    if all(beads.get(a, {}).get("updated_at") == attempt.sandbox.initial.get(
            "bead_stamps", {}).get(a) for a, _ in p.edges):  # fmt: skip
        return Score(0.0, {"changed": False})
    checks = {}
    for a, b in p.edges:
        checks[f"{a} depends on {b}"] = b in _deps(beads.get(a, {}))
        checks[f"not {b} depends on {a}"] = a not in _deps(beads.get(b, {}))
    return Score.of_checks(checks)


SCORERS = {
    "bead_created": (BeadCreated, bead_created),
    "bead_updated": (BeadUpdated, bead_updated),
    "bead_epic": (BeadEpic, bead_epic),
    "bead_deps": (BeadDeps, bead_deps),
}
