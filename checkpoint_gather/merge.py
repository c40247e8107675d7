"""Fold LoRA adapters into base weights, as PEFT's ``merge_and_unload`` does.

For every adapted linear layer ``W`` (shape ``(out, in)``) and every adapter ``i`` in the merge
set, with ``A_i`` ``(r, in)``, ``B_i`` ``(out, r)`` and scale ``s_i = alpha_i / r_i``:

    W' = W + sum_i s_i B_i A_i

which is exactly what a stage computes with those adapters active and stacked
(``W x + sum_i s_i B_i A_i x``), up to float rounding. Adapters are added in the order given
(PEFT merges its active adapters one after another in the same way). The sum is kept in float32:
a bfloat16 or float16 base weight becomes a float32 merged one, so the export rounds it into its
dtype once, not once per adapter.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence

import torch

from base.errors import CheckpointError
from lora.config import LoraSettings
from lora.stage_adapters import PEFT_PREFIX

_A, _B = ".lora_A.weight", ".lora_B.weight"


def lora_deltas(
    settings: LoraSettings, state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``{base weight name: s * B @ A}`` for one adapter (PEFT keys, global layer indices)."""
    modules = {key.removeprefix(PEFT_PREFIX).removesuffix(_A) for key in state if key.endswith(_A)}
    expected = {PEFT_PREFIX + m + suffix for m in modules for suffix in (_A, _B)}
    if set(state) != expected:
        odd = sorted(set(state) ^ expected)
        raise CheckpointError(f"adapter tensors do not pair up as lora_A/lora_B: {odd[:3]}")
    deltas = {}
    for module in sorted(modules):
        weight_a = state[PEFT_PREFIX + module + _A]  # (rank, in)
        weight_b = state[PEFT_PREFIX + module + _B]  # (out, rank)
        if weight_a.shape[0] != settings.rank or weight_b.shape[1] != settings.rank:
            raise CheckpointError(
                f"{module}: lora_A {list(weight_a.shape)} / lora_B "
                f"{list(weight_b.shape)} do not have rank {settings.rank}"
            )
        deltas[f"{module}.weight"] = settings.scaling * (weight_b.float() @ weight_a.float())
    return deltas


@torch.no_grad()
def merge_adapters(
    base: MutableMapping[str, torch.Tensor],
    adapters: Sequence[tuple[LoraSettings, Mapping[str, torch.Tensor]]],
) -> list[str]:
    """Add every adapter's update to the matching weights of ``base`` **in place**.

    ``base`` is one stage's (or the whole model's) weights under Hugging Face names; each
    adapter is ``(settings, state)`` holding the same layers. A float32 weight is updated in
    place; a weight in another dtype is replaced in ``base`` by its float32 sum. Returns the
    names changed.
    """
    changed: set[str] = set()
    for settings, state in adapters:
        for name, delta in lora_deltas(settings, state).items():
            weight = base.get(name)
            if weight is None:
                raise CheckpointError(f"adapter targets {name}, which these weights lack")
            if tuple(weight.shape) != tuple(delta.shape):
                raise CheckpointError(
                    f"{name}: weight {list(weight.shape)}, adapter update {list(delta.shape)}"
                )
            if weight.dtype != torch.float32:
                weight = base[name] = weight.float()
            weight.add_(delta)
            changed.add(name)
    return sorted(changed)
