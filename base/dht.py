"""Starting a hivemind DHT peer the way this project needs it.

Sets hivemind's shared-memory strategy to ``file_descriptor`` before hivemind is imported (the
default leaves ``/dev/shm/torch_*`` files behind after a crash) and turns a failed bootstrap into
a :class:`SwarmError` that says which peers were tried.
"""

from __future__ import annotations

import os

os.environ.setdefault("HIVEMIND_MEMORY_SHARING_STRATEGY", "file_descriptor")

import datetime as _dt  # noqa: E402
import importlib  # noqa: E402
import pkgutil  # noqa: E402

import hivemind  # noqa: E402
from hivemind.utils.multiaddr import codecs as _multiaddr_codecs  # noqa: E402

from base.errors import SwarmError  # noqa: E402

# hivemind imports its multiaddr codecs (and netaddr) lazily, by name. A DHT or averager child
# forked while another thread of the parent was importing one of them inherits a held module
# lock and hangs on its first import of that codec (seen in a test process). Import them all
# here, before any fork.
for _codec in pkgutil.iter_modules(_multiaddr_codecs.__path__):
    importlib.import_module(f"{_multiaddr_codecs.__name__}.{_codec.name}")
# Likewise the DHT child parses every p2pd log line with this strptime format; compiling its
# regex in the child (re's caches as left by the parent's other threads at fork time) once spun
# forever in a test process. Compile it here so the child only looks it up.
_dt.datetime.strptime("2024-01-01T00:00:00.000000+0000", "%Y-%m-%dT%H:%M:%S.%f%z")


DHT_START_TIMEOUT = 120.0  # seconds; hivemind waits forever for a DHT child that hangs


def start_dht(
    initial_peers: list[str],
    *,
    host_maddrs: list[str] | None = None,
    client_mode: bool = False,
    start_timeout: float = DHT_START_TIMEOUT,
) -> hivemind.DHT:
    """A running DHT peer, or :class:`SwarmError` if it cannot join or is not up in time."""
    where = ", ".join(initial_peers) if initial_peers else "(none)"
    dht = None
    try:
        dht = hivemind.DHT(
            initial_peers=list(initial_peers),
            host_maddrs=host_maddrs or ["/ip4/127.0.0.1/tcp/0"],
            client_mode=client_mode,
            start=False,
        )
        dht.run_in_background(await_ready=True, timeout=start_timeout)
        return dht
    except TimeoutError as exc:
        if dht is not None and dht.is_alive():  # SIGTERM lets the child stop its p2pd
            dht.terminate()
            dht.join(5)
            if dht.is_alive():
                dht.kill()
                dht.join(5)
        raise SwarmError(
            f"the DHT peer did not come up within {start_timeout:.0f} s (initial peers {where})",
            hint="the machine may be overloaded; retry, or check the DHT child's log lines",
        ) from exc
    except Exception as exc:
        raise SwarmError(
            f"cannot join the DHT through initial peers {where}: {exc}",
            hint="check that a swarm is running (`node0 swarm status`) and the addresses are "
            "current",
        ) from exc


def visible_maddrs(dht: hivemind.DHT) -> list[str]:
    return [str(addr) for addr in dht.get_visible_maddrs()]
