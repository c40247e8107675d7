"""The swarm's revocation list: credential ids the authority withdrew, signed by it.

``node0 swarm revoke`` writes the list (a serial that only grows, the revoked ids, the
authority's Ed25519 signature) next to the authority. It reaches the other machines through the
DHT: every daemon publishes the newest list it knows under :func:`revocations_key` (one subkey
per serial) and reads the DHT's every heartbeat
(:meth:`security.access.PeerAccess.sync_revocations`); a newer one is written to the daemon's
local copy. Every checker in every process — the gRPC
interceptor, the hivemind authorizer in the DHT child, the averaging gate in the averager child —
holds a :class:`RevocationWatcher` over the operator's file and that copy, and re-reads a file
when it changed, at most once per ``poll_s`` (default 1 s, below the daemon's heartbeat). The
list with the highest serial whose signature verifies wins; a list whose signature does not
verify is ignored and logged, the last good one stays.

In the DHT only authority-signed lists are stored or read (:class:`RevocationRecordValidator`,
installed on every peer of a private swarm), and a serial lives under its own subkey, so a peer
can neither forge a list nor replace a newer one by replaying an older one.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hivemind.dht.protocol import DHTProtocol
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from pydantic import BaseModel, ConfigDict

from security.credentials import swarm_id_of

log = logging.getLogger(__name__)

DHT_TTL_S = 24 * 3600.0  # a published list lives this long without a refresh
REPUBLISH_S = 600.0  # a daemon refreshes the list it publishes this often (and at once when new)


def revocations_key(swarm_id: str) -> str:
    return f"node0:v1:swarm:{swarm_id}:revocations"


class RevocationList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    swarm_id: str
    serial: int = 0
    revoked: dict[str, str] = {}
    """credential id -> the name it was issued to (for the log)."""
    signature: str = ""

    def body(self) -> bytes:
        data = self.model_dump(mode="json", exclude={"signature"})
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    def verify(self, authority_public: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(authority_public).verify(
                base64.b64decode(self.signature), self.body()
            )
            return True
        except (InvalidSignature, ValueError):
            return False

    def verified(self, authority_public: bytes) -> bool:
        """Signed by ``authority_public`` and for its swarm."""
        return self.swarm_id == swarm_id_of(authority_public) and self.verify(authority_public)

    def save(self, path: Path) -> None:
        """Write atomically (readers never see half a list)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        tmp.write_text(self.model_dump_json(indent=2) + "\n")
        os.replace(tmp, path)


class RevocationWatcher:
    """The current revoked ids from the lists in ``paths`` (none when no file exists).

    ``paths``: one file, several (the operator's and the daemon's copy of the DHT's; the
    highest verified serial wins) or None.
    """

    def __init__(
        self, paths: Path | Sequence[Path] | None, authority_public: bytes, *, poll_s: float = 1.0
    ):
        if paths is None:
            paths = ()
        elif isinstance(paths, (str, Path)):
            paths = (paths,)
        self.paths = tuple(Path(p) for p in paths if p)
        self.authority_public = authority_public
        self.poll_s = poll_s
        self._current: RevocationList | None = None
        self._revoked: frozenset[str] = frozenset()
        self._mtimes: dict[Path, int] = {}
        self._checked = 0.0
        self._lock = threading.Lock()
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.paths or (not force and now - self._checked < self.poll_s):
            return
        with self._lock:
            self._checked = now
            for path in self.paths:
                self._read(path)

    def _read(self, path: Path) -> None:
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return
        if mtime == self._mtimes.get(path):
            return
        self._mtimes[path] = mtime
        try:
            loaded = RevocationList.model_validate_json(path.read_text())
        except Exception as exc:
            log.warning("revocation list %s unreadable (%s); keeping the last one", path, exc)
            return
        if not loaded.verified(self.authority_public):
            log.warning("revocation list %s: signature does not verify; ignored", path)
            return
        self.offer(loaded)

    def offer(self, candidate: RevocationList) -> bool:
        """Take ``candidate`` (already verified) if its serial is newer; whether it was."""
        if self._current is not None and candidate.serial <= self._current.serial:
            return False
        self._current = candidate
        self._revoked = frozenset(candidate.revoked)
        return True

    def current(self) -> RevocationList | None:
        """The newest verified list seen (None: none yet)."""
        self.refresh()
        return self._current

    def is_revoked(self, credential_id: str) -> bool:
        self.refresh()
        return credential_id in self._revoked


class RevocationRecordValidator(RecordValidatorBase):
    """Lets only authority-signed lists, each under its own serial, into :func:`revocations_key`.

    Installed on every DHT peer of a private swarm (:class:`security.dht_authorizer.SwarmAuthorizer`
    brings it to :func:`base.dht.start_dht`); checked on store and on every value a ``get``
    returns. Other keys pass untouched.
    """

    def __init__(self, authority_public: bytes):
        self.authority_public = authority_public
        self._key_id = DHTID.generate(source=revocations_key(swarm_id_of(authority_public)))
        self._key_id = self._key_id.to_bytes()

    def validate(self, record: DHTRecord) -> bool:
        if record.key != self._key_id:
            return True
        try:
            serial = DHTProtocol.serializer.loads(record.subkey)
            loaded = RevocationList.model_validate_json(DHTProtocol.serializer.loads(record.value))
        except Exception:
            return False
        return (
            isinstance(serial, int)
            and serial == loaded.serial
            and loaded.verified(self.authority_public)
        )


def publish(dht, revocations: RevocationList, *, timeout: float = 10.0) -> bool:
    """Store ``revocations`` in the DHT under its serial, for :data:`DHT_TTL_S`."""
    from hivemind.utils.timed_storage import get_dht_time

    future = dht.store(
        revocations_key(revocations.swarm_id),
        subkey=revocations.serial,
        value=revocations.model_dump_json(),
        expiration_time=get_dht_time() + DHT_TTL_S,
        return_future=True,
    )
    return bool(future.result(timeout=timeout))


def fetch(dht, authority_public: bytes, *, timeout: float = 10.0) -> RevocationList | None:
    """The highest-serial verified list the DHT holds for the swarm (None: none)."""
    key = revocations_key(swarm_id_of(authority_public))
    found = dht.get(key, latest=True, return_future=True).result(timeout=timeout)
    if found is None or not isinstance(found.value, dict):
        return None
    best = None
    for item in found.value.values():
        try:
            loaded = RevocationList.model_validate_json(item.value)
        except Exception:
            continue
        if loaded.verified(authority_public) and (best is None or loaded.serial > best.serial):
            best = loaded
    return best
