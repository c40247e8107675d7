"""The guard around an optimizer step: non-finite gradients skip the step, large ones are clipped.

A step whose gradients hold NaN or inf is not applied: the gradients are zeroed, the skip is
counted and reported, and training goes on (bad gradients never end the process). Otherwise the
gradients are clipped to ``max_grad_norm`` (global L2 norm over all parameters) and the optimizer
steps.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepOutcome:
    """What happened to one optimizer step."""

    applied: bool
    reason: str  # "" when applied, else why it was skipped
    grad_norm: float  # global L2 norm before clipping (nan/inf when skipped for that reason)
    clipped: bool  # the gradients were scaled down to max_grad_norm
    applied_total: int
    skipped_total: int


def global_grad_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """L2 norm over every parameter's gradient (0 when none has a gradient), in float64."""
    norms = [
        torch.linalg.vector_norm(p.grad.detach(), dtype=torch.float64)
        for p in params
        if p.grad is not None
    ]
    if not norms:
        return torch.zeros((), dtype=torch.float64)
    return torch.linalg.vector_norm(torch.stack(norms))


class StepGuard:
    """Checks, clips and applies optimizer steps over ``params``; counts skipped steps.

    Args:
        params: the parameters the optimizer updates (e.g. :func:`lora.adapter_parameters`).
        max_grad_norm: clip the global gradient norm to this; 0 disables clipping.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], *, max_grad_norm: float = 0.0):
        if max_grad_norm < 0:
            raise ValueError("max_grad_norm must be >= 0")
        self.params = list(params)
        self.max_grad_norm = max_grad_norm
        self.applied = 0
        self.skipped = 0
        self.last: StepOutcome | None = None

    def _zero(self) -> None:
        for param in self.params:
            param.grad = None

    def step(self, optimizer: torch.optim.Optimizer) -> StepOutcome:
        """Apply ``optimizer.step()`` if the gradients are finite; always zero the gradients."""
        norm = float(global_grad_norm(self.params))
        clipped = False
        if not torch.isfinite(torch.tensor(norm)):
            self.skipped += 1
            self._zero()
            optimizer.zero_grad(set_to_none=True)
            self.last = StepOutcome(
                False, "non-finite gradients", norm, False, self.applied, self.skipped
            )
            log.warning(
                "optimizer step skipped: non-finite gradients (%d skipped so far)", self.skipped
            )
            return self.last
        if self.max_grad_norm > 0 and norm > self.max_grad_norm:
            scale = self.max_grad_norm / (norm + 1e-6)  # same formula as clip_grad_norm_
            for param in self.params:
                if param.grad is not None:
                    param.grad.mul_(scale)
            clipped = True
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self._zero()
        self.applied += 1
        self.last = StepOutcome(True, "", norm, clipped, self.applied, self.skipped)
        return self.last

    def state_dict(self) -> dict:
        return {"applied": self.applied, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.applied, self.skipped = int(state["applied"]), int(state["skipped"])
