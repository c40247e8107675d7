"""Training on one stage: forward that keeps what backward needs, backward, optimizer step.

A job (``job_id`` + stage span) owns the optimizer over the stage's trainable parameters. A
forward stores the micro-batch's input (as a leaf that requires grad) and output under its
micro-batch id; the backward pops them, runs autograd with the gradient of the output (or, on
the last stage, of the scaled loss) and returns the gradient of the input. Parameter gradients
accumulate across micro-batches until the trainer asks for an optimizer step; a step whose
gradients are not finite is skipped and counted, never fatal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dataload.losses import cross_entropy_sum
from lora.step_guard import StepGuard, StepOutcome
from models.llama import LlamaStage
from pipeline_stages.errors import CapacityExceeded, InvalidInput, SessionNotFound


@dataclass(frozen=True)
class JobSettings:
    trainable: str = "all"
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8


def trainable_parameters(stage: LlamaStage, trainable: str) -> list[torch.nn.Parameter]:
    if trainable == "all":
        return list(stage.parameters())
    raise InvalidInput(f"trainable={trainable!r} is not supported by this daemon; "
                       "supported: 'all'")


class StageTrainingJob:
    def __init__(self, stage: LlamaStage, settings: JobSettings, *, max_pending: int = 64):
        self.stage = stage
        self.settings = settings
        self.max_pending = max_pending
        self.params = trainable_parameters(stage, settings.trainable)
        for param in stage.parameters():
            param.requires_grad_(False)
        for param in self.params:
            param.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(
            self.params, lr=settings.learning_rate, weight_decay=settings.weight_decay,
            betas=(settings.beta1, settings.beta2), eps=settings.eps)
        self.guard = StepGuard(self.params, max_grad_norm=settings.max_grad_norm)
        self.pending: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, microbatch_id: str, tensors: dict[str, torch.Tensor],
                loss_scale: float) -> dict:
        stage = self.stage
        inputs = tensors.get("input")
        if inputs is None:
            raise InvalidInput("Forward needs an 'input' tensor")
        mask = tensors.get("attention_mask")
        if len(self.pending) >= self.max_pending:
            raise CapacityExceeded(f"{self.max_pending} micro-batches await backward; "
                                   "run backward or start a new job")
        if stage.is_first:
            if inputs.dtype != torch.int64 or inputs.dim() != 2:
                raise InvalidInput("first stage takes int64 token ids (batch, seq)")
            leaf = inputs
        else:
            hidden = stage.full_config.hidden_size
            if not inputs.is_floating_point() or inputs.dim() != 3 or inputs.shape[2] != hidden:
                raise InvalidInput(f"stage takes float hidden states (batch, seq, {hidden})")
            leaf = inputs.float().requires_grad_(True)
        if mask is not None and tuple(mask.shape) != tuple(leaf.shape[:2]):
            raise InvalidInput("attention_mask must be (batch, seq)")
        with torch.enable_grad():
            out = stage(leaf, attention_mask=mask)
            if not stage.is_last:
                self.pending[microbatch_id] = (leaf, out)
                return {"output": out.detach()}
            labels = tensors.get("labels")
            if labels is None or tuple(labels.shape) != tuple(leaf.shape[:2]):
                raise InvalidInput("last stage needs 'labels' of shape (batch, seq)")
            loss_sum, count = cross_entropy_sum(out, labels)  # the canonical loss
            self.pending[microbatch_id] = (leaf, loss_sum * loss_scale)
            return {"loss_sum": float(loss_sum.detach()), "loss_tokens": count}

    def backward(self, microbatch_id: str, grad: torch.Tensor | None) -> torch.Tensor | None:
        entry = self.pending.pop(microbatch_id, None)
        if entry is None:
            raise SessionNotFound(f"no pending forward for micro-batch {microbatch_id!r}")
        leaf, out = entry
        if self.stage.is_last:
            out.backward()
        else:
            if grad is None or tuple(grad.shape) != tuple(out.shape):
                raise InvalidInput(f"backward needs 'grad' of shape {list(out.shape)}")
            out.backward(grad.to(out.dtype))
        return None if self.stage.is_first else leaf.grad

    def optimizer_step(self, step: int) -> StepOutcome:
        if step != self.guard.applied + self.guard.skipped:
            raise InvalidInput(f"optimizer step {step} requested, stage is at "
                               f"{self.guard.applied + self.guard.skipped}")
        return self.guard.step(self.optimizer)
