"""What one hop of a route costs: the estimate :func:`base.routing.plan_route` minimises.

Per generated token a hop costs its round trip (measured by the client per endpoint), the
compute of its span (from the announced, measured ``decode_tokens_per_s``) and the wait behind
the steps already queued there (``queue_depth × step_ms``), plus the wire time of what it
receives per token (:func:`wire_bytes`) over the peer's announced link throughput
(``network_mbps``, measured by the daemon against its peers, :mod:`node.net_probe`, or declared
by its operator). A trainer's hop costs the round trip, one sample's forward and backward
(``forward_samples_per_s``, ``backward_samples_per_s``) and the wire time of the sample's
activations in and their gradients back (``bench_tokens`` positions each way).

What a record does not say is estimated from the swarm so unknowns never win by being
unknown: a span that was not measured costs the median per-layer time of the spans that were
(or :data:`DEFAULT_LAYER_S` when none was), an endpoint the client has not timed costs the median
of the measured round trips (or :data:`DEFAULT_RTT_S`), a peer that announces no link
throughput the median of those that do (no wire time when none does). With nothing measured at
all, every chain costs the same compute (each layer once) and the fewest hops wins.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from base.dht_records import StageRecord

Objective = Literal["inference", "training"]

DEFAULT_RTT_S = 0.005  # a hop whose round trip nobody measured
DEFAULT_LAYER_S = 0.001  # a layer's compute per token when no span of the swarm was measured
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
TOKEN_ID_BYTES = 8  # the first stage receives int64 token ids, not hidden states


def wire_bytes(record: StageRecord) -> int:
    """Bytes one position costs on the wire into ``record``'s stage: a token id into the first
    stage, hidden states (``hidden_size`` × the dtype's size) into the others; 0 when the
    record does not say its hidden size."""
    if record.start == 0:
        return TOKEN_ID_BYTES
    return record.hidden_size * DTYPE_BYTES.get(record.dtype, 4)


def _layer_s(record: StageRecord, objective: Objective) -> float | None:
    """Seconds per layer of ``record`` for ``objective``, or None when it was not measured."""
    layers = record.end - record.start
    if objective == "inference":
        if record.decode_tokens_per_s <= 0:
            return None
        return 1.0 / record.decode_tokens_per_s / layers
    if record.forward_samples_per_s <= 0 or record.backward_samples_per_s <= 0:
        return None
    return (1.0 / record.forward_samples_per_s + 1.0 / record.backward_samples_per_s) / layers


@dataclass(frozen=True)
class CostModel:
    """Per-hop cost estimates over one set of records and the client's measured round trips.

    Args:
        rtt: seconds per endpoint, as the client measured them.
        layer_s: seconds per layer for a span that was not measured.
        default_rtt: seconds for an endpoint that was not timed.
        default_mbps: link throughput of a peer that announces none (None: no wire time).
        objective: ``inference`` (per token) or ``training`` (per sample, forward + backward).
    """

    rtt: Mapping[str, float]
    layer_s: float
    default_rtt: float
    objective: Objective = "inference"
    default_mbps: float | None = None

    @classmethod
    def build(
        cls,
        records: Iterable[StageRecord],
        rtt: Mapping[str, float] | None = None,
        objective: Objective = "inference",
    ) -> CostModel:
        rtt = dict(rtt or {})
        records = list(records)
        measured = [s for r in records if (s := _layer_s(r, objective)) is not None]
        links = [r.network_mbps for r in records if r.network_mbps > 0]
        return cls(
            rtt=rtt,
            layer_s=statistics.median(measured) if measured else DEFAULT_LAYER_S,
            default_rtt=statistics.median(rtt.values()) if rtt else DEFAULT_RTT_S,
            objective=objective,
            default_mbps=statistics.median(links) if links else None,
        )

    def compute_s(self, record: StageRecord) -> float:
        per_layer = _layer_s(record, self.objective)
        return (self.layer_s if per_layer is None else per_layer) * (record.end - record.start)

    def wire_s(self, record: StageRecord) -> float:
        """Seconds the activations of one token (inference) or of one sample in and its
        gradients back (training) take on the link into ``record``'s peer."""
        mbps = record.network_mbps if record.network_mbps > 0 else self.default_mbps
        if mbps is None:
            return 0.0
        positions = 1 if self.objective == "inference" else 2 * record.bench_tokens
        return positions * wire_bytes(record) * 8 / (mbps * 1e6)

    def hop_s(self, record: StageRecord) -> float:
        """Estimated seconds this hop adds per token (inference) or per sample (training)."""
        cost = self.rtt.get(record.endpoint, self.default_rtt) + self.compute_s(record)
        if self.objective == "inference":
            cost += record.queue_depth * record.step_ms / 1000.0
        return cost + self.wire_s(record)
