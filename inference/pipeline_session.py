"""One inference session across the pipeline, with failover.

The session holds one stage session per hop of its route and, per hop, the inputs it has sent
so far (token ids for the first hop, hidden states for the others; a few KB per token). When a
hop fails (peer died, timed out, session evicted) the session opens the same span on another
replica, replays that hop's inputs to rebuild its KV-cache, and carries on: the tokens that come
out are the ones the failed replica would have produced. A replica that refuses for a reason
another replica may not have (full, lacks the adapter: ``StageUnavailable``) is replaced the
same way; when none can take over, the error is the family of the first failure's reason.

The route is the cheapest chain by estimated time per token (:mod:`base.route_cost`), with the
round trips this client measured (:class:`inference.peer_latency.RttTable`: every OpenSession is
timed, peers not timed yet are pinged before planning). With ``replica_wait`` a failed span
that has no live replica left is waited for that long: a swarm with automatic placement moves a
redundant peer onto it (docs/placement.md), and the session goes on there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from base.dht_records import StageRecord
from base.errors import PeerFailureError, SwarmError
from base.routing import plan_route, replicas_for
from base.sampler import SamplingParams
from inference.peer_latency import RttTable
from inference.stage_client import StageSessionClient, StageUnavailable, output_tensor
from proto import node0_pb2

log = logging.getLogger(__name__)


@dataclass
class _Hop:
    record: StageRecord
    client: StageSessionClient
    # what was sent, one tensor per step in order, (1, positions, …) each: kept as sent, not
    # joined, so recording a decode step costs O(1) rather than a copy of the whole history
    sent: list[torch.Tensor] = field(default_factory=list)
    length: int = 0  # positions in ``sent``

    def add(self, inputs: torch.Tensor) -> None:
        self.sent.append(inputs)
        self.length += inputs.shape[1]

    def keep(self, position: int) -> None:
        """Forget what was sent at ``position`` and after (the caches were rewound); O(1) when
        nothing is forgotten, the usual case."""
        while self.sent and self.length > position:
            last = self.sent.pop()
            self.length -= last.shape[1]
            if self.length < position:
                self.add(last[:, : position - self.length])


class PipelineSession:
    """Drive every stage of a route for one sequence.

    Args:
        fetch_records: returns the current DHT records of the model (called at open and on
            failover; blocking, run in a thread).
        model: model name.
        max_length: positions the session may reach (prompt + generated).
        step_timeout: seconds a stage may take to answer one step before it counts as failed.
        max_failovers: replicas tried per failure before giving up.
        on_hop_step: ``on_hop_step(index, record, positions, seconds)`` after each hop answers
            a step: the hop's index in the route, the record of the replica that answered, the
            positions fed, and the seconds from sending to the answer (a failover's replay
            included). A server's per-hop latency metrics read this.
        rtt: the client's measured round trips (shared by its sessions; a new table if None).
        replica_wait: seconds a failover waits for a replica of a span to appear when none is
            online (0: fail at once).
    """

    def __init__(
        self,
        fetch_records: Callable[[], list[StageRecord]],
        model: str,
        *,
        max_length: int,
        adapters: tuple[str, ...] = (),
        step_timeout: float = 30.0,
        max_failovers: int = 3,
        on_hop_step: Callable[[int, StageRecord, int, float], None] | None = None,
        rtt: RttTable | None = None,
        replica_wait: float = 0.0,
    ):
        self.rtt = rtt if rtt is not None else RttTable()
        self.replica_wait = replica_wait
        self.fetch_records = fetch_records
        self.model = model
        self.max_length = max_length
        self.adapters = adapters
        self.step_timeout = step_timeout
        self.max_failovers = max_failovers
        self.on_hop_step = on_hop_step
        self.hops: list[_Hop] = []
        # endpoints that failed per span: a peer that failed on one span may since serve
        # another (automatic placement moves peers), so it is excluded only where it failed
        self.failed_endpoints: dict[tuple[int, int], set[str]] = {}
        self.failovers = 0
        self.token_ids: list[int] = []  # the sequence whose KV is cached on every stage

    async def _connect(self, record: StageRecord) -> StageSessionClient:
        client = StageSessionClient(
            record.endpoint,
            model=self.model,
            start=record.start,
            end=record.end,
            step_timeout=self.step_timeout,
        )
        started = time.perf_counter()
        try:
            await client.open(self.max_length, self.adapters)
        except BaseException:
            await client.close()
            raise
        self.rtt.record(record.endpoint, time.perf_counter() - started)
        return client

    async def open(self) -> list[StageRecord]:
        records = await asyncio.to_thread(self.fetch_records)
        await self.rtt.probe(
            r.endpoint for r in records if r.model == self.model and r.state == "online"
        )
        route = plan_route(records, self.model, rtt=self.rtt.snapshot())
        for record in route:
            try:
                client = await self._connect(record)
            except StageUnavailable as exc:
                client, record = await self._replacement(record, exc, self._sent_to(len(self.hops)))
            self.hops.append(_Hop(record, client))
        log.debug(
            "route: %s", " -> ".join(f"{h.record.endpoint}{list(h.record.span)}" for h in self.hops)
        )
        return [h.record for h in self.hops]

    def _sent_to(self, index: int) -> str | None:
        """The activation dtype hop ``index`` receives (None: token ids, the first hop)."""
        return self.hops[index - 1].record.dtype if index > 0 else None

    async def _replacement(
        self, failed: StageRecord, cause: StageUnavailable, takes: str | None
    ) -> tuple[StageSessionClient, StageRecord]:
        """A live replica of ``failed``'s span that sends its dtype and takes ``takes``."""
        span = failed.span
        failed_here = self.failed_endpoints.setdefault(span, set())
        failed_here.add(failed.endpoint)
        deadline = time.monotonic() + self.replica_wait
        tries = 0
        while tries < self.max_failovers:
            records = await asyncio.to_thread(self.fetch_records)
            candidates = replicas_for(
                records,
                span,
                self.model,
                exclude_endpoints=frozenset(failed_here),
                like=failed,
                takes=takes,
                rtt=self.rtt.snapshot(),
            )
            if not candidates:
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.5)  # a peer may be moving onto the span
                continue
            tries += 1
            record = candidates[0]
            try:
                return await self._connect(record), record
            except StageUnavailable as exc:
                log.warning("replica %s failed to open: %s", record.endpoint, exc)
                failed_here.add(record.endpoint)
        hints = {
            PeerFailureError: "start another daemon hosting these layers and retry",
            SwarmError: "retry later, or start another daemon hosting these layers",
        }
        raise cause.family(
            f"layers [{span[0]}, {span[1]}): {cause}; no other live replica could take over "
            f"(tried: {sorted(failed_here)})",
            hint=hints.get(cause.family),
        ) from cause

    async def _step_hop(
        self,
        index: int,
        position: int,
        inputs: torch.Tensor,
        sampling: SamplingParams | None,
        return_logits: bool,
    ) -> tuple[node0_pb2.StepResponse, torch.Tensor | None]:
        hop = self.hops[index]
        last = index == len(self.hops) - 1
        kwargs = {"sampling": sampling, "return_logits": return_logits} if last else {}
        try:
            response = await hop.client.step(position, inputs, **kwargs)
            return response, None if last else output_tensor(response)
        except StageUnavailable as exc:
            log.warning(
                "stage %s on %s failed: %s; switching replica",
                list(hop.record.span),
                hop.record.endpoint,
                exc,
            )
            cause = exc
        while True:
            await hop.client.close()
            hop.client, hop.record = await self._replacement(
                hop.record, cause, self._sent_to(index)
            )
            self.failovers += 1
            try:
                response = await self._replay(hop, position, inputs, kwargs)
            except StageUnavailable as exc:
                log.warning("replacement %s failed too: %s", hop.record.endpoint, exc)
                cause = exc
                continue
            log.info(
                "stage %s rebuilt on %s from %d positions",
                list(hop.record.span),
                hop.record.endpoint,
                position + inputs.shape[1],
            )
            return response, None if last else output_tensor(response)

    async def _replay(
        self, hop: _Hop, position: int, inputs: torch.Tensor, kwargs: dict
    ) -> node0_pb2.StepResponse:
        """Rebuild a fresh replica's cache with the same steps the failed one saw.

        Same chunk boundaries mean the same kernels on the same shapes, so the rebuilt K/V are
        bitwise those of the failed replica and the output cannot drift at a near-tie.
        """
        hop.keep(position)
        offset = 0
        for chunk in hop.sent:
            await hop.client.step(offset, chunk)
            offset += chunk.shape[1]
        return await hop.client.step(position, inputs, **kwargs)

    async def step(
        self,
        token_ids: list[int],
        position: int,
        *,
        sampling: SamplingParams | None,
        return_logits: bool = False,
    ) -> node0_pb2.StepResponse:
        """Feed ``token_ids`` at ``position`` (rewinding the caches if position is earlier)."""
        x: torch.Tensor = torch.tensor([token_ids], dtype=torch.int64)
        response = None
        for index, hop in enumerate(self.hops):
            started = time.perf_counter()
            response, output = await self._step_hop(index, position, x, sampling, return_logits)
            if self.on_hop_step is not None:
                self.on_hop_step(index, hop.record, x.shape[1], time.perf_counter() - started)
            hop.keep(position)
            hop.add(x)
            if output is not None:
                x = output
        self.token_ids = self.token_ids[:position] + list(token_ids)
        return response

    async def close(self) -> None:
        await asyncio.gather(*(hop.client.close() for hop in self.hops), return_exceptions=True)
        self.hops = []
