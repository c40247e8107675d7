import time

import pytest

from pipeline_stages.errors import CapacityExceeded, SessionNotFound
from pipeline_stages.sessions import SessionManager


def test_session_count_and_cache_budget_are_bounded():
    manager = SessionManager(max_sessions=2, max_cache_tokens=100, idle_timeout=60)
    manager.open((0, 1), 60, cache=None)
    with pytest.raises(CapacityExceeded, match="40 of 100 are free"):
        manager.open((0, 1), 50, cache=None)
    manager.open((0, 1), 40, cache=None)
    with pytest.raises(CapacityExceeded, match="session limit"):
        manager.open((0, 1), 1, cache=None)


def test_idle_sessions_are_evicted_but_busy_ones_are_not():
    manager = SessionManager(max_sessions=4, max_cache_tokens=100, idle_timeout=0.05)
    idle = manager.open((0, 1), 10, cache=None)
    busy = manager.acquire(manager.open((0, 1), 10, cache=None).session_id)
    time.sleep(0.1)
    assert manager.evict_idle() == [idle.session_id]
    with pytest.raises(SessionNotFound):
        manager.acquire(idle.session_id)
    manager.release(busy)
    assert manager.stats() == {"active_sessions": 1, "reserved_cache_tokens": 10}


def test_close_frees_the_reservation():
    manager = SessionManager(max_sessions=1, max_cache_tokens=10, idle_timeout=60)
    session = manager.open((0, 1), 10, cache=None)
    assert manager.close(session.session_id)
    manager.open((0, 1), 10, cache=None)
