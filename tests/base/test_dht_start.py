"""A DHT peer that is not up in time is a clear SwarmError, and its child is gone."""

from __future__ import annotations

import multiprocessing

import pytest

from base.dht import start_dht
from base.errors import SwarmError


def test_a_dht_not_ready_in_time_fails_clearly_and_leaves_no_child():
    before = {p.pid for p in multiprocessing.active_children()}
    with pytest.raises(SwarmError, match="did not come up within"):
        start_dht([], start_timeout=0.001, attempts=2)
    assert {p.pid for p in multiprocessing.active_children()} <= before
