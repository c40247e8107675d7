import pytest

from base.dht_records import StageRecord
from base.errors import SwarmError
from base.routing import plan_route, replicas_for


def rec(start, end, endpoint, load=0.0, state="online", num_layers=30, model="m"):
    return StageRecord(
        model=model,
        start=start,
        end=end,
        num_layers=num_layers,
        endpoint=endpoint,
        peer_id=endpoint,
        state=state,
        load=load,
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
