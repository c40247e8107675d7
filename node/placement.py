"""Where a peer with ``stages: auto`` should sit: the span policy, without I/O.

petals' idea (``block_selection.py``), adapted to node0's routes. In petals a client may enter
a server's span at any block; here a route is a chain of whole spans ``[0, a), [a, b), …``, so
a span is only useful where it starts at a boundary a chain reaches and ends at one the next
span starts from. So:

- **Candidates** start at a boundary of the swarm (0, or any announced span's start or end)
  and end either ``num_blocks`` layers later (capped at the last layer) or at any boundary
  within that reach (a shorter span that joins the chain).
- **Layer throughput**: each layer gets the sum of the measured decode throughput of the spans
  that cover it and lie on a chain from layer 0 to the last layer. A layer no span reachable
  from layer 0 covers is *uncovered*.
- **Choosing** (:func:`choose_span`): the candidate that leaves the fewest uncovered layers,
  then the highest minimum layer throughput, then the one whose own layers are served worst
  now (petals' "lowest throughput" window), then one that ends on a boundary, then the longer,
  then the lower start.
- **Moving** (:func:`plan_move`): a hosting peer imagines leaving its span and choosing again.
  It moves if that leaves fewer layers uncovered (its span was redundant and a span lost its
  last replica), or, with every layer covered, if the minimum layer throughput rises enough
  that ``now / after < balance_quality`` (petals' balance_quality: 0.75 means "move only for a
  third more throughput at the bottleneck"). Leaving a span that is the only replica of some
  layer never helps (it uncovers that layer), so a swarm with no spare replica never moves.
  Unlike petals it does not simulate every other peer moving too: only its own move counts,
  which is conservative and cannot oscillate between two peers.

Records in state ``joining`` (a span being loaded) count as covering, so peers joining one
after another spread out; two that choose at the same moment are told apart by
:func:`conflicting_joiners` (the lower peer id keeps the span).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from base.dht_records import StageRecord

DEFAULT_THROUGHPUT = 1.0  # a span nobody measured, when no span of the swarm was measured


@dataclass(frozen=True)
class Span:
    """A span some peer serves (or would serve) and the decode tokens/s it adds there."""

    start: int
    end: int
    throughput: float
    peer_id: str = ""


@dataclass(frozen=True)
class SwarmShape:
    """How well a set of spans serves the model: fewer uncovered layers, then a higher
    bottleneck, is better."""

    uncovered: int
    min_throughput: float

    def key(self) -> tuple[int, float]:
        return (self.uncovered, -self.min_throughput)


@dataclass(frozen=True)
class Move:
    """A decision to move from ``current`` to ``target`` and why."""

    current: tuple[int, int]
    target: tuple[int, int]
    before: SwarmShape
    after: SwarmShape
    reason: str


def placed_spans(records: Iterable[StageRecord], model: str) -> list[Span]:
    """Online and joining spans of ``model`` with their throughput (unmeasured ones count as
    the swarm's median, so a span still loading is not worth nothing)."""
    live = [r for r in records if r.model == model and r.state in ("online", "joining")]
    measured = [r.decode_tokens_per_s for r in live if r.decode_tokens_per_s > 0]
    fallback = statistics.median(measured) if measured else DEFAULT_THROUGHPUT
    return [
        Span(r.start, r.end, r.decode_tokens_per_s or fallback, r.peer_id)
        for r in sorted(live, key=lambda r: (r.start, r.end, r.peer_id))
    ]


def typical_throughput(spans: Iterable[Span]) -> float:
    """What a newcomer is assumed to add before it measured itself: the median of the swarm."""
    values = [s.throughput for s in spans]
    return statistics.median(values) if values else DEFAULT_THROUGHPUT


def _reachable(spans: list[Span], origin: int, forward: bool) -> set[int]:
    reached, frontier = {origin}, [origin]
    while frontier:
        at = frontier.pop()
        for span in spans:
            src, dst = (span.start, span.end) if forward else (span.end, span.start)
            if src == at and dst not in reached:
                reached.add(dst)
                frontier.append(dst)
    return reached


def shape(spans: list[Span], num_layers: int) -> SwarmShape:
    """Uncovered layers (by spans a chain from layer 0 reaches) and the lowest per-layer
    throughput (over spans on a whole chain; 0 while there is none)."""
    ahead = _reachable(spans, 0, forward=True)
    behind = _reachable(spans, num_layers, forward=False)
    covered = [False] * num_layers
    per_layer = [0.0] * num_layers
    for span in spans:
        if span.start not in ahead:
            continue
        for layer in range(span.start, min(span.end, num_layers)):
            covered[layer] = True
            if span.end in behind:
                per_layer[layer] += span.throughput
    return SwarmShape(uncovered=covered.count(False), min_throughput=min(per_layer, default=0.0))


def boundaries(spans: Iterable[Span], num_layers: int) -> list[int]:
    points = {0}
    for span in spans:
        points.update((span.start, span.end))
    return sorted(p for p in points if 0 <= p < num_layers)


def candidates(spans: list[Span], num_layers: int, num_blocks: int) -> list[tuple[int, int]]:
    """Spans of at most ``num_blocks`` layers that start on a boundary of ``spans``."""
    points = boundaries(spans, num_layers)
    ends = set(points) | {num_layers}
    out = set()
    for start in points:
        reach = min(start + num_blocks, num_layers)
        out.add((start, reach))
        out.update((start, end) for end in ends if start < end <= reach)
    return sorted(out)


def _layer_min(spans: list[Span], start: int, end: int, num_layers: int) -> float:
    """The lowest throughput any of layers ``[start, end)`` gets from ``spans`` now."""
    behind = _reachable(spans, num_layers, forward=False)
    ahead = _reachable(spans, 0, forward=True)
    per_layer = [0.0] * (end - start)
    for span in spans:
        if span.start in ahead and span.end in behind:
            for layer in range(max(start, span.start), min(end, span.end)):
                per_layer[layer - start] += span.throughput
    return min(per_layer, default=0.0)


def _rank(
    others: list[Span], num_layers: int, throughput: float, start: int, end: int, peer_id: str
) -> tuple:
    after = shape([*others, Span(start, end, throughput, peer_id)], num_layers)
    aligned = end == num_layers or end in boundaries(others, num_layers)
    return (
        *after.key(),
        _layer_min(others, start, end, num_layers),
        not aligned,
        -(end - start),
        start,
    )


def choose_span(
    spans: list[Span],
    num_layers: int,
    num_blocks: int,
    *,
    throughput: float | None = None,
    peer_id: str = "",
) -> tuple[int, int]:
    """The span a peer that holds ``num_blocks`` layers should serve among ``spans`` (which
    must not include the peer's own)."""
    if num_blocks < 1:
        raise ValueError("a peer must hold at least one layer")
    mine = typical_throughput(spans) if throughput is None else throughput
    options = candidates(spans, num_layers, num_blocks)
    return min(options, key=lambda c: _rank(spans, num_layers, mine, *c, peer_id))


def plan_move(
    spans: list[Span],
    peer_id: str,
    num_layers: int,
    num_blocks: int,
    *,
    balance_quality: float = 0.75,
) -> Move | None:
    """Whether peer ``peer_id`` (one span in ``spans``) should move, and where.

    Returns None when staying is as good, or when the gain is within the hysteresis.
    """
    own = [s for s in spans if s.peer_id == peer_id]
    if len(own) != 1:
        return None  # not (yet) announced, or hosting several spans: nothing to decide
    current = own[0]
    others = [s for s in spans if s.peer_id != peer_id]
    alone = [
        layer
        for layer in range(current.start, current.end)
        if not any(s.start <= layer < s.end for s in others)
    ]
    if alone:
        return None  # the only replica of these layers: leaving would cut every route
    before = shape(spans, num_layers)
    target = choose_span(
        others, num_layers, num_blocks, throughput=current.throughput, peer_id=peer_id
    )
    if target == (current.start, current.end):
        return None
    after = shape([*others, Span(*target, current.throughput, peer_id)], num_layers)
    if after.uncovered < before.uncovered:
        reason = f"covers {before.uncovered - after.uncovered} layer(s) nobody serves"
        return Move((current.start, current.end), target, before, after, reason)
    if before.uncovered or after.uncovered or after.min_throughput <= 0:
        return None
    quality = before.min_throughput / after.min_throughput
    if quality < balance_quality:
        reason = (
            f"balance quality {quality:.2f} < {balance_quality:g} (bottleneck "
            f"{before.min_throughput:.1f} -> {after.min_throughput:.1f} tokens/s)"
        )
        return Move((current.start, current.end), target, before, after, reason)
    return None


def conflicting_joiners(
    records: Iterable[StageRecord], model: str, peer_id: str, span: tuple[int, int]
) -> list[StageRecord]:
    """Other peers joining a span that overlaps ``span`` with a lower peer id: they keep it,
    this peer chooses again."""
    start, end = span
    return [
        r
        for r in records
        if r.model == model
        and r.state == "joining"
        and r.peer_id != peer_id
        and r.peer_id < peer_id
        and r.start < end
        and start < r.end
    ]
