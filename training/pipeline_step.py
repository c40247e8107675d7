"""One optimizer step of pipeline training over the stages of a route.

For each micro-batch: forward through the stages in order (token ids → hidden states → the last
stage computes the summed token loss from labels, so logits never cross the wire), then
backward in reverse order (each stage returns the gradient of its input). The loss of a step is
normalised by the number of labelled tokens in the whole step, so gradient accumulation over
micro-batches gives exactly the gradient of the step's mean token loss — the same as one
big batch in a single process.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from training.stage_client import StageTrainClient


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # (batch, seq) int64
    attention_mask: torch.Tensor  # (batch, seq) int64
    labels: torch.Tensor  # (batch, seq) int64, -100 = not counted

    @property
    def counted_tokens(self) -> int:
        return int((self.labels[:, 1:] != -100).sum())


@dataclass
class StepResult:
    step: int
    loss: float  # mean token loss over the step
    tokens: int
    applied: bool
    grad_norms: list[float]
    reports: list  # OptimizerStepResponse per stage, in route order


def _forward(
    stages: list[StageTrainClient], mb: MicroBatch, mb_id: str, scale: float, *, evaluate: bool
) -> float:
    x = mb.input_ids
    part_loss = 0.0
    for index, stage in enumerate(stages):
        tensors = {"input": x, "attention_mask": mb.attention_mask}
        if index == len(stages) - 1:
            tensors["labels"] = mb.labels
        output, part_loss, _ = stage.forward(mb_id, tensors, loss_scale=scale, evaluate=evaluate)
        if output is not None:
            x = output
    return part_loss


def pipeline_train_step(
    stages: list[StageTrainClient],
    microbatches: list[MicroBatch],
    step: int,
    *,
    samples: float | None = None,
    checkpoint: bool = False,
    on_sync=None,
) -> StepResult:
    """Forward/backward every micro-batch, then one optimizer step on every stage.

    ``samples`` (default: the rows of all micro-batches) weighs this trainer's gradient when
    the stages average with their replicas. ``on_sync`` is called before the optimizer steps
    (the trainer shows "syncing": replicas may be averaging).
    """
    total_tokens = sum(mb.counted_tokens for mb in microbatches)
    if total_tokens == 0:
        raise ValueError("a step needs at least one labelled token")
    scale = 1.0 / total_tokens
    loss_sum = 0.0
    for mb in microbatches:
        mb_id = uuid.uuid4().hex
        loss_sum += _forward(stages, mb, mb_id, scale, evaluate=False)
        grad = None
        for stage in reversed(stages):
            grad = stage.backward(mb_id, grad)
    if on_sync is not None:
        on_sync()
    if samples is None:
        samples = float(sum(mb.input_ids.shape[0] for mb in microbatches))
    reports = _parallel(
        [lambda s=s: s.optimizer_step(step, samples=samples, checkpoint=checkpoint) for s in stages]
    )
    return StepResult(
        step=step,
        loss=loss_sum / total_tokens,
        tokens=total_tokens,
        applied=all(r.applied for r in reports),
        grad_norms=[r.grad_norm for r in reports],
        reports=reports,
    )


def _parallel(calls):
    """Run the stages' optimizer steps concurrently: each may wait for its averaging group,
    and the waits overlap instead of adding up."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.result() for future in futures]


def pipeline_eval_loss(
    stages: list[StageTrainClient], microbatches: list[MicroBatch]
) -> tuple[float, int]:
    """Mean token loss of ``microbatches`` (no gradients, nothing kept on the stages)."""
    loss_sum, tokens = 0.0, 0
    for mb in microbatches:
        loss_sum += _forward(stages, mb, uuid.uuid4().hex, 1.0, evaluate=True)
        tokens += mb.counted_tokens
    return (loss_sum / tokens if tokens else float("nan")), tokens
