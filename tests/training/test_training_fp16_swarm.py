"""``node0 train`` over three float16 daemons: dynamic loss scaling end to end.

The trainer finds a float16 route, so it scales the loss (``loss_scaling: auto``); started at a
scale that overflows (2**24), it skips the overflowing steps on every stage, halves the scale
after each, and trains once the scale fits. The stages end at the same step with float32
adapters, and the trainer checkpoint carries the scale.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.fixtures import SPLIT, local_swarm, run_train, train_config

pytestmark = pytest.mark.integration


def test_float16_daemons_train_with_dynamic_loss_scaling(tiny_model_dir, tmp_path):
    config = train_config(tiny_model_dir, run_id="fp16-run", steps=10, initial_loss_scale=2.0**24)
    with local_swarm(tmp_path, str(tiny_model_dir), SPLIT, dtype="float16"):
        _, record = run_train(tmp_path, tmp_path / "swarm.json", config)
    precision = record["precision"]
    scales, losses = precision["loss_scale"], record["losses"]
    print(f"float16 swarm: scales {scales}; losses {[round(x, 4) for x in losses]}")
    assert precision["stage_dtypes"] == ["float16"] * 3
    assert precision["loss_scaling"] == "dynamic" and scales[0] == 2.0**24
    assert len(scales) == len(losses) == 10 and all(math.isfinite(x) for x in losses)
    overflows = [scales[i + 1] == scales[i] / 2 for i in range(len(scales) - 1)]
    assert any(overflows) and not all(overflows)
    assert record["skipped_steps"] == precision["overflows"] >= sum(overflows)
    steps = []
    for path in sorted((tmp_path / "peer-state").glob("*/checkpoints/fp16-run/eq-L*.pt")):
        saved = torch.load(path, weights_only=True)
        assert {t.dtype for t in saved["adapter_state"].values()} == {torch.float32}
        steps.append(saved["step"])
    assert len(steps) == 3 and len(set(steps)) == 1  # every stage skipped the same steps
    assert steps[0] == 10 - record["skipped_steps"]
    trainer_checkpoint = tmp_path / "runs" / record["run_id"] / "trainer_checkpoint.json"
    assert (
        json.loads(trainer_checkpoint.read_text())["loss_scaler"]["overflows"]
        == (record["skipped_steps"])
    )
