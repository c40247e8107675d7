"""One verifier per process: is this credential ours, current and not revoked?

A :class:`SwarmTrust` holds the swarm's authority public key (taken from the peer's own
credential file) and a revocation watcher. :meth:`SwarmTrust.check` verifies a wire credential
once and caches the result until its expiry, so a caller's repeated calls cost a dictionary
look-up and the revocation check (a set look-up; the file is re-read at most once a second).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

from base.refusals import Reason
from security.credentials import Credential, CredentialFile, CredentialRefused, SignedCredential
from security.revocation import RevocationWatcher

_CACHE_LIMIT = 4096


class SwarmTrust:
    def __init__(self, authority_public: bytes, revocations: Path | Sequence[Path] | None = None):
        self.authority_public = authority_public
        self.revocations = RevocationWatcher(revocations, authority_public)
        self._cache: dict[str, tuple[Credential, SignedCredential]] = {}
        self._lock = threading.Lock()

    @classmethod
    def of(
        cls, credential: CredentialFile, revocations: Path | Sequence[Path] | None = None
    ) -> SwarmTrust:
        return cls(credential.authority_public, revocations)

    def check(self, wire: str, *, now: float | None = None) -> tuple[Credential, SignedCredential]:
        """The verified credential behind ``wire``; raises :class:`CredentialRefused`."""
        now = time.time() if now is None else now
        hit = self._cache.get(wire)
        if hit is None:
            signed = SignedCredential.from_wire(wire)
            credential = signed.verify(self.authority_public, now=now)
            hit = (credential, signed)
            with self._lock:
                if len(self._cache) >= _CACHE_LIMIT:
                    self._cache.clear()
                self._cache[wire] = hit
        credential = hit[0]
        if now > credential.expires_at:
            raise CredentialRefused(
                Reason.CREDENTIAL_EXPIRED, f"credential {credential.name!r} has expired"
            )
        if self.revocations.is_revoked(credential.credential_id):
            raise CredentialRefused(
                Reason.CREDENTIAL_REVOKED,
                f"credential {credential.name!r} ({credential.credential_id}) was revoked",
            )
        return hit
