"""node.net_probe: the bandwidth estimator, the capped Probe RPC on a real gRPC server, and a
measurement over it."""

from __future__ import annotations

import time

import grpc
import pytest

from base.refusals import Reason, reason_of, retry_after_of
from node.net_probe import (
    MAX_PROBE_BYTES,
    NetworkMeter,
    NetworkService,
    ProbePlan,
    link_mbps,
    probe_cap,
    probe_link,
    swarm_mbps,
    transfer_mbps,
)
from proto import node0_pb2, node0_pb2_grpc
from proto.channels import channel_options


def _link_time(n_bytes: int, rtt_s: float, mbps: float) -> float:
    """A call over a link of ``mbps`` with round trip ``rtt_s``: latency plus serialization."""
    return rtt_s + n_bytes * 8 / (mbps * 1e6)


@pytest.mark.parametrize("rtt_s", [0.0, 0.001, 0.05, 0.3])
@pytest.mark.parametrize("mbps", [1.0, 100.0, 10_000.0])
def test_the_round_trip_cancels_and_the_link_rate_is_recovered(rtt_s, mbps):
    small, large = 4 << 10, 2 << 20
    got = transfer_mbps(
        small, _link_time(small, rtt_s, mbps), large, _link_time(large, rtt_s, mbps)
    )
    assert got == pytest.approx(mbps, rel=1e-9)


def test_times_that_cannot_be_a_transfer_give_no_figure():
    assert transfer_mbps(1000, 0.01, 1000, 0.02) is None  # no extra bytes
    assert transfer_mbps(1000, 0.02, 2000, 0.02) is None  # no extra time (noise won)
    assert transfer_mbps(1000, 0.03, 2000, 0.02) is None  # the large one was faster


def test_a_link_counts_its_slower_direction_and_the_swarm_its_median_link():
    assert link_mbps(80.0, 20.0) == 20.0
    assert link_mbps(None, 20.0) is None and link_mbps(80.0, None) is None
    assert swarm_mbps([10.0, None, 1000.0, 30.0]) == 30.0
    assert swarm_mbps([None, None]) is None and swarm_mbps([]) is None


def test_a_plan_stays_within_the_probe_cap():
    ProbePlan(small_bytes=0, large_bytes=4 << 20)
    with pytest.raises(ValueError):
        ProbePlan(large_bytes=(4 << 20) + 1)
    with pytest.raises(ValueError):
        ProbePlan(small_bytes=1 << 20, large_bytes=1 << 20)
    with pytest.raises(ValueError):
        ProbePlan(tries=0)


@pytest.fixture
def serve():
    """Starts real gRPC servers with a Network service alone (open ones: no interceptor);
    returns each one's endpoint; stops them all afterwards."""
    from concurrent import futures

    servers = []

    def start(service: NetworkService) -> str:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4), options=channel_options(8 << 20)
        )
        service.add_to_server(server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(grace=None)


@pytest.fixture
def probe_server(serve) -> str:
    return serve(NetworkService(max_probe_bytes=1 << 20))


def _probe(endpoint: str, send: int, reply: int) -> node0_pb2.ProbeResponse:
    with grpc.insecure_channel(endpoint, options=channel_options(8 << 20)) as channel:
        stub = node0_pb2_grpc.NetworkStub(channel)
        return stub.Probe(
            node0_pb2.ProbeRequest(payload=bytes(send), reply_bytes=reply), timeout=10
        )


def test_probe_answers_the_bytes_asked_and_refuses_past_its_caps(serve):
    probe_server = serve(NetworkService(max_probe_bytes=1 << 20, reply_budget_bytes=3 << 20))
    assert len(_probe(probe_server, 1000, 5000).payload) == 5000
    for send, reply in [((1 << 20) + 1, 0), (0, (1 << 20) + 1), (0, -1)]:
        with pytest.raises(grpc.RpcError) as err:
            _probe(probe_server, send, reply)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert reason_of(err.value) is Reason.PROBE_TOO_LARGE
    # the reply budget (3 MiB a minute here): two more full replies fit, the next is refused
    _probe(probe_server, 0, 1 << 20)
    _probe(probe_server, 0, 1 << 20)
    with pytest.raises(grpc.RpcError) as err:
        _probe(probe_server, 0, 1 << 20)
    assert reason_of(err.value) is Reason.PROBE_BUSY
    assert 0 < retry_after_of(err.value) <= 60


def test_a_measurement_over_loopback_gives_a_positive_rate(probe_server):
    plan = ProbePlan(small_bytes=1 << 10, large_bytes=1 << 20, tries=3)
    got = probe_link(probe_server, None, plan, time.monotonic() + 30)
    assert got is not None and got > 0


def test_a_daemon_with_small_messages_caps_the_probe_and_is_still_measured(serve):
    assert probe_cap(32 << 20) == MAX_PROBE_BYTES and probe_cap(1 << 20) == 512 << 10
    small_cap = serve(NetworkService(max_probe_bytes=probe_cap(1 << 20)))
    assert _probe(small_cap, 0, 16).max_bytes == 512 << 10
    # 512 KiB over loopback takes about as long as the small payload: on a busy host one
    # measurement can come out None ("the times do not allow it"), so up to three
    got = None
    for _ in range(3):
        got = probe_link(small_cap, None, ProbePlan(), time.monotonic() + 30)
        if got is not None:
            break
    assert got is not None and got > 0
    tiny_cap = serve(NetworkService(max_probe_bytes=1 << 10))  # below the small payload
    assert probe_link(tiny_cap, None, ProbePlan(), time.monotonic() + 30) is None


def test_the_meter_retries_without_peers_and_keeps_the_figure_it_measured(probe_server):
    peers: list[str] = []
    meter = NetworkMeter(
        lambda: list(peers),
        None,
        period_s=60,
        retry_s=0.1,
        plan=ProbePlan(small_bytes=1 << 10, large_bytes=1 << 20, tries=3),
    )
    assert meter.measure_once() is None and meter.mbps is None  # the first peer: nobody
    peers.append(probe_server)
    assert meter.measure_once() > 0
    first = meter.mbps
    peers[:] = ["127.0.0.1:1"]  # a peer that is gone: no figure, the last one stays
    assert meter.measure_once() is None and meter.mbps == first


def test_a_declared_figure_is_announced_as_declared_and_a_measured_one_as_measured():
    from node.config import DaemonConfig
    from node.daemon import Daemon

    stages = [{"start": 0, "end": 2}]
    declared = Daemon(DaemonConfig(stages=stages, placement={"network_mbps": 50}))
    assert declared._network_fields() == {"network_mbps": 50.0, "network_source": "declared"}
    daemon = Daemon(DaemonConfig(stages=stages))
    assert daemon._network_fields() == {"network_mbps": 0.0, "network_source": ""}
    daemon.network = NetworkMeter(list, None, period_s=60, retry_s=1)
    daemon.network.mbps = 812.345
    assert daemon._network_fields() == {"network_mbps": 812.3, "network_source": "measured"}
