"""Trainer pieces that need no swarm: config validation, micro-batches, data position."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from base.config_loader import load_yaml_config
from base.errors import ConfigError, ExitCode
from dataload.collate import Batch
from lora.config import AveragingSettings, OptimizerSettings
from node.main_thread import MainThreadCalls
from node.stage_service import _job_settings
from pipeline_stages.training import JobSettings
from proto import node0_pb2
from tests.fixtures import run_cli
from training.config import TrainConfig
from training.trainer import microbatches

DATA = {"train": ["samples/sft/gastown_conventions.train.jsonl"]}


def test_config_defaults_and_refusals():
    cfg = TrainConfig.model_validate({"data": DATA})
    assert cfg.adapter == "gastown" and cfg.replicas == 1 and cfg.lora.rank == 8
    with pytest.raises(ValidationError, match="packing"):
        TrainConfig.model_validate({"data": {**DATA, "packing": True}})
    dpo = TrainConfig.model_validate({"data": {**DATA, "kind": "dpo"}})
    assert dpo.dpo.beta == 0.1 and dpo.dpo.label_smoothing == 0.0
    assert dpo.dpo.reference_adapter is None and dpo.dpo.cache_reference
    with pytest.raises(ValidationError, match="reference must stay fixed"):
        TrainConfig.model_validate(
            {"data": {**DATA, "kind": "dpo"}, "dpo": {"reference_adapter": "gastown"}}
        )
    with pytest.raises(ValidationError, match="label_smoothing"):
        TrainConfig.model_validate({"data": DATA, "dpo": {"label_smoothing": 0.5}})
    with pytest.raises(ValidationError, match="beta"):
        TrainConfig.model_validate({"data": DATA, "dpo": {"beta": 0}})
    with pytest.raises(ValidationError):
        TrainConfig.model_validate({"data": DATA, "adapter": "Not A Slug"})
    with pytest.raises(ValidationError):
        TrainConfig.model_validate({"data": DATA, "unknown_field": 1})


def test_trainer_and_stage_share_one_definition_of_the_defaults():
    """One model holds the optimizer defaults (and one the averaging defaults): the trainer's
    config, a stage job opened without settings, and an empty request all get the same."""
    cfg = TrainConfig.model_validate({"data": DATA})
    assert cfg.optimizer == OptimizerSettings() == JobSettings().optimizer
    assert _job_settings(node0_pb2.TrainingJobRequest()).optimizer == OptimizerSettings()
    assert cfg.averaging == AveragingSettings() == JobSettings().averaging
    assert _job_settings(node0_pb2.TrainingJobRequest()).averaging == AveragingSettings()
    for name, field in OptimizerSettings.model_fields.items():
        assert TrainConfig.model_fields[name].default == field.default, name
    # the values node0 train has always used (training/config.py before the merge)
    assert cfg.optimizer.model_dump() == {
        "learning_rate": 1e-3,
        "weight_decay": 0.0,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "max_grad_norm": 1.0,
        "dtype": None,  # the route's (mixed precision: docs/lora.md)
        "loss_scaling": "auto",
    }
    overrides = TrainConfig.model_validate(
        {"data": DATA, "learning_rate": 2e-3, "betas": [0.8, 0.9]}
    )
    assert overrides.optimizer == OptimizerSettings(learning_rate=2e-3, betas=(0.8, 0.9))


def test_averaging_settings_validate_in_the_trainer(tmp_path):
    """A typo under ``averaging:`` is a local config error (exit 3): nothing starts."""
    path = tmp_path / "train.yaml"
    path.write_text(
        "data: {train: [samples/sft/gastown_conventions.train.jsonl]}\n"
        "averaging: {matchmaking_timout: 3}\n"
    )
    with pytest.raises(ConfigError, match="averaging.matchmaking_timout") as info:
        load_yaml_config(path, TrainConfig)
    assert info.value.exit_code == ExitCode.CONFIG
    runs = tmp_path / "runs"
    proc = run_cli(
        ["node.cli", "train", "--config", str(path), "--runs-dir", str(runs)], timeout=120
    )
    assert proc.returncode == ExitCode.CONFIG == 3, proc.stderr
    assert not runs.exists()  # failed before a run, a DHT peer or a stage call

    replicas = TrainConfig.model_validate(
        {"data": DATA, "replicas": 3, "averaging": {"min_group_size": 3}}
    )
    assert replicas.averaging.target_group_size == 3  # groups are as large as replicas
    with pytest.raises(ValidationError, match="min_group_size must not exceed"):
        TrainConfig.model_validate(
            {"data": DATA, "replicas": 2, "averaging": {"min_group_size": 3}}
        )
    with pytest.raises(ValidationError, match="contradicts replicas"):
        TrainConfig.model_validate(
            {"data": DATA, "replicas": 2, "averaging": {"target_group_size": 3}}
        )


def test_pipeline_schedule_and_micro_batch_size_are_validated():
    cfg = TrainConfig.model_validate({"data": DATA})
    assert cfg.schedule == "1f1b" and cfg.micro_batch_size is None
    for name in ("1f1b", "gpipe", "sequential"):
        assert TrainConfig.model_validate({"data": DATA, "schedule": name}).schedule == name
    with pytest.raises(ValidationError, match="'1f1b', 'gpipe' or 'sequential'"):
        TrainConfig.model_validate({"data": DATA, "schedule": "pipedream"})
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        TrainConfig.model_validate({"data": DATA, "micro_batch_size": 0})
    with pytest.raises(
        ValidationError, match="micro_batch_size 9 is larger than data.batch_size 8"
    ):
        TrainConfig.model_validate({"data": {**DATA, "batch_size": 8}, "micro_batch_size": 9})


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
