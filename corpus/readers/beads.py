"""Beads (``.beads/issues.jsonl``), read by :mod:`gastown.beads`: one unit per bead version.

Every version becomes a unit; recency keeps the newest later (same order as
:attr:`gastown.beads.Bead.version`). A bead example teaches *creating* a bead, so its role is
the role of the agent that wrote it (``created_by``); a bead whose author names no role (or
a role this build does not train) gets ``default_role``.
"""

from __future__ import annotations

from corpus.ledger import Ledger
from corpus.readers.common import record, register_problem
from corpus.units import Unit
from gastown import read_beads as read_bead_export
from gastown import role_from_address
from gastown.rig import Rig


def bead_role(created_by: object, roles: list[str], default: str) -> str:
    """``gastown/mayor`` → ``mayor``; ``gastown/polecats/nux`` → ``polecat``; else ``default``."""
    role = role_from_address(created_by)
    return role if role in roles else default


def read_beads(
    rig: Rig, files: list[str], ledger: Ledger, roles: list[str], default_role: str
) -> list[Unit]:
    units: list[Unit] = []
    for rel in files:
        got = read_bead_export(rig.root, rel, rig=rig.name)
        for problem in got.problems:
            register_problem(rig, problem, "bead", ledger)
        for bead in got.beads:
            ref = record(rig, rel, bead.line, bead.line, "bead", ledger)
            units.append(
                Unit(
                    kind="bead",
                    rig=rig.name,
                    refs=[ref],
                    role=bead_role(bead.created_by, roles, default_role),
                    artifact=f"bead:{bead.id}",
                    version=bead.version,
                    turns=[],
                    sha256=bead.sha256,
                    bead_id=bead.id,
                    task="bead-creation",
                    extra={"bead": bead.fields},
                )
            )
    return units
