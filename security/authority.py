"""The swarm authority you run yourself: its signing key, invitations and revocations.

An authority is a directory (default ``$NODE0_HOME/swarm/authority``, the one ``node0 swarm up``
uses for the local swarm)::

    authority.key        Ed25519 private key, PEM, mode 0600 (``node0 swarm init``)
    authority.pub        its raw public key, base64 (the swarm's trust anchor)
    revoked.json         the signed revocation list (``node0 swarm revoke``)
    issued.jsonl         one line per credential issued (id, name, role, expiry)
    credentials/NAME.json  credentials issued by ``invite`` without ``--out``

Keys come from ``cryptography``; nothing here is hand-written crypto.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey

from base.errors import ConfigError
from base.paths import node0_home
from security.credentials import (
    Credential,
    CredentialFile,
    Role,
    SignedCredential,
    rsa_private_pem,
    swarm_id_of,
)
from security.revocation import RevocationList

DEFAULT_VALIDITY_S = 30 * 24 * 3600.0


def default_authority_dir() -> Path:
    return node0_home() / "swarm" / "authority"


def parse_duration(text: str) -> float:
    """Seconds in ``30d``, ``12h``, ``15m``, ``90s`` or a plain number of seconds."""
    units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
    text = text.strip()
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError as exc:
        raise ConfigError(f"bad duration {text!r}: use e.g. 30d, 12h, 15m or seconds") from exc


class SwarmAuthority:
    """A loaded authority (its private key in memory)."""

    def __init__(self, directory: Path, key: Ed25519PrivateKey):
        self.directory = Path(directory)
        self._key = key
        self.public = key.public_key().public_bytes(
            encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw
        )
        self.swarm_id = swarm_id_of(self.public)

    # -- creation -------------------------------------------------------------------------------

    @classmethod
    def init(cls, directory: Path | None = None, *, exist_ok: bool = False) -> SwarmAuthority:
        """Create the authority's key in ``directory``; with ``exist_ok``, load an existing one."""
        directory = Path(directory or default_authority_dir())
        key_path = directory / "authority.key"
        if key_path.exists():
            if exist_ok:
                return cls.load(directory)
            raise ConfigError(
                f"a swarm authority already exists in {directory}",
                hint="use it, or pick another directory with --authority",
            )
        directory.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PrivateFormat.PKCS8,
            encryption_algorithm=serialization.NoEncryption(),
        )
        tmp = directory / f".authority.key.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        try:
            os.link(tmp, key_path)  # fails if another process created the key meanwhile
        except FileExistsError:
            os.unlink(tmp)
            return cls.load(directory)
        os.unlink(tmp)
        authority = cls(directory, key)
        (directory / "authority.pub").write_text(base64.b64encode(authority.public).decode() + "\n")
        return authority

    @classmethod
    def load(cls, directory: Path | None = None) -> SwarmAuthority:
        directory = Path(directory or default_authority_dir())
        try:
            key = serialization.load_pem_private_key(
                (directory / "authority.key").read_bytes(), password=None
            )
        except FileNotFoundError as exc:
            raise ConfigError(
                f"no swarm authority in {directory}", hint="create one with `node0 swarm init`"
            ) from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{directory}/authority.key is not an Ed25519 key")
        return cls(directory, key)

    @property
    def revocations_path(self) -> Path:
        return self.directory / "revoked.json"

    # -- credentials ------------------------------------------------------------------------------

    def sign(self, credential: Credential) -> SignedCredential:
        return SignedCredential(
            credential=credential,
            signature=base64.b64encode(self._key.sign(credential.canonical())).decode(),
            authority_key=base64.b64encode(self.public).decode(),
        )

    def invite(
        self,
        name: str,
        role: Role | str,
        *,
        validity_s: float = DEFAULT_VALIDITY_S,
        peer_public_key: str | None = None,
        now: float | None = None,
    ) -> CredentialFile | SignedCredential:
        """A credential for ``name`` with ``role``, valid ``validity_s`` from now.

        Without ``peer_public_key`` a fresh peer key is generated and the whole
        :class:`CredentialFile` (private key included) is returned; with one (OpenSSH RSA text,
        the peer keeps its private key), only the :class:`SignedCredential`.
        """
        now = time.time() if now is None else now
        private = None
        if peer_public_key is None:
            private = RSAPrivateKey()
            peer_public_key = private.get_public_key().to_bytes().decode()
        else:
            RSAPublicKey.from_bytes(peer_public_key.encode())  # must be a valid RSA key
        credential = Credential(
            swarm_id=self.swarm_id,
            credential_id=secrets.token_hex(8),
            name=name,
            role=Role(role),
            peer_key=peer_public_key,
            issued_at=now,
            expires_at=now + validity_s,
        )
        signed = self.sign(credential)
        with open(self.directory / "issued.jsonl", "a") as log_file:
            log_file.write(
                json.dumps(credential.model_dump(mode="json", exclude={"peer_key"})) + "\n"
            )
        if private is None:
            return signed
        return CredentialFile(signed=signed, private_key=rsa_private_pem(private))

    def issued(self) -> list[dict]:
        path = self.directory / "issued.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # -- revocation -------------------------------------------------------------------------------

    def revocations(self) -> RevocationList:
        path = self.revocations_path
        if path.is_file():
            current = RevocationList.model_validate_json(path.read_text())
            if current.verify(self.public):
                return current
        return RevocationList(swarm_id=self.swarm_id)

    def revoke(self, names_or_ids: list[str]) -> list[dict]:
        """Revoke every credential issued to a name, or with an id, in ``names_or_ids``.

        Writes the next list to :attr:`revocations_path` (daemons reading it publish it in the
        DHT). Returns the issued entries revoked; raises ConfigError when one matches nothing.
        """
        updated, hits = self.next_revocations(names_or_ids)
        updated.save(self.revocations_path)
        return hits

    def next_revocations(self, names_or_ids: list[str]) -> tuple[RevocationList, list[dict]]:
        """The signed list that would follow the current one with ``names_or_ids`` added, and
        the issued entries it revokes (nothing is written)."""
        issued = self.issued()
        hits = []
        for key in names_or_ids:
            found = [e for e in issued if key in (e["name"], e["credential_id"])]
            if not found:
                raise ConfigError(f"no credential issued to or with id {key!r} by this authority")
            hits.extend(found)
        current = self.revocations()
        revoked = dict(current.revoked)
        revoked.update({e["credential_id"]: e["name"] for e in hits})
        updated = RevocationList(swarm_id=self.swarm_id, serial=current.serial + 1, revoked=revoked)
        updated.signature = base64.b64encode(self._key.sign(updated.body())).decode()
        return updated, hits


LOCAL_ROLES = (Role.CLIENT, Role.TRAINER, Role.GATHERER, Role.HOST)


def issue_local_credentials(authority: SwarmAuthority, *, min_left_s: float = 24 * 3600.0) -> Path:
    """Credentials for this machine's clients, one per role, in ``<authority>/credentials/``.

    ``local-<role>.json`` is what :mod:`security.active` presents by default, so
    ``node0-inference``, ``node0 train``, ``node0 gather`` and ``node0 api`` reach the local
    swarm with no option (``local-host`` is the operator's: it may call every RPC). A file is
    re-issued when missing, from another authority, or with less than ``min_left_s`` left.
    """
    directory = authority.directory / "credentials"
    for role in LOCAL_ROLES:
        path = directory / f"local-{role.value}.json"
        if path.is_file():
            try:
                existing = CredentialFile.load(path)
                if (
                    existing.authority_public == authority.public
                    and existing.credential.expires_at - time.time() > min_left_s
                    and existing.credential.credential_id not in authority.revocations().revoked
                ):
                    continue
            except ConfigError:
                pass
        issued = authority.invite(f"local-{role.value}", role)
        issued.save(path)
    return directory
