"""hivemind's DHT authorizer backed by the swarm authority: only credentialed peers get in.

hivemind signs every DHT request (ping, store, find) and response with the peer's RSA key and
attaches an ``AccessToken``; :class:`SwarmAuthorizer` makes that token the peer's node0
credential (its ``username`` carries :meth:`SignedCredential.wire`, its ``public_key`` the key the
credential binds). A request or response is accepted only if the credential verifies against
the authority, is current, not revoked, and binds the key that signed the request (hivemind
checks that signature and a nonce against replay). Without a valid token a joining peer's
bootstrap ping goes unanswered: "none of the initial_peers responded".

Stores are further limited to :data:`security.roles.DHT_WRITERS` (hosts): a client, trainer or
gatherer reads the DHT but cannot write to it.

It runs in the DHT's child process (the DHT forks), so it reads the revocation list itself. It
also brings the record validator of the swarm's revocation list in the DHT
(:meth:`record_validators`, installed by :func:`base.dht.start_dht`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hivemind.proto import dht_pb2
from hivemind.proto.auth_pb2 import AccessToken
from hivemind.utils.auth import TokenAuthorizerBase

from security.credentials import CredentialFile, CredentialRefused
from security.revocation import RevocationRecordValidator
from security.roles import DHT_WRITERS
from security.trust import SwarmTrust

log = logging.getLogger(__name__)


class SwarmAuthorizer(TokenAuthorizerBase):
    def __init__(
        self, credential: CredentialFile, revocations: Path | Sequence[Path] | None = None
    ):
        super().__init__(local_private_key=credential.rsa_private_key())
        self.credential = credential
        self._revocations = revocations
        self._trust: SwarmTrust | None = None

    @property
    def trust(self) -> SwarmTrust:
        if self._trust is None:  # built lazily: in the DHT child, after the fork
            self._trust = SwarmTrust.of(self.credential, self._revocations)
        return self._trust

    def record_validators(self) -> list:
        """Validators every peer of this swarm installs besides node0's own."""
        return [RevocationRecordValidator(self.credential.authority_public)]

    async def get_token(self) -> AccessToken:
        return AccessToken(
            username=self.credential.signed.wire(),
            public_key=self.local_public_key.to_bytes(),
            expiration_time=str(self.credential.credential.expires_at),
            signature=b"node0-credential",
        )

    def _role_of(self, token: AccessToken):
        try:
            credential, _ = self.trust.check(token.username)
        except CredentialRefused as exc:
            log.warning("DHT peer refused: %s (%s)", exc.reason.value, exc)
            return None
        if credential.peer_key.encode() != token.public_key:
            log.warning(
                "DHT peer refused: token key is not the one %r's credential binds", credential.name
            )
            return None
        return credential.role

    def is_token_valid(self, access_token: AccessToken) -> bool:
        return self._role_of(access_token) is not None

    def does_token_need_refreshing(self, access_token: AccessToken) -> bool:
        return False  # our credential's expiry is its own; a new one means a restart

    async def validate_request(self, request) -> bool:
        if not await super().validate_request(request):
            return False
        if isinstance(request, dht_pb2.StoreRequest):
            role = self._role_of(request.auth.client_access_token)
            if role not in DHT_WRITERS:
                log.warning("DHT store refused: role %s may not write records", role)
                return False
        return True
