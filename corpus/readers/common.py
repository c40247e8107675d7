"""Line-level reading shared by the JSONL readers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from base.hashing import sha256_bytes
from corpus.ledger import Ledger
from corpus.rig import Rig
from corpus.units import RecordRef
from dataload.schema import SourceKind


def iter_json_lines(
    rig: Rig, rel: str, kind: SourceKind, ledger: Ledger
) -> Iterator[tuple[RecordRef, bytes, dict[str, Any]]]:
    """Yield ``(record, raw bytes, object)`` for each line that is a JSON object.

    Every line is registered. Invalid UTF-8, invalid JSON and non-object lines are quarantined;
    blank lines are rejected. Nothing else is decided here.
    """
    raw_lines = (rig.root / rel).read_bytes().split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    for number, raw in enumerate(raw_lines, start=1):
        ref = RecordRef(rig.name, rel, number, number, kind)
        ledger.read(ref)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            ledger.mark([ref], "quarantined", "invalid_utf8", f"byte {exc.start}")
            continue
        if not text.strip():
            ledger.mark([ref], "rejected", "blank_line")
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            ledger.mark([ref], "quarantined", "invalid_json", f"{exc.msg} at column {exc.colno}")
            continue
        if not isinstance(obj, dict):
            ledger.mark([ref], "quarantined", "not_an_object", type(obj).__name__)
            continue
        yield ref, raw, obj


def require_str(obj: dict[str, Any], *names: str) -> str | None:
    """The first of ``names`` that is missing or not a non-empty string, else None."""
    for name in names:
        value = obj.get(name)
        if not isinstance(value, str) or not value.strip():
            return name
    return None


def sha(raw: bytes) -> str:
    return sha256_bytes(raw)
