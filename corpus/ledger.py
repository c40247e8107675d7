"""Accounting for every input record: ``read = accepted + quarantined + rejected``.

Readers register every record they read. Later stages attach outcomes to records (directly,
or through the units and examples built from them). A record's final disposition is
*accepted* if any example built from it was written, else *quarantined* if anything about it
was quarantined, else *rejected*. A record with no outcome at all is a pipeline bug and fails
the build (fail closed): nothing is dropped silently.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

from base.errors import DataError
from corpus.units import RecordRef

Status = Literal["accepted", "quarantined", "rejected"]
_ORDER = {"accepted": 0, "quarantined": 1, "rejected": 2}


@dataclass(frozen=True, order=True)
class Outcome:
    status: Status
    reason: str
    detail: str = ""


class Ledger:
    """Per-record outcomes, in a deterministic order."""

    def __init__(self) -> None:
        self._records: dict[RecordRef, list[Outcome]] = {}

    def read(self, ref: RecordRef) -> None:
        if ref in self._records:
            raise DataError(f"record {ref} registered twice (reader bug)")
        self._records[ref] = []

    def mark(self, refs: list[RecordRef], status: Status, reason: str, detail: str = "") -> None:
        for ref in refs:
            if ref not in self._records:
                raise DataError(f"outcome for unregistered record {ref} (pipeline bug)")
            self._records[ref].append(Outcome(status, reason, detail))

    def quarantined(self, ignore: frozenset[str] = frozenset()) -> set[RecordRef]:
        """Records with at least one quarantine outcome so far (reasons in ``ignore`` aside)."""
        return {
            r
            for r, outs in self._records.items()
            if any(o.status == "quarantined" and o.reason not in ignore for o in outs)
        }

    def dispositions(self) -> list[tuple[RecordRef, Outcome, list[Outcome]]]:
        """``(record, final outcome, all outcomes)`` for every record, sorted.

        Raises:
            DataError: some record has no outcome.
        """
        out = []
        missing = []
        for ref in sorted(self._records):
            outcomes = sorted(set(self._records[ref]), key=lambda o: (_ORDER[o.status], o))
            if not outcomes:
                missing.append(str(ref))
                continue
            out.append((ref, outcomes[0], outcomes))
        if missing:
            raise DataError(
                f"{len(missing)} record(s) without an outcome (pipeline bug): "
                + ", ".join(missing[:5])
            )
        return out

    def reconciliation(self) -> dict:
        """Counts per source file and per source kind, with the read = sum check."""
        by_source: dict[str, dict] = {}
        by_kind: dict[str, dict] = defaultdict(
            lambda: {"read": 0, "accepted": 0, "quarantined": 0, "rejected": 0}
        )
        for ref, final, _ in self.dispositions():
            entry = by_source.setdefault(
                ref.source,
                {"kind": ref.kind, "read": 0, "accepted": 0, "quarantined": 0, "rejected": 0},
            )
            for bucket in (entry, by_kind[ref.kind]):
                bucket["read"] += 1
                bucket[final.status] += 1
        ok = all(
            e["read"] == e["accepted"] + e["quarantined"] + e["rejected"]
            for e in [*by_source.values(), *by_kind.values()]
        )
        return {
            "ok": ok,
            "by_source": dict(sorted(by_source.items())),
            "by_kind": dict(sorted(by_kind.items())),
        }
