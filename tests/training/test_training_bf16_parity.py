"""Mixed-precision LoRA training over real daemons equals single-process PEFT on the same base.

Three daemon processes host the tiny LLaMA's stages in bfloat16 (``dtype: bfloat16``);
``node0 train`` trains float32 adapters on them. The reference is PEFT on the whole model
loaded in bfloat16 in this process: ``get_peft_model`` keeps the adapters float32
(``autocast_adapter_dtype=True``), same LoRA settings, init, data, order and seed, the loss in
float32 from the bfloat16 logits.

Tolerances, measured on this machine over 20 steps (docs/lora.md; the test runs ``STEPS``):
the per-step losses and the adapters after training are bitwise equal (relative difference 0:
the stages run the same bfloat16 kernels on the same shapes, and activations and gradients
cross the wire in bfloat16 as they pass between layers inside the single model). We assert
1e-4, as the float32 parity test does; that tells the dtypes apart — the same run on a float32
base differs from the bfloat16 reference by 4.5e-4 in the first loss (up to 1.2e-3 over the 20
steps) and by 1.04 in the adapters — and the test checks the first of those gaps itself. The
stages' checkpoints hold the adapters and their AdamW state in float32.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch

from dataload import build_loaders
from dataload.losses import cross_entropy_sum
from tests.fixtures import (
    SPLIT,
    STEPS,
    local_swarm,
    peft_train_reference,
    run_train,
    train_config,
)
from training.config import TrainConfig
from training.trainer import microbatches

pytestmark = pytest.mark.integration

LOSS_RTOL = 1e-4
ADAPTER_RTOL = 1e-4


def first_loss_on_float32_base(model_dir: str) -> float:
    """The first step's loss on the float32 base (adapters at init: B = 0, so the base's)."""
    from transformers import AutoModelForCausalLM

    cfg = TrainConfig.model_validate(train_config(Path(model_dir)))
    loaders = build_loaders(cfg.data, model_dir=model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    batch = loaders.train.batch_at(loaders.train.position(0, 0))
    mbs = microbatches(batch, cfg.micro_batch_size)
    loss_sum = 0.0
    with torch.no_grad():
        for mb in mbs:
            logits = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits
            loss_sum += float(cross_entropy_sum(logits, mb.labels)[0])
    return loss_sum / sum(mb.counted_tokens for mb in mbs)


@cache
def bf16_reference(model_dir: str) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Single-process PEFT on the bfloat16 base (float32 adapters): per-step losses and the
    final adapter."""
    losses, adapter = peft_train_reference(
        Path(model_dir), train_config(Path(model_dir)), dtype=torch.bfloat16
    )
    assert {t.dtype for t in adapter.values()} == {torch.float32}
    return losses, adapter


def max_relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)) for k in b)


# slow: the float16 swarm test (test_training_fp16_swarm.py) covers mixed-precision training
# over real daemons (half-precision stages, float32 adapters) in the default tier
@pytest.mark.slow
def test_bf16_lora_steps_over_three_daemons_equal_single_process_peft(tiny_model_dir, tmp_path):
    ref_losses, ref_adapter = bf16_reference(str(tiny_model_dir))
    config = train_config(tiny_model_dir, run_id="bf16-run", dtype="bfloat16")
    with local_swarm(tmp_path, str(tiny_model_dir), SPLIT, dtype="bfloat16"):
        _, record = run_train(tmp_path, tmp_path / "swarm.json", config)
    losses = record["losses"]
    assert len(losses) == STEPS and record["skipped_steps"] == 0
    rel = [abs(a - b) / abs(b) for a, b in zip(losses, ref_losses, strict=True)]
    print(
        f"bf16: per-step loss max relative difference {max(rel):.2e} (mean "
        f"{sum(rel) / len(rel):.2e}); loss {losses[0]:.4f} -> {losses[-1]:.4f}"
    )
    assert max(rel) <= LOSS_RTOL
    float32_gap = abs(first_loss_on_float32_base(str(tiny_model_dir)) - ref_losses[0])
    assert float32_gap / ref_losses[0] > 2 * LOSS_RTOL  # a float32 base would fail this test
    files = sorted((tmp_path / "peer-state").glob("*/checkpoints/bf16-run/eq-L*.pt"))
    assert len(files) == 3, files
    adapter = {}
    for path in files:
        saved = torch.load(path, weights_only=True)
        assert {t.dtype for t in saved["adapter_state"].values()} == {torch.float32}
        moments = [
            value
            for state in saved["optimizer"]["state"].values()
            for key, value in state.items()
            if key in ("exp_avg", "exp_avg_sq")
        ]
        assert moments and {t.dtype for t in moments} == {torch.float32}
        adapter.update(saved["adapter_state"])
    adapter_rel = max_relative(adapter, ref_adapter)
    print(f"bf16: final adapter max relative difference {adapter_rel:.2e}")
    assert adapter_rel <= ADAPTER_RTOL
    assert record["after"]["heldout_loss"] < record["before"]["heldout_loss"]
