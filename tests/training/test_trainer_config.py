"""Trainer pieces that need no swarm: config validation, micro-batches, data position."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from dataload.collate import Batch
from node.main_thread import MainThreadCalls
from training.config import TrainConfig
from training.trainer import microbatches

DATA = {"train": ["samples/sft/gastown_conventions.train.jsonl"]}


def test_config_defaults_and_refusals():
    cfg = TrainConfig.model_validate({"data": DATA})
    assert cfg.adapter == "gastown" and cfg.replicas == 1 and cfg.lora.rank == 8
    with pytest.raises(ValidationError, match="packing"):
        TrainConfig.model_validate({"data": {**DATA, "packing": True}})
    with pytest.raises(ValidationError, match="SFT"):
        TrainConfig.model_validate({"data": {**DATA, "kind": "dpo"}})
    with pytest.raises(ValidationError):
        TrainConfig.model_validate({"data": DATA, "adapter": "Not A Slug"})
    with pytest.raises(ValidationError):
        TrainConfig.model_validate({"data": DATA, "unknown_field": 1})


def test_microbatches_split_rows_and_keep_every_token():
    ids = torch.arange(30).reshape(5, 6)
    batch = Batch(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        labels=ids.clone(),
        position_ids=torch.zeros_like(ids),
        segment_ids=torch.zeros_like(ids),
        example_ids=tuple("abcde"),
        packed=False,
    )
    parts = microbatches(batch, 2)
    assert [mb.input_ids.shape[0] for mb in parts] == [2, 2, 1]
    assert torch.equal(torch.cat([mb.input_ids for mb in parts]), ids)
    assert sum(mb.counted_tokens for mb in parts) == batch.counted_tokens
    assert len(microbatches(batch, None)) == 1


def test_main_thread_calls_run_on_the_main_thread_and_pass_errors():
    import threading

    calls = MainThreadCalls()
    results = {}

    def worker():
        results["thread"] = calls.call(lambda: threading.current_thread().name, timeout=10)
        try:
            calls.call(lambda: 1 / 0, timeout=10)
        except ZeroDivisionError:
            results["error"] = True

    thread = threading.Thread(target=worker)
    thread.start()
    while thread.is_alive():
        calls.run_pending(0.05)
    assert results == {"thread": threading.main_thread().name, "error": True}
