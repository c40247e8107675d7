"""Convention documents (CLAUDE.md, AGENTS.md) and their older versions, read by
:mod:`gastown.documents`.

A document's current version is the file itself; older versions live in
``<history_dir>/<doc path>/<UTC stamp>.md`` (e.g. ``history/CLAUDE.md/20260210T090000Z.md``).
Each file is one record. The role is the document's (its nearest role directory:
``polecats/`` → polecat, …); a rig-level document is ``all``.
"""

from __future__ import annotations

import re

from corpus.ledger import Ledger
from corpus.readers.common import record, register_problem
from corpus.units import Unit
from gastown import ConventionDoc, Problem, read_document
from gastown.rig import Rig


def _unit(rig: Rig, doc: ConventionDoc, ledger: Ledger) -> Unit:
    ref = record(rig, doc.file, 1, doc.n_lines, "doc", ledger)
    return Unit(
        kind="doc",
        rig=rig.name,
        refs=[ref],
        role=doc.role or "all",
        artifact=f"doc:{doc.doc_path}",
        version=doc.version,
        turns=[],
        sha256=doc.sha256,
        task="conventions",
        content=doc.text,
        extra={"doc_path": doc.doc_path},
    )


def read_docs(
    rig: Rig, current: list[str], history: list[str], history_dir: str, ledger: Ledger
) -> list[Unit]:
    units: list[Unit] = []
    prefix = history_dir.rstrip("/") + "/"
    # a current-name file under the history dir is listed again below as a history version
    files = [rel for rel in current if not rel.startswith(prefix)] + history
    for rel in files:
        got = read_document(rig.root, rel, rig=rig.name, history_dir=history_dir)
        if isinstance(got, Problem):
            register_problem(rig, got, "doc", ledger)
        else:
            units.append(_unit(rig, got, ledger))
    return units


def sections(text: str) -> list[tuple[str, str]]:
    """``(heading, body)`` per ``##`` section; the part before the first one is the intro."""
    parts = re.split(r"(?m)^(?=## )", text)
    out = []
    title = next((ln[2:].strip() for ln in text.splitlines() if ln.startswith("# ")), "overview")
    for part in parts:
        body = part.strip()
        if not body:
            continue
        heading = body.splitlines()[0][3:].strip() if body.startswith("## ") else title
        out.append((heading, body))
    return out
