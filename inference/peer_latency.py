"""Round trips to each peer as this client measured them, for routing by cost.

:func:`base.routing.plan_route` adds a hop's round trip to its compute; the numbers come from
here. A client times every ``OpenSession`` it makes (a small unary call) and, before it plans a
route, pings with ``Info`` the online peers it has not timed yet, all at once with a short
timeout. Each endpoint keeps an exponentially weighted mean, so one slow answer moves it only
part of the way; a peer that did not answer keeps no entry (and costs the swarm's median).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable

import grpc

from proto import node0_pb2, node0_pb2_grpc
from proto.channels import channel_options
from security.active import call_signer
from security.credentials import Role
from security.grpc_auth import aio_interceptors

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0


class RttTable:
    """Seconds per endpoint, an exponentially weighted mean of the samples (``weight`` of the
    newest)."""

    def __init__(self, weight: float = 0.3):
        self.weight = weight
        self._rtt: dict[str, float] = {}
        self._lock = threading.Lock()

    def record(self, endpoint: str, seconds: float) -> None:
        with self._lock:
            old = self._rtt.get(endpoint)
            self._rtt[endpoint] = (
                seconds if old is None else (1 - self.weight) * old + self.weight * seconds
            )

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._rtt)

    def unknown(self, endpoints: Iterable[str]) -> list[str]:
        with self._lock:
            return sorted({e for e in endpoints if e not in self._rtt})

    async def probe(self, endpoints: Iterable[str], timeout: float = PROBE_TIMEOUT_S) -> None:
        """Time one ``Info`` call to each endpoint not measured yet (concurrently)."""
        todo = self.unknown(endpoints)
        if todo:
            await asyncio.gather(*(self._ping(e, timeout) for e in todo))

    async def _ping(self, endpoint: str, timeout: float) -> None:
        channel = grpc.aio.insecure_channel(
            endpoint,
            options=channel_options(1 << 20),
            interceptors=aio_interceptors(call_signer(Role.CLIENT)),
        )
        try:
            stub = node0_pb2_grpc.StageStub(channel)
            started = time.perf_counter()
            await stub.Info(node0_pb2.InfoRequest(), timeout=timeout)
            self.record(endpoint, time.perf_counter() - started)
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            log.debug("no round trip to %s: %s", endpoint, exc)
        finally:
            await channel.close()
