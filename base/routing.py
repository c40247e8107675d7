"""Choose a route through the swarm: stages that cover every layer exactly once.

Among the online records of a model, the planner looks for a chain of spans
``[0, a), [a, b), …, [y, num_layers)``; with several chains it takes the one with the lowest
estimated time per token (:mod:`base.route_cost`: each hop's measured round trip, its compute
from the throughput it announced, its queue), or per training sample for a trainer; among
chains within 10% (+2 ms) of the cheapest, the fewest hops, and per span, among replicas within
that margin, the least loaded. If no chain
exists it names the layers nobody serves, so a missing stage fails in seconds instead of hanging.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from base.dht_records import StageRecord
from base.errors import SwarmError
from base.route_cost import CostModel, Objective

# Estimates within this much of the cheapest are ties (then fewer hops, then less load, then
# peer id): round trips measured on one host differ by noise, and a route that flipped between
# two equal peers with every sample would spread one client's sessions for nothing.
TIE_RELATIVE = 0.10
TIE_ABSOLUTE_S = 0.002


def _near(cost: float, best: float) -> bool:
    return cost <= best * (1 + TIE_RELATIVE) + TIE_ABSOLUTE_S


def _ranges(layers: list[int]) -> str:
    """[3, 4, 5, 9] -> '3-5, 9'."""
    out, start = [], None
    for i, layer in enumerate(layers):
        if start is None:
            start = layer
        if i + 1 == len(layers) or layers[i + 1] != layer + 1:
            out.append(f"{start}-{layer}" if layer != start else f"{layer}")
            start = None
    return ", ".join(out)


def _takes(record: StageRecord, dtype: str | None) -> bool:
    """Whether ``record`` takes activations in ``dtype`` (None: token ids, the first hop)."""
    return dtype is None or dtype in record.accepts


def plan_route(
    records: Iterable[StageRecord],
    model: str,
    *,
    exclude_endpoints: frozenset[str] = frozenset(),
    rtt: Mapping[str, float] | None = None,
    objective: Objective = "inference",
) -> list[StageRecord]:
    """Return one record per hop, in layer order: the cheapest chain.

    Each hop takes the dtype the hop before it sends (:mod:`base.precision`): a float16 stage
    never feeds one that takes only bfloat16. Among chains that agree, those whose estimated
    time per token (``objective="training"``: per sample) is near the cheapest
    (:data:`TIE_RELATIVE`, :data:`TIE_ABSOLUTE_S`), the fewest hops; per span (and dtype),
    among the replicas near the cheapest, the least loaded.

    Args:
        rtt: round-trip seconds per endpoint as this client measured them.
        objective: ``inference`` or ``training`` (see :class:`base.route_cost.CostModel`).
    """
    records = list(records)
    online = [
        r
        for r in records
        if r.model == model and r.state == "online" and r.endpoint not in exclude_endpoints
    ]
    if not online:
        raise SwarmError(
            f"no online peer serves model {model!r}",
            hint="start a swarm (`node0 swarm up`) or check --initial-peers",
        )
    num_layers = max(r.num_layers for r in online)
    costs = CostModel.build(online, rtt, objective)
    by_key: dict[tuple[int, int, str, tuple[str, ...]], list[tuple[float, StageRecord]]] = {}
    for record in online:
        key = (record.start, record.end, record.dtype, tuple(record.accepts))
        by_key.setdefault(key, []).append((costs.hop_s(record), record))
    best: dict[tuple[int, int, str, tuple[str, ...]], tuple[float, StageRecord]] = {}
    for key, options in by_key.items():
        cheapest = min(cost for cost, _ in options)
        best[key] = min(
            ((c, r) for c, r in options if _near(c, cheapest)),
            key=lambda item: (item[1].load, item[1].peer_id),
        )
    # cheapest cost to each (boundary, dtype sent there) in exactly h hops (Bellman-Ford by
    # hop count); then the fewest hops whose cost is near the cheapest chain's
    edges = sorted(best.items())
    start_state = (0, None)
    levels = [{start_state: (0.0, None)}]
    while levels[-1] and len(levels) <= len(edges):
        level = {}
        for state, (cost, _) in levels[-1].items():
            for (start, _, _, _), (hop_cost, record) in edges:
                if start != state[0] or not _takes(record, state[1]):
                    continue
                target = (record.end, record.dtype)
                total = cost + hop_cost
                if target not in level or total < level[target][0]:
                    level[target] = (total, (state, record))
        levels.append(level)
    arrivals = [
        (cost, hops, state)
        for hops, level in enumerate(levels)
        for state, (cost, _) in level.items()
        if state[0] == num_layers
    ]
    goal, goal_hops = None, 0
    if arrivals:
        cheapest = min(cost for cost, _, _ in arrivals)
        _, goal_hops, goal = min(
            (a for a in arrivals if _near(a[0], cheapest)), key=lambda a: (a[1], a[0])
        )
    if goal is None:
        covered = {layer for (s, e, _, _) in best for layer in range(s, e)}
        missing = [layer for layer in range(num_layers) if layer not in covered]
        spans = sorted({(s, e) for (s, e, _, _) in best})
        if missing:
            detail = f"layers {_ranges(missing)} are served by no online peer"
            hint = "start a daemon hosting the missing layers"
        elif _chains(spans, num_layers):
            detail = "every chain of stages hands activations to a stage that does not take "
            detail += "their dtype: " + ", ".join(
                f"[{s}, {e}) {d} (takes {'/'.join(a)})" for (s, e, d, a) in sorted(best)
            )
            hint = (
                "run the stages of a route in one dtype, or declare the conversion safe "
                "(accept_input_dtypes) on the receiving daemon"
            )
        else:
            detail = (
                "the announced spans do not join into a chain from layer 0 to "
                f"{num_layers}: {spans}"
            )
            hint = "start a daemon hosting the missing layers"
        raise SwarmError(f"cannot route model {model!r} ({num_layers} layers): {detail}", hint=hint)
    route, state = [], goal
    for hops in range(goal_hops, 0, -1):
        state, record = levels[hops][state][1]
        route.append(record)
    return route[::-1]


def _chains(spans: list[tuple[int, int]], num_layers: int) -> bool:
    """Whether ``spans`` join into a chain from 0 to ``num_layers``, dtypes aside."""
    reached, frontier = {0}, [0]
    while frontier:
        position = frontier.pop()
        for start, end in spans:
            if start == position and end not in reached:
                reached.add(end)
                frontier.append(end)
    return num_layers in reached


def replicas_for(
    records: Iterable[StageRecord],
    span: tuple[int, int],
    model: str,
    *,
    exclude_endpoints: frozenset[str],
    like: StageRecord | None = None,
    takes: str | None = None,
    rtt: Mapping[str, float] | None = None,
    objective: Objective = "inference",
) -> list[StageRecord]:
    """Online replicas of exactly ``span``, cheapest first (then least loaded).

    ``like``: only replicas that send what it sends (its dtype), so the next hop still takes
    it; ``takes``: only replicas that take activations in this dtype (what the hop before
    sends); ``rtt`` and ``objective``: as for :func:`plan_route`.
    """
    records = list(records)
    costs = CostModel.build(
        [r for r in records if r.model == model and r.state == "online"], rtt, objective
    )
    found = [
        (costs.hop_s(r), r)
        for r in records
        if r.model == model
        and r.state == "online"
        and r.span == span
        and r.endpoint not in exclude_endpoints
        and (like is None or r.dtype == like.dtype)
        and _takes(r, takes)
    ]
    if not found:
        return []
    cheapest = min(cost for cost, _ in found)

    def order(item: tuple[float, StageRecord]) -> tuple:
        cost, r = item
        return (0.0 if _near(cost, cheapest) else cost, r.load, r.peer_id)

    return [r for _, r in sorted(found, key=order)]
