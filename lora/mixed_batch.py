"""One forward, several adapter sets: each session's tokens get exactly its own adapters.

A daemon batches the steps of sessions that chose different task-adapter sets (none, ``a``,
``b``, stacked ``a+b``). PEFT runs mixed batches itself (``adapter_names=[...]``, one adapter
per row of the batch axis), but it takes one adapter per row, not a stacked set, and a ragged
batch (:mod:`models.ragged_batch`) lays its sessions along the token axis. So here: the base
weights run once for every token (PEFT with no active adapter), and a forward hook on each
LoRA layer adds, for every distinct set, ``s_i B_i A_i x`` of each of its adapters to that
set's tokens only, in the set's order: the same terms, in the same order, that PEFT's own
stacked forward adds for a session alone (:func:`lora.stage_adapters.use_adapters`).

When every segment has the same set, :func:`batch_adapters` is just ``use_adapters``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from lora.stage_adapters import adapter_lock, adapters, lora_layers, use_adapters


def _token_groups(
    sets: Sequence[tuple[str, ...]], token_counts: Sequence[int]
) -> list[tuple[tuple[str, ...], torch.Tensor]]:
    """(adapter set, indices of its tokens along the token axis), for every non-empty set."""
    positions: dict[tuple[str, ...], list[int]] = {}
    offset = 0
    for names, count in zip(sets, token_counts, strict=True):
        if names:
            positions.setdefault(tuple(names), []).extend(range(offset, offset + count))
        offset += count
    return [(names, torch.tensor(index)) for names, index in positions.items()]


def _delta_hook(groups: list[tuple[tuple[str, ...], torch.Tensor]]):
    def hook(layer: LoraLayer, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        for names, index in groups:
            index = index.to(x.device)
            rows = x.index_select(1, index)
            for name in names:
                if name not in layer.lora_A:
                    continue
                lora_a = layer.lora_A[name]
                rows_in = rows.to(lora_a.weight.dtype)
                delta = layer.lora_B[name](lora_a(layer.lora_dropout[name](rows_in)))
                output = output.index_add(1, index, (delta * layer.scaling[name]).to(output.dtype))
        return output

    return hook


@contextmanager
def batch_adapters(
    model: nn.Module, sets: Sequence[tuple[str, ...]], token_counts: Sequence[int]
) -> Iterator[None]:
    """Run the body's forward with segment ``i`` (``token_counts[i]`` tokens) using ``sets[i]``.

    Tokens lie along axis 1 of every LoRA layer's input, segment after segment.
    """
    distinct = {tuple(names) for names in sets}
    if not adapters(model):
        if distinct - {()}:
            raise ValueError("adapters were asked of a model that has none")
        yield
        return
    if len(distinct) == 1:
        with use_adapters(model, next(iter(distinct))):
            yield
        return
    groups = _token_groups(sets, token_counts)
    hook = _delta_hook(groups)
    with use_adapters(model, []), adapter_lock(model), ExitStack() as handles:
        for layer in lora_layers(model):
            handles.callback(layer.register_forward_hook(hook).remove)
        yield
