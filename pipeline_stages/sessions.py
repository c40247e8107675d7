"""Inference sessions of a daemon: one KV-cache per session, bounded in count and memory.

Each session reserves ``max_length`` cache positions when it opens; the daemon refuses a session
that would push the reserved total past ``max_cache_tokens`` (after evicting idle sessions), so
the cache memory is bounded up front instead of failing mid-generation. Sessions idle for longer
than ``idle_timeout`` are evicted.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pipeline_stages.errors import CapacityExceeded, InvalidInput, SessionNotFound


@dataclass
class Session:
    session_id: str
    stage_key: tuple[int, int]  # (start, end) of the stage serving it
    max_length: int
    cache: Any  # models.ragged_batch.SessionKV (None in unit tests of the registry)
    adapters: tuple[str, ...] = ()
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False  # a step is running; never evict

    @property
    def length(self) -> int:
        """Positions held in the session's cache."""
        return self.cache.length if self.cache is not None else 0


class SessionManager:
    """Thread-safe registry of open sessions with capacity limits and idle eviction."""

    def __init__(self, *, max_sessions: int, max_cache_tokens: int, idle_timeout: float):
        self.max_sessions = max_sessions
        self.max_cache_tokens = max_cache_tokens
        self.idle_timeout = idle_timeout
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(
        self,
        stage_key: tuple[int, int],
        max_length: int,
        cache: Any,
        adapters: tuple[str, ...] = (),
    ) -> Session:
        with self._lock:
            self._evict_idle_locked(time.monotonic())
            if len(self._sessions) >= self.max_sessions:
                retry = self._next_eviction_locked(time.monotonic())
                raise CapacityExceeded(
                    f"daemon is at its session limit ({self.max_sessions}); retry in "
                    f"{retry:.0f} s or use another replica",
                    retry_after=retry,
                )
            reserved = sum(s.max_length for s in self._sessions.values())
            if reserved + max_length > self.max_cache_tokens:
                retry = self._next_eviction_locked(time.monotonic())
                raise CapacityExceeded(
                    f"session needs {max_length} cache positions; "
                    f"{self.max_cache_tokens - reserved} of {self.max_cache_tokens} are free; "
                    f"retry in {retry:.0f} s or use another replica",
                    retry_after=retry,
                )
            session = Session(secrets.token_hex(16), stage_key, max_length, cache, adapters)
            self._sessions[session.session_id] = session
            return session

    def acquire(self, session_id: str) -> Session:
        """Mark a session busy for one step (the caller must :meth:`release` it)."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise SessionNotFound(
                    f"no session {session_id!r} (closed, evicted or never opened)"
                )
            if session.busy:
                raise InvalidInput(
                    f"session {session_id!r} already has a step running; a session's steps "
                    "come one after another"
                )
            session.busy = True
            return session

    def is_open(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._sessions

    def release(self, session: Session) -> None:
        with self._lock:
            session.busy = False
            session.last_used = time.monotonic()

    def close(self, session_id: str) -> bool:
        with self._lock:
            return self._sessions.pop(session_id, None) is not None

    def close_stage(self, stage_key: tuple[int, int]) -> list[str]:
        """Close every session of one stage (the daemon moves off it; clients fail over)."""
        with self._lock:
            ids = [sid for sid, s in self._sessions.items() if s.stage_key == stage_key]
            for sid in ids:
                del self._sessions[sid]
            return ids

    def _next_eviction_locked(self, now: float) -> float:
        """Seconds until the next idle session is evicted (its room frees up); at least 1."""
        idle = [
            self.idle_timeout - (now - s.last_used) for s in self._sessions.values() if not s.busy
        ]
        return max(1.0, min(idle, default=self.idle_timeout))

    def evict_idle(self) -> list[str]:
        with self._lock:
            return self._evict_idle_locked(time.monotonic())

    def _evict_idle_locked(self, now: float) -> list[str]:
        stale = [
            sid
            for sid, s in self._sessions.items()
            if not s.busy and now - s.last_used > self.idle_timeout
        ]
        for sid in stale:
            del self._sessions[sid]
        return stale

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "active_sessions": len(self._sessions),
                "reserved_cache_tokens": sum(s.max_length for s in self._sessions.values()),
            }
