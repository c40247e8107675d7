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


def plan_route(
    records: Iterable[StageRecord], model: str, *, exclude_endpoints: frozenset[str] = frozenset()
) -> list[StageRecord]:
    """Return one record per hop, in layer order."""
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
    best: dict[tuple[int, int], StageRecord] = {}
    for record in online:
        current = best.get(record.span)
        if current is None or (record.load, record.peer_id) < (current.load, current.peer_id):
            best[record.span] = record
    # fewest hops from layer 0 to num_layers: breadth-first over span boundaries
    frontier, previous = [0], {0: None}
    while frontier and num_layers not in previous:
        next_frontier = []
        for position in frontier:
            for (start, end), record in sorted(best.items()):
                if start == position and end not in previous:
                    previous[end] = record
                    next_frontier.append(end)
        frontier = next_frontier
    if num_layers not in previous:
        covered = {layer for (s, e) in best for layer in range(s, e)}
        missing = [layer for layer in range(num_layers) if layer not in covered]
        detail = (
            f"layers {_ranges(missing)} are served by no online peer"
            if missing
            else "the announced spans do not join into a chain from layer 0 to "
            f"{num_layers}: {sorted(best)}"
        )
        raise SwarmError(
            f"cannot route model {model!r} ({num_layers} layers): {detail}",
            hint="start a daemon hosting the missing layers",
        )
    route, position = [], num_layers
    while position:
        record = previous[position]
        route.append(record)
        position = record.start
    return route[::-1]


def replicas_for(
    records: Iterable[StageRecord],
    span: tuple[int, int],
    model: str,
    *,
    exclude_endpoints: frozenset[str],
) -> list[StageRecord]:
    """Online replicas of exactly ``span``, least loaded first."""
    return sorted(
        (
            r
            for r in records
            if r.model == model
            and r.state == "online"
            and r.span == span
            and r.endpoint not in exclude_endpoints
        ),
        key=lambda r: (r.load, r.peer_id),
    )
