"""Choose a route through the swarm: stages that cover every layer exactly once.

Among the online records of a model, the planner looks for a chain of spans
``[0, a), [a, b), …, [y, num_layers)``; with several chains it takes the one with the lowest
estimated time per token (:mod:`base.route_cost`: each hop's measured round trip, its compute
from the throughput it announced, its queue), or per training sample for a trainer; between
chains that cost the same, the fewest hops, and per span the least-loaded replica. If no chain
exists it names the layers nobody serves, so a missing stage fails in seconds instead of hanging.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Mapping

from base.dht_records import StageRecord
from base.errors import SwarmError
from base.route_cost import CostModel, Objective

_COST_DIGITS = 9  # costs equal to a nanosecond are ties (float sums differ in the last bits)


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
    never feeds one that takes only bfloat16. Among chains that agree, the lowest estimated
    time per token (``objective="training"``: per sample), then the fewest hops; per span (and
    dtype), the cheapest replica, then the least loaded.

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
    best: dict[tuple[int, int, str, tuple[str, ...]], tuple[float, StageRecord]] = {}
    for record in online:
        key = (record.start, record.end, record.dtype, tuple(record.accepts))
        cost = round(costs.hop_s(record), _COST_DIGITS)
        current = best.get(key)
        if current is None or (cost, record.load, record.peer_id) < (
            current[0],
            current[1].load,
            current[1].peer_id,
        ):
            best[key] = (cost, record)
    # cheapest chain from layer 0 to num_layers: Dijkstra over (boundary, dtype sent there),
    # ordered by (cost, hops); equal entries keep the order of the sorted spans
    edges = sorted(best.items())
    order = itertools.count()
    heap = [(0.0, 0, next(order), (0, None), None)]
    previous: dict = {}
    goal = None
    while heap:
        cost, hops, _, state, came_by = heapq.heappop(heap)
        if state in previous:
            continue
        previous[state] = came_by
        if state[0] == num_layers:
            goal = state
            break
        for (start, _, _, _), (hop_cost, record) in edges:
            target = (record.end, record.dtype)
            if start == state[0] and _takes(record, state[1]) and target not in previous:
                total = round(cost + hop_cost, _COST_DIGITS)
                heapq.heappush(heap, (total, hops + 1, next(order), target, (state, record)))
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
    while previous[state] is not None:
        state, record = previous[state]
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
    return sorted(
        (
            r
            for r in records
            if r.model == model
            and r.state == "online"
            and r.span == span
            and r.endpoint not in exclude_endpoints
            and (like is None or r.dtype == like.dtype)
            and _takes(r, takes)
        ),
        key=lambda r: (round(costs.hop_s(r), _COST_DIGITS), r.load, r.peer_id),
    )
