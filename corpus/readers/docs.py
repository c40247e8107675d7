"""Convention documents (CLAUDE.md, AGENTS.md) and their older versions.

A document's current version is the file itself; older versions live in
``<history_dir>/<doc path>/<UTC stamp>.md`` (e.g. ``history/CLAUDE.md/20260210T090000Z.md``).
Each file is one record. The role comes from the document's directory (``polecats/`` →
polecat, ``crew/`` → crew, …); a rig-level document is ``all``.
"""

from __future__ import annotations

import re

from corpus.ledger import Ledger
from corpus.readers.claude_code import role_from_cwd
from corpus.readers.common import sha
from corpus.rig import Rig
from corpus.units import RecordRef, Unit

_STAMP = re.compile(r"^\d{8}T\d{6}Z$")


def _unit(rig: Rig, rel: str, doc_path: str, version: tuple, ledger: Ledger) -> Unit | None:
    data = (rig.root / rel).read_bytes()
    n_lines = max(1, data.count(b"\n") + (0 if data.endswith(b"\n") else 1))
    ref = RecordRef(rig.name, rel, 1, n_lines, "doc")
    ledger.read(ref)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        ledger.mark([ref], "quarantined", "invalid_utf8", f"byte {exc.start}")
        return None
    if not text.strip():
        ledger.mark([ref], "rejected", "empty_file")
        return None
    role = role_from_cwd("/".join(doc_path.split("/")[:-1])) or "all"
    return Unit(
        kind="doc",
        rig=rig.name,
        refs=[ref],
        role=role,
        artifact=f"doc:{doc_path}",
        version=version,
        turns=[],
        sha256=sha(data),
        task="conventions",
        content=text,
        extra={"doc_path": doc_path},
    )


def read_docs(
    rig: Rig, current: list[str], history: list[str], history_dir: str, ledger: Ledger
) -> list[Unit]:
    units: list[Unit] = []
    prefix = history_dir.rstrip("/") + "/"
    for rel in current:
        if rel.startswith(prefix):
            continue  # listed below as a history version
        u = _unit(rig, rel, rel, ("~current", rel), ledger)  # "~" sorts after any stamp
        if u:
            units.append(u)
    for rel in history:
        doc_path, _, name = rel[len(prefix) :].rpartition("/")
        stamp = name.rsplit(".", 1)[0]
        if not doc_path or not _STAMP.match(stamp):
            ref = RecordRef(rig.name, rel, 1, 1, "doc")
            ledger.read(ref)
            ledger.mark(
                [ref],
                "quarantined",
                "bad_history_name",
                "expected <history_dir>/<doc path>/<YYYYMMDDTHHMMSSZ>.md",
            )
            continue
        u = _unit(rig, rel, doc_path, (stamp, rel), ledger)
        if u:
            units.append(u)
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
