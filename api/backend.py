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


class ModelListing:
    """The model ids a swarm serves, read from the DHT at most once per ``ttl`` seconds.

    Concurrent callers share one read (a DHT read costs 12-16 ms alone and 40-80 ms with 8
    requests at once, bench/api.py, so reading per request added that to every request's first
    token). Registry versions of the base model deployed on some rig (docs/registry.md) that the
    route does not announce yet are loaded on the daemons at run time (a no-op where held), so
    they are model ids from the deploy on; a version that fails to load is logged and tried
    again a minute later.

    Loading happens outside the listing lock: a slow ``LoadAdapter`` delays only the caller
    whose refresh started it, never the other listings, and a version being loaded is not
    loaded a second time by a concurrent refresh.

    Args:
        client: the swarm client (``records()`` and ``model``).
        model_id: the base model's id in the listing.
        ttl: seconds a listing is reused.
    """

    def __init__(self, client, model_id: str, ttl: float = LISTING_TTL_S) -> None:
        self.client = client
        self.model_id = model_id
        self.ttl = ttl
        self._lock = threading.Lock()
        self._listing: ServedModels | None = None
        self._at = 0.0
        self._loading: set[str] = set()  # versions' adapters being loaded now
        self._loaded: set[str] = set()  # loaded by us, perhaps not announced yet
        self._failed: dict[str, float] = {}  # adapter -> retry not before

    def get(self) -> ServedModels:
        """The base model and the adapters a route serves (blocking)."""
        with self._lock:
            if self._listing is not None and time.monotonic() - self._at <= self.ttl:
                return self._listing
            records = self.client.records()
            served = full_route_adapters(records)
            ready, pending = self._deployed(served)
            self._listing = ServedModels(self.model_id, tuple(sorted({*served, *ready})))
            self._at = time.monotonic()
            claimed = [v for v in pending if v.adapter not in self._loading]
            self._loading.update(v.adapter for v in claimed)
            listing = self._listing
        if not claimed:
            return listing
        return self._load(records, claimed)

    def _deployed(self, served: tuple[str, ...]) -> tuple[list[str], list]:
        """Deployed versions' adapters to list now, and the versions to load (not announced
        by the route, not failed within the last minute)."""
        from base.errors import Node0Error
        from inference.registry_models import deployed_versions

        try:
            versions = deployed_versions(self.client.model)
        except Node0Error as exc:
            log.warning("registry not readable: %s", exc)
            return [], []
        now = time.monotonic()
        ready = [v.adapter for v in versions if v.adapter in served or v.adapter in self._loaded]
        pending = [
            v
            for v in versions
            if v.adapter not in served and now >= self._failed.get(v.adapter, 0.0)
        ]
        return ready, pending

    def _load(self, records, versions) -> ServedModels:
        """Load ``versions`` on the swarm (outside the lock); the listing with those loaded."""
        from base.errors import Node0Error
        from inference.registry_models import load_on_swarm

        loaded, failed = set(), set()
        for version in versions:
            try:
                load_on_swarm(records, version)
                loaded.add(version.adapter)
            except Node0Error as exc:
                log.warning("cannot serve %s: %s", version.version, exc)
                failed.add(version.adapter)
        with self._lock:
            self._loading.difference_update(v.adapter for v in versions)
            self._loaded = (self._loaded | loaded) - failed
            for adapter in failed:
                self._failed[adapter] = time.monotonic() + 60.0
            listing = self._listing
            names = (set(listing.adapters) | loaded) - failed
            self._listing = ServedModels(self.model_id, tuple(sorted(names)))
            return self._listing


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
        self.listing = ModelListing(self.client, self.model_id)

    def models(self) -> ServedModels:
        """The base model and the adapters a route serves (blocking; see :class:`ModelListing`)."""
        return self.listing.get()

    def has_route(self) -> bool:
        """Whether the DHT records give a route now (blocking)."""
        try:
            plan_route(self.client.records(), self.client.model)
        except SwarmError:
            return False
        return True

    def close(self) -> None:
        self.client.close()
