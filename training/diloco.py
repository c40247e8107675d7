"""DiLoCo-style outer steps: K local steps, then one averaged pseudo-gradient step.

Douillard et al., *DiLoCo: Distributed Low-Communication Training of Language Models* (2023):
each replica takes ``local_steps`` steps of its inner optimizer (AdamW) on its own data; then
the replicas average their *pseudo-gradients* ``θ_outer − θ_local`` and apply the average with
an outer optimizer, SGD with Nesterov momentum (the paper: lr 0.7, momentum 0.9), starting from
the outer parameters they all share. Communication falls by ``local_steps`` against averaging
every step.

The averaging itself is the replicas' usual :class:`lora.averaging.StageGradientAverager`
round (its group, checksums, defences): :meth:`DiLoCoOuter.outer_step` puts the pseudo-gradient
where the averager reads gradients (``.grad``) *after* restoring the outer parameters, so the
state the replicas compare at the round's start (parameters, and the outer optimizer's momentum
when that optimizer is the averager's) is the shared outer state, not their local drift.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class DiLoCoOuter:
    """The outer loop around an inner optimizer.

    Args:
        params: the trained parameters (LoRA adapter tensors), in the averager's order.
        local_steps: inner steps between two averaging rounds (``K``; 1 is close to, but not
            the same as, per-step gradient averaging: the pseudo-gradient is an AdamW update).
        outer_lr: the outer SGD's learning rate.
        outer_momentum: its Nesterov momentum.
    """

    def __init__(
        self,
        params: Sequence[torch.nn.Parameter],
        *,
        local_steps: int,
        outer_lr: float = 0.7,
        outer_momentum: float = 0.9,
    ):
        if local_steps < 1:
            raise ValueError(f"local_steps must be at least 1, not {local_steps}")
        self.params = list(params)
        self.local_steps = local_steps
        self.outer_optimizer = torch.optim.SGD(
            self.params, lr=outer_lr, momentum=outer_momentum, nesterov=True
        )
        self._outer = [p.detach().clone() for p in self.params]
        self.inner_steps = 0

    def note_inner_step(self) -> bool:
        """Count one inner optimizer step; True when an outer step is due."""
        self.inner_steps += 1
        return self.inner_steps % self.local_steps == 0

    @torch.no_grad()
    def outer_step(self, average: Callable[[], object]) -> object:
        """Average the pseudo-gradients with ``average`` (which replaces every ``.grad`` by the
        replicas' mean, e.g. ``lambda: averager.average(samples)``) and apply them with the
        outer optimizer from the shared outer parameters; returns what ``average`` returned."""
        for param, outer in zip(self.params, self._outer, strict=True):
            param.grad = (outer - param.detach()).to(param.dtype)  # pseudo-gradient
            param.copy_(outer)
        report = average()
        self.outer_optimizer.step()
        self.outer_optimizer.zero_grad(set_to_none=True)
        self._outer = [p.detach().clone() for p in self.params]
        return report
