"""A private swarm of real daemons: outsiders, expired, revoked, other-swarm and under-privileged
credentials are refused at the DHT and at every gRPC method, and the swarm keeps serving."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
import torch
from transformers import AutoModelForCausalLM

from base.dht import start_dht
from base.dht_records import model_key
from base.errors import ExitCode, SwarmError
from base.refusals import Reason, reason_of
from inference.swarm_client import SwarmClient
from proto import (
    node0_adapters_pb2,
    node0_adapters_pb2_grpc,
    node0_pb2,
    node0_pb2_grpc,
    node0_weights_pb2,
    node0_weights_pb2_grpc,
)
from security.authority import SwarmAuthority, default_authority_dir
from security.credentials import CredentialFile
from security.dht_authorizer import SwarmAuthorizer
from security.grpc_auth import CallSigner, secure_channel
from tests.fixtures import local_swarm, reference_generate, run_cli, swarm_generate

pytestmark = pytest.mark.integration

SPLIT = [("s0", [(0, 2)]), ("s1", [(2, 4)]), ("s2", [(4, 6)])]
PROMPT = [[5, 17, 99, 3, 42]]


@pytest.fixture(scope="module")
def swarm(tiny_model_dir, tmp_path_factory):
    with local_swarm(tmp_path_factory.mktemp("private"), str(tiny_model_dir), SPLIT) as state:
        yield state


@pytest.fixture(scope="module")
def client(swarm, tiny_model_dir):
    c = SwarmClient(str(tiny_model_dir), swarm.initial_peers)
    c.wait_for_route()
    yield c
    c.close()


@pytest.fixture(scope="module")
def authority(swarm) -> SwarmAuthority:
    return SwarmAuthority.load(default_authority_dir())


def _still_serving(client, tiny_model_dir) -> None:
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    (result,) = swarm_generate(client, PROMPT, max_new_tokens=4)
    assert result.token_ids == reference_generate(reference, PROMPT, 4)[0][0]


def _calls(model: str):
    """One call per RPC of every service a daemon serves: (name, function of a channel)."""

    def stage(channel):
        return node0_pb2_grpc.StageStub(channel)

    return [
        (
            "OpenSession",
            lambda ch: stage(ch).OpenSession(
                node0_pb2.OpenSessionRequest(model=model, start=0, end=2, max_length=8), timeout=10
            ),
        ),
        ("Step", lambda ch: list(stage(ch).Step(iter([node0_pb2.StepRequest()]), timeout=10))),
        (
            "CloseSession",
            lambda ch: stage(ch).CloseSession(
                node0_pb2.CloseSessionRequest(session_id="x"), timeout=10
            ),
        ),
        (
            "OpenTrainingJob",
            lambda ch: stage(ch).OpenTrainingJob(
                node0_pb2.TrainingJobRequest(job_id="j", start=0, end=2), timeout=10
            ),
        ),
        (
            "Forward",
            lambda ch: list(stage(ch).Forward(iter([node0_pb2.TrainMessage()]), timeout=10)),
        ),
        (
            "Backward",
            lambda ch: list(stage(ch).Backward(iter([node0_pb2.TrainMessage()]), timeout=10)),
        ),
        (
            "OptimizerStep",
            lambda ch: stage(ch).OptimizerStep(node0_pb2.OptimizerStepRequest(), timeout=10),
        ),
        (
            "PullWeights",
            lambda ch: list(
                node0_weights_pb2_grpc.StageWeightsStub(ch).PullWeights(
                    node0_weights_pb2.PullWeightsRequest(model=model, start=0, end=2), timeout=10
                )
            ),
        ),
        (
            "LoadAdapter",
            lambda ch: node0_adapters_pb2_grpc.AdaptersStub(ch).LoadAdapter(
                node0_adapters_pb2.LoadAdapterRequest(name="x"), timeout=10
            ),
        ),
    ]


def _refusal(call, channel) -> tuple[grpc.StatusCode, Reason | None]:
    with pytest.raises(grpc.RpcError) as err:
        call(channel)
    return err.value.code(), reason_of(err.value)


def _endpoint(client) -> str:
    return next(r.endpoint for r in client.records() if r.start == 0)


def _log_of(swarm, name: str = "s0") -> str:
    return Path(next(p.log for p in swarm.peers if p.name == name)).read_text(errors="replace")


def test_outsider_is_refused_every_rpc_but_info(swarm, client, tiny_model_dir):
    endpoint = _endpoint(client)
    with grpc.insecure_channel(endpoint) as channel:
        # Info stays open: the health check (see security/roles.py)
        info = node0_pb2_grpc.StageStub(channel).Info(node0_pb2.InfoRequest(), timeout=10)
        assert info.stages
        for name, call in _calls(str(tiny_model_dir)):
            code, reason = _refusal(call, channel)
            assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, Reason.NO_CREDENTIAL), name
    log = _log_of(swarm)
    assert "refused /node0.v1.Stage/OpenSession from anonymous: no_credential" in log
    assert "refused /node0.v1.StageWeights/PullWeights from anonymous: no_credential" in log
    _still_serving(client, tiny_model_dir)


def test_outsider_cannot_join_the_dht(swarm, client, tiny_model_dir, tmp_path):
    started = time.monotonic()
    with pytest.raises(SwarmError, match="cannot join the DHT"):
        start_dht(swarm.initial_peers, client_mode=True)
    with pytest.raises(SwarmError, match="cannot join the DHT"):
        start_dht(swarm.initial_peers)  # as a full DHT node, too
    # a credential of another swarm's authority is no better
    rogue = SwarmAuthority.init(tmp_path / "rogue").invite("mallory", "host")
    with pytest.raises(SwarmError, match="cannot join the DHT"):
        start_dht(swarm.initial_peers, authorizer=SwarmAuthorizer(rogue))
    assert time.monotonic() - started < 60
    _still_serving(client, tiny_model_dir)


def test_a_client_credential_cannot_store_over_a_hosts_record(
    swarm, client, authority, tiny_model_dir
):
    records = client.records()
    victim = records[0]
    member = authority.invite("nosy-client", "client")
    dht = start_dht(swarm.initial_peers, client_mode=True, authorizer=SwarmAuthorizer(member))
    try:
        forged = victim.model_dump() | {"endpoint": "127.0.0.1:1", "load": 0.0}
        # hivemind's store() answers True from a client-mode peer even when every host
        # refused it; what counts is the record the swarm serves afterwards
        dht.store(
            model_key(victim.model),
            subkey=victim.subkey,
            value=forged,
            expiration_time=time.time() + 600,
        )
    finally:
        dht.shutdown()
    time.sleep(1.5)
    after = {r.subkey: r for r in client.records()}
    assert after[victim.subkey].endpoint == victim.endpoint
    _still_serving(client, tiny_model_dir)


def test_expired_revoked_other_swarm_and_role_refusals(
    swarm, client, authority, tiny_model_dir, tmp_path
):
    model = str(tiny_model_dir)
    endpoint = _endpoint(client)
    open_session = _calls(model)[0][1]
    by_name = dict(_calls(model))

    def through(credential: CredentialFile):
        return secure_channel(grpc.insecure_channel(endpoint), CallSigner(credential))

    expired = authority.invite("late", "client", validity_s=-5.0)
    code, reason = _refusal(open_session, through(expired))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, Reason.CREDENTIAL_EXPIRED)

    rogue = SwarmAuthority.init(tmp_path / "other").invite("stranger", "host")
    code, reason = _refusal(open_session, through(rogue))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, Reason.BAD_CREDENTIAL)

    client_only = authority.invite("reader", "client")
    channel = through(client_only)
    assert open_session(channel).session_id  # its own role works
    for name in ("OpenTrainingJob", "PullWeights", "LoadAdapter"):
        code, reason = _refusal(by_name[name], channel)
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, Reason.ROLE_FORBIDS), name

    # a stolen credential without its key: the proof is signed by another key
    thief = CredentialFile(signed=client_only.signed, private_key=rogue.private_key)
    code, reason = _refusal(open_session, through(thief))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, Reason.BAD_CREDENTIAL)

    doomed = authority.invite("doomed", "client")
    channel = through(doomed)
    assert open_session(channel).session_id
    result = run_cli(["node.cli", "swarm", "revoke", "doomed"], timeout=60)
    assert result.returncode == 0, result.stderr
    time.sleep(1.5)  # the revocation list is re-read at most once a second
    code, reason = _refusal(open_session, channel)
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, Reason.CREDENTIAL_REVOKED)
    log = _log_of(swarm)
    assert "role_forbids" in log and "credential_revoked" in log and "doomed" in log
    _still_serving(client, tiny_model_dir)


def test_a_daemon_without_credential_refuses_to_start(tiny_model_dir, tmp_path):
    config = tmp_path / "d.yaml"
    config.write_text(f"model: {tiny_model_dir}\nstages: [{{start: 0, end: 2}}]\n")
    result = run_cli(["node.cli", "serve", "--config", str(config)], timeout=120)
    assert result.returncode == ExitCode.CONFIG, result.stderr
    assert "no swarm credential" in result.stderr and "insecure_open_swarm" in result.stderr
