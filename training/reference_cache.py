"""DPO reference log-probs, computed once per pair and kept in the run directory.

The reference model does not change during a run, so ``log π_ref(y|x)`` of a pair is computed
the first time the pair is met (a reference forward through the stages, adapters off) and
reused in every later epoch, held-out evaluation and resumed run: one evaluate forward per pair
instead of one per pair and epoch. Each entry is keyed by the pair id and a digest of the two
token rows it was computed on; the file records its provenance (model, reference, stage
dtypes, tokenizer and tokenization settings), and a file of another provenance is not used.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from provenance import atomic_write

log = logging.getLogger(__name__)

FORMAT = "node0-dpo-reference/1"


def row_key(pair_id: str, chosen: torch.Tensor, rejected: torch.Tensor) -> str:
    """The cache key of a pair: its id and the digest of its two unpadded token rows."""
    digest = hashlib.sha256()
    for ids in (chosen, rejected):
        digest.update(ids.to(torch.int64).numpy().tobytes())
        digest.update(b"|")
    return f"{pair_id}:{digest.hexdigest()[:16]}"


class ReferenceCache:
    """Reference log-probs per pair (:func:`row_key`) with the provenance they were made under."""

    def __init__(self, path: Path | None, provenance: dict):
        self.path = path
        self.provenance = provenance
        self.entries: dict[str, tuple[float, float]] = {}
        self.computed = 0  # pairs computed by this process
        self.reused = 0  # pairs found in the cache
        if path is not None and path.is_file():
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("reference cache %s unreadable (%s); recomputing", path, exc)
            return
        if data.get("format") != FORMAT or data.get("provenance") != self.provenance:
            log.warning(
                "reference cache %s was made under other settings (%s); recomputing",
                path,
                data.get("provenance"),
            )
            return
        self.entries = {k: (float(c), float(r)) for k, (c, r) in data["pairs"].items()}

    def get(self, key: str) -> tuple[float, float] | None:
        return self.entries.get(key)

    def put(self, key: str, chosen: float, rejected: float) -> None:
        self.entries[key] = (chosen, rejected)
        self.computed += 1

    def save(self) -> None:
        if self.path is None:
            return
        atomic_write(
            self.path,
            json.dumps(
                {
                    "format": FORMAT,
                    "provenance": self.provenance,
                    "pairs": {k: list(v) for k, v in sorted(self.entries.items())},
                }
            )
            + "\n",
        )

    def describe(self) -> dict:
        return {
            "provenance": self.provenance,
            "pairs": len(self.entries),
            "computed": self.computed,
            "reused": self.reused,
            "file": str(self.path) if self.path else None,
        }
