"""The base of every loader: deterministic epoch order, sharding, a batching plan, resumption.

:class:`OrderedLoader` turns tokenized items (anything with an ``id`` and a ``digest()``) into
this shard's epoch order (:mod:`dataload.order`), groups it into batches and yields them from
any :class:`~dataload.order.DataPosition`; its ``fingerprint`` ties a saved position to the
items, the batching settings and the shard. ``SFTLoader`` (:mod:`dataload.loader`) and
``DPOLoader`` (:mod:`dataload.dpo`) say how an epoch's items become groups and a group a batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

from base.errors import DataError
from dataload.order import DataPosition, epoch_order, order_hash, shard
from provenance import sha256_json


class OrderedLoader:
    """Ordering, sharding, batching plan and resumable iteration over tokenized items.

    Subclasses define :meth:`_groups` (how an epoch's ordered items become batch groups) and
    :meth:`_collate` (a group → a batch).
    """

    kind = "base"

    def __init__(
        self,
        items: Sequence[Any],
        *,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        shard_index: int = 0,
        shard_count: int = 1,
        settings: dict | None = None,
        report: dict | None = None,
    ) -> None:
        if not items:
            raise DataError("no examples left to load after tokenization")
        self.items = list(items)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.shard_index, self.shard_count = shard_index, shard_count
        if len(self.items) <= shard_index:
            raise DataError(
                f"shard {shard_index}/{shard_count} is empty: only {len(self.items)} examples"
            )
        digest = hashlib.sha256()
        for item in self.items:
            digest.update(item.digest())
        self.fingerprint = sha256_json(
            {
                "kind": self.kind,
                "items": digest.hexdigest(),
                "batch_size": batch_size,
                "seed": seed,
                "shuffle": shuffle,
                "shard": [shard_index, shard_count],
                "settings": settings or {},
            }
        )
        self.report = report or {}
        self._plan = lru_cache(maxsize=4)(self._plan_uncached)

    # -- order ---------------------------------------------------------------------------
    def order(self, epoch: int) -> list[Any]:
        """This shard's items in the order of ``epoch``."""
        ids = [item.id for item in self.items]
        full = epoch_order(ids, seed=self.seed, epoch=epoch, shuffle=self.shuffle)
        return [self.items[i] for i in shard(full, index=self.shard_index, count=self.shard_count)]

    def order_hash(self, epoch: int = 0) -> str:
        """sha256 of this shard's sample order in ``epoch`` (record it in the run record)."""
        return order_hash([item.id for item in self.order(epoch)])

    def _plan_uncached(self, epoch: int) -> tuple[tuple[Any, ...], ...]:
        return tuple(tuple(g) for g in self._groups(self.order(epoch)))

    def num_batches(self, epoch: int = 0) -> int:
        """Batches in ``epoch`` (with packing this can differ slightly between epochs)."""
        return len(self._plan(epoch))

    # -- subclass hooks ------------------------------------------------------------------
    def _groups(self, ordered: list[Any]) -> list[list[Any]]:
        return [ordered[i : i + self.batch_size] for i in range(0, len(ordered), self.batch_size)]

    def _collate(self, group: Sequence[Any]):
        raise NotImplementedError

    # -- iteration -----------------------------------------------------------------------
    def position(self, epoch: int = 0, batch: int = 0) -> DataPosition:
        return DataPosition(epoch=epoch, batch=batch, fingerprint=self.fingerprint)

    def batch_at(self, position: DataPosition):
        """The batch at ``position`` (with its ``position`` / ``next_position`` set)."""
        plan = self._plan(position.epoch)
        if position.batch >= len(plan):
            raise DataError(
                f"epoch {position.epoch} has {len(plan)} batches; there is no "
                f"batch {position.batch}"
            )
        batch = self._collate(plan[position.batch])
        batch.position = self.position(position.epoch, position.batch)
        batch.next_position = (
            self.position(position.epoch, position.batch + 1)
            if position.batch + 1 < len(plan)
            else self.position(position.epoch + 1, 0)
        )
        return batch

    def batches(self, start: DataPosition | None = None, *, epochs: int | None = None) -> Iterator:
        """Yield batches from ``start`` (default: the beginning) up to the end of epoch
        ``epochs - 1`` (``None``: forever).

        Raises:
            DataError: ``start`` was saved under another dataset / tokenizer / config.
        """
        start = start or self.position()
        if start.fingerprint is not None and start.fingerprint != self.fingerprint:
            raise DataError(
                "the saved data position belongs to another dataset, tokenizer or "
                f"batching config (fingerprint {start.fingerprint[:12]} ≠ "
                f"{self.fingerprint[:12]}); refusing to resume on different data"
            )
        epoch, index = start.epoch, start.batch
        if index > self.num_batches(epoch):
            raise DataError(
                f"saved position batch {index} is past epoch {epoch}'s "
                f"{self.num_batches(epoch)} batches"
            )
        while epochs is None or epoch < epochs:
            for i in range(index, self.num_batches(epoch)):
                yield self.batch_at(DataPosition(epoch=epoch, batch=i))
            epoch, index = epoch + 1, 0

    def describe(self) -> dict:
        """Facts for the run record: sizes, fingerprint, epoch-0 order hash, what was dropped."""
        return {
            "kind": self.kind,
            "examples": len(self.items),
            "shard": [self.shard_index, self.shard_count],
            "examples_in_shard": len(self.order(0)),
            "batch_size": self.batch_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "fingerprint": self.fingerprint,
            "order_hash_epoch0": self.order_hash(0),
            "batches_epoch0": self.num_batches(0),
            **self.report,
        }
