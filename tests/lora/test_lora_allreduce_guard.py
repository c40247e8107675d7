"""Defences on arriving gradient parts, exercised on hivemind's real part reducer."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch
from hivemind.averaging.partition import BannedException

from lora.allreduce_guard import PartGuard, _GuardedReducer


def _reduce(guard: PartGuard, parts: list[tuple[torch.Tensor, float]]):
    """Run one single-part reduction over len(parts) senders; returns (result, errors)."""

    async def run():
        reducer = _GuardedReducer([parts[0][0].shape], len(parts), guard)

        async def send(index: int, part: torch.Tensor, weight: float):
            try:
                return await reducer.accumulate_part(index, 0, part, weight=weight)
            except BannedException as exc:
                reducer.on_sender_failed(index)  # what AllReduceRunner does on a ban
                return exc

        results = await asyncio.gather(*(send(i, p, w) for i, (p, w) in enumerate(parts)))
        errors = [r for r in results if isinstance(r, BaseException)]
        good = [r for r in results if not isinstance(r, BaseException)]
        return (good[0] if good else None), errors

    return asyncio.run(asyncio.wait_for(run(), 10))


def test_a_non_finite_part_drops_its_sender_and_the_rest_average():
    guard = PartGuard(max_part_norm=None, max_peer_weight=100)
    ones, threes = torch.ones(4), torch.full((4,), 3.0)
    bad = torch.tensor([1.0, float("nan"), 0.0, 0.0])
    result, errors = _reduce(guard, [(ones, 1.0), (bad, 1.0), (threes, 1.0)])
    assert len(errors) == 1 and guard.rejected == 1
    torch.testing.assert_close(result, torch.full((4,), 2.0))


def test_weights_are_clamped_and_non_finite_weights_rejected():
    guard = PartGuard(max_part_norm=None, max_peer_weight=2.0)
    result, errors = _reduce(guard, [(torch.zeros(3), 1.0), (torch.ones(3), 1e9)])
    assert not errors
    torch.testing.assert_close(result, torch.full((3,), 2.0 / 3.0))  # weight 1e9 -> 2
    with pytest.raises(Exception, match="non-finite"):
        guard.check(torch.ones(3), math.inf)


def test_part_norm_cap_scales_a_huge_part_down():
    guard = PartGuard(max_part_norm=1.0, max_peer_weight=10)
    huge = torch.full((4,), 1e6)
    result, errors = _reduce(guard, [(torch.zeros(4), 1.0), (huge, 1.0)])
    assert not errors and guard.clipped == 1
    assert float(torch.linalg.vector_norm(result)) == pytest.approx(0.5, rel=1e-5)
