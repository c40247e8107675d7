"""A daemon's link throughput, measured against the other daemons of its swarm over gRPC.

petals measures a server's network with an internet speed test (speedtest-cli in a child
process, 60 s timeout, the lower of download and upload, cached on disk; 100 Mbit/s assumed
when it fails). A node0 swarm may have no internet, and a public speed-test server says little
about the links between peers, so a daemon measures against its peers instead, over the path
activations take:

- ``Network.Probe`` carries ``payload`` bytes to the daemon and ``reply_bytes`` back. A small
  and a large payload are timed each way; their difference is the transfer of the extra bytes
  alone, the round trip and the per-call overhead cancel (:func:`transfer_mbps`). Each size is
  timed ``tries`` times and the fastest kept (noise only adds time). A link's figure is the
  lower of upload and download (activations go both ways); the daemon's is the median over up
  to ``max_peers`` peers (:func:`swarm_mbps`).
- Bounded: every call has a timeout, a measurement a deadline, and its bytes are at most
  ``max_peers × (tries + 1) × 2 × (large + small)``.
- The answering side (:class:`NetworkService`) caps the bytes of one probe both ways
  (``probe_too_large``) and the reply bytes it sends per minute to all callers (``probe_busy``,
  with a retry-after), so no caller makes a daemon send or receive unbounded data. Only hosts
  may call it: :mod:`security.roles` lists it for no other role.
- The first daemon of a swarm has nobody to measure against: :class:`NetworkMeter` tries again
  every ``retry_s`` until it has a figure, then re-measures every ``period_s``.
"""

from __future__ import annotations

import logging
import random
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc

from base.refusals import Reason, abort
from proto import node0_pb2, node0_pb2_grpc
from proto.channels import channel_options
from security.grpc_auth import CallSigner, secure_channel

log = logging.getLogger(__name__)

MAX_PROBE_BYTES = 4 << 20
"""Most bytes one probe may send to a daemon or ask back from it."""
REPLY_BUDGET_BYTES = 256 << 20
"""Most reply bytes a daemon sends to all probing callers together within ``BUDGET_WINDOW_S``."""
BUDGET_WINDOW_S = 60.0


def transfer_mbps(
    small_bytes: int, small_s: float, large_bytes: int, large_s: float
) -> float | None:
    """Mbit/s from the times of a small and a large payload over the same path (the round trip
    and per-call overhead, common to both, cancel); None when the times do not allow it."""
    extra, seconds = large_bytes - small_bytes, large_s - small_s
    if extra <= 0 or seconds <= 0:
        return None
    return extra * 8 / seconds / 1e6


def link_mbps(up: float | None, down: float | None) -> float | None:
    """One link's figure: the slower direction (activations cross it both ways)."""
    if up is None or down is None:
        return None
    return min(up, down)


def swarm_mbps(links: Iterable[float | None]) -> float | None:
    """The daemon's figure: the median of the links it could measure (None: none)."""
    measured = [m for m in links if m is not None and m > 0]
    return statistics.median(measured) if measured else None


@dataclass(frozen=True)
class ProbePlan:
    """What one measurement sends.

    Args:
        small_bytes: the payload whose time stands for the round trip and per-call overhead.
        large_bytes: the payload whose extra bytes are timed (at most ``MAX_PROBE_BYTES``).
        tries: calls per size and direction; the fastest counts.
        call_timeout_s: deadline of one call.
        max_peers: peers measured against (a random sample of the online ones).
        budget_s: deadline of the whole measurement; peers not reached by then are skipped.
    """

    small_bytes: int = 4 << 10
    large_bytes: int = 2 << 20
    tries: int = 3
    call_timeout_s: float = 10.0
    max_peers: int = 3
    budget_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.small_bytes < self.large_bytes <= MAX_PROBE_BYTES:
            raise ValueError(f"probe sizes need 0 <= small < large <= {MAX_PROBE_BYTES}")
        if self.tries < 1 or self.max_peers < 1:
            raise ValueError("a probe needs at least one try and one peer")


def probe_cap(max_message_bytes: int) -> int:
    """A daemon's cap on one probe: ``MAX_PROBE_BYTES``, or half its gRPC message limit when
    that is smaller (the rest leaves room for the message's framing)."""
    return min(MAX_PROBE_BYTES, max_message_bytes // 2)


class _ReplyBudget:
    """Reply bytes sent within the last ``window_s`` seconds, against a ceiling."""

    def __init__(self, limit: int, window_s: float):
        self.limit, self.window_s = limit, window_s
        self._sent: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def take(self, n: int) -> float | None:
        """Count ``n`` bytes and return None, or the seconds until they would fit."""
        now = time.monotonic()
        with self._lock:
            while self._sent and self._sent[0][0] <= now - self.window_s:
                self._sent.popleft()
            if sum(b for _, b in self._sent) + n > self.limit:
                return self._sent[0][0] + self.window_s - now if self._sent else self.window_s
            self._sent.append((now, n))
            return None


class NetworkService(node0_pb2_grpc.NetworkServicer):
    """The answering side of a probe: takes a capped payload, sends back capped zero bytes.

    Args:
        max_probe_bytes: the cap each way (a daemon passes ``MAX_PROBE_BYTES`` or, when its
            gRPC messages are smaller, half its ``max_message_bytes``: see :func:`probe_cap`).
        reply_budget_bytes: reply bytes sent to all callers together within ``window_s``.
    """

    def __init__(
        self,
        max_probe_bytes: int = MAX_PROBE_BYTES,
        reply_budget_bytes: int = REPLY_BUDGET_BYTES,
        window_s: float = BUDGET_WINDOW_S,
    ):
        self.max_probe_bytes = max_probe_bytes
        self._budget = _ReplyBudget(reply_budget_bytes, window_s)

    def Probe(self, request, context):  # noqa: N802 (gRPC method name)
        sent, asked = len(request.payload), request.reply_bytes
        if sent > self.max_probe_bytes or not 0 <= asked <= self.max_probe_bytes:
            abort(
                context,
                Reason.PROBE_TOO_LARGE,
                f"a probe carries at most {self.max_probe_bytes} bytes each way "
                f"(sent {sent}, asked {asked})",
            )
        wait = self._budget.take(asked)
        if wait is not None:
            abort(
                context,
                Reason.PROBE_BUSY,
                "this daemon's probe reply budget for the minute is spent",
                retry_after=wait,
            )
        return node0_pb2.ProbeResponse(payload=bytes(asked), max_bytes=self.max_probe_bytes)

    def add_to_server(self, server: grpc.Server) -> None:
        node0_pb2_grpc.add_NetworkServicer_to_server(self, server)


def probe_link(
    endpoint: str, signer: CallSigner | None, plan: ProbePlan, deadline: float
) -> float | None:
    """Mbit/s of the link to the daemon at ``endpoint`` (None: it failed or time ran out).

    The first call opens the connection untimed and learns the daemon's cap; the large payload
    stays within it (a daemon with a small ``max_message_bytes`` still measures)."""
    options = channel_options(plan.large_bytes + (64 << 10))
    with grpc.insecure_channel(endpoint, options=options) as raw:
        stub = node0_pb2_grpc.NetworkStub(secure_channel(raw, signer))

        def timed(send: int, reply: int) -> float:
            timeout = min(plan.call_timeout_s, deadline - time.monotonic())
            if timeout <= 0:
                raise TimeoutError("the measurement's deadline passed")
            request = node0_pb2.ProbeRequest(payload=bytes(send), reply_bytes=reply)
            started = time.perf_counter()
            stub.Probe(request, timeout=timeout)
            return time.perf_counter() - started

        def direction(up: bool, large_bytes: int) -> float | None:
            small = large = float("inf")
            for _ in range(plan.tries):  # interleaved, so a slow spell hits both sizes
                sizes = [(plan.small_bytes, 0), (large_bytes, 0)]
                if not up:
                    sizes = [(0, plan.small_bytes), (0, large_bytes)]
                small = min(small, timed(*sizes[0]))
                large = min(large, timed(*sizes[1]))
            return transfer_mbps(plan.small_bytes, small, large_bytes, large)

        try:
            request = node0_pb2.ProbeRequest(reply_bytes=plan.small_bytes)
            cap = stub.Probe(request, timeout=plan.call_timeout_s).max_bytes
            large_bytes = min(plan.large_bytes, cap)
            if large_bytes <= plan.small_bytes:
                log.info("no link measurement to %s: it caps probes at %d bytes", endpoint, cap)
                return None
            return link_mbps(direction(True, large_bytes), direction(False, large_bytes))
        except (grpc.RpcError, TimeoutError) as exc:
            log.info("no link measurement to %s: %s", endpoint, exc)
            return None


class NetworkMeter:
    """Keeps a daemon's measured link throughput fresh, on a thread of its own.

    Args:
        peers: the endpoints of the other online daemons (read when a measurement starts).
        signer: the daemon's own credential's signer (None in an open swarm).
        period_s: seconds between measurements once one succeeded.
        retry_s: seconds between tries while none has (the first peer of a swarm).
        plan: what one measurement sends.
    """

    def __init__(
        self,
        peers: Callable[[], list[str]],
        signer: CallSigner | None,
        *,
        period_s: float,
        retry_s: float,
        plan: ProbePlan | None = None,
    ):
        self.peers, self.signer = peers, signer
        self.period_s, self.retry_s = period_s, retry_s
        self.plan = plan or ProbePlan()
        self.mbps: float | None = None
        self.measured_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="net-probe", daemon=True)

    def measure_once(self) -> float | None:
        """Measure against up to ``plan.max_peers`` peers; keep and return the figure."""
        try:
            endpoints = list(self.peers())
        except Exception:  # a DHT hiccup: try again at the next turn
            log.warning("could not list peers to measure the network against", exc_info=True)
            return None
        chosen = random.sample(endpoints, min(len(endpoints), self.plan.max_peers))
        deadline = time.monotonic() + self.plan.budget_s
        value = swarm_mbps(probe_link(e, self.signer, self.plan, deadline) for e in chosen)
        if value is not None:
            self.mbps, self.measured_at = value, time.time()
            log.info("network throughput %.1f Mbit/s (median over %d peer(s))", value, len(chosen))
        return value

    def _run(self) -> None:
        while not self._stop.is_set():
            self.measure_once()
            self._stop.wait(self.period_s if self.mbps is not None else self.retry_s)

    def start(self) -> NetworkMeter:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop measuring; a measurement in flight is not waited for (the thread is a daemon
        thread and its calls have deadlines)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)
