import pytest

from base.dht_records import StageRecord
from base.errors import SwarmError
from base.precision import accepted_inputs
from base.routing import plan_route, replicas_for


def rec(start, end, endpoint, load=0.0, state="online", num_layers=30, model="m", dtype="float32"):
    return StageRecord(
        model=model,
        start=start,
        end=end,
        num_layers=num_layers,
        endpoint=endpoint,
        peer_id=endpoint,
        state=state,
        load=load,
        dtype=dtype,
        accepts=accepted_inputs(dtype),
    )


def test_route_covers_every_layer_once_and_prefers_least_loaded():
    records = [
        rec(0, 10, "a"),
        rec(10, 20, "b1", load=0.5),
        rec(10, 20, "b2", load=0.1),
        rec(20, 30, "c"),
    ]
    route = plan_route(records, "m")
    assert [r.endpoint for r in route] == ["a", "b2", "c"]
    assert [(r.start, r.end) for r in route] == [(0, 10), (10, 20), (20, 30)]


def test_route_prefers_fewest_hops_with_overlapping_spans():
    records = [
        rec(0, 10, "a"),
        rec(10, 20, "b"),
        rec(20, 30, "c"),
        rec(0, 15, "x"),
        rec(15, 30, "y"),
    ]
    assert [r.endpoint for r in plan_route(records, "m")] == ["x", "y"]


def test_missing_layers_are_named():
    with pytest.raises(SwarmError, match="layers 10-19 are served by no online peer"):
        plan_route([rec(0, 10, "a"), rec(20, 30, "c")], "m")


def test_offline_and_excluded_peers_are_not_routed():
    records = [rec(0, 10, "a"), rec(10, 20, "b", state="offline"), rec(20, 30, "c")]
    with pytest.raises(SwarmError, match="10-19"):
        plan_route(records, "m")
    records = [rec(0, 10, "a"), rec(10, 20, "b"), rec(10, 20, "b2"), rec(20, 30, "c")]
    route = plan_route(records, "m", exclude_endpoints=frozenset({"b"}))
    assert route[1].endpoint == "b2"
    assert [
        r.endpoint for r in replicas_for(records, (10, 20), "m", exclude_endpoints=frozenset({"b"}))
    ] == ["b2"]


def test_unknown_model_has_no_route():
    with pytest.raises(SwarmError, match="no online peer serves model 'other'"):
        plan_route([rec(0, 30, "a")], "other")


def test_spans_that_do_not_chain_are_reported():
    with pytest.raises(SwarmError, match="do not join into a chain"):
        plan_route([rec(0, 12, "a"), rec(10, 30, "b")], "m")


def test_a_route_never_hands_activations_to_a_stage_that_does_not_take_their_dtype():
    records = [
        rec(0, 10, "a16", dtype="float16"),  # least loaded, but nothing after it takes float16
        rec(0, 10, "abf", load=0.9, dtype="bfloat16"),
        rec(10, 20, "bbf", dtype="bfloat16"),
        rec(20, 30, "cbf", dtype="bfloat16"),
    ]
    assert [r.endpoint for r in plan_route(records, "m")] == ["abf", "bbf", "cbf"]


def test_a_float32_stage_takes_bfloat16_activations_but_not_the_reverse():
    widening = [rec(0, 15, "a", dtype="bfloat16"), rec(15, 30, "b", dtype="float32")]
    assert [r.endpoint for r in plan_route(widening, "m")] == ["a", "b"]
    narrowing = [rec(0, 15, "a", dtype="float32"), rec(15, 30, "b", dtype="bfloat16")]
    with pytest.raises(SwarmError, match="does not take their dtype") as info:
        plan_route(narrowing, "m")
    assert "accept_input_dtypes" in info.value.hint


def test_a_declared_conversion_makes_a_route():
    declared = rec(15, 30, "b", dtype="bfloat16").model_copy(
        update={"accepts": accepted_inputs("bfloat16", ["float32"])}
    )
    assert [r.endpoint for r in plan_route([rec(0, 15, "a"), declared], "m")] == ["a", "b"]


def test_a_failover_replica_sends_the_same_dtype_and_takes_what_comes_before():
    records = [
        rec(10, 20, "b16", dtype="float16"),
        rec(10, 20, "bbf", load=0.5, dtype="bfloat16"),
        rec(10, 20, "b32", load=0.9),
    ]
    like = rec(10, 20, "failed", dtype="bfloat16")
    found = replicas_for(records, (10, 20), "m", exclude_endpoints=frozenset(), like=like)
    assert [r.endpoint for r in found] == ["bbf"]
    takes = replicas_for(records, (10, 20), "m", exclude_endpoints=frozenset(), takes="bfloat16")
    assert [r.endpoint for r in takes] == ["bbf", "b32"]  # float32 takes bfloat16 exactly


# --- routing by estimated cost (base.route_cost) -------------------------------------------------


def fast(record, tokens_per_s, *, fwd=0.0, bwd=0.0, queue=0, step_ms=0.0):
    return record.model_copy(
        update={
            "decode_tokens_per_s": tokens_per_s,
            "forward_samples_per_s": fwd,
            "backward_samples_per_s": bwd,
            "queue_depth": queue,
            "step_ms": step_ms,
        }
    )


def test_a_longer_but_faster_chain_beats_a_shorter_slow_one():
    # two hops at 5 tokens/s each: 0.4 s per token; three hops at 100 tokens/s: 0.03 s + RTTs
    slow = [fast(rec(0, 15, "x"), 5.0), fast(rec(15, 30, "y"), 5.0)]
    quick = [fast(rec(0, 10, "a"), 100.0), fast(rec(10, 20, "b"), 100.0)]
    quick.append(fast(rec(20, 30, "c"), 100.0))
    rtt = {e: 0.01 for e in "xyabc"}
    assert [r.endpoint for r in plan_route(slow + quick, "m", rtt=rtt)] == ["a", "b", "c"]
    # with the same compute per layer, the extra hop's round trip decides: fewest hops
    even = [fast(rec(0, 15, "x"), 100.0 * 10 / 15), fast(rec(15, 30, "y"), 100.0 * 10 / 15)]
    assert [r.endpoint for r in plan_route(even + quick, "m", rtt=rtt)] == ["x", "y"]


def test_measured_round_trips_pick_the_near_replica_and_can_outweigh_a_hop():
    records = [rec(0, 10, "a"), rec(10, 20, "far"), rec(10, 20, "near"), rec(20, 30, "c")]
    rtt = {"a": 0.001, "far": 0.2, "near": 0.002, "c": 0.001}
    assert [r.endpoint for r in plan_route(records, "m", rtt=rtt)] == ["a", "near", "c"]
    # a two-hop chain through a 300 ms peer loses to three hops of 1-2 ms
    records += [rec(0, 15, "x"), rec(15, 30, "y")]
    rtt |= {"x": 0.3, "y": 0.001}
    assert [r.endpoint for r in plan_route(records, "m", rtt=rtt)] == ["a", "near", "c"]


def test_queue_depth_times_step_time_counts():
    records = [
        rec(0, 10, "a"),
        fast(rec(10, 20, "busy"), 100.0, queue=8, step_ms=50.0),  # 0.4 s of queued steps
        fast(rec(10, 20, "idle"), 50.0),  # slower, but nothing queued
        rec(20, 30, "c"),
    ]
    assert plan_route(records, "m")[1].endpoint == "idle"
    found = replicas_for(records, (10, 20), "m", exclude_endpoints=frozenset())
    assert [r.endpoint for r in found] == ["idle", "busy"]


def test_unmeasured_spans_cost_the_swarms_median_layer_time_not_nothing():
    # "u" announced no throughput: it is not free; it costs what a measured layer costs
    records = [
        fast(rec(0, 10, "a"), 10.0),
        fast(rec(10, 20, "b"), 10.0),
        rec(10, 20, "u"),
        fast(rec(20, 30, "c"), 10.0),
    ]
    rtt = {e: 0.001 for e in ("a", "b", "c", "u")}
    hops = plan_route(records, "m", rtt=rtt)
    assert hops[1].endpoint == "b"  # tie on cost: the peer id order keeps it stable


def test_trainers_pick_by_forward_and_backward_throughput():
    records = [
        fast(rec(0, 15, "x"), 100.0, fwd=1.0, bwd=0.5),  # 3 s per sample
        fast(rec(15, 30, "y"), 100.0, fwd=1.0, bwd=0.5),
        fast(rec(0, 10, "a"), 10.0, fwd=20.0, bwd=10.0),  # 0.15 s per sample
        fast(rec(10, 20, "b"), 10.0, fwd=20.0, bwd=10.0),
        fast(rec(20, 30, "c"), 10.0, fwd=20.0, bwd=10.0),
    ]
    assert [r.endpoint for r in plan_route(records, "m")] == ["x", "y"]  # fast decode
    trained = plan_route(records, "m", objective="training")
    assert [r.endpoint for r in trained] == ["a", "b", "c"]


def test_round_trip_noise_between_equal_peers_does_not_flip_the_route():
    # two replicas on one host: 1.0 vs 1.3 ms is noise, not a reason to leave the less loaded
    records = [rec(0, 10, "a"), rec(10, 20, "b1", load=0.5), rec(10, 20, "b2"), rec(20, 30, "c")]
    for rtt_b2 in (0.0013, 0.0009):
        rtt = {"a": 0.001, "b1": 0.001, "b2": rtt_b2, "c": 0.001}
        assert plan_route(records, "m", rtt=rtt)[1].endpoint == "b2"
    # nor does it buy a third hop: near-equal chains go to the fewest hops
    records += [rec(0, 15, "x"), rec(15, 30, "y")]
    rtt = {"a": 0.001, "b2": 0.001, "c": 0.001, "x": 0.0035, "y": 0.0035}
    assert [r.endpoint for r in plan_route(records, "m", rtt=rtt)] == ["x", "y"]
