"""DiLoCo-style outer steps: K local steps, then one averaged pseudo-gradient step.

Douillard et al., *DiLoCo: Distributed Low-Communication Training of Language Models* (2023):
each replica takes ``local_steps`` steps of its inner optimizer (AdamW) on its own data; then
the replicas average their *pseudo-gradients* ``θ_outer − θ_local`` and apply the average with
an outer optimizer, SGD with Nesterov momentum (the paper: lr 0.7, momentum 0.9), starting from
the outer parameters they all share. Communication falls by ``local_steps`` against averaging
every step.

The one implementation: a stage's training job in ``averaging: {mode: diloco}``
(:class:`pipeline_stages.training.StageTrainingJob`) and the WAN bench's replicas
(``bench/wan_averaging.py``) both use :class:`DiLoCoOuter`.

The averaging itself is the replicas' usual :class:`lora.averaging.StageGradientAverager`
round (its group, checksums, security gate, outlier exclusion, compression):
:meth:`DiLoCoOuter.begin_round` puts the pseudo-gradient where the averager reads gradients
(``.grad``) *after* restoring the outer parameters, so the state the replicas compare at the
round's start (parameters, and the outer optimizer's momentum when that optimizer is the
averager's) is the shared outer state, not their local drift; :meth:`~DiLoCoOuter.finish_round`
applies the averaged pseudo-gradient with the outer optimizer and takes the new outer state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

STATE_FORMAT = "node0-diloco/1"


class DiLoCoOuter:
    """The outer loop around an inner optimizer.

    Args:
        params: the trained parameters (LoRA adapter tensors), in the averager's order.
        local_steps: inner steps between two averaging rounds (``K``; 1 is close to, but not
            the same as, per-step gradient averaging: the pseudo-gradient is an AdamW update).
        outer_lr: the outer SGD's learning rate.
        outer_momentum: its Nesterov momentum (0: plain SGD).
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
            self.params, lr=outer_lr, momentum=outer_momentum, nesterov=outer_momentum > 0
        )
        self._outer: list[torch.Tensor] = []
        self.inner_steps = 0
        self.reset()

    @classmethod
    def from_settings(cls, params: Sequence[torch.nn.Parameter], settings) -> DiLoCoOuter:
        """From :class:`lora.config.AveragingSettings` (``mode: diloco``)."""
        return cls(
            params,
            local_steps=settings.local_steps,
            outer_lr=settings.outer_lr,
            outer_momentum=settings.outer_momentum,
        )

    @torch.no_grad()
    def reset(self) -> None:
        """Take the current parameters as the outer (last synced) ones."""
        self._outer = [p.detach().clone() for p in self.params]

    def outer_params(self) -> list[torch.Tensor]:
        """The outer (last synced) parameters: what replicas compare and share between rounds."""
        return self._outer

    def note_inner_step(self) -> bool:
        """Count one inner optimizer step; True when an outer step is due."""
        self.inner_steps += 1
        return self.inner_steps % self.local_steps == 0

    @property
    def outer_steps(self) -> int:
        """Outer steps reached (``inner_steps // local_steps``; at an outer step, this one
        included): the number replicas match their rounds on (:mod:`lora.averaging`)."""
        return self.inner_steps // self.local_steps

    @property
    def local_step(self) -> int:
        """Inner steps since the last outer step (0 right after one)."""
        return self.inner_steps % self.local_steps

    @torch.no_grad()
    def begin_round(self) -> None:
        """Pseudo-gradients ``θ_outer − θ_local`` into ``.grad``; parameters back to ``θ_outer``."""
        for param, outer in zip(self.params, self._outer, strict=True):
            param.grad = (outer - param.detach()).to(param.dtype)  # pseudo-gradient
            param.copy_(outer)

    @torch.no_grad()
    def finish_round(self) -> None:
        """Apply the (averaged) pseudo-gradients in ``.grad`` with the outer optimizer."""
        self.outer_optimizer.step()
        self.outer_optimizer.zero_grad(set_to_none=True)
        self.reset()

    def outer_step(self, average: Callable[[], object]) -> object:
        """Average the pseudo-gradients with ``average`` (which replaces every ``.grad`` by the
        replicas' mean, e.g. ``lambda: averager.average(samples)``) and apply them with the
        outer optimizer from the shared outer parameters; returns what ``average`` returned."""
        self.begin_round()
        report = average()
        self.finish_round()
        return report

    def state_dict(self) -> dict:
        """The outer state (for checkpoints): synced parameters, momentum, inner step count;
        tensors on the host."""
        momentum = self.outer_optimizer.state_dict()
        return {
            "format": STATE_FORMAT,
            "local_steps": self.local_steps,
            "inner_steps": self.inner_steps,
            "outer_params": [t.detach().cpu().clone() for t in self._outer],
            "outer_optimizer": {
                "state": {int(i): _on_host(s) for i, s in momentum["state"].items()},
                "param_groups": momentum["param_groups"],
            },
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; refuses another format or other tensor shapes."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a {STATE_FORMAT} state")
        outer = list(state["outer_params"])
        if len(outer) != len(self.params) or any(
            tuple(t.shape) != tuple(p.shape) for t, p in zip(outer, self.params, strict=True)
        ):
            raise ValueError("the saved outer parameters have other shapes than the adapter's")
        self._outer = [
            t.to(device=p.device, dtype=p.dtype).clone()
            for t, p in zip(outer, self.params, strict=True)
        ]
        saved = state["outer_optimizer"]
        current = self.outer_optimizer.state_dict()
        # the saved momentum, with this run's lr and momentum (the config's, validated)
        self.outer_optimizer.load_state_dict(
            {"state": saved["state"], "param_groups": current["param_groups"]}
        )
        self.inner_steps = int(state["inner_steps"])


def _on_host(state: dict) -> dict:
    return {k: v.detach().cpu().clone() if torch.is_tensor(v) else v for k, v in state.items()}
