"""Dynamic loss scaling for float16 stages, owned by the trainer.

A float16 gradient underflows below 6e-8, and the gradient of a mean token loss is small. So the
trainer multiplies the step's loss by a scale ``S`` (sent with every micro-batch as the
``grad_scale`` tensor; the last stage multiplies its loss by it), every gradient on the wire and
inside the stages is ``S`` times the true one, and each stage divides its parameter gradients by
``S`` before it averages, clips and steps (:mod:`pipeline_stages.training`). ``S`` is a power of
two, so the scaling is exact.

The scale is the pipeline's, not a stage's: every stage of a step must unscale by the same ``S``
and skip together. A stage whose gradients overflowed makes the gradient it sends upstream
non-finite, so the first stage finds every overflow; the trainer steps the first stage first and
discards the step on the others when it skipped (:func:`training.pipeline_step.
pipeline_train_step`). Then :meth:`DynamicLossScaler.update` follows the rule of
``torch.amp.GradScaler.update`` with its defaults: an overflow halves ``S``, and
``growth_interval`` steps in a row without one double it.
"""

from __future__ import annotations

import math


class DynamicLossScaler:
    """The loss scale of one trainer's pipeline and its update rule.

    Args:
        init_scale: the first scale (``torch.amp.GradScaler``'s default, 2**16).
        growth_interval: applied steps in a row after which the scale doubles.
        growth_factor: what the scale is multiplied by then.
        backoff_factor: what the scale is multiplied by after an overflow.
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        *,
        growth_interval: int = 2000,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
    ):
        if not (math.isfinite(init_scale) and init_scale > 0):
            raise ValueError(f"init_scale must be a positive finite number, got {init_scale}")
        if growth_interval < 1 or growth_factor <= 1.0 or not 0.0 < backoff_factor < 1.0:
            raise ValueError("growth_interval >= 1, growth_factor > 1, 0 < backoff_factor < 1")
        self.scale = float(init_scale)
        self.growth_interval = growth_interval
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.growth_tracker = 0  # applied steps in a row since the last change
        self.overflows = 0

    def update(self, found_inf: bool) -> None:
        """After a step: back off on an overflow, grow after ``growth_interval`` good steps."""
        if found_inf:
            self.scale *= self.backoff_factor
            self.growth_tracker = 0
            self.overflows += 1
            return
        self.growth_tracker += 1
        if self.growth_tracker == self.growth_interval:
            grown = self.scale * self.growth_factor
            if math.isfinite(grown):  # GradScaler keeps the old scale rather than overflow
                self.scale = grown
            self.growth_tracker = 0

    def state_dict(self) -> dict:
        return {
            "scale": self.scale,
            "growth_tracker": self.growth_tracker,
            "overflows": self.overflows,
        }

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.growth_tracker = int(state["growth_tracker"])
        self.overflows = int(state.get("overflows", 0))
