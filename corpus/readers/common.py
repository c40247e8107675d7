"""Turning what the gastown readers return into ledger records.

Parsing lives in :mod:`gastown`; the corpus only decides what a problem means for the
build: a malformed line or file is quarantined with the reader's reason, an empty one
(``blank_line``, ``empty_file``) is rejected.
"""

from __future__ import annotations

from corpus.ledger import Ledger
from corpus.units import RecordRef
from dataload.schema import SourceKind
from gastown import Problem
from gastown.rig import Rig

_DETAIL_CHARS = 120


def record(
    rig: Rig, rel: str, line: int, line_end: int, kind: SourceKind, ledger: Ledger
) -> RecordRef:
    """Register one input record (a line, or lines 1..N of a whole file) and return it."""
    ref = RecordRef(rig.name, rel, line, line_end, kind)
    ledger.read(ref)
    return ref


def register_problem(rig: Rig, problem: Problem, kind: SourceKind, ledger: Ledger) -> None:
    """Register the record a reader could not use and give it its outcome."""
    ref = record(rig, problem.file, problem.line, problem.line_end, kind, ledger)
    status = "quarantined" if problem.malformed else "rejected"
    ledger.mark([ref], status, problem.reason, problem.detail[:_DETAIL_CHARS])
