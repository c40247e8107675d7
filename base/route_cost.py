"""What one hop of a route costs: the estimate :func:`base.routing.plan_route` minimises.

Per generated token a hop costs its round trip (measured by the client per endpoint), the
compute of its span (from the announced, measured ``decode_tokens_per_s``) and the wait behind
the steps already queued there (``queue_depth × step_ms``), plus the transfer of one position
where the peer declares its link throughput. A trainer's hop costs the round trip and one
sample's forward and backward (``forward_samples_per_s``, ``backward_samples_per_s``).

What a record does not say is estimated from the swarm so unknowns never win by being
unknown: a span that was not measured costs the median per-layer time of the spans that were
(or :data:`DEFAULT_LAYER_S` when none was), an endpoint the client has not timed costs the median
of the measured round trips (or :data:`DEFAULT_RTT_S`). With nothing measured at all, every
chain costs the same compute (each layer once) and the fewest hops wins.
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
        objective: ``inference`` (per token) or ``training`` (per sample, forward + backward).
    """

    rtt: Mapping[str, float]
    layer_s: float
    default_rtt: float
    objective: Objective = "inference"

    @classmethod
    def build(
        cls,
        records: Iterable[StageRecord],
        rtt: Mapping[str, float] | None = None,
        objective: Objective = "inference",
    ) -> CostModel:
        rtt = dict(rtt or {})
        measured = [s for r in records if (s := _layer_s(r, objective)) is not None]
        return cls(
            rtt=rtt,
            layer_s=statistics.median(measured) if measured else DEFAULT_LAYER_S,
            default_rtt=statistics.median(rtt.values()) if rtt else DEFAULT_RTT_S,
            objective=objective,
        )

    def compute_s(self, record: StageRecord) -> float:
        per_layer = _layer_s(record, self.objective)
        return (self.layer_s if per_layer is None else per_layer) * (record.end - record.start)

    def hop_s(self, record: StageRecord) -> float:
        """Estimated seconds this hop adds per token (inference) or per sample (training)."""
        cost = self.rtt.get(record.endpoint, self.default_rtt) + self.compute_s(record)
        if self.objective == "inference":
            cost += record.queue_depth * record.step_ms / 1000.0
            if record.network_mbps > 0 and record.hidden_size > 0:
                wire = record.hidden_size * DTYPE_BYTES.get(record.dtype, 4) * 8
                cost += wire / (record.network_mbps * 1e6)
        return cost
