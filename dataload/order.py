"""Deterministic, epoch-aware sample order; sharding across trainers; resumable data positions.

The order of epoch ``e`` under seed ``s`` sorts the examples by
``sha256("node0.order/1:{s}:{e}:{id}:{n}")`` (``n`` numbers repeated ids), so it depends only on
the seed, the epoch and the example ids — not on a library's random generator, whose streams
may change between versions. Every trainer computes the same global order; shard ``i`` of
``k`` takes every ``k``-th example starting at ``i``, so the shards of an epoch are disjoint,
their union is the whole epoch, and their sizes differ by at most one.

``order_hash`` is the sha256 of the ids of one shard's epoch order (the samples that trainer
sees, in the order it sees them); it goes into the run record.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from provenance import sha256_json

ORDER_SCHEME = "node0.order/1"


class DataPosition(BaseModel):
    """Where a trainer is in its data: the next batch to train is ``batch`` of ``epoch``.

    Saved with a checkpoint and passed back to the loader to resume exactly; ``fingerprint``
    ties it to the dataset, tokenizer and batching config it was taken under (the loader refuses
    a position taken under another one).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epoch: int = Field(0, ge=0)
    """Epoch of the next batch (0-based)."""
    batch: int = Field(0, ge=0)
    """Index of the next batch within the epoch (0-based)."""
    fingerprint: str | None = None
    """The loader fingerprint this position belongs to (``None``: not checked)."""


def epoch_order(ids: Sequence[str], *, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """Indices of ``ids`` in the order of ``epoch`` (input order when not shuffling)."""
    if not shuffle:
        return list(range(len(ids)))
    seen: Counter[str] = Counter()
    keys = []
    for index, example_id in enumerate(ids):
        n = seen[example_id]
        seen[example_id] += 1
        key = hashlib.sha256(f"{ORDER_SCHEME}:{seed}:{epoch}:{example_id}:{n}".encode()).digest()
        keys.append((key, index))
    return [index for _, index in sorted(keys)]


def shard(order: Sequence[int], *, index: int, count: int) -> list[int]:
    """Shard ``index`` of ``count``: every ``count``-th element starting at ``index``."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in [0, {count})")
    return list(order[index::count])


def order_hash(ids_in_order: Sequence[str]) -> str:
    """sha256 of a sample order (a JSON list of example ids)."""
    return sha256_json([ORDER_SCHEME, list(ids_in_order)])
