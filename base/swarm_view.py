"""A client's view of the swarm: a client-mode DHT peer, the model's stage records, a route.

Shared by everything that joins a swarm without hosting a stage (inference client, trainer,
gatherer, ``node0 swarm status``). The initial peers come from ``--initial-peers`` or, for a
local swarm, from the state file that ``node0 swarm up`` writes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from base.dht import start_dht
from base.dht_records import StageRecord, fetch_records
from base.errors import SwarmError
from base.paths import node0_home
from base.routing import plan_route

ROUTE_WAIT_S = 5.0  # how long a client waits for records to appear before naming what's missing


def default_swarm_file() -> Path:
    return Path(os.environ.get("NODE0_SWARM_FILE", node0_home() / "swarm" / "current.json"))


def initial_peers_from(swarm_file: Path | None = None) -> list[str]:
    path = swarm_file or default_swarm_file()
    if not path.is_file():
        raise SwarmError(
            f"no --initial-peers given and no local swarm state at {path}",
            hint="start one with `node0 swarm up` or pass --initial-peers",
        )
    peers = json.loads(path.read_text()).get("initial_peers") or []
    if not peers:
        raise SwarmError(f"{path} lists no initial peers")
    return peers


class SwarmView:
    """A client-mode DHT peer looking at one model's stage records."""

    def __init__(self, model: str, initial_peers: list[str], *, authorizer=None):
        self.model = model
        self.dht = start_dht(initial_peers, client_mode=True, authorizer=authorizer)

    def records(self) -> list[StageRecord]:
        return fetch_records(self.dht, self.model)

    def wait_for_route(self, timeout: float = ROUTE_WAIT_S) -> list[StageRecord]:
        """Plan a route, giving fresh announcements up to ``timeout`` seconds to arrive."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return plan_route(self.records(), self.model)
            except SwarmError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def close(self) -> None:
        self.dht.shutdown()
