"""The server's Prometheus metrics, in a registry of their own (``GET /metrics``).

Latencies are the client's view of the swarm: time to first token and inter-token latency per
request, and each pipeline hop's step time (network, the daemon's queue and its compute), as
the pipeline session measures them (``PipelineSession(on_hop_step=…)``).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from base.dht_records import StageRecord

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """Counters, gauges and histograms of one server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "node0_api_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "node0_api_prompt_tokens", "prompt tokens of answered requests", registry=self.registry
        )
        self.completion_tokens = Counter(
            "node0_api_completion_tokens", "tokens generated", registry=self.registry
        )
        self.ttft = Histogram(
            "node0_api_time_to_first_token_seconds",
            "seconds from the request to the first generated token",
            buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.itl = Histogram(
            "node0_api_inter_token_latency_seconds",
            "seconds between two consecutive generated tokens of a request",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.hop_step = Histogram(
            "node0_api_hop_step_seconds",
            "seconds one pipeline hop takes to answer a step (network, queue, compute), by hop "
            "index, its layer span, and phase (prefill: several positions, decode: one)",
            ["hop", "span", "phase"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "node0_api_queue_depth",
            "requests waiting for a generation slot",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "node0_api_requests_in_flight",
            "requests holding a generation slot",
            registry=self.registry,
        )

    def track_queue(self, waiting: Callable[[], int], running: Callable[[], int]) -> None:
        """Read the queue depth and the requests in flight at every scrape."""
        self.queue_depth.set_function(waiting)
        self.in_flight.set_function(running)

    def observe_result(self, result) -> None:
        """Count an answered request's tokens and its inter-token latencies
        (a :class:`~inference.conversation.TurnResult`)."""
        self.prompt_tokens.inc(result.prompt_tokens)
        self.completion_tokens.inc(result.completion_tokens)
        times = result.token_times
        for before, after in zip(times, times[1:], strict=False):
            self.itl.observe(after - before)

    def observe_hop(self, index: int, record: StageRecord, positions: int, seconds: float) -> None:
        """One hop's step (the pipeline session's ``on_hop_step`` callback)."""
        start, end = record.span
        phase = "decode" if positions == 1 else "prefill"
        self.hop_step.labels(str(index), f"{start}-{end}", phase).observe(seconds)
