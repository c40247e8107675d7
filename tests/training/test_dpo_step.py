"""DPO over pipeline stages in one process (the stages' own training jobs, no daemons): the
step equals single-process PEFT with the TRL-matching loss; reference log-probs with adapters
off equal the base model's; the stage refuses what a DPO call must not do."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from dataload import build_loaders
from dataload.losses import sequence_logprobs
from pipeline_stages.errors import InvalidInput
from pipeline_stages.loader import load_stage
from pipeline_stages.training import JobSettings, StageTrainingJob
from tests.fixtures import dpo_train_config, max_relative, peft_dpo_reference
from training.config import TrainConfig
from training.dpo_step import (
    DPOObjective,
    pair_microbatches,
    pipeline_dpo_step,
    pipeline_sequence_logprobs,
)

SPANS = ((0, 2), (2, 4), (4, 6))
LOSS_TOLERANCE = 1e-4
"""Per-step DPO loss (relative) and reward margins (absolute): measured ~5e-6."""
ADAPTER_TOLERANCE = 2e-3
"""Final adapter, max relative difference per tensor: measured ~7e-4. Larger than the loss's
because AdamW divides each gradient by its running RMS: the DPO gradients of the first steps
are tiny (LoRA B starts at 0, and β = 0.1 scales them), so float-order noise of the chunked
LM head (a relative 1e-6 of a gradient) is normalised into the update as much as the gradient
itself. A wrong gradient shows as O(1)."""


class _Report:
    def __init__(self, report):
        outcome = report.outcome
        self.applied, self.reason, self.grad_norm = outcome.applied, outcome.reason, 0.0
        self.step, self.averaging = outcome.applied_total, ""


class JobClient:
    """A :class:`training.stage_client.StageTrainClient` over an in-process stage job."""

    def __init__(self, job: StageTrainingJob):
        self.job = job
        self.start, self.end = job.stage.start, job.stage.end

    def forward(self, mb_id, tensors, loss_scale=1.0, *, evaluate=False, **options):
        out = self.job.forward(mb_id, tensors, loss_scale, evaluate=evaluate, **options)
        return out.get("output"), out.get("loss_sum", 0.0), out.get("loss_tokens", 0)

    def backward(self, mb_id, grad):
        return self.job.backward(mb_id, grad)

    def optimizer_step(self, step, *, samples=1.0, checkpoint=False, discard=False):
        if discard:
            self.job.discard()
            return None
        return _Report(self.job.optimizer_step(samples))


def stage_jobs(model_dir: Path, cfg: TrainConfig) -> tuple[list, list[JobClient]]:
    stages = [load_stage(model_dir, *span) for span in SPANS]
    settings = JobSettings(
        trainable=f"adapter:{cfg.adapter}", optimizer=cfg.optimizer, lora=cfg.lora
    )
    return stages, [JobClient(StageTrainingJob(s, settings, job_id="dpo")) for s in stages]


@cache
def reference(model_dir: str):
    return peft_dpo_reference(Path(model_dir), dpo_train_config(Path(model_dir)))


def test_ten_dpo_steps_over_stages_equal_single_process_peft_with_the_trl_loss(tiny_model_dir):
    cfg = TrainConfig.model_validate(dpo_train_config(tiny_model_dir))
    ref_losses, ref_metrics, ref_adapter = reference(str(tiny_model_dir))
    loaders = build_loaders(cfg.data, model_dir=tiny_model_dir)
    stages, clients = stage_jobs(tiny_model_dir, cfg)
    objective = DPOObjective(cfg.dpo.beta)
    per_epoch = loaders.train.num_batches(0)
    losses, metrics = [], []
    for step in range(cfg.steps):
        batch = loaders.train.batch_at(loaders.train.position(step // per_epoch, step % per_epoch))
        mbs = pair_microbatches(batch, cfg.micro_batch_size)
        refs = pipeline_sequence_logprobs(clients, [mb.rows for mb in mbs], reference=True)
        for mb, logps in zip(mbs, refs, strict=True):
            mb.ref_chosen, mb.ref_rejected = logps[: mb.pairs], logps[mb.pairs :]
        result = pipeline_dpo_step(clients, mbs, step, objective)
        assert result.applied
        losses.append(result.loss)
        metrics.append(result.metrics)
    rel = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses, strict=True))
    margin = max(
        abs(a["rewards/margins"] - b["rewards/margins"])
        for a, b in zip(metrics, ref_metrics, strict=True)
    )
    adapter = {}
    for stage in stages:
        from lora.stage_adapters import adapter_state_dict

        adapter.update(adapter_state_dict(stage, cfg.adapter))
    adapter_rel = max_relative(adapter, ref_adapter)
    print(
        f"DPO loss {losses[0]:.6f} -> {losses[-1]:.6f}; per-step max rel diff {rel:.2e}, "
        f"margins max abs diff {margin:.2e}, adapter max rel diff {adapter_rel:.2e}"
    )
    assert abs(losses[0] - 0.6931471805599453) < 1e-6  # step 0: the policy is the reference
    assert losses[-1] < losses[0]
    assert rel <= LOSS_TOLERANCE and margin <= LOSS_TOLERANCE and adapter_rel <= ADAPTER_TOLERANCE
    assert [m["rewards/accuracies"] for m in metrics] == [
        m["rewards/accuracies"] for m in ref_metrics
    ]


def test_reference_logprobs_with_adapters_off_equal_the_base_model(tiny_model_dir):
    cfg = TrainConfig.model_validate(dpo_train_config(tiny_model_dir))
    loaders = build_loaders(cfg.data, model_dir=tiny_model_dir)
    stages, clients = stage_jobs(tiny_model_dir, cfg)
    for stage in stages:  # a policy that is not the base: B != 0
        for name, p in stage.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p.data, std=0.5, generator=torch.Generator().manual_seed(1))
    batch = loaders.heldout.batch_at(loaders.heldout.position(0, 0))
    rows = pair_microbatches(batch, None)[0].rows
    ours_ref, ours_policy = (
        pipeline_sequence_logprobs(clients, [rows], reference=flag)[0] for flag in (True, False)
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = sequence_logprobs(
            base(input_ids=rows.input_ids, attention_mask=rows.attention_mask).logits, rows.labels
        )
    diff = float((ours_ref - theirs).abs().max())
    print(f"reference log-probs vs base model: max abs diff {diff:.2e} over {len(theirs)} rows")
    assert diff <= 1e-4
    assert float((ours_policy - theirs).abs().max()) > 1e-2  # the adapter was really off


def test_a_stage_refuses_bad_dpo_calls(tiny_model_dir):
    cfg = TrainConfig.model_validate(dpo_train_config(tiny_model_dir))
    _, clients = stage_jobs(tiny_model_dir, cfg)
    job = clients[0].job
    ids = torch.tensor([[1, 5, 9, 33]])
    with pytest.raises(InvalidInput, match="evaluate"):
        job.forward("m", {"input": ids}, 1.0, reference=True)
    with pytest.raises(InvalidInput, match="not on stage"):
        job.forward("m", {"input": ids}, 1.0, evaluate=True, reference=True, reference_adapter="x")
    with pytest.raises(InvalidInput, match="adapter being trained"):
        job.forward(
            "m", {"input": ids}, 1.0, evaluate=True, reference=True, reference_adapter=cfg.adapter
        )
    last = clients[-1].job
    hidden = torch.zeros(1, 4, last.stage.full_config.hidden_size)
    labels = torch.tensor([[-100, -100, 7, 8]])
    out = last.forward("m", {"input": hidden, "labels": labels}, 1.0, sequence_logprobs=True)
    assert out["output"].shape == (1,)
    with pytest.raises(InvalidInput, match="grad"):
        last.backward("m", None)  # a sequence forward's backward needs the log-probs' gradient


def test_heldout_figures_at_step_0_are_the_base_models_preference(tiny_model_dir):
    """Before training the policy is the reference: loss ln 2, every TRL reward 0 (accuracy 0:
    no margin is positive), and ``logp_accuracy`` is the base model's own preference."""
    from training.dpo_step import pipeline_dpo_eval

    cfg = TrainConfig.model_validate(dpo_train_config(tiny_model_dir))
    loaders = build_loaders(cfg.data, model_dir=tiny_model_dir)
    _, clients = stage_jobs(tiny_model_dir, cfg)
    batch = loaders.heldout.batch_at(loaders.heldout.position(0, 0))
    mbs = pair_microbatches(batch, cfg.micro_batch_size)
    refs = pipeline_sequence_logprobs(clients, [mb.rows for mb in mbs], reference=True)
    for mb, logps in zip(mbs, refs, strict=True):
        mb.ref_chosen, mb.ref_rejected = logps[: mb.pairs], logps[mb.pairs :]
    figures = pipeline_dpo_eval(clients, mbs, DPOObjective(cfg.dpo.beta))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    rows, n = batch.batch, batch.pairs
    with torch.no_grad():
        logps = sequence_logprobs(
            base(input_ids=rows.input_ids, attention_mask=rows.attention_mask).logits, rows.labels
        )
    expected = float((logps[:n] > logps[n:]).float().mean())
    print(f"held-out at step 0: {figures}; base prefers chosen on {expected:.2f}")
    assert figures["pairs"] == n
    assert abs(figures["loss"] - 0.6931471805599453) < 1e-6
    assert figures["rewards/accuracies"] == 0.0 and figures["rewards/margins"] == 0.0
    assert figures["logp_accuracy"] == expected
