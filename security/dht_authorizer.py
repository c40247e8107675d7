"""hivemind's DHT authorizer backed by the swarm authority: only credentialed peers get in.

hivemind signs every DHT request (ping, store, find) and response and attaches an
``AccessToken``; :class:`SwarmAuthorizer` makes that token the peer's node0 credential (its
``username`` carries :meth:`SignedCredential.wire`, its ``public_key`` the RSA key the credential
binds, its ``signature`` an Ed25519 request key that RSA key delegated). A request or response
is accepted only if the credential verifies against the authority, is current, not revoked,
binds the key that delegated the request key, and the request key signed the message (with
hivemind's time and nonce checks against replay). The delegation is verified once per peer; the
per-message signature is Ed25519, not hivemind's RSA-2048 (20× cheaper to sign, which was most
of what auth added to an averaging round). Without a valid token a joining peer's
bootstrap ping goes unanswered: "none of the initial_peers responded".

Stores are further limited to :data:`security.roles.DHT_WRITERS` (hosts): a client, trainer or
gatherer reads the DHT but cannot write to it.

It runs in the DHT's child process (the DHT forks), so it reads the revocation list itself. It
also brings the record validator of the swarm's revocation list in the DHT
(:meth:`record_validators`, installed by :func:`base.dht.start_dht`).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hivemind.proto import dht_pb2
from hivemind.proto.auth_pb2 import AccessToken
from hivemind.utils.auth import TokenAuthorizerBase
from hivemind.utils.crypto import RSAPublicKey
from hivemind.utils.timed_storage import get_dht_time

from security.credentials import CredentialFile, CredentialRefused
from security.revocation import RevocationRecordValidator
from security.roles import DHT_WRITERS
from security.trust import SwarmTrust

log = logging.getLogger(__name__)

_MAX_CLOCK_DIFF_S = 60.0  # hivemind's: peers' clocks must agree within a minute


_DELEGATION = b"node0-dht-request-key/1|"
_KEY_CACHE_LIMIT = 4096


class SwarmAuthorizer(TokenAuthorizerBase):
    def __init__(
        self, credential: CredentialFile, revocations: Path | Sequence[Path] | None = None
    ):
        super().__init__(local_private_key=credential.rsa_private_key())
        self.credential = credential
        self._revocations = revocations
        self._trust: SwarmTrust | None = None
        self._request_key: Ed25519PrivateKey | None = None  # made in the DHT child
        self._request_keys: dict[tuple[bytes, bytes], Ed25519PublicKey] = {}

    @property
    def trust(self) -> SwarmTrust:
        if self._trust is None:  # built lazily: in the DHT child, after the fork
            self._trust = SwarmTrust.of(self.credential, self._revocations)
        return self._trust

    def record_validators(self) -> list:
        """Validators every peer of this swarm installs besides node0's own."""
        return [RevocationRecordValidator(self.credential.authority_public)]

    async def get_token(self) -> AccessToken:
        """Our credential, and a request key delegated by the key the credential binds.

        ``signature`` carries the raw Ed25519 request key (32 bytes) followed by the peer's RSA
        signature over it: a verifier checks that RSA signature once per peer (cached) and each
        request's Ed25519 signature after that (RSA-2048 signing costs ~2 ms here, Ed25519
        ~0.1 ms, and hivemind signs every DHT request and response).
        """
        if self._request_key is None:
            self._request_key = Ed25519PrivateKey.generate()
        raw = self._request_key.public_key().public_bytes(
            encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw
        )
        return AccessToken(
            username=self.credential.signed.wire(),
            public_key=self.local_public_key.to_bytes(),
            expiration_time=str(self.credential.credential.expires_at),
            signature=raw + self._local_private_key.sign(_DELEGATION + raw),
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
        return self._request_key_of(access_token) is not None

    def _request_key_of(self, token: AccessToken) -> Ed25519PublicKey | None:
        """The token's request key, if its credential admits it (checked every call: expiry,
        revocation) and the key it binds delegated the request key (verified once)."""
        if self._role_of(token) is None:
            return None
        cache_key = (token.public_key, token.signature)
        key = self._request_keys.get(cache_key)
        if key is None:
            raw, delegation = token.signature[:32], token.signature[32:]
            peer_key = RSAPublicKey.from_bytes(token.public_key)
            if len(raw) != 32 or not peer_key.verify(_DELEGATION + raw, delegation):
                log.warning("DHT peer refused: its request key is not delegated by its peer key")
                return None
            key = Ed25519PublicKey.from_public_bytes(raw)
            if len(self._request_keys) >= _KEY_CACHE_LIMIT:
                self._request_keys.clear()
            self._request_keys[cache_key] = key
        return key

    def does_token_need_refreshing(self, access_token: AccessToken) -> bool:
        return False  # our credential's expiry is its own; a new one means a restart

    @staticmethod
    def _verify(key: Ed25519PublicKey, message, signature: bytes) -> bool:
        try:
            key.verify(signature, message.SerializeToString())
            return True
        except InvalidSignature:
            return False

    # hivemind's TokenAuthorizerBase protocol (time, nonce against replay, the service key the
    # request was meant for), with each message signed by the delegated request key

    async def sign_request(self, request, service_public_key: RSAPublicKey | None) -> None:
        await self.refresh_token_if_needed()
        auth = request.auth
        auth.client_access_token.CopyFrom(self._local_access_token)
        if service_public_key is not None:
            auth.service_public_key = service_public_key.to_bytes()
        auth.time = get_dht_time()
        auth.nonce = secrets.token_bytes(8)
        assert auth.signature == b""
        auth.signature = self._request_key.sign(request.SerializeToString())

    async def validate_request(self, request) -> bool:
        await self.refresh_token_if_needed()
        auth = request.auth
        if not self._signed_by(auth.client_access_token, request, "request"):
            return False
        if auth.service_public_key and auth.service_public_key != self.local_public_key.to_bytes():
            return False
        with self._recent_nonces.freeze():
            now = get_dht_time()
            if abs(auth.time - now) > _MAX_CLOCK_DIFF_S or auth.nonce in self._recent_nonces:
                log.debug("DHT request replayed, or clocks differ by over a minute")
                return False
        self._recent_nonces.store(auth.nonce, None, now + 3 * _MAX_CLOCK_DIFF_S)
        if isinstance(request, dht_pb2.StoreRequest):
            role = self._role_of(auth.client_access_token)
            if role not in DHT_WRITERS:
                log.warning("DHT store refused: role %s may not write records", role)
                return False
        return True

    async def sign_response(self, response, request) -> None:
        await self.refresh_token_if_needed()
        auth = response.auth
        auth.service_access_token.CopyFrom(self._local_access_token)
        auth.nonce = request.auth.nonce
        assert auth.signature == b""
        auth.signature = self._request_key.sign(response.SerializeToString())

    async def validate_response(self, response, request) -> bool:
        await self.refresh_token_if_needed()
        auth = response.auth
        if not self._signed_by(auth.service_access_token, response, "response"):
            return False
        return auth.nonce == request.auth.nonce

    def _signed_by(self, token, message, what: str) -> bool:
        """Whether ``message`` carries a valid signature of ``token``'s delegated request key
        (the signature field is cleared, as it was when signed)."""
        key = self._request_key_of(token)
        if key is None:
            return False
        signature, message.auth.signature = message.auth.signature, b""
        if not self._verify(key, message, signature):
            log.debug("DHT %s with an invalid signature", what)
            return False
        return True
