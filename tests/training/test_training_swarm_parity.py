"""LoRA fine-tuning across real daemons equals single-process PEFT training (tiny model).

`node0 train` runs as a subprocess against a 3-stage swarm of real daemon processes; the
reference is PEFT on the whole model in this process with the same data order, seed and
hyperparameters. Also: a whole-swarm restart resumes from the checkpoints and continues the
same loss curve; NaN gradients are skipped and a trainer of another base model is refused.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch

from base.refusals import Reason, reason_of
from dataload import build_loaders
from tests.fixtures import (
    SPLIT,
    STEPS,
    local_swarm,
    peft_train_reference,
    run_train,
    train_config,
)
from training.config import TrainConfig

pytestmark = pytest.mark.integration

HALF = STEPS // 2


@cache
def reference(model_dir: str) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Single-process PEFT: per-step losses and the final adapter (PEFT file keys)."""
    return peft_train_reference(Path(model_dir), train_config(Path(model_dir)))


def stage_adapters(state_dir: Path, run_id: str) -> dict[str, torch.Tensor]:
    union = {}
    files = sorted(state_dir.glob(f"*/checkpoints/{run_id}/eq-L*.pt"))
    assert len(files) == 3, files
    for path in files:
        union.update(torch.load(path, weights_only=True)["adapter_state"])
    return union


def max_relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)) for k in b)


def test_lora_steps_over_three_daemons_equal_single_process_peft(tiny_model_dir, tmp_path):
    ref_losses, ref_adapter = reference(str(tiny_model_dir))
    with local_swarm(tmp_path, str(tiny_model_dir), SPLIT):
        _, record = run_train(
            tmp_path, tmp_path / "swarm.json", train_config(tiny_model_dir, run_id="eq-run")
        )
    losses = record["losses"]
    assert len(losses) == STEPS
    rel = [abs(a - b) / abs(b) for a, b in zip(losses, ref_losses, strict=True)]
    print(
        f"per-step loss max relative difference {max(rel):.2e}; "
        f"loss {losses[0]:.4f} -> {losses[-1]:.4f}"
    )
    assert max(rel) <= 1e-4
    adapter_rel = max_relative(stage_adapters(tmp_path / "peer-state", "eq-run"), ref_adapter)
    print(f"final adapter max relative difference {adapter_rel:.2e}")
    assert adapter_rel <= 1e-4
    assert record["after"]["heldout_loss"] < record["before"]["heldout_loss"]
    state = json.loads((tmp_path / "runs" / record["run_id"] / "state.json").read_text())
    assert state["state"] == "done"


@pytest.mark.slow
def test_whole_swarm_restart_resumes_the_same_loss_curve(tiny_model_dir, tmp_path):
    ref_losses, ref_adapter = reference(str(tiny_model_dir))
    config = train_config(tiny_model_dir, run_id="resume-run")
    with local_swarm(tmp_path, str(tiny_model_dir), SPLIT):
        _, first = run_train(tmp_path, tmp_path / "swarm.json", config, "--steps", str(HALF))
    first_dir = tmp_path / "runs" / first["run_id"]
    # every daemon is gone; a new swarm on the same state directories resumes the job
    with local_swarm(tmp_path, str(tiny_model_dir), SPLIT):
        _, second = run_train(tmp_path, tmp_path / "swarm.json", config, "--resume", str(first_dir))
    losses = first["losses"] + second["losses"]
    assert len(losses) == STEPS
    rel = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses, strict=True))
    print(f"resumed curve max relative difference {rel:.2e}")
    assert rel <= 1e-4
    assert second["before"]["step"] == HALF
    assert max_relative(stage_adapters(tmp_path / "peer-state", "resume-run"), ref_adapter) <= 1e-4


def test_bad_input_nan_gradients_skipped_and_another_base_model_refused(tiny_model_dir, tmp_path):
    import grpc

    from models.tiny import build_tiny_llama
    from training.stage_client import StageTrainClient

    other = build_tiny_llama(tmp_path / "other-model", seed=5)

    cfg = TrainConfig.model_validate(train_config(tiny_model_dir))
    loaders = build_loaders(cfg.data, model_dir=tiny_model_dir)
    batch = loaders.train.batch_at(loaders.train.position(0, 0))
    with local_swarm(tmp_path, str(tiny_model_dir), [("solo", [(0, 6)])]) as state:
        endpoint = Path(state.peers[0].log).read_text().split("serving on ")[1].split()[0]
        client = StageTrainClient(endpoint, job_id="nan-run", start=0, end=6, trainer_id="t")
        client.open_job(trainable="adapter:eq", model=str(tiny_model_dir), lora=cfg.lora)
        tensors = {
            "input": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "labels": batch.labels,
        }
        outcomes = []
        for scale in (float("nan"), 1.0 / batch.counted_tokens):
            client.forward("mb", tensors, loss_scale=scale)
            client.backward("mb", None)
            outcomes.append(client.optimizer_step(len(outcomes)))
        # a trainer of another base model: the DHT has no stage of it, and a stage asked
        # directly refuses the job
        proc, _ = run_train(tmp_path, tmp_path / "swarm.json", train_config(other), expect=5)
        assert "no online peer serves model" in proc.stderr
        with pytest.raises(grpc.RpcError) as refused:
            StageTrainClient(endpoint, job_id="x", start=0, end=6).open_job(
                trainable="adapter:eq", model=str(other), lora=cfg.lora
            )
        assert reason_of(refused.value) is Reason.WRONG_MODEL
        client.close()
    skipped, applied = outcomes
    print(
        f"NaN step: applied={skipped.applied} reason={skipped.reason!r}; next step applied="
        f"{applied.applied}, stage step {applied.step}, skipped {applied.skipped}"
    )
    assert not skipped.applied and "finite" in skipped.reason
    assert applied.applied and applied.step == 1 and applied.skipped == 1
