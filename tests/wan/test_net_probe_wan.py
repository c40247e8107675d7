"""Two daemons on an emulated slow link (50 ms RTT, 20 or 80 Mbit/s) measure the link's rate,
not their CPU's (hundreds of Mbit/s over loopback) nor its round trip, and announce it.

The delay proxy of :mod:`bench.wan_net` holds at most one bandwidth-delay product per direction
(at least 64 KiB), so a transfer runs at about that product per one-way delay: 21 Mbit/s for
20 (the 64 KiB floor), 80 for 80. Opt in with ``make test-wan``; skipped with the reason
elsewhere.
"""

from __future__ import annotations

import logging

import pytest

from bench.wan_net import WanNetwork, unavailable_reason
from bench.wan_swarm import wan_swarm
from inference.swarm_client import SwarmClient
from tests.fixtures import wait_until

pytestmark = [pytest.mark.wan, pytest.mark.timeout(900)]

log = logging.getLogger(__name__)

RTT_MS = 50.0


def _measured(client: SwarmClient):
    records = [r for r in client.records() if r.state == "online"]
    if len(records) == 2 and all(r.network_source == "measured" for r in records):
        return records
    return None


@pytest.mark.parametrize("bandwidth_mbit", [20.0, 80.0])
def test_daemons_behind_a_slow_link_announce_its_rate(tiny_model_dir, tmp_path, bandwidth_mbit):
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"cannot emulate a WAN here: {reason}")
    with WanNetwork(2, rtt_ms=RTT_MS, loss=0.0, bandwidth_mbit=bandwidth_mbit) as net:
        peers = [("s0", [(0, 3)]), ("s1", [(3, 6)])]
        with wan_swarm(net, tmp_path, str(tiny_model_dir), peers) as state:
            client = SwarmClient(str(tiny_model_dir), state.initial_peers)
            try:
                records = wait_until(lambda: _measured(client), 300, "two measured records")
            finally:
                client.close()
    figures = sorted(r.network_mbps for r in records)
    log.info("measured over an emulated %g Mbit/s link: %s Mbit/s", bandwidth_mbit, figures)
    # the link's rate within a factor of two, far below what loopback measures (~500)
    assert all(bandwidth_mbit / 2 <= m <= bandwidth_mbit * 2 for m in figures), figures
