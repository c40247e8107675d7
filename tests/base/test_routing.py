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
