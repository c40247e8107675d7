"""Pipeline training over real daemons equals single-process training (tiny model)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from inference.swarm_client import SwarmClient
from lora.config import OptimizerSettings
from tests.fixtures import local_swarm
from training.pipeline_step import MicroBatch, pipeline_train_step
from training.stage_client import StageTrainClient

pytestmark = pytest.mark.integration

SPLIT = [("s0", [(0, 2)]), ("s1", [(2, 4)]), ("s2", [(4, 6)])]
LR = 3e-3


def make_microbatches(step: int, vocab: int) -> list[MicroBatch]:
    g = torch.Generator().manual_seed(1000 + step % 2)  # two batches, alternating
    out = []
    for _ in range(2):
        ids = torch.randint(3, vocab, (2, 12), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 9:] = 0  # right padding on the second row
        labels = ids.clone()
        labels[:, :4] = -100  # prompt tokens are not counted
        labels[mask == 0] = -100
        out.append(MicroBatch(ids, mask, labels))
    return out


def reference_training(model_dir, steps: int, vocab: int):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    losses = []
    for step in range(steps):
        mbs = make_microbatches(step, vocab)
        total = sum(mb.counted_tokens for mb in mbs)
        loss_sum = 0.0
        for mb in mbs:
            logits = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits
            shifted = logits[:, :-1].reshape(-1, logits.shape[-1])
            loss = torch.nn.functional.cross_entropy(
                shifted, mb.labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
            )
            (loss / total).backward()
            loss_sum += float(loss.detach())
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss_sum / total)
    return losses, model


def test_pipeline_training_equals_single_process(tiny_model_dir, tmp_path):
    steps = 5
    vocab = AutoModelForCausalLM.from_pretrained(tiny_model_dir).config.vocab_size
    ref_losses, ref_model = reference_training(tiny_model_dir, steps, vocab)
    with local_swarm(tmp_path, str(tiny_model_dir), SPLIT) as state:
        client = SwarmClient(str(tiny_model_dir), state.initial_peers)
        try:
            route = client.wait_for_route()
        finally:
            client.close()
        stages = [
            StageTrainClient(r.endpoint, job_id="equiv", start=r.start, end=r.end) for r in route
        ]
        for stage in stages:
            stage.open_job(optimizer=OptimizerSettings(learning_rate=LR, max_grad_norm=0.0))
        losses = [
            pipeline_train_step(stages, make_microbatches(step, vocab), step).loss
            for step in range(steps)
        ]
        # the trained weights, compared through a held-out probe's loss
        probe = make_microbatches(99, vocab)[0]
        x = probe.input_ids
        for stage in stages[:-1]:
            x, _, _ = stage.forward("probe", {"input": x, "attention_mask": probe.attention_mask})
        _, probe_loss_sum, probe_tokens = stages[-1].forward(
            "probe", {"input": x, "attention_mask": probe.attention_mask, "labels": probe.labels}
        )
        for stage in stages:
            stage.close()
    print(
        f"\nper-step losses pipeline {[f'{v:.6f}' for v in losses]}\n"
        f"                 single   {[f'{v:.6f}' for v in ref_losses]}"
    )
    assert losses[4] < losses[2] < losses[0]  # same data at steps 0, 2, 4: it learns
    for ours, ref in zip(losses, ref_losses, strict=True):
        assert abs(ours - ref) <= 1e-4 * abs(ref)
    with torch.no_grad():
        logits = ref_model(input_ids=probe.input_ids, attention_mask=probe.attention_mask).logits
        ref_probe = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            probe.labels[:, 1:].reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
    assert abs(probe_loss_sum - float(ref_probe)) <= 1e-4 * abs(float(ref_probe))
