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


def pipeline_train_step(stages: list[StageTrainClient], microbatches: list[MicroBatch],
                        step: int) -> StepResult:
    total_tokens = sum(mb.counted_tokens for mb in microbatches)
    if total_tokens == 0:
        raise ValueError("a step needs at least one labelled token")
    scale = 1.0 / total_tokens
    loss_sum = 0.0
    for mb in microbatches:
        mb_id = uuid.uuid4().hex
        x = mb.input_ids
        for index, stage in enumerate(stages):
            tensors = {"input": x, "attention_mask": mb.attention_mask}
            if index == len(stages) - 1:
                tensors["labels"] = mb.labels
            output, part_loss, _ = stage.forward(mb_id, tensors, loss_scale=scale)
            if output is not None:
                x = output
        loss_sum += part_loss
        grad = None
        for stage in reversed(stages):
            grad = stage.backward(mb_id, grad)
    reports = [stage.optimizer_step(step) for stage in stages]
    return StepResult(step=step, loss=loss_sum / total_tokens, tokens=total_tokens,
                      applied=all(r.applied for r in reports),
                      grad_norms=[r.grad_norm for r in reports])
