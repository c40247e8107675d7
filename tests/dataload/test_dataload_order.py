"""Deterministic order, order hash, resume from a saved position, sharding."""

from __future__ import annotations

import pytest

from base.errors import DataError
from dataload.config import DataConfig
from dataload.loader import build_loaders
from dataload.order import DataPosition, epoch_order, shard
from tests.fixtures import SAMPLES

TRAIN = SAMPLES / "gastown_conventions.train.jsonl"


def _loader(tokenizer, **kw):
    cfg = DataConfig(train=[TRAIN], max_length=160, batch_size=kw.pop("batch_size", 8), **kw)
    return build_loaders(cfg, tokenizer=tokenizer).train


def _digests(loader, **kw) -> list[str]:
    return [b.digest() for b in loader.batches(**kw)]


@pytest.mark.parametrize("packing", [False, True])
def test_same_seed_same_batches_different_seed_different(tiny_tokenizer, packing) -> None:
    a = _loader(tiny_tokenizer, seed=1, packing=packing)
    b = _loader(tiny_tokenizer, seed=1, packing=packing)
    c = _loader(tiny_tokenizer, seed=2, packing=packing)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert a.order_hash(0) == b.order_hash(0) != c.order_hash(0)
    assert a.order_hash(0) != a.order_hash(1)  # epoch-aware
    assert _digests(a, epochs=2) == _digests(b, epochs=2)
    assert _digests(a, epochs=1) != _digests(c, epochs=1)
    # an epoch is a permutation of all examples
    assert sorted(e.id for e in a.order(0)) == sorted(e.id for e in a.items)
    assert a.describe()["order_hash_epoch0"] == a.order_hash(0)


def test_order_does_not_depend_on_file_order() -> None:
    ids = [f"sft-{i:016x}" for i in range(50)]
    forward = [ids[i] for i in epoch_order(ids, seed=3, epoch=0)]
    backward = [ids[::-1][i] for i in epoch_order(ids[::-1], seed=3, epoch=0)]
    assert forward == backward and forward != ids


@pytest.mark.parametrize("packing", [False, True])
def test_resume_from_saved_position_continues_identically(tiny_tokenizer, packing) -> None:
    loader = _loader(tiny_tokenizer, seed=5, packing=packing)
    full = list(loader.batches(epochs=2))
    per_epoch = loader.num_batches(0)
    assert per_epoch < len(full)  # the run crosses an epoch boundary
    cut = per_epoch - 2
    saved = full[cut - 1].next_position.model_dump_json()  # saved after training batch cut-1
    again = _loader(tiny_tokenizer, seed=5, packing=packing)  # a restarted process
    resumed = list(again.batches(start=DataPosition.model_validate_json(saved), epochs=2))
    assert [b.digest() for b in resumed] == [b.digest() for b in full[cut:]]
    assert resumed[0].position == full[cut].position
    assert full[per_epoch - 1].next_position.epoch == 1
    assert full[per_epoch - 1].next_position.batch == 0


def test_resume_refuses_a_position_from_other_data(tiny_tokenizer) -> None:
    position = next(iter(_loader(tiny_tokenizer, seed=5).batches())).next_position
    other = _loader(tiny_tokenizer, seed=6)
    with pytest.raises(DataError, match="another dataset"):
        next(iter(other.batches(start=position)))
    with pytest.raises(DataError):
        next(iter(other.batches(start=DataPosition(epoch=0, batch=10_000))))


def test_shards_are_disjoint_and_cover_the_epoch(tiny_tokenizer) -> None:
    shards = [_loader(tiny_tokenizer, seed=9, shard_index=i, shard_count=3) for i in range(3)]
    whole = _loader(tiny_tokenizer, seed=9)
    for epoch in (0, 1):
        parts = [[e.id for e in s.order(epoch)] for s in shards]
        seen = [i for p in parts for i in p]
        assert len(seen) == len(set(seen))  # disjoint
        assert sorted(seen) == sorted(e.id for e in whole.order(epoch))  # union = all
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        # what a shard trains on is exactly its order
        batched = [
            i
            for b in shards[1].batches(start=shards[1].position(epoch), epochs=epoch + 1)
            for i in b.example_ids
        ]
        assert batched == parts[1]
    assert len({s.order_hash(0) for s in shards}) == 3
    with pytest.raises(ValueError):
        shard([1, 2, 3], index=2, count=2)
    with pytest.raises(ValueError):
        DataConfig(train=[TRAIN], shard_index=2, shard_count=2)
