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


def test_a_sender_that_dies_while_waiting_to_send_its_next_part_does_not_stall_the_reducer():
    """A groupmate SIGKILLed mid all-reduce under load: its call for part 1 was waiting for part
    0 to finish when its stream broke. hivemind's reducer then expected that part forever (the
    round stalled until the all-reduce timeout); ours averages part 1 without it."""
    guard = PartGuard(max_part_norm=None, max_peer_weight=10)

    async def run():
        reducer = _GuardedReducer([torch.Size([2])] * 3, 3, guard)
        ones = torch.ones(2)
        first = [
            asyncio.create_task(reducer.accumulate_part(0, 0, ones * 3)),  # the dying one
            asyncio.create_task(reducer.accumulate_part(1, 0, ones)),
        ]
        await asyncio.sleep(0.01)
        waiting = asyncio.create_task(reducer.accumulate_part(0, 1, ones * 3))
        await asyncio.sleep(0.01)
        waiting.cancel()  # its stream broke: the handler is cancelled, then the sender banned
        await asyncio.sleep(0.01)
        reducer.on_sender_failed(0)
        first.append(asyncio.create_task(reducer.accumulate_part(2, 0, ones * 2)))
        part0 = await asyncio.gather(*first)
        later = await asyncio.gather(
            *(
                reducer.accumulate_part(sender, part, ones * (sender + 1))
                for part in (1, 2)
                for sender in (1, 2)
            )
        )
        return part0, later

    part0, later = asyncio.run(asyncio.wait_for(run(), 5))
    for result in part0:  # the dead sender's part 0 arrived before it died: it counts
        torch.testing.assert_close(result, torch.full((2,), 2.0))
    for result in later:  # parts 1 and 2: the survivors' mean
        torch.testing.assert_close(result, torch.full((2,), 2.5))


def test_a_sender_cancelled_while_awaiting_its_part_does_not_cancel_the_part_for_the_others():
    """The dead groupmate's handler is cancelled after it added its part: the part's result must
    still reach the others (hivemind's reducer cancelled the shared future for everyone)."""
    guard = PartGuard(max_part_norm=None, max_peer_weight=10)

    async def run():
        reducer = _GuardedReducer([torch.Size([2])] * 2, 3, guard)
        ones = torch.ones(2)
        dying = asyncio.create_task(reducer.accumulate_part(0, 0, ones * 3))
        waiting = asyncio.create_task(reducer.accumulate_part(1, 0, ones))
        await asyncio.sleep(0.01)
        dying.cancel()
        await asyncio.sleep(0.01)
        reducer.on_sender_failed(0)
        part0 = await asyncio.gather(waiting, reducer.accumulate_part(2, 0, ones * 2))
        part1 = await asyncio.gather(
            reducer.accumulate_part(1, 1, ones), reducer.accumulate_part(2, 1, ones * 2)
        )
        return part0, part1

    part0, part1 = asyncio.run(asyncio.wait_for(run(), 5))
    for result in part0:  # the dead sender added part 0 before it died: it counts
        torch.testing.assert_close(result, torch.full((2,), 2.0))
    for result in part1:
        torch.testing.assert_close(result, torch.full((2,), 1.5))


def test_a_part_far_outside_the_groups_is_excluded_and_its_sender_reported():
    """Three senders, one ×1e4: every result is the mean of the other two; the peer is named."""
    guard = PartGuard(max_part_norm=None, max_peer_weight=10, outlier_norm_ratio=10.0)
    honest = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])]

    async def run():
        reducer = _GuardedReducer([torch.Size([2])], 3, guard, ["peerA", "peerB", "bad"])
        return await asyncio.gather(
            reducer.accumulate_part(0, 0, honest[0]),
            reducer.accumulate_part(1, 0, honest[1]),
            reducer.accumulate_part(2, 0, torch.tensor([2.0, 0.5]) * 1e4),
        )

    for result in asyncio.run(asyncio.wait_for(run(), 5)):
        torch.testing.assert_close(result, (honest[0] + honest[1]) / 2, rtol=0, atol=1e-6)
    ((peer, why),) = guard.drain_excluded()
    assert peer == "bad" and "median" in why
    assert guard.rejected == 1


def test_two_senders_or_a_zero_weight_copy_exclude_nothing():
    """No majority with two weighted copies: the plain weighted mean (documented limit)."""
    guard = PartGuard(max_part_norm=None, max_peer_weight=10, outlier_norm_ratio=10.0)

    async def run():
        reducer = _GuardedReducer([torch.Size([2])], 3, guard)
        return await asyncio.gather(
            reducer.accumulate_part(0, 0, torch.ones(2)),
            reducer.accumulate_part(1, 0, torch.ones(2) * 100),
            reducer.accumulate_part(2, 0, torch.zeros(2), weight=0.0),
        )

    for result in asyncio.run(asyncio.wait_for(run(), 5)):
        torch.testing.assert_close(result, torch.full((2,), 50.5))
    assert guard.drain_excluded() == []
