"""Exact and near-duplicate removal; among duplicates the newest example is kept.

Exact: identical turns (after scrubbing). Near: word 3-gram Jaccard similarity at or above the
configured threshold; candidates come from a 64-bit SimHash split into four 16-bit bands
(two examples are compared only if some band is equal), then Jaccard is computed exactly.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict

import numpy as np

from base.hashing import sha256_json
from corpus.format import Draft
from corpus.ledger import Ledger

_WORD = re.compile(r"\w+")


def _shingles(text: str) -> set[str]:
    words = _WORD.findall(text.lower())
    if len(words) < 3:
        return {" ".join(words)}
    return {" ".join(words[i : i + 3]) for i in range(len(words) - 2)}


def _simhash(shingles: set[str]) -> int:
    """64-bit SimHash: each bit is the majority vote of the shingles' blake2b hash bits."""
    digests = b"".join(
        hashlib.blake2b(s.encode(), digest_size=8).digest() for s in sorted(shingles)
    )
    bits = np.unpackbits(np.frombuffer(digests, dtype=np.uint8).reshape(-1, 8), axis=1)
    votes = bits.sum(axis=0, dtype=np.int64) * 2 - len(shingles)  # (64,) +1/-1 per shingle
    return int.from_bytes(np.packbits(votes > 0).tobytes(), "big")


def _content(d: Draft) -> list:
    return [d.kind, d.turns, d.prompt, d.chosen, d.rejected]


def deduplicate(drafts: list[Draft], ledger: Ledger, jaccard: float) -> list[Draft]:
    """Drafts without duplicates; the dropped ones are rejected in the ledger."""
    order = sorted(drafts, key=lambda d: (d.kind, d.recency, d.id), reverse=True)  # newest first
    kept: list[Draft] = []
    seen: dict[str, Draft] = {}
    for d in order:
        h = sha256_json(_content(d))
        if h in seen:
            ledger.mark(d.refs, "rejected", "exact_duplicate", f"same as {seen[h].id}")
            continue
        seen[h] = d
        kept.append(d)
    bands: dict[tuple[str, int, int], list[int]] = defaultdict(list)
    shingles: list[set[str]] = []
    result: list[Draft] = []
    for d in kept:
        sh = _shingles("\n".join(d.texts()[1:] if d.kind == "sft" else d.texts()))
        sig = _simhash(sh)
        keys = [(d.kind, b, sig >> (16 * b) & 0xFFFF) for b in range(4)]
        dup = None
        for idx in sorted({i for k in keys for i in bands[k]}):
            other = shingles[idx]
            if len(sh & other) / max(1, len(sh | other)) >= jaccard:
                dup = result[idx]
                break
        if dup is not None:
            ledger.mark(d.refs, "rejected", "near_duplicate", f"similar to {dup.id}")
            continue
        for k in keys:
            bands[k].append(len(result))
        shingles.append(sh)
        result.append(d)
    return sorted(result, key=lambda d: d.id)
