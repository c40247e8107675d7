"""Format units into draft examples: role-tagged SFT conversations and DPO preference pairs.

Drafts still hold raw text; the build scrubs, checks and deduplicates them before they become
:class:`dataload.schema.SFTExample` / :class:`dataload.schema.DPOPair` records.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field

from base.hashing import sha256_json
from corpus.ledger import Ledger
from corpus.partition import infer_task, slug
from corpus.readers.docs import sections
from corpus.units import RecordRef, Unit
from gastown.roles import SINGLE_AGENT_ROLES


@dataclass
class Draft:
    """An example before scrubbing: ``turns`` (SFT) or ``prompt``/``chosen``/``rejected`` (DPO)."""

    kind: str  # "sft" | "dpo"
    id: str
    role: str
    task: str
    refs: list[RecordRef]
    provenance: dict
    recency: tuple
    turns: list[tuple[str, str]] = field(default_factory=list)
    prompt: list[tuple[str, str]] = field(default_factory=list)
    chosen: list[tuple[str, str]] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    failure_mode: str = ""
    rejected_provenance: dict = field(default_factory=dict)
    quality_score: float = 1.0

    def texts(self) -> list[str]:
        return [t for _, t in (self.turns or self.prompt + self.chosen + self.rejected)]


def provenance(u: Unit) -> dict:
    return {
        "source_kind": u.kind,
        "file": u.refs[0].file,
        "line": min(r.line for r in u.refs),
        "line_end": max(r.line_end for r in u.refs),
        "rig": u.rig,
        "role": u.role,
        "session_id": u.session_id,
        "bead_id": u.bead_id,
        "outcome": u.outcome,
        "sha256": u.sha256,
    }


def _recency(version: tuple) -> tuple[str, ...]:
    """A version key comparable across kinds (ints zero-padded)."""
    return tuple(f"{x:012d}" if isinstance(x, int) else str(x) for x in version)


def _id(prefix: str, *parts: object) -> str:
    return f"{prefix}-{sha256_json([str(p) if isinstance(p, tuple) else p for p in parts])[:16]}"


def _trim(turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop trailing non-assistant turns (a session that ends on unanswered tool output)."""
    out = list(turns)
    while out and out[-1][0] != "assistant":
        out.pop()
    return out


def _system(role: str, rig: str) -> str:
    who = (
        "an agent"
        if role == "all"
        else f"the {role}"
        if role in SINGLE_AGENT_ROLES
        else f"a {role}"
    )
    return (
        f"You are {who} in the {rig} rig of Gas Town. Work is tracked as beads; use the "
        "town's bd and gt commands."
    )


def session_sft(u: Unit) -> Draft | None:
    turns = _trim(u.turns)
    if not any(s == "assistant" for s, _ in turns) or not any(s == "user" for s, _ in turns):
        return None
    task = slug(u.task) if u.task else infer_task("\n".join(t for _, t in turns))
    return Draft(
        "sft",
        _id("sft", u.key, u.sha256),
        u.role,
        task,
        list(u.refs),
        provenance(u),
        _recency(u.version),
        turns=turns,
    )


def bead_drafts(u: Unit) -> list[Draft]:
    b = u.extra["bead"]
    desc = (b.get("description") or "").strip()
    cmd = [
        f"bd create --title {json.dumps(b['title'], ensure_ascii=False)} "
        f"--type {b['issue_type']} --priority {b['priority']}"
    ]
    for d in sorted(
        b.get("dependencies") or [], key=lambda d: (d.get("type", ""), d["depends_on_id"])
    ):
        if d.get("type") == "parent-child":
            cmd[0] += f" --parent {d['depends_on_id']}"
        else:
            cmd.append(f"bd dep add {b['id']} {d['depends_on_id']}")
    ask = f"File a bead in the {u.rig} rig for this work.\n\n{b['title']}"
    ask += f"\n\n{desc}" if desc else ""
    system = ("system", _system(u.role, u.rig))
    drafts = [
        Draft(
            "sft",
            _id("sft", u.key, u.sha256, "create"),
            u.role,
            "bead-creation",
            list(u.refs),
            provenance(u),
            _recency(u.version),
            turns=[system, ("user", ask), ("assistant", "\n".join(cmd))],
        )
    ]
    reason = b.get("close_reason")
    if b.get("status") == "closed" and isinstance(reason, str) and reason.strip():
        drafts.append(
            Draft(
                "sft",
                _id("sft", u.key, u.sha256, "close"),
                u.role,
                "bead-lifecycle",
                list(u.refs),
                provenance(u),
                _recency(u.version),
                turns=[
                    system,
                    ("user", f"{b['id']} ({b['title']}) is finished: {reason.strip()}"),
                    ("assistant", f"bd close {b['id']} --reason {json.dumps(reason.strip())}"),
                ],
            )
        )
    return drafts


def doc_drafts(u: Unit) -> list[Draft]:
    path = u.extra["doc_path"]
    out = []
    for i, (heading, body) in enumerate(sections(u.content)):
        out.append(
            Draft(
                "sft",
                _id("sft", u.key, u.sha256, i),
                u.role,
                "conventions",
                list(u.refs),
                provenance(u),
                _recency(u.version),
                turns=[
                    ("system", _system(u.role, u.rig)),
                    ("user", f"What does {path} in the {u.rig} rig say about {heading}?"),
                    ("assistant", body),
                ],
            )
        )
    return out


def formula_draft(u: Unit) -> Draft:
    name, desc = u.extra["name"], u.extra["description"]
    return Draft(
        "sft",
        _id("sft", u.key, u.sha256),
        u.role,
        "formulas",
        list(u.refs),
        provenance(u),
        _recency(u.version),
        turns=[
            ("system", _system(u.role, u.rig)),
            ("user", f"Write the {name} formula: {desc}"),
            ("assistant", u.content.strip()),
        ],
    )


def _split_prompt(turns: list[tuple[str, str]]) -> tuple[list, list]:
    first_user = next(i for i, (s, _) in enumerate(turns) if s == "user")
    return turns[: first_user + 1], _trim(turns[first_user + 1 :])


def dpo_drafts(sessions: list[Unit], ledger: Ledger) -> list[Draft]:
    """Pair each failed session with the newest successful one on the same bead and role."""
    groups: dict[tuple[str, str, str], list[Unit]] = defaultdict(list)
    for u in sessions:
        if u.kind == "transcript" and u.bead_id:
            groups[(u.rig, u.bead_id, u.role)].append(u)
    paired: set[str] = set()
    out: list[Draft] = []
    for _key, units in sorted(groups.items()):
        wins = sorted((u for u in units if u.outcome == "success"), key=lambda u: u.version)
        for fail in sorted((u for u in units if u.outcome == "failure"), key=lambda u: u.version):
            if not wins or not any(s == "user" for s, _ in fail.turns):
                continue
            win = wins[-1]
            prompt, chosen = _split_prompt(win.turns)
            _, rejected = _split_prompt(fail.turns)
            if (
                not chosen
                or not rejected
                or chosen[0][0] != "assistant"
                or rejected[0][0] != "assistant"
            ):
                continue
            task = slug(win.task) if win.task else infer_task("\n".join(t for _, t in win.turns))
            out.append(
                Draft(
                    "dpo",
                    _id("dpo", win.key, win.sha256, fail.key, fail.sha256),
                    win.role,
                    task,
                    sorted(set(win.refs + fail.refs)),
                    provenance(win),
                    max(_recency(win.version), _recency(fail.version)),
                    prompt=prompt,
                    chosen=chosen,
                    rejected=rejected,
                    failure_mode=slug(fail.failure_mode or "unspecified"),
                    rejected_provenance=provenance(fail),
                )
            )
            paired.add(fail.key)
    for u in sessions:
        if u.outcome == "failure" and u.key not in paired:
            ledger.mark(
                u.refs,
                "rejected",
                "unpaired_failure",
                "no successful session on the same bead and role to pair with",
            )
    return out


def format_units(units: list[Unit], ledger: Ledger) -> list[Draft]:
    """All drafts from the kept units, in a deterministic order."""
    drafts: list[Draft] = []
    for u in sorted(units, key=lambda u: u.key):
        if u.kind in ("transcript", "claude_code"):
            if u.outcome == "failure":
                continue  # preference material only
            d = session_sft(u)
            if d is None:
                ledger.mark(u.refs, "rejected", "no_assistant_turn")
            else:
                drafts.append(d)
        elif u.kind == "bead":
            drafts.extend(bead_drafts(u))
        elif u.kind == "doc":
            got = doc_drafts(u)
            if not got:
                ledger.mark(u.refs, "rejected", "no_sections")
            drafts.extend(got)
        elif u.kind == "formula":
            drafts.append(formula_draft(u))
    drafts.extend(dpo_drafts([u for u in units if u.kind == "transcript"], ledger))
    return sorted(drafts, key=lambda d: d.id)
