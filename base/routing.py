"""Choose a route through the swarm: stages that cover every layer exactly once.

Among the online records of a model, the planner looks for a chain of spans
``[0, a), [a, b), …, [y, num_layers)``; with several chains it takes the one with the fewest hops
and, per span, the least-loaded replica. If no chain exists it names the layers nobody serves, so
a missing stage fails in seconds instead of hanging.
"""

from __future__ import annotations

from collections.abc import Iterable

from base.dht_records import StageRecord
from base.errors import SwarmError


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
    records: Iterable[StageRecord], model: str, *, exclude_endpoints: frozenset[str] = frozenset()
) -> list[StageRecord]:
    """Return one record per hop, in layer order.

    Each hop takes the dtype the hop before it sends (:mod:`base.precision`): a float16 stage
    never feeds one that takes only bfloat16. Among chains that agree, the fewest hops; per
    span (and dtype), the least-loaded replica.
    """
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
    best: dict[tuple[int, int, str, tuple[str, ...]], StageRecord] = {}
    for record in online:
        key = (record.start, record.end, record.dtype, tuple(record.accepts))
        current = best.get(key)
        if current is None or (record.load, record.peer_id) < (current.load, current.peer_id):
            best[key] = record
    # fewest hops from layer 0 to num_layers: breadth-first over (boundary, dtype sent there)
    start_state = (0, None)
    frontier, previous = [start_state], {start_state: None}
    goal = None
    while frontier and goal is None:
        next_frontier = []
        for position, dtype in frontier:
            for key, record in sorted(best.items()):
                state = (record.end, record.dtype)
                if key[0] == position and _takes(record, dtype) and state not in previous:
                    previous[state] = ((position, dtype), record)
                    next_frontier.append(state)
                    if record.end == num_layers and goal is None:
                        goal = state
        frontier = next_frontier
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
) -> list[StageRecord]:
    """Online replicas of exactly ``span``, least loaded first.

    ``like``: only replicas that send what it sends (its dtype), so the next hop still takes
    it; ``takes``: only replicas that take activations in this dtype (what the hop before
    sends).
    """
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
        key=lambda r: (r.load, r.peer_id),
    )
