"""A daemon's access control, decided once at start: private (a credential) or open (said so).

:meth:`PeerAccess.for_daemon` fails closed: a daemon without a credential refuses to start
unless its config says ``insecure_open_swarm: true``. The access object hands out what each
part installs — the DHT authorizer (:mod:`security.dht_authorizer`), the gRPC interceptor
(:mod:`security.grpc_auth`) and the averaging gate (:mod:`security.averaging_gate`) — and is
installed process-wide (:func:`install`) so the averagers a training job creates later find it.
"""

from __future__ import annotations

import time
from pathlib import Path

from base.errors import ConfigError
from security.credentials import CredentialFile, Role
from security.trust import SwarmTrust

_current: PeerAccess | None = None


class PeerAccess:
    def __init__(self, credential: CredentialFile | None, revocations: Path | None = None):
        self.credential = credential
        self.revocations = Path(revocations) if revocations else None
        self.trust = SwarmTrust.of(credential, self.revocations) if credential else None

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
            f"{self.revocations or 'none'}"
        )

    def dht_authorizer(self):
        if self.open:
            return None
        from security.dht_authorizer import SwarmAuthorizer

        return SwarmAuthorizer(self.credential, self.revocations)

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

        return AveragingGate(self.credential, self.revocations)


def install(access: PeerAccess) -> None:
    """Make ``access`` this process's (averagers created later gate with it)."""
    global _current
    _current = access


def current() -> PeerAccess | None:
    return _current
