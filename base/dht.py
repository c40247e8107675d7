"""Starting a hivemind DHT peer the way this project needs it.

Sets hivemind's shared-memory strategy to ``file_descriptor`` before hivemind is imported (the
default leaves ``/dev/shm/torch_*`` files behind after a crash), installs the record validators
every node0 peer must share (owner signatures and the stage-record schema,
:mod:`base.dht_schema`) and turns a failed bootstrap into a :class:`SwarmError` that says which
peers were tried.
"""

from __future__ import annotations

import os

os.environ.setdefault("HIVEMIND_MEMORY_SHARING_STRATEGY", "file_descriptor")

import datetime as _dt  # noqa: E402
import faulthandler  # noqa: E402
import gc  # noqa: E402
import importlib  # noqa: E402
import pkgutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import hivemind  # noqa: E402
from hivemind.utils.auth import TokenAuthorizerBase  # noqa: E402
from hivemind.utils.crypto import RSAPrivateKey  # noqa: E402
from hivemind.utils.multiaddr import codecs as _multiaddr_codecs  # noqa: E402

from base.dht_schema import libp2p_identity, node0_validators, owner_marker  # noqa: E402
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


DHT_START_TIMEOUT = 120.0  # seconds per attempt; hivemind waits forever for a DHT child that hangs
DHT_START_ATTEMPTS = 2  # a child forked at an unlucky moment is replaced once by a fresh fork


def _after_fork_in_child() -> None:
    """In every forked child: never collect the parent's garbage; SIGUSR1 prints all stacks.

    hivemind's DHT and averager are fork-started processes. A child that garbage-collects the
    cycles it inherited runs the parent's finalizers, and a C-level one (a gRPC or torch object)
    can block forever on a mutex that another thread of the parent held at fork time: a CI run
    saw a DHT child hang in "Garbage-collecting" twice in a row. ``gc.freeze`` moves everything
    inherited into the permanent generation, so the child only ever collects its own objects.

    A fork taken while another thread of the parent holds a lock hangs the child in ways no log
    line shows. When a child is not up in time, :func:`start_dht` asks it for its stacks before it
    is killed, so the hang leaves its cause.
    """
    gc.freeze()
    faulthandler.register(signal.SIGUSR1, all_threads=True)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _stop_hung_child(dht: hivemind.DHT) -> None:
    if not dht.is_alive():
        return
    try:
        os.kill(dht.pid, signal.SIGUSR1)
        time.sleep(0.5)  # let it write its stacks
    except (OSError, TypeError):
        pass
    dht.terminate()  # SIGTERM lets the child stop its p2pd
    dht.join(5)
    if dht.is_alive():
        dht.kill()
        dht.join(5)


def start_dht(
    initial_peers: list[str],
    *,
    host_maddrs: list[str] | None = None,
    client_mode: bool = False,
    start_timeout: float = DHT_START_TIMEOUT,
    attempts: int = DHT_START_ATTEMPTS,
    authorizer=None,
    signing_key: RSAPrivateKey | None = None,
    owner_identity: bool = False,
) -> hivemind.DHT:
    """A running DHT peer, or :class:`SwarmError` if it cannot join or is not up in time.

    A child that is not ready within ``start_timeout`` prints its stacks, is killed and is
    replaced by a fresh one, up to ``attempts`` children in all. A refused bootstrap is not
    retried: it is an answer, not a hang.

    ``authorizer``: a hivemind ``AuthorizerBase`` every DHT request and response of this peer is
    signed and checked with (a private swarm's: :mod:`security.dht_authorizer`). Its key (a
    ``TokenAuthorizerBase``'s) also signs this peer's records unless ``signing_key`` is given;
    without either, the process-wide key does (an open swarm still signs: only the owner
    rewrites a record). An authorizer may bring
    record validators of its own (``record_validators()``: the swarm's revocation list).

    The returned DHT carries ``owner_marker``, the ``[owner:<key>]`` its records' subkeys carry
    (:func:`base.dht_records.announce`).

    ``owner_identity``: the peer's libp2p identity is its signing key (without a key or an
    authorizer, a fresh one, not the process-wide key: two such peers in one process must not
    share an id), so its peer id is the one readers require of its stage records
    (:func:`base.dht_records.fetch_records`). A peer that announces records needs it; clients,
    which may share a credential, do not.
    """
    where = ", ".join(initial_peers) if initial_peers else "(none)"
    if signing_key is None and isinstance(authorizer, TokenAuthorizerBase):
        signing_key = authorizer._local_private_key
    if signing_key is None and owner_identity:
        signing_key = RSAPrivateKey()
    signing_key = signing_key or RSAPrivateKey.process_wide()
    validators = node0_validators(signing_key)
    if hasattr(authorizer, "record_validators"):
        validators += authorizer.record_validators()
    for attempt in range(1, attempts + 1):
        dht = None
        gc.collect()  # the parent's finalizers run here, where their threads and locks live
        identity = {}
        if owner_identity:  # p2pd reads it once at start; removed as soon as the peer is up
            handle, identity_path = tempfile.mkstemp(prefix="node0-identity-")
            with os.fdopen(handle, "wb") as file:
                file.write(libp2p_identity(signing_key))
            # hivemind would first start a second p2pd to ask the swarm whether the id is taken
            identity = {"identity_path": identity_path, "check_if_identity_free": False}
        try:
            dht = hivemind.DHT(
                initial_peers=list(initial_peers),
                host_maddrs=host_maddrs or ["/ip4/127.0.0.1/tcp/0"],
                client_mode=client_mode,
                authorizer=authorizer,
                record_validators=validators,
                start=False,
                **identity,
            )
            dht.run_in_background(await_ready=True, timeout=start_timeout)
            dht.owner_marker = owner_marker(signing_key)
            return dht
        except TimeoutError as exc:
            if dht is not None:
                _stop_hung_child(dht)
            if attempt < attempts:
                print(
                    f"node0: DHT child not up within {start_timeout:.0f} s "
                    f"(attempt {attempt}/{attempts}); starting a fresh one",
                    file=sys.stderr,
                    flush=True,
                )
                continue
            raise SwarmError(
                f"the DHT peer did not come up within {start_timeout:.0f} s, {attempts} "
                f"attempt(s) (initial peers {where})",
                hint="the machine may be overloaded; retry, or read the DHT child's stacks "
                "printed above",
            ) from exc
        except Exception as exc:
            raise SwarmError(
                f"cannot join the DHT through initial peers {where}: {exc}",
                hint="check that a swarm is running (`node0 swarm status`) and the addresses "
                "are current",
            ) from exc
        finally:
            if identity:
                os.unlink(identity["identity_path"])
    raise AssertionError("unreachable")  # the loop returns or raises


def visible_maddrs(dht: hivemind.DHT) -> list[str]:
    return [str(addr) for addr in dht.get_visible_maddrs()]
