"""Averaging is admitted, not just reachable: hivemind's averaging handlers check the caller.

hivemind's authorizer covers only the DHT's own requests; a peer that reaches a replica's libp2p
address can call its averager directly (join a group, send parts, download its state — the
shared notes measured an outsider turning an average of 2.0 into 333,334.7). Here every
replica publishes a **membership** under ``node0:v1:swarm:<swarm id>:members``, subkey its
libp2p peer id: its signed credential and its peer key's signature over that peer id (libp2p
authenticates peer ids on every connection, so a caller cannot claim another's). The wrapped
handlers (:class:`lora.allreduce_guard.GuardedReplicaAverager`) ask :meth:`AveragingGate.admit`
for ``context.remote_id``: admitted only with a membership whose credential verifies against
the authority, is current, not revoked, has a role in :data:`security.roles.AVERAGING` (host)
and whose proof names that peer id. Admissions are cached 30 s; revocation is checked on every
call. Refusals are logged with the peer id and why, once per peer and minute (a refused
attacker retries thousands of times a minute).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from hivemind.utils.timed_storage import get_dht_time

from security.credentials import CredentialFile, CredentialRefused
from security.roles import AVERAGING
from security.trust import SwarmTrust

log = logging.getLogger(__name__)

ADMIT_CACHE_S = 30.0
MEMBERSHIP_TTL_S = 600.0


def members_key(swarm_id: str) -> str:
    return f"node0:v1:swarm:{swarm_id}:members"


def _proof_message(swarm_id: str, peer_id: str) -> bytes:
    return f"node0-member/1|{swarm_id}|{peer_id}".encode()


class AveragingGate:
    def __init__(
        self, credential: CredentialFile, revocations: Path | Sequence[Path] | None = None
    ):
        self.credential = credential
        self.revocations = revocations
        self.swarm_id = credential.credential.swarm_id
        self._trust: SwarmTrust | None = None
        self._admitted: dict[str, tuple[float, str]] = {}  # peer -> (until, credential id)
        self._refused_logged: dict[str, float] = {}
        self._published_at = float("-inf")

    @property
    def trust(self) -> SwarmTrust:
        if self._trust is None:  # built where it is used: in the averager's child process
            self._trust = SwarmTrust.of(self.credential, self.revocations)
        return self._trust

    def publish(self, dht, peer_id: str, *, timeout: float = 10.0) -> bool:
        """Store (or refresh) our membership; at most every third of its TTL."""
        if time.monotonic() - self._published_at < MEMBERSHIP_TTL_S / 3:
            return True
        proof = self.credential.rsa_private_key().sign(_proof_message(self.swarm_id, peer_id))
        try:
            ok = dht.store(
                members_key(self.swarm_id),
                {"credential": self.credential.signed.wire(), "proof": proof.decode()},
                expiration_time=get_dht_time() + MEMBERSHIP_TTL_S,
                subkey=peer_id,
                return_future=True,
            ).result(timeout=timeout)
        except Exception as exc:  # the next round tries again
            log.warning("could not publish averaging membership: %s", exc)
            return False
        self._published_at = time.monotonic()
        return bool(ok)

    def _refuse(self, peer: str, why: str) -> bool:
        now = time.monotonic()
        if now - self._refused_logged.get(peer, float("-inf")) > 60:
            self._refused_logged[peer] = now
            log.warning("averaging call refused from peer %s: %s", peer, why)
        return False

    async def admit(self, dht, peer: str) -> bool:
        """Whether libp2p peer ``peer`` (base58) may call our averaging handlers."""
        now = time.monotonic()
        cached = self._admitted.get(peer)
        if cached is not None and now < cached[0]:
            if self.trust.revocations.is_revoked(cached[1]):
                self._admitted.pop(peer, None)
                return self._refuse(peer, "credential_revoked")
            return True
        try:
            found = await dht.get(members_key(self.swarm_id), latest=True, return_future=True)
        except Exception as exc:
            return self._refuse(peer, f"membership lookup failed: {exc}")
        entries = found.value if found is not None and isinstance(found.value, dict) else {}
        entry = entries.get(peer)
        if entry is None or not isinstance(entry.value, dict):
            return self._refuse(peer, "no_credential (no membership in the swarm)")
        try:
            credential, signed = self.trust.check(str(entry.value.get("credential", "")))
        except CredentialRefused as exc:
            return self._refuse(peer, f"{exc.reason.value}: {exc}")
        if credential.role not in AVERAGING:
            return self._refuse(peer, f"role_forbids: {credential.name} is a {credential.role}")
        proof = str(entry.value.get("proof", "")).encode()
        if not signed.peer_public_key().verify(_proof_message(self.swarm_id, peer), proof):
            return self._refuse(peer, "bad_credential: membership proof is not for this peer")
        self._admitted[peer] = (now + ADMIT_CACHE_S, credential.credential_id)
        return True
