"""The trainer's data loader: examples → deterministic epoch order → shard → batches.

``SFTLoader`` (padding or packing) and ``DPOLoader`` (:mod:`dataload.dpo`) share the ordering,
sharding and resume logic of :class:`~dataload.ordered_loader.OrderedLoader`. A loader is built
once from a :class:`~dataload.config.DataConfig` (all examples are tokenized up front; nothing
is dropped without being counted) and then yields batches from any :class:`DataPosition`::

    data = build_loaders(cfg, model_dir=path)
    for batch in data.train.batches(start=saved_position, epochs=3):
        ...train on batch...
        saved_position = batch.next_position

Same config, data and tokenizer → the same ``fingerprint``, the same ``order_hash(epoch)`` and
the same batches byte for byte (:meth:`Batch.digest`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from base.errors import ConfigError
from dataload.collate import Batch, pack_batch, pack_rows, pad_batch
from dataload.config import DataConfig
from dataload.dpo import DPOLoader, encode_dpo
from dataload.ordered_loader import OrderedLoader
from dataload.sources import SourceRecords, read_sources
from dataload.tokenization import EncodeStats, TokenizedExample, encode_sft
from dataload.tokenizer import TokenizerInfo, load_tokenizer, tokenizer_info

log = logging.getLogger(__name__)


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
        quarantine: list[dict] = []
        pairs = [
            encode_dpo(
                r,
                tokenizer,
                eos_id=info.eos_id,
                max_length=cfg.max_length,
                mode=cfg.prompt_mode,
                truncation=cfg.truncation,
                stats=stats,
                quarantine=quarantine,
            )
            for r in src.records
        ]
        pairs = [p for p in pairs if p is not None]
        for q in quarantine:
            log.warning("dpo pair %s quarantined: %s", q["id"], q["reason"])
        loader = DPOLoader(
            pairs,
            pad_id=info.pad_id,
            settings=settings,
            report={**_report(src, stats), "quarantined": quarantine},
            **order_kw,
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
