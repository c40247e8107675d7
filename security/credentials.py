"""A peer credential: the swarm authority's signature over a peer's key, name, role and expiry.

A credential binds one peer key (an RSA key in hivemind's format, so the same key signs DHT
requests through hivemind's authorizer and node0's per-call gRPC proofs) to a name, a role
(:class:`Role`) and an expiry, signed by the swarm authority's Ed25519 key. The file a peer
holds (:class:`CredentialFile`) adds its private key and is written mode 0600.

What travels: the signed credential (:meth:`SignedCredential.wire`, compact JSON, no private
key); a verifier holds the authority's public key (the trust anchor, taken from its own
credential file) and checks the signature, the swarm, the expiry and the revocation list.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from enum import StrEnum
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey
from pydantic import BaseModel, ConfigDict

from base.errors import AuthError, ConfigError
from base.refusals import Reason

FORMAT = "node0.credential/1"
CLOCK_SKEW_S = 60.0  # peers' clocks must agree within this (hivemind's authorizer assumes 60 s)


class Role(StrEnum):
    """What a credential's holder may do (the RPCs per role: :mod:`security.roles`)."""

    CLIENT = "client"
    """Opens inference sessions (and reads the DHT)."""
    TRAINER = "trainer"
    """A client that may also open and drive training jobs."""
    GATHERER = "gatherer"
    """Pulls stage weights (``node0 gather``)."""
    HOST = "host"
    """A daemon: serves stages, writes stage records, joins averaging groups; may call all."""


class CredentialRefused(AuthError):
    """A credential (or its proof) that does not admit its holder; ``reason`` says why."""

    def __init__(self, reason: Reason, message: str):
        super().__init__(message)
        self.reason = reason


class Credential(BaseModel):
    """The signed body. ``peer_key``: the peer's RSA public key (OpenSSH text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    swarm_id: str
    """The authority's key fingerprint (:func:`swarm_id_of`)."""
    credential_id: str
    """Random id: what a revocation names."""
    name: str
    role: Role
    peer_key: str
    issued_at: float
    expires_at: float

    def canonical(self) -> bytes:
        return json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")
        ).encode()


def swarm_id_of(authority_public: bytes) -> str:
    """A swarm's id: the first 16 hex digits of the sha256 of its authority's raw public key."""
    import hashlib

    return hashlib.sha256(authority_public).hexdigest()[:16]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


class SignedCredential(BaseModel):
    """A credential with the authority's signature and public key (raw Ed25519, base64)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    credential: Credential
    signature: str
    authority_key: str

    def wire(self) -> str:
        """The compact form that travels in gRPC metadata and hivemind access tokens."""
        return _b64(self.model_dump_json().encode())

    @classmethod
    def from_wire(cls, text: str) -> SignedCredential:
        try:
            return cls.model_validate_json(_unb64(text))
        except Exception as exc:
            raise CredentialRefused(Reason.BAD_CREDENTIAL, f"malformed credential: {exc}") from exc

    def verify(self, authority_public: bytes, *, now: float | None = None) -> Credential:
        """The credential, if the authority ``authority_public`` signed it and it is current.

        Raises :class:`CredentialRefused` (``bad_credential``: another swarm, a forged or
        altered credential; ``credential_expired``). Revocation is the caller's check.
        """
        cred = self.credential
        if self.authority_key != _b64(authority_public):
            raise CredentialRefused(
                Reason.BAD_CREDENTIAL,
                f"credential {cred.name!r} is from swarm {cred.swarm_id}, not "
                f"{swarm_id_of(authority_public)}",
            )
        try:
            Ed25519PublicKey.from_public_bytes(authority_public).verify(
                _unb64(self.signature), cred.canonical()
            )
        except (InvalidSignature, ValueError) as exc:
            raise CredentialRefused(
                Reason.BAD_CREDENTIAL, f"credential {cred.name!r}: signature does not verify"
            ) from exc
        if cred.swarm_id != swarm_id_of(authority_public):
            raise CredentialRefused(Reason.BAD_CREDENTIAL, "credential names another swarm")
        now = time.time() if now is None else now
        if now > cred.expires_at:
            raise CredentialRefused(
                Reason.CREDENTIAL_EXPIRED,
                f"credential {cred.name!r} ({cred.role}) expired at "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(cred.expires_at))}",
            )
        return cred

    def peer_public_key(self) -> RSAPublicKey:
        return RSAPublicKey.from_bytes(self.credential.peer_key.encode())


class CredentialFile(BaseModel):
    """What a peer holds: its signed credential and its private key (PEM)."""

    model_config = ConfigDict(extra="forbid")

    format: str = FORMAT
    signed: SignedCredential
    private_key: str

    @property
    def credential(self) -> Credential:
        return self.signed.credential

    @property
    def authority_public(self) -> bytes:
        return _unb64(self.signed.authority_key)

    def rsa_private_key(self) -> RSAPrivateKey:
        """The peer key as hivemind's ``RSAPrivateKey`` (for its authorizer and validators)."""
        key = RSAPrivateKey.__new__(RSAPrivateKey)
        key._private_key = serialization.load_pem_private_key(
            self.private_key.encode(), password=None
        )
        return key

    def save(self, path: Path) -> None:
        """Write atomically with mode 0600 (it holds a private key)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.model_dump_json(indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path | str) -> CredentialFile:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            loaded = cls.model_validate(data)
        except FileNotFoundError as exc:
            raise ConfigError(
                f"credential file {path} does not exist",
                hint="issue one with `node0 swarm invite NAME --role ROLE --out FILE`",
            ) from exc
        except Exception as exc:
            raise ConfigError(f"credential file {path} is malformed: {exc}") from exc
        if loaded.format != FORMAT:
            raise ConfigError(f"credential file {path}: format {loaded.format!r}, want {FORMAT}")
        return loaded


def rsa_private_pem(key: RSAPrivateKey) -> str:
    return key._private_key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    ).decode()
