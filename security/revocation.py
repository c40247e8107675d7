"""The swarm's revocation list: credential ids the authority withdrew, signed by it.

``node0 swarm revoke`` writes the list (a serial that only grows, the revoked ids, the
authority's Ed25519 signature) next to the authority; every checker in every process — the gRPC
interceptor, the hivemind authorizer in the DHT child, the averaging gate in the averager child —
holds a :class:`RevocationWatcher` that re-reads the file when it changed, at most once per
``poll_s`` (default 1 s, below the daemon's heartbeat). A list whose signature does not verify
is ignored and logged, the last good one stays.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict

log = logging.getLogger(__name__)


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


class RevocationWatcher:
    """The current revoked ids from ``path`` (none when the file does not exist)."""

    def __init__(self, path: Path | None, authority_public: bytes, *, poll_s: float = 1.0):
        self.path = Path(path) if path else None
        self.authority_public = authority_public
        self.poll_s = poll_s
        self._revoked: frozenset[str] = frozenset()
        self._serial = -1
        self._mtime: float | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._refresh(force=True)

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.path is None or (not force and now - self._checked < self.poll_s):
            return
        with self._lock:
            self._checked = now
            try:
                mtime = self.path.stat().st_mtime_ns
            except OSError:
                return
            if mtime == self._mtime:
                return
            self._mtime = mtime
            try:
                loaded = RevocationList.model_validate_json(self.path.read_text())
            except Exception as exc:
                log.warning(
                    "revocation list %s unreadable (%s); keeping the last one", self.path, exc
                )
                return
            if not loaded.verify(self.authority_public):
                log.warning("revocation list %s: signature does not verify; ignored", self.path)
                return
            if loaded.serial < self._serial:
                return
            self._serial = loaded.serial
            self._revoked = frozenset(loaded.revoked)

    def is_revoked(self, credential_id: str) -> bool:
        self._refresh()
        return credential_id in self._revoked
