"""LoRA fine-tuning of a tiny Qwen2 across three real daemons equals single-process PEFT.

`node0 train` runs as a subprocess against a 3-stage swarm; the reference is PEFT on the whole
``Qwen2ForCausalLM`` in this process with the same data order, seed and hyperparameters (the
LLaMA twin, with more steps and the restart/NaN cases, is test_training_swarm_parity.py).
"""

from __future__ import annotations

import pytest

from tests.fixtures import (
    SPLIT,
    local_swarm,
    max_relative,
    peft_train_reference,
    run_train,
    stage_adapter_union,
    train_config,
)

pytestmark = pytest.mark.integration

STEPS = 5


# slow: a second family through the same family-neutral trainer; the LLaMA parity test covers
# swarm training in the default tier, and Qwen2 stays there for serving (test_swarm_qwen2.py)
@pytest.mark.slow
def test_lora_steps_over_three_qwen2_daemons_equal_single_process_peft(tiny_qwen2_dir, tmp_path):
    config = train_config(tiny_qwen2_dir, run_id="qwen2-run", steps=STEPS, checkpoint_every=STEPS)
    config["data"] = {**config["data"], "heldout": [], "max_length": 64}  # short: no eval passes
    ref_losses, ref_adapter = peft_train_reference(tiny_qwen2_dir, config)
    with local_swarm(tmp_path, str(tiny_qwen2_dir), SPLIT):
        _, record = run_train(tmp_path, tmp_path / "swarm.json", config)
    losses = record["losses"]
    assert len(losses) == STEPS
    rel = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses, strict=True))
    adapter = stage_adapter_union(tmp_path / "peer-state", "qwen2-run")
    assert any(".q_proj." in key for key in adapter) and len(adapter) == len(ref_adapter)
    adapter_rel = max_relative(adapter, ref_adapter)
    print(
        f"qwen2: per-step loss max relative difference {rel:.2e}, final adapter {adapter_rel:.2e}; "
        f"loss {losses[0]:.4f} -> {losses[-1]:.4f}"
    )
    assert rel <= 1e-4 and adapter_rel <= 1e-4
    assert losses[-1] < losses[0]
