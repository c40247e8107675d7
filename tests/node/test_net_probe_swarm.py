"""Real daemons on loopback measure their link throughput against each other and announce it as
measured; ``node0 swarm status`` shows it; a probe past the cap, or from a caller that is not a
host of the swarm, is refused with its reason."""

from __future__ import annotations

import grpc
import pytest

from base.refusals import Reason, reason_of
from inference.swarm_client import SwarmClient
from node.net_probe import MAX_PROBE_BYTES
from node.swarm_cli import print_status
from proto import node0_pb2, node0_pb2_grpc
from proto.channels import channel_options
from security.authority import SwarmAuthority, default_authority_dir
from security.grpc_auth import CallSigner, secure_channel
from tests.fixtures import local_swarm, wait_until

pytestmark = pytest.mark.integration

MEASURE_WAIT_S = 180  # both daemons up, then one heartbeat after a measurement; a loaded CI


def _measured(client: SwarmClient):
    records = [r for r in client.records() if r.state == "online"]
    if len(records) == 2 and all(r.network_source == "measured" for r in records):
        return records
    return None


def _probe(endpoint: str, signer, send: int, reply: int) -> node0_pb2.ProbeResponse:
    channel = grpc.insecure_channel(endpoint, options=channel_options(2 * MAX_PROBE_BYTES))
    with channel:
        stub = node0_pb2_grpc.NetworkStub(secure_channel(channel, signer))
        request = node0_pb2.ProbeRequest(payload=bytes(send), reply_bytes=reply)
        return stub.Probe(request, timeout=30)


def _refused(endpoint: str, signer, send: int, reply: int) -> tuple[grpc.StatusCode, Reason]:
    with pytest.raises(grpc.RpcError) as err:
        _probe(endpoint, signer, send, reply)
    return err.value.code(), reason_of(err.value)


def test_daemons_announce_measured_network_throughput_and_refuse_oversized_probes(
    tiny_model_dir, tmp_path, capsys
):
    peers = [("s0", [(0, 3)]), ("s1", [(3, 6)])]
    with local_swarm(tmp_path, str(tiny_model_dir), peers) as state:
        client = SwarmClient(str(tiny_model_dir), state.initial_peers)
        try:
            records = wait_until(
                lambda: _measured(client), MEASURE_WAIT_S, "both records carry a measured figure"
            )
        finally:
            client.close()
        assert all(r.network_mbps > 0 for r in records)

        assert print_status(tmp_path / "swarm.json") == 0
        shown = capsys.readouterr().out
        assert "network Mbit/s" in shown and shown.count("(measured)") == 2

        endpoint = records[0].endpoint
        authority = SwarmAuthority.load(default_authority_dir())
        host = CallSigner(authority.invite("prober", "host"))
        assert len(_probe(endpoint, host, 1024, 4096).payload) == 4096
        too_large = (grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.PROBE_TOO_LARGE)
        assert _refused(endpoint, host, MAX_PROBE_BYTES + 1, 0) == too_large
        assert _refused(endpoint, host, 0, MAX_PROBE_BYTES + 1) == too_large
        # only hosts measure links: a client of the swarm and an outsider are refused
        client_signer = CallSigner(authority.invite("reader", "client"))
        assert _refused(endpoint, client_signer, 0, 16) == (
            grpc.StatusCode.PERMISSION_DENIED,
            Reason.ROLE_FORBIDS,
        )
        assert _refused(endpoint, None, 0, 16) == (
            grpc.StatusCode.UNAUTHENTICATED,
            Reason.NO_CREDENTIAL,
        )
