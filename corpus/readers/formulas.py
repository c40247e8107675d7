"""Workflow formulas (``*.formula.toml``), read by :mod:`gastown.formulas`: one record per file.

Required keys are the reader's (``formula``, ``version``, ``description``). Several files may
hold versions of one formula (an ``archive/`` copy); recency keeps the highest ``version``.
The role is the formula's (the role its name names: ``mol-witness-patrol`` → witness), else
``all``.
"""

from __future__ import annotations

from corpus.ledger import Ledger
from corpus.readers.common import record, register_problem
from corpus.units import Unit
from gastown import Problem, read_formula
from gastown.rig import Rig


def read_formulas(rig: Rig, files: list[str], ledger: Ledger) -> list[Unit]:
    units: list[Unit] = []
    for rel in files:
        got = read_formula(rig.root, rel, rig=rig.name)
        if isinstance(got, Problem):
            register_problem(rig, got, "formula", ledger)
            continue
        ref = record(rig, rel, 1, got.n_lines, "formula", ledger)
        units.append(
            Unit(
                kind="formula",
                rig=rig.name,
                refs=[ref],
                role=got.role or "all",
                artifact=f"formula:{got.name}",
                version=got.version,
                turns=[],
                sha256=got.sha256,
                task="formulas",
                content=got.text,
                extra={"name": got.name, "description": got.description.strip()},
            )
        )
    return units
