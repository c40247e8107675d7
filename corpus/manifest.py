"""Output files and the manifest: deterministic bytes, no timestamps, no absolute paths.

Layout of a build (inside the run directory)::

    sft/<role>/<task>.jsonl   SFT examples (dataload.schema.SFTExample), sorted by id
    dpo/<role>/<task>.jsonl   preference pairs (dataload.schema.DPOPair), sorted by id
    quarantine.jsonl          one line per quarantined input record: where, reason(s)
    rejected.jsonl            one line per rejected input record: where, reason(s)
    review.jsonl              reversions waiting for a reviewer
    quality_report.json       gate results and per-reason counts
    manifest.json             sha256 of every file above, counts, reconciliation
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from base.hashing import sha256_bytes
from corpus.ledger import Ledger

MANIFEST_SCHEMA = "node0.corpus-manifest/1"


def jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(
        json.dumps(r, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n"
        for r in rows
    ).encode("utf-8")


def json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


class OutputWriter:
    """Writes files under a run directory and remembers their sha256 for the manifest."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, dict] = {}

    def write(self, rel: str, data: bytes, records: int | None = None) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        entry = {"sha256": sha256_bytes(data), "size": len(data)}
        if records is not None:
            entry["records"] = records
        self.files[rel] = entry


def ledger_rows(ledger: Ledger) -> tuple[list[dict], list[dict], Counter, Counter]:
    """Quarantine and rejected rows, plus reason counts for each."""
    quarantined, rejected = [], []
    q_reasons: Counter[str] = Counter()
    r_reasons: Counter[str] = Counter()
    for ref, final, outcomes in ledger.dispositions():
        if final.status == "accepted":
            continue
        same = [o for o in outcomes if o.status == final.status]
        row = {
            "rig": ref.rig,
            "file": ref.file,
            "line": ref.line,
            "line_end": ref.line_end,
            "source_kind": ref.kind,
            "reason": final.reason,
            "reasons": [{"reason": o.reason, "detail": o.detail} for o in same],
        }
        if final.status == "quarantined":
            quarantined.append(row)
            q_reasons[final.reason] += 1
        else:
            rejected.append(row)
            r_reasons[final.reason] += 1
    return quarantined, rejected, q_reasons, r_reasons


def counts(rows: list[dict]) -> dict:
    by_role: Counter[str] = Counter(r["role"] for r in rows)
    by_task: Counter[str] = Counter(r["task"] for r in rows)
    by_both: Counter[str] = Counter(f"{r['role']}/{r['task']}" for r in rows)
    src_key = "provenance" if rows and "provenance" in rows[0] else "chosen_provenance"
    by_src: Counter[str] = Counter(r[src_key]["source_kind"] for r in rows) if rows else Counter()
    return {
        "total": len(rows),
        "by_role": dict(sorted(by_role.items())),
        "by_task": dict(sorted(by_task.items())),
        "by_role_task": dict(sorted(by_both.items())),
        "by_source_kind": dict(sorted(by_src.items())),
    }
