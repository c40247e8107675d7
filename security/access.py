"""A daemon's access control, decided once at start: private (a credential) or open (said so).

:meth:`PeerAccess.for_daemon` fails closed: a daemon without a credential refuses to start
unless its config says ``insecure_open_swarm: true``. The access object hands out what each
part installs — the DHT authorizer (:mod:`security.dht_authorizer`), the gRPC interceptor
(:mod:`security.grpc_auth`) and the averaging gate (:mod:`security.averaging_gate`) — and is
installed process-wide (:func:`install`) so the averagers a training job creates later find it.

Revocations reach a daemon from two places: the operator's list (``revocations:``, the
authority's ``revoked.json`` on the machine that runs ``node0 swarm revoke``) and the DHT, where
every daemon publishes the newest list it knows and reads the others' every heartbeat
(:meth:`PeerAccess.sync_revocations`). A newer list from the DHT is written to the daemon's own
copy (a private temporary file), which every checker of the daemon's processes watches next to
the operator's.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
import time
from pathlib import Path

from base.errors import ConfigError
from security.credentials import CredentialFile, Role
from security.revocation import REPUBLISH_S
from security.trust import SwarmTrust

log = logging.getLogger(__name__)

_current: PeerAccess | None = None


class PeerAccess:
    def __init__(self, credential: CredentialFile | None, revocations: Path | None = None):
        self.credential = credential
        self.revocations = Path(revocations) if revocations else None
        self.revocation_copy: Path | None = None
        """Where the newest list read from the DHT is kept (private swarms only)."""
        self.revocation_paths: tuple[Path, ...] = ()
        """What every checker of this daemon watches: the operator's list and the DHT's copy."""
        if credential is not None:
            folder = tempfile.mkdtemp(prefix="node0-revocations-")
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            self.revocation_copy = Path(folder) / "dht.json"
            self.revocation_paths = tuple(p for p in (self.revocations, self.revocation_copy) if p)
        self.trust = SwarmTrust.of(credential, self.revocation_paths) if credential else None
        self._published: tuple[int, float] = (-1, float("-inf"))  # serial, when

    @property
    def open(self) -> bool:
        return self.credential is None

    @classmethod
    def for_daemon(
        cls, credential: Path | None, revocations: Path | None, insecure_open_swarm: bool
    ) -> PeerAccess:
        if credential is None:
            if not insecure_open_swarm:
                raise ConfigError(
                    "this daemon has no swarm credential",
                    hint="set `credential:` to a host credential (`node0 swarm invite NAME "
                    "--role host`), or `insecure_open_swarm: true` to serve anyone",
                )
            return cls(None)
        if insecure_open_swarm:
            raise ConfigError("credential and insecure_open_swarm contradict each other")
        loaded = CredentialFile.load(credential)
        cred = loaded.credential
        if cred.role != Role.HOST:
            raise ConfigError(
                f"credential {credential} has role {cred.role}; a daemon needs role host"
            )
        if cred.expires_at < time.time():
            raise ConfigError(f"credential {credential} ({cred.name}) has expired")
        access = cls(loaded, revocations)
        if access.trust.revocations.is_revoked(cred.credential_id):
            raise ConfigError(f"credential {credential} ({cred.name}) is revoked")
        return access

    def describe(self) -> str:
        """The banner line."""
        if self.open:
            return (
                "access: INSECURE OPEN SWARM: anyone reaching these ports may join the DHT, "
                "call every RPC, pull weights and join averaging"
            )
        cred = self.credential.credential
        return (
            f"access: private swarm {cred.swarm_id}, peer {cred.name} ({cred.role}, expires "
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(cred.expires_at))}); revocations "
            f"{self.revocations or 'none'} and the DHT's"
        )

    def dht_authorizer(self):
        if self.open:
            return None
        from security.dht_authorizer import SwarmAuthorizer

        return SwarmAuthorizer(self.credential, self.revocation_paths)

    def grpc_interceptors(self) -> tuple:
        if self.open:
            return ()
        from security.grpc_auth import CredentialInterceptor

        return (CredentialInterceptor(self.trust),)

    def averaging_gate(self):
        """A :class:`security.averaging_gate.AveragingGate` (None in an open swarm)."""
        if self.open:
            return None
        from security.averaging_gate import AveragingGate

        return AveragingGate(self.credential, self.revocation_paths)

    def sync_revocations(self, dht, *, timeout: float = 10.0) -> None:
        """One heartbeat's exchange of revocation lists with the DHT (private swarms).

        Reads the highest verified list the DHT holds; a newer one than this daemon knows is
        written to its copy (every checker here re-reads it within a second). Then publishes the
        newest list it knows when the DHT lacks it, or every :data:`REPUBLISH_S`. Failures are
        logged; the next heartbeat tries again.
        """
        if self.open:
            return
        from security.revocation import fetch, publish

        watcher = self.trust.revocations
        try:
            found = fetch(dht, self.credential.authority_public, timeout=timeout)
        except Exception as exc:
            log.warning("could not read the revocation list from the DHT: %s", exc)
            found = None
        if found is not None and watcher.offer(found):
            found.save(self.revocation_copy)
            log.info(
                "revocation list serial %d from the DHT: %d revoked",
                found.serial,
                len(found.revoked),
            )
        best = watcher.current()
        if best is None:
            return
        serial, when = self._published
        in_dht = found is not None and found.serial >= best.serial
        if best.serial == serial and in_dht and time.monotonic() - when < REPUBLISH_S:
            return
        try:
            if publish(dht, best, timeout=timeout):
                self._published = (best.serial, time.monotonic())
        except Exception as exc:
            log.warning("could not publish the revocation list: %s", exc)


def install(access: PeerAccess) -> None:
    """Make ``access`` this process's (averagers created later gate with it)."""
    global _current
    _current = access


def current() -> PeerAccess | None:
    return _current
