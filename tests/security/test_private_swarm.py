"""A private swarm of real daemons: outsiders, expired, revoked, other-swarm and under-privileged
credentials are refused at the DHT and at every gRPC method, a member cannot rewrite another's
stage record, a revocation published in the DHT reaches every daemon within a heartbeat, and the
swarm keeps serving."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import grpc
import pytest
import torch
from transformers import AutoModelForCausalLM

from base.dht import start_dht
from base.dht_records import STAGES_KEY, StageRecord
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
from security.revocation import RevocationList, fetch, publish
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


def _raw_subkey(dht, record: StageRecord) -> str:
    """The DHT subkey ``record`` lives under (it ends with its owner's marker)."""
    found = dht.get(STAGES_KEY, latest=True)
    prefix = f"{record.model}|{record.subkey}[owner:"
    return next(k for k in found.value if k.startswith(prefix))


@pytest.mark.parametrize("role", ["client", "host"])
def test_a_member_cannot_overwrite_drop_or_forge_a_hosts_record(
    swarm, client, authority, tiny_model_dir, role
):
    records = client.records()
    victim = records[0]
    member = authority.invite(f"nosy-{role}", role)
    dht = start_dht(swarm.initial_peers, client_mode=True, authorizer=SwarmAuthorizer(member))
    later = time.time() + 3600
    try:
        forged = victim.model_dump() | {"endpoint": "127.0.0.1:1", "load": 0.0}
        # hivemind's store() answers True from a client-mode peer even when every host
        # refused it; what counts is the record the swarm serves afterwards
        dht.store(STAGES_KEY, subkey=_raw_subkey(dht, victim), value=forged, expiration_time=later)
        # no owner marker; a wrongly typed record under the member's own marker; a plain value
        # over the whole key (hivemind's one way to drop other peers' subkeys)
        own = f"{victim.model}|{victim.subkey}{dht.owner_marker}"
        dht.store(STAGES_KEY, subkey=f"{victim.model}|x:0-2", value=forged, expiration_time=later)
        dht.store(STAGES_KEY, subkey=own, value=forged | {"start": 0.0}, expiration_time=later)
        dht.store(STAGES_KEY, value="gone", expiration_time=later)
    finally:
        dht.shutdown()
    time.sleep(1.5)
    after = client.records()
    assert [r.endpoint for r in after if r.subkey == victim.subkey] == [victim.endpoint]
    assert all(r.endpoint != "127.0.0.1:1" for r in after)
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


def test_a_revocation_published_in_the_dht_reaches_every_daemon_within_a_heartbeat(
    swarm, client, authority, tiny_model_dir, tmp_path
):
    """The daemons here also read the authority's file; this list reaches them only through
    the DHT, as it would on machines other than the one ``node0 swarm revoke`` ran on."""
    records = client.records()
    far_client = authority.invite("far-client", "client")
    far_host = authority.invite("far-host", "host")

    def open_on(record: StageRecord):
        channel = secure_channel(grpc.insecure_channel(record.endpoint), CallSigner(far_client))
        request = node0_pb2.OpenSessionRequest(
            model=record.model, start=record.start, end=record.end, max_length=8
        )
        return lambda: node0_pb2_grpc.StageStub(channel).OpenSession(request, timeout=10)

    calls = [open_on(r) for r in records]
    assert all(call().session_id for call in calls)
    publisher = authority.invite("publisher", "host")
    dht = start_dht(swarm.initial_peers, client_mode=True, authorizer=SwarmAuthorizer(publisher))
    updated = None
    try:
        # the daemons publish the list they read from the authority's file
        on_file = authority.revocations()
        if on_file.serial > 0:
            deadline = time.monotonic() + 10
            while (fetch(dht, authority.public) or on_file).serial < on_file.serial:
                assert time.monotonic() < deadline, "the operator's list never reached the DHT"
                time.sleep(0.5)
        # a list the authority did not sign is refused by every peer, whatever its serial
        rogue = SwarmAuthority.init(tmp_path / "rogue")
        forged = RevocationList(
            swarm_id=authority.swarm_id,
            serial=on_file.serial + 1000,
            revoked={far_client.credential.credential_id: "far-client"},
        )
        forged.signature = base64.b64encode(rogue._key.sign(forged.body())).decode()
        publish(dht, forged)
        time.sleep(2.5)
        assert all(call().session_id for call in calls)
        assert (fetch(dht, authority.public) or on_file).serial < forged.serial

        updated, _ = authority.next_revocations(["far-client", "far-host"])
        publish(dht, updated)
        started = time.monotonic()
        pending = list(calls)
        while pending:
            try:
                assert pending[0]().session_id, "a daemon still serves a revoked peer"
            except grpc.RpcError as exc:
                assert reason_of(exc) == Reason.CREDENTIAL_REVOKED
                pending.pop(0)
                continue
            # one heartbeat (1 s here) to read the DHT, and a second for the file watchers
            assert time.monotonic() - started < 6.0, "a daemon still serves a revoked peer"
            time.sleep(0.2)
        time.sleep(1.5)  # the DHT children's watchers re-read the copy within a second
        with pytest.raises(SwarmError, match="cannot join the DHT"):
            start_dht(swarm.initial_peers, authorizer=SwarmAuthorizer(far_host))
    finally:
        dht.shutdown()
        if updated is not None:  # the authority's own record of what it revoked
            updated.save(authority.revocations_path)
    for name in ("s0", "s1", "s2"):
        assert "far-client" in _log_of(swarm, name)
    _still_serving(client, tiny_model_dir)
