"""The API's connection to the swarm: one client-mode DHT peer, one conversation engine, and
the model ids the swarm serves (its base model, every task adapter on a full route, and the
registry versions of the base model deployed on some rig, loaded at run time)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from base.dht_records import StageRecord
from base.errors import SwarmError
from base.routing import plan_route

log = logging.getLogger(__name__)

LISTING_TTL_S = 1.0
"""Seconds a model listing is reused: an adapter that appears or drops off shows within this
(a session naming an adapter that has just gone is refused by the daemons themselves)."""


@dataclass(frozen=True)
class ServedModels:
    """What ``GET /v1/models`` lists: the base model and the adapters of the swarm."""

    base: str
    adapters: tuple[str, ...]


def full_route_adapters(records: list[StageRecord]) -> tuple[str, ...]:
    """Adapters that some online stages holding them cover from layer 0 to the last layer
    (a session naming such an adapter finds it on every hop of some route)."""
    online = [r for r in records if r.state == "online"]
    if not online:
        return ()
    layers = max(r.num_layers for r in online)
    names = sorted({a for r in online for a in r.adapters})
    covered = []
    for name in names:
        spans = sorted(r.span for r in online if name in r.adapters)
        reach = 0
        for start, end in spans:
            if start <= reach < end:
                reach = end
        if reach >= layers:
            covered.append(name)
    return tuple(covered)


class SwarmBackend:
    """A swarm connection for the API: ``engine`` answers turns, :meth:`models` lists ids.

    Args:
        model: the catalog name (or HF directory) of the base model the swarm serves.
        initial_peers: DHT multiaddrs of the swarm.
        max_length: context window (None: the model's).
        step_timeout: seconds a stage may take per step before failover.
        on_hop_step: called after each hop of a pipeline session answers a step (the
            server's per-hop latency metric, see ``PipelineSession``).
    """

    def __init__(
        self,
        model: str,
        initial_peers: list[str],
        *,
        max_length: int | None = None,
        step_timeout: float = 30.0,
        on_hop_step: Callable[[int, StageRecord, int, float], None] | None = None,
    ) -> None:
        from inference.conversation import ConversationEngine
        from inference.swarm_client import SwarmClient

        self.client = SwarmClient(model, initial_peers)
        try:
            self.engine = ConversationEngine.connect(
                self.client,
                max_length=max_length,
                step_timeout=step_timeout,
                on_hop_step=on_hop_step,
            )
        except BaseException:
            self.client.close()
            raise
        self.model_id = Path(model).name if Path(model).is_dir() else model
        self.listing_ttl = LISTING_TTL_S
        self._listing: ServedModels | None = None
        self._listing_at = 0.0
        self._listing_lock = threading.Lock()
        self._load_failed: dict[str, float] = {}  # registry version -> retry not before

    def models(self) -> ServedModels:
        """The base model and the adapters a route serves (blocking).

        Read from the DHT at most once per :attr:`listing_ttl` seconds; concurrent callers
        share one read. A DHT read costs 12-16 ms alone and 40-80 ms with 8 requests at once
        (bench/api.py), so reading per request added that to every request's first token.
        """
        with self._listing_lock:
            now = time.monotonic()
            if self._listing is None or now - self._listing_at > self.listing_ttl:
                records = self.client.records()
                adapters = full_route_adapters(records)
                deployed = self._deployed_versions(records, adapters)
                adapters = tuple(sorted({*adapters, *deployed}))
                self._listing = ServedModels(self.model_id, adapters)
                self._listing_at = time.monotonic()
            return self._listing

    def _deployed_versions(self, records, served: tuple[str, ...]) -> tuple[str, ...]:
        """Registry versions of this base model deployed on some rig (docs/registry.md): one
        the route does not announce yet is loaded on the daemons at run time (a no-op where
        held), so it is a model id from the deploy on. A version that fails to load is logged
        and tried again a minute later."""
        from base.errors import Node0Error
        from inference.registry_models import deployed_versions, load_on_swarm

        try:
            versions = deployed_versions(self.client.model)
        except Node0Error as exc:
            log.warning("registry not readable: %s", exc)
            return ()
        ready = []
        for version in versions:
            if version.adapter not in served:
                if time.monotonic() < self._load_failed.get(version.adapter, 0.0):
                    continue
                try:
                    load_on_swarm(records, version)
                except Node0Error as exc:
                    log.warning("cannot serve %s: %s", version.version, exc)
                    self._load_failed[version.adapter] = time.monotonic() + 60.0
                    continue
            ready.append(version.adapter)
        return tuple(ready)

    def has_route(self) -> bool:
        """Whether the DHT records give a route now (blocking)."""
        try:
            plan_route(self.client.records(), self.client.model)
        except SwarmError:
            return False
        return True

    def close(self) -> None:
        self.client.close()
