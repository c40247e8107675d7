"""Workflow formulas (``*.formula.toml``): one record per file.

Required keys: ``formula`` (name), ``version`` (integer), ``description``. Several files may
hold versions of the same formula (e.g. an ``archive/`` copy); recency decides later.
"""

from __future__ import annotations

import tomllib

from corpus.ledger import Ledger
from corpus.readers.common import sha
from corpus.rig import Rig
from corpus.units import RecordRef, Unit


def read_formulas(rig: Rig, files: list[str], ledger: Ledger) -> list[Unit]:
    units: list[Unit] = []
    for rel in files:
        data = (rig.root / rel).read_bytes()
        n_lines = max(1, data.count(b"\n") + (0 if data.endswith(b"\n") else 1))
        ref = RecordRef(rig.name, rel, 1, n_lines, "formula")
        ledger.read(ref)
        try:
            text = data.decode("utf-8")
            doc = tomllib.loads(text)
        except UnicodeDecodeError as exc:
            ledger.mark([ref], "quarantined", "invalid_utf8", f"byte {exc.start}")
            continue
        except tomllib.TOMLDecodeError as exc:
            ledger.mark([ref], "quarantined", "invalid_toml", str(exc)[:120])
            continue
        name, version = doc.get("formula"), doc.get("version")
        if not isinstance(name, str) or not name:
            ledger.mark([ref], "quarantined", "missing_field", "formula")
            continue
        if not isinstance(version, int) or isinstance(version, bool):
            ledger.mark([ref], "quarantined", "missing_field", "version")
            continue
        if not isinstance(doc.get("description"), str):
            ledger.mark([ref], "quarantined", "missing_field", "description")
            continue
        units.append(
            Unit(
                kind="formula",
                rig=rig.name,
                refs=[ref],
                role="all",
                artifact=f"formula:{name}",
                version=(version, rel),
                turns=[],
                sha256=sha(data),
                task="formulas",
                content=text,
                extra={"name": name, "description": doc["description"].strip()},
            )
        )
    return units
