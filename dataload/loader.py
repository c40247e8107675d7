"""The trainer's data loader: examples → deterministic epoch order → shard → batches.

``SFTLoader`` (padding or packing) and ``DPOLoader`` (:mod:`dataload.dpo`) share the ordering,
sharding and resume logic of :class:`OrderedLoader`. A loader is built once from a
:class:`~dataload.config.DataConfig` (all examples are tokenized up front; nothing is dropped
without being counted) and then yields batches from any :class:`DataPosition`::

    data = build_loaders(cfg, model_dir=path)
    for batch in data.train.batches(start=saved_position, epochs=3):
        ...train on batch...
        saved_position = batch.next_position

Same config, data and tokenizer → the same ``fingerprint``, the same ``order_hash(epoch)`` and
the same batches byte for byte (:meth:`Batch.digest`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from base.errors import ConfigError, DataError
from dataload.collate import Batch, pack_batch, pack_rows, pad_batch
from dataload.config import DataConfig
from dataload.order import DataPosition, epoch_order, order_hash, shard
from dataload.sources import SourceRecords, read_sources
from dataload.tokenization import EncodeStats, TokenizedExample, encode_sft
from dataload.tokenizer import TokenizerInfo, load_tokenizer, tokenizer_info
from provenance import sha256_json

log = logging.getLogger(__name__)


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


class SFTLoader(OrderedLoader):
    """Batches of tokenized SFT examples, padded or packed (:mod:`dataload.collate`)."""

    kind = "sft"

    def __init__(
        self,
        items: Sequence[TokenizedExample],
        *,
        pad_id: int,
        max_length: int,
        packing: bool = False,
        **kwargs,
    ) -> None:
        self.pad_id, self.max_length, self.packing = pad_id, max_length, packing
        settings = {
            "pad_id": pad_id,
            "max_length": max_length,
            "packing": packing,
            **kwargs.pop("settings", {}),
        }
        super().__init__(items, settings=settings, **kwargs)

    def _groups(self, ordered: list[TokenizedExample]) -> list[list]:
        if not self.packing:
            return super()._groups(ordered)
        rows = pack_rows(ordered, self.max_length)
        return [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]

    def _collate(self, group) -> Batch:
        if self.packing:
            return pack_batch(group, pad_id=self.pad_id, max_length=self.max_length)
        return pad_batch(group, pad_id=self.pad_id)


@dataclass
class Loaders:
    """What :func:`build_loaders` returns."""

    train: OrderedLoader
    heldout: OrderedLoader | None
    tokenizer: Any
    tokenizer_info: TokenizerInfo


def _report(src: SourceRecords, stats: EncodeStats) -> dict:
    return {
        "files": src.files,
        "malformed_lines": [str(e) for e in src.errors],
        "tokenization": stats.as_dict(),
    }


def build_loader(
    cfg: DataConfig, paths: list[Path], tokenizer, info: TokenizerInfo, *, heldout: bool = False
) -> OrderedLoader:
    """Read, tokenize and wrap ``paths`` as configured by ``cfg`` (held-out: no shuffle/shard)."""
    src = read_sources(paths, cfg.kind, strict=cfg.strict, roles=cfg.roles, tasks=cfg.tasks)
    stats = EncodeStats()
    order_kw = dict(
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        shuffle=cfg.shuffle and not heldout,
        shard_index=0 if heldout else cfg.shard_index,
        shard_count=1 if heldout else cfg.shard_count,
    )
    settings = {
        "prompt_mode": cfg.prompt_mode,
        "truncation": cfg.truncation,
        "tokenizer": info.fingerprint,
    }
    if cfg.kind == "sft":
        items = [
            encode_sft(
                r,
                tokenizer,
                eos_id=info.eos_id,
                max_length=cfg.max_length,
                mode=cfg.prompt_mode,
                truncation=cfg.truncation,
                stats=stats,
            )
            for r in src.records
        ]
        items = [i for i in items if i is not None]
        loader: OrderedLoader = SFTLoader(
            items,
            pad_id=info.pad_id,
            max_length=cfg.max_length,
            packing=cfg.packing,
            settings=settings,
            report=_report(src, stats),
            **order_kw,
        )
    else:
        from dataload.dpo import DPOLoader, encode_dpo

        pairs = [
            encode_dpo(
                r,
                tokenizer,
                eos_id=info.eos_id,
                max_length=cfg.max_length,
                mode=cfg.prompt_mode,
                truncation=cfg.truncation,
                stats=stats,
            )
            for r in src.records
        ]
        pairs = [p for p in pairs if p is not None]
        loader = DPOLoader(
            pairs, pad_id=info.pad_id, settings=settings, report=_report(src, stats), **order_kw
        )
    if stats.truncated or stats.dropped_too_long or stats.dropped_no_target:
        log.warning(
            "%s data: %d truncated, %d dropped as too long, %d dropped with no "
            "assistant token left (max_length %d)",
            cfg.kind,
            stats.truncated,
            stats.dropped_too_long,
            stats.dropped_no_target,
            cfg.max_length,
        )
    return loader


def build_loaders(
    cfg: DataConfig, *, model_dir: str | Path | None = None, tokenizer=None
) -> Loaders:
    """Build the train (and held-out) loaders; the tokenizer comes from ``model_dir``.

    Pass ``tokenizer`` instead only for a tokenizer built in memory (tests).

    Raises:
        DataError: malformed data (strict), missing paths, nothing to load.
        CheckpointError: no usable tokenizer in ``model_dir``.
        ConfigError: ``prompt_mode: chat`` with a tokenizer that has no chat template.
    """
    if tokenizer is None:
        if model_dir is None:
            raise ValueError("build_loaders needs model_dir (or a tokenizer)")
        tokenizer = load_tokenizer(model_dir)
    info = tokenizer_info(tokenizer, model_dir)
    if cfg.prompt_mode == "chat" and not info.has_chat_template:
        raise ConfigError(
            "prompt_mode 'chat' needs a tokenizer with a chat template; this model has none",
            hint="use prompt_mode: completion (the default)",
        )
    train = build_loader(cfg, cfg.train, tokenizer, info)
    held = build_loader(cfg, cfg.heldout, tokenizer, info, heldout=True) if cfg.heldout else None
    return Loaders(train, held, tokenizer, info)
