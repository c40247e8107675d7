"""How the trainer takes a stage's refusal: by its reason, never its message.

In process, against two real replicas of one stage served over gRPC: an adapter already on a
stage with other LoRA settings fails the route at once with a ConfigError (exit 3); a replica
leased to another trainer, or unreachable, is skipped for the next one, and with every replica
busy the route fails with a SwarmError (exit 5). The same two cases through ``node0 train``
against a real daemon process give those process exit codes.
"""

from __future__ import annotations

import re
import socket
from contextlib import ExitStack
from pathlib import Path

import pytest

from base.dht_records import StageRecord
from base.errors import ConfigError, ExitCode, SwarmError
from base.refusals import Reason, reason_of
from lora.config import LoraSettings
from tests.fixtures import local_swarm, run_train, stage_server, train_config
from training.config import TrainConfig
from training.stage_client import StageTrainClient
from training.trainer import SwarmTrainer

DATA = {"train": ["samples/sft/gastown_conventions.train.jsonl"]}


@pytest.fixture(scope="module")
def replicas(tiny_models):
    """Two in-process daemons, each serving all six layers of the tiny model."""
    model_dir = tiny_models[False]
    with ExitStack() as stack:
        servers = [
            stack.enter_context(stage_server(model_dir, [(0, 6)], peer_id=peer))
            for peer in ("peer-a", "peer-b")
        ]
        records = [
            StageRecord(
                model=str(model_dir), start=0, end=6, num_layers=6, endpoint=endpoint, peer_id=peer
            )
            for (_, _, endpoint), peer in zip(servers, ("peer-a", "peer-b"), strict=True)
        ]
        yield str(model_dir), [executor for executor, _, _ in servers], records


def trainer_for(model: str, records, run_id: str, **update) -> SwarmTrainer:
    config = TrainConfig.model_validate(
        {"model": model, "adapter": "route", "lora": {"rank": 4}, "data": DATA, **update}
    )
    return SwarmTrainer(
        config, run=None, loaders=None, records_fn=lambda: records, run_id=run_id, echo=print
    )


def hold(endpoint: str, job_id: str, trainer: SwarmTrainer) -> None:
    """Open ``job_id`` on ``endpoint`` for another trainer, with the trainer's own settings."""
    holder = StageTrainClient(endpoint, job_id=job_id, start=0, end=6, trainer_id="holder")
    trainer._open_job(holder)  # noqa: SLF001 (the trainer's request, under another lease)
    holder.close()


def test_an_adapter_conflict_is_a_config_error_and_tries_no_other_replica(replicas):
    model, (first, second), records = replicas
    trainer = trainer_for(model, records, "conflict-run", adapter="conflicted")
    other = StageTrainClient(records[0].endpoint, job_id="earlier", start=0, end=6)
    other.open_job(trainable="adapter:conflicted", lora=LoraSettings(rank=8), model=model)
    other.close()
    with pytest.raises(ConfigError) as info:
        trainer.connect()
    assert reason_of(info.value) is Reason.ADAPTER_CONFLICT
    assert info.value.exit_code == ExitCode.CONFIG == 3
    assert ("conflict-run", 0, 6) not in second.jobs  # refused for good: not tried elsewhere


def test_a_busy_lease_moves_on_to_the_next_replica_and_all_busy_is_a_swarm_error(replicas):
    model, (first, second), records = replicas
    trainer = trainer_for(model, records, "lease-run")
    hold(records[0].endpoint, "lease-run", trainer)
    assert trainer.connect() == 0
    assert [c.endpoint for c in trainer.stages] == [records[1].endpoint]
    assert first.jobs[("lease-run", 0, 6)].owner == "holder"
    assert second.jobs[("lease-run", 0, 6)].owner == trainer.trainer_id
    trainer.close_route()

    late = trainer_for(model, records, "lease-run")  # both replicas now leased
    with pytest.raises(SwarmError) as info:
        late.connect()
    assert reason_of(info.value) is Reason.LEASE_BUSY
    assert info.value.exit_code == ExitCode.SWARM == 5


def test_an_unreachable_replica_is_skipped(replicas):
    model, _, records = replicas
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        dead = records[0].model_copy(
            update={"endpoint": f"127.0.0.1:{sock.getsockname()[1]}", "peer_id": "peer-0"}
        )
        trainer = trainer_for(model, [dead, records[1]], "skip-run")
        assert trainer.connect() == 0
    assert [c.endpoint for c in trainer.stages] == [records[1].endpoint]
    trainer.close_route()


def test_the_stages_build_the_trainers_optimizer(replicas):
    """What the trainer's config says is what the stage's AdamW and clip use."""
    model, (first, _), records = replicas
    trainer = trainer_for(
        model,
        records[:1],
        "optimizer-run",
        learning_rate=3e-4,
        betas=(0.8, 0.95),
        weight_decay=0.01,
        max_grad_norm=0.5,
    )
    trainer.connect()
    trainer.close_route()
    job = first.jobs[("optimizer-run", 0, 6)]
    assert job.settings.optimizer == trainer.config.optimizer
    group = job.optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"], group["eps"]) == (
        3e-4,
        (0.8, 0.95),
        0.01,
        1e-8,
    )
    assert job.guard.max_grad_norm == 0.5


@pytest.mark.integration
def test_node0_train_exits_3_on_an_adapter_conflict_and_5_on_a_busy_lease(tiny_model_dir, tmp_path):
    with local_swarm(tmp_path, str(tiny_model_dir), [("solo", [(0, 6)])]) as state:
        endpoint = Path(state.peers[0].log).read_text().split("serving on ")[1].split()[0]
        leased = train_config(tiny_model_dir, run_id="leased-run")
        holder = StageTrainClient(endpoint, job_id="leased-run", start=0, end=6, trainer_id="x")
        cfg = TrainConfig.model_validate(leased)
        holder.open_job(
            trainable=f"adapter:{cfg.adapter}",
            optimizer=cfg.optimizer,
            model=cfg.model,
            lora=cfg.lora,
            averaging=cfg.averaging,
        )
        holder.close()
        proc, _ = run_train(tmp_path, tmp_path / "swarm.json", leased, expect=5)
        assert re.search(rf"\b{Reason.LEASE_BUSY}: ", proc.stderr), proc.stderr
        conflicting = train_config(
            tiny_model_dir, run_id="other-run", lora={"rank": 8, "alpha": 8, "init_seed": 7}
        )
        proc, _ = run_train(tmp_path, tmp_path / "swarm.json", conflicting, expect=3)
        assert re.search(rf"\b{Reason.ADAPTER_CONFLICT}: ", proc.stderr), proc.stderr
