"""The placement policy (node.placement) on spans alone: joining, repairing, balancing."""

from __future__ import annotations

import random

from base.dht_records import StageRecord
from node.placement import (
    Span,
    candidates,
    choose_span,
    conflicting_joiners,
    plan_move,
    shape,
)

N = 30


def join(spans: list[Span], num_blocks: int, peer_id: str, throughput: float = 1.0) -> list[Span]:
    start, end = choose_span(spans, N, num_blocks, throughput=throughput, peer_id=peer_id)
    return [*spans, Span(start, end, throughput, peer_id)]


def test_four_peers_joining_one_after_another_tile_every_layer():
    spans: list[Span] = []
    for i in range(4):
        spans = join(spans, 8, f"p{i}")
    assert [(s.start, s.end) for s in spans] == [(0, 8), (8, 16), (16, 24), (24, 30)]
    assert shape(spans, N).uncovered == 0


def test_peers_of_different_sizes_still_form_a_chain():
    spans: list[Span] = []
    for i, blocks in enumerate([12, 7, 20, 9]):
        spans = join(spans, blocks, f"p{i}")
    assert shape(spans, N).uncovered == 0
    # and the next peer adds a replica where the chain is thinnest instead of a dead end
    spans = join(spans, 10, "p9")
    new = spans[-1]
    ends = {s.end for s in spans[:-1]} | {N}
    assert new.end in ends


def test_a_fifth_peer_replicates_the_weakest_span():
    spans = [Span(0, 8, 10.0, "a"), Span(8, 16, 10.0, "b"), Span(16, 24, 2.0, "c")]
    spans.append(Span(24, 30, 10.0, "d"))
    assert choose_span(spans, N, 8, throughput=5.0) == (16, 24)


def test_candidates_start_on_boundaries_and_may_stop_at_one():
    spans = [Span(0, 10, 1.0, "a"), Span(15, 30, 1.0, "b")]
    found = candidates(spans, N, 8)
    assert (10, 15) in found and (10, 18) in found
    assert all(start in (0, 10, 15) for start, _ in found)
    assert choose_span(spans, N, 8) == (10, 15)  # fills the hole exactly: the chain joins


def test_losing_the_only_replica_moves_a_redundant_peer_into_the_hole():
    spans = [Span(0, 8, 1.0, "a"), Span(0, 8, 1.0, "b"), Span(16, 24, 1.0, "c")]
    spans.append(Span(24, 30, 1.0, "d"))  # [8, 16) died
    move = plan_move(spans, "b", N, 8)
    assert move is not None and move.target == (8, 16)
    assert move.before.uncovered == 22 and move.after.uncovered == 0
    # a peer that is the only replica of its span never leaves it, hole or not
    assert plan_move(spans, "c", N, 8) is None
    assert plan_move(spans, "d", N, 8) is None


def test_uneven_throughput_moves_a_replica_to_the_bottleneck_once():
    spans = [Span(0, 15, 10.0, p) for p in "abc"] + [Span(15, 30, 10.0, "d")]
    move = plan_move(spans, "c", N, 15)
    assert move is not None and move.target == (15, 30)
    spans = [*spans[:2], Span(15, 30, 10.0, "c"), spans[3]]
    assert all(plan_move(spans, p, N, 15) is None for p in "abcd")


def test_a_stable_swarm_never_flaps_under_measurement_noise():
    rng = random.Random(0)
    layout = [(0, 8), (0, 8), (8, 16), (16, 24), (24, 30), (8, 16)]
    for _ in range(200):
        spans = [
            Span(s, e, 10.0 * rng.uniform(0.85, 1.15), f"p{i}") for i, (s, e) in enumerate(layout)
        ]
        assert all(plan_move(spans, f"p{i}", N, 8) is None for i in range(len(layout)))


def test_small_gains_stay_within_the_hysteresis():
    # bottleneck 10 -> 12 by moving: quality 0.83 >= 0.75, so nobody moves
    spans = [Span(0, 15, 12.0, "a"), Span(0, 15, 10.0, "b"), Span(15, 30, 10.0, "c")]
    spans.append(Span(15, 30, 12.0, "d"))
    assert all(plan_move(spans, p, N, 15) is None for p in "abcd")


def _rec(peer, start, end, state):
    return StageRecord(
        model="m", start=start, end=end, num_layers=N, endpoint="", peer_id=peer, state=state
    )


def test_the_lower_peer_id_keeps_a_span_two_peers_chose_at_once():
    records = [_rec("b", 8, 16, "joining"), _rec("c", 8, 16, "joining"), _rec("a", 0, 8, "online")]
    assert [r.peer_id for r in conflicting_joiners(records, "m", "c", (8, 16))] == ["b"]
    assert conflicting_joiners(records, "m", "b", (8, 16)) == []
    assert conflicting_joiners(records, "m", "c", (16, 24)) == []
