"""A stage job in `averaging: {mode: diloco}` (lora/diloco.py): refusals, local steps without a
round, and a checkpoint that keeps the outer state so a reopened job continues its window."""

from __future__ import annotations

import pytest
import torch

from base.dht import start_dht
from lora.config import AveragingSettings, LoraSettings, OptimizerSettings
from lora.stage_adapters import adapter_state_dict
from pipeline_stages.errors import BadJobSettings
from pipeline_stages.loader import load_stage
from pipeline_stages.training import JobSettings, StageTrainingJob

LORA = LoraSettings(rank=4, alpha=8, init_seed=7)


def settings(replicas: int = 2) -> JobSettings:
    return JobSettings(
        trainable="adapter:dl",
        lora=LORA,
        optimizer=OptimizerSettings(learning_rate=5e-3, max_grad_norm=0.0),
        replicas=replicas,
        averaging=AveragingSettings(mode="diloco", local_steps=2),
    )


def local_step(job: StageTrainingJob, trainer_step: int):
    ids = torch.randint(3, 250, (2, 12), generator=torch.Generator().manual_seed(trainer_step))
    job.forward("m", {"input": ids, "labels": ids}, 1.0 / 24)
    job.backward("m", None)
    return job.optimizer_step(2.0, trainer_step=trainer_step)


def test_diloco_needs_replicas(tiny_model_dir):
    with pytest.raises(BadJobSettings, match="replicas > 1"):
        StageTrainingJob(load_stage(tiny_model_dir, 0, 6), settings(replicas=1))


def test_a_local_step_checkpoints_the_outer_state_and_a_reopened_job_continues(
    tiny_model_dir, tmp_path
):
    dht = start_dht([])
    jobs = []
    try:
        stage = load_stage(tiny_model_dir, 0, 6)
        job = StageTrainingJob(stage, settings(), dht=dht, checkpoint_dir=tmp_path)
        jobs.append(job)
        start = [p.detach().clone() for p in job.params]
        report = local_step(job, trainer_step=0)  # K = 2: step 1 is local, no round
        assert report.averaging is None and report.diloco == "local step 1/2"
        assert job.averager.rounds == 0 and job.guard.applied == 1
        moved = [p.detach().clone() for p in job.params]
        assert any(not torch.equal(a, b) for a, b in zip(start, moved, strict=True))
        # the replicas compare and share the outer parameters, not the local ones
        shared = job.averager._current_state()[1][: len(job.params)]
        assert all(torch.equal(a, b) for a, b in zip(shared, start, strict=True))
        job.save()
        local = adapter_state_dict(stage, "dl")
        job.close()

        again = StageTrainingJob(
            load_stage(tiny_model_dir, 0, 6), settings(), dht=dht, checkpoint_dir=tmp_path
        )
        jobs.append(again)
        assert again.resumed_from == "checkpoint"
        assert again.diloco.inner_steps == 1 and again.diloco.local_step == 1
        outer = again.diloco.outer_params()
        assert all(torch.equal(a, b) for a, b in zip(outer, start, strict=True))
        restored = adapter_state_dict(again.stage, "dl")
        assert all(torch.equal(local[k], restored[k]) for k in local)
    finally:
        for job in jobs:
            job.close()
        dht.shutdown()
