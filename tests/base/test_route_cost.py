"""base.route_cost: wire time from the announced (measured or declared) link throughput."""

from __future__ import annotations

import pytest

from base.dht_records import StageRecord
from base.route_cost import CostModel, wire_bytes
from base.routing import plan_route


def rec(start, end, endpoint, *, mbps=0.0, source="", hidden=576, dtype="float32", bench=0):
    return StageRecord(
        model="m",
        start=start,
        end=end,
        num_layers=30,
        endpoint=endpoint,
        peer_id=endpoint,
        dtype=dtype,
        accepts=[dtype],
        decode_tokens_per_s=100.0,
        forward_samples_per_s=10.0,
        backward_samples_per_s=5.0,
        bench_tokens=bench,
        hidden_size=hidden,
        network_mbps=mbps,
        network_source=source,
    )


def test_a_position_on_the_wire_is_a_token_id_into_the_first_stage_else_hidden_states():
    assert wire_bytes(rec(0, 10, "a")) == 8
    assert wire_bytes(rec(10, 20, "b")) == 576 * 4
    assert wire_bytes(rec(10, 20, "b", dtype="bfloat16")) == 576 * 2
    assert wire_bytes(rec(10, 20, "b", hidden=0)) == 0


def test_wire_time_is_bytes_per_token_over_the_announced_bandwidth():
    slow = rec(10, 20, "slow", mbps=0.5, source="measured")
    costs = CostModel.build([slow], rtt={"slow": 0.01})
    assert costs.wire_s(slow) == pytest.approx(576 * 4 * 8 / 0.5e6)
    assert costs.hop_s(slow) == pytest.approx(0.01 + 0.01 + 576 * 4 * 8 / 0.5e6)
    # a training sample: its bench_tokens positions in, their gradients back
    trained = rec(10, 20, "t", mbps=0.5, bench=32)
    training = CostModel.build([trained], objective="training")
    assert training.wire_s(trained) == pytest.approx(64 * 576 * 4 * 8 / 0.5e6)


def test_a_slow_link_loses_the_route_to_a_replica_on_a_fast_one():
    # same compute, same round trip: 0.5 Mbit/s costs ~37 ms a token, 1 Gbit/s ~18 us
    records = [
        rec(0, 10, "a", mbps=1000.0, source="measured"),
        rec(10, 20, "thin", mbps=0.5, source="measured"),
        rec(10, 20, "wide", mbps=1000.0, source="declared"),
        rec(20, 30, "c", mbps=1000.0, source="measured"),
    ]
    rtt = {e: 0.002 for e in ("a", "thin", "wide", "c")}
    assert plan_route(records, "m", rtt=rtt)[1].endpoint == "wide"
    # unknown bandwidths everywhere: no wire time; "thin" wins on its peer id order
    bare = [r.model_copy(update={"network_mbps": 0.0, "network_source": ""}) for r in records]
    assert plan_route(bare, "m", rtt=rtt)[1].endpoint == "thin"


def test_a_peer_without_a_figure_costs_the_swarms_median_link_not_nothing():
    known = [rec(10, 20, e, mbps=m) for e, m in (("x", 1.0), ("y", 2.0), ("z", 4.0))]
    unknown = rec(10, 20, "u")
    costs = CostModel.build([*known, unknown])
    assert costs.default_mbps == 2.0
    assert costs.wire_s(unknown) == pytest.approx(576 * 4 * 8 / 2.0e6)
    assert CostModel.build([unknown]).wire_s(unknown) == 0.0
