"""A swarm of real daemon processes serving the tiny model: parity, failover, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import grpc
import pytest
import torch
from transformers import AutoModelForCausalLM

from base.errors import ExitCode, RequestError, SwarmError
from base.refusals import Reason, reason_of
from base.sampler import SamplingParams
from inference.swarm_client import SwarmClient
from proto import node0_pb2, node0_pb2_grpc
from security.active import call_signer
from security.credentials import Role
from security.grpc_auth import secure_channel
from tests.fixtures import (
    REPO,
    kill_group,
    local_swarm,
    reference_generate,
    run_cli,
    swarm_generate,
)

pytestmark = pytest.mark.integration

SPLIT = [("s0", [(0, 2)]), ("s1", [(2, 4)]), ("s2", [(4, 6)])]
PROMPTS = [[5, 17, 99, 3, 42], [1, 2, 3], [200, 100, 50, 25, 12, 6, 3], [7] * 12]


@pytest.fixture(scope="module")
def swarm(tiny_model_dir, tmp_path_factory):
    with local_swarm(
        tmp_path_factory.mktemp("swarm"), str(tiny_model_dir), SPLIT, max_message_bytes=1 << 20
    ) as state:
        yield state


@pytest.fixture(scope="module")
def client(swarm, tiny_model_dir):
    c = SwarmClient(str(tiny_model_dir), swarm.initial_peers)
    c.wait_for_route()
    yield c
    c.close()


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def test_greedy_generation_matches_single_process_transformers(client, reference):
    results = swarm_generate(client, PROMPTS, max_new_tokens=24, first_logits=True)
    for result, (tokens, logits) in zip(
        results, reference_generate(reference, PROMPTS, 24), strict=True
    ):
        assert result.token_ids == tokens
        assert (result.first_logits - logits).abs().max().item() < 1e-4


def test_same_seed_same_sample_and_other_seed_differs(client):
    params = SamplingParams(temperature=1.0, top_k=50, top_p=0.95, seed=123)
    a = swarm_generate(client, PROMPTS[:2], max_new_tokens=20, sampling=params)
    b = swarm_generate(client, PROMPTS[:2], max_new_tokens=20, sampling=params)
    c = swarm_generate(
        client,
        PROMPTS[:2],
        max_new_tokens=20,
        sampling=SamplingParams(temperature=1.0, top_k=50, top_p=0.95, seed=9),
    )
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.token_ids for r in a] != [r.token_ids for r in c]


def _endpoint(client, start):
    return next(r.endpoint for r in client.records() if r.start == start)


def _raw_step(endpoint, start, end, tensor_msg, max_length=16):
    channel = grpc.insecure_channel(endpoint, options=[("grpc.max_send_message_length", 64 << 20)])
    # the swarm is private: the calls carry the local client credential
    stub = node0_pb2_grpc.StageStub(secure_channel(channel, call_signer(Role.CLIENT)))
    session = stub.OpenSession(
        node0_pb2.OpenSessionRequest(
            model=client_model[0], start=start, end=end, max_length=max_length
        )
    ).session_id
    request = node0_pb2.StepRequest(session_id=session, position=0, input=tensor_msg)
    try:
        return list(stub.Step(iter([request]), timeout=10))
    finally:
        channel.close()


client_model: list[str] = []


@pytest.mark.parametrize(
    "tensor, code",
    [
        (node0_pb2.Tensor(dtype="float32", shape=[1, 2, 64], data=b"\0" * 10), "INVALID_ARGUMENT"),
        (node0_pb2.Tensor(dtype="int64", shape=[1, 2], data=b"\0" * 16), "INVALID_ARGUMENT"),
        (node0_pb2.Tensor(dtype="float32", shape=[1, 2, 63], data=b"\0" * 504), "INVALID_ARGUMENT"),
        (node0_pb2.Tensor(dtype="float32", shape=[1, 20, 64], data=b"\0" * 5120), "OUT_OF_RANGE"),
        (
            node0_pb2.Tensor(dtype="float32", shape=[1, 4096, 64], data=b"\0" * (4096 * 256)),
            "RESOURCE_EXHAUSTED",
        ),
    ],
)
def test_malformed_or_oversized_requests_get_status_codes_and_daemon_keeps_serving(
    client, tiny_model_dir, reference, tensor, code
):
    client_model[:] = [str(tiny_model_dir)]
    with pytest.raises(grpc.RpcError) as err:
        _raw_step(_endpoint(client, 2), 2, 4, tensor)
    assert err.value.code().name == code
    (result,) = swarm_generate(client, PROMPTS[:1], max_new_tokens=5)
    assert result.token_ids == reference_generate(reference, PROMPTS[:1], 5)[0][0]


def test_open_session_beyond_context_window_is_refused(client, tiny_model_dir):
    channel = grpc.insecure_channel(_endpoint(client, 0))
    with pytest.raises(grpc.RpcError) as err:
        node0_pb2_grpc.StageStub(secure_channel(channel, call_signer(Role.CLIENT))).OpenSession(
            node0_pb2.OpenSessionRequest(
                model=str(tiny_model_dir), start=0, end=2, max_length=10_000
            )
        )
    assert reason_of(err.value) is Reason.PROMPT_TOO_LONG
    channel.close()


def test_prompt_longer_than_context_window_is_a_clear_error(client):
    with pytest.raises(RequestError, match="prompt has 300 tokens; the context window is 256"):
        swarm_generate(client, [[5] * 300], max_new_tokens=4, max_length=256)


def test_missing_stage_fails_fast_naming_the_layers(tiny_model_dir, tmp_path):
    with local_swarm(tmp_path, str(tiny_model_dir), [("a", [(0, 2)]), ("c", [(4, 6)])]) as st:
        c = SwarmClient(str(tiny_model_dir), st.initial_peers)
        try:
            # bounded by ROUTE_WAIT_S (tests/base/test_swarm_view.py checks the bound)
            with pytest.raises(SwarmError, match="layers 2-3 are served by no online peer"):
                c.wait_for_route()
        finally:
            c.close()
        proc = run_cli(
            [
                "inference.agent_client",
                "--model",
                str(tiny_model_dir),
                "--initial-peers",
                *st.initial_peers,
            ],
            stdin="hello\n",
        )
        assert proc.returncode == ExitCode.SWARM and "layers 2-3" in proc.stderr


def test_failover_when_serving_replica_is_killed_mid_generation(
    tiny_model_dir, tmp_path, reference
):
    peers = [("s0", [(0, 2)]), ("s1a", [(2, 4)]), ("s1b", [(2, 4)]), ("s2", [(4, 6)])]
    with local_swarm(tmp_path, str(tiny_model_dir), peers) as state:
        c = SwarmClient(str(tiny_model_dir), state.initial_peers)
        try:
            c.wait_for_route()
            time.sleep(1.5)  # both replicas announced
            killed = []

            def kill_middle_after_8_tokens(session, counter=[0]):  # noqa: B006
                counter[0] += 1
                if counter[0] == 8 and not killed:
                    endpoint = session.hops[1].record.endpoint
                    peer_id = session.hops[1].record.peer_id
                    victim = next(p for p in state.peers if peer_id in open(p.maddr_file).read())
                    kill_group(victim.pid)
                    killed.append(endpoint)

            seen = []  # (middle endpoint, failovers) after every token
            (result,) = swarm_generate(
                c,
                PROMPTS[:1],
                max_new_tokens=30,
                on_token=lambda s: (
                    kill_middle_after_8_tokens(s),
                    seen.append((s.hops[1].record.endpoint, s.failovers)),
                ),
            )
            assert killed, "the serving replica was not killed"
            assert seen[-1][1] == 1 and seen[-1][0] != killed[0]
            expected = reference_generate(reference, PROMPTS[:1], 30)[0][0]
            assert result.token_ids == expected
        finally:
            c.close()


def test_agent_client_piped_stdin_keeps_conversation_and_exits_0_on_eof(swarm, tiny_model_dir):
    args = [
        "inference.agent_client",
        "--model",
        str(tiny_model_dir),
        "--initial-peers",
        *swarm.initial_peers,
        "--max-new-tokens",
        "8",
        "--json",
    ]
    proc = run_cli(args, stdin="The mayor plans\nUse bd create\n")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    done = [e for e in events if e["type"] == "done"]
    assert len(done) == 2 and all(e["completion_tokens"] >= 1 for e in done)
    assert done[1]["reused_tokens"] > 0  # the second turn continued the cached conversation
    text = run_cli(args[:-1], stdin="The mayor plans\n")
    streamed = "".join(e["text"] for e in events[: events.index(done[0])])
    assert text.returncode == 0 and text.stdout == streamed + "\n"


def test_agent_client_multiline_delimiter(swarm, tiny_model_dir):
    proc = run_cli(
        [
            "inference.agent_client",
            "--model",
            str(tiny_model_dir),
            "--initial-peers",
            *swarm.initial_peers,
            "--max-new-tokens",
            "4",
            "--json",
            "--delimiter",
            "<<<END>>>",
        ],
        stdin="line one\nline two\n<<<END>>>\nsecond\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert sum(json.loads(x)["type"] == "done" for x in proc.stdout.splitlines()) == 2


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")
def test_agent_client_in_tmux_streams_and_exits_0_on_eof(swarm, tiny_model_dir, tmp_path):
    name = f"node0test{int(time.time() * 1000) % 10**8}"
    command = (
        f"cd {REPO} && {sys.executable} -m inference.agent_client --model "
        f"{tiny_model_dir} --initial-peers {' '.join(swarm.initial_peers)} "
        f"--max-new-tokens 6; echo EXIT=$?; sleep 120"
    )
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", name, "-x", "200", "-y", "50", command], check=True
    )
    try:

        def pane() -> str:
            return subprocess.run(
                ["tmux", "capture-pane", "-p", "-t", name], capture_output=True, text=True
            ).stdout

        def wait_for(condition, seconds: float) -> str:
            deadline = time.monotonic() + seconds
            while not condition(text := pane()) and time.monotonic() < deadline:
                time.sleep(0.5)
            return text

        def prompts(text: str) -> int:  # capture-pane strips the prompt's trailing space
            return sum(line.startswith(">") for line in text.splitlines())

        wait_for(lambda t: prompts(t) >= 1, 120)  # the client is up and prompts on the TTY
        subprocess.run(["tmux", "send-keys", "-t", name, "The mayor plans", "Enter"], check=True)
        answer = wait_for(lambda t: prompts(t) >= 2, 120)
        assert prompts(answer) >= 2, answer  # streamed an answer and prompted again
        assert answer.splitlines()[1].strip(), answer  # the answer line is not empty
        subprocess.run(["tmux", "send-keys", "-t", name, "C-d"], check=True)
        wait_for(lambda t: "EXIT=" in t, 60)
        assert "EXIT=0" in pane(), pane()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


def test_unknown_model_and_unreachable_peers_exit_with_their_codes(tiny_model_dir):
    proc = run_cli(
        [
            "inference.agent_client",
            "--model",
            "no-such-model",
            "--initial-peers",
            "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
        ],
        stdin="hi\n",
    )
    assert proc.returncode == ExitCode.REQUEST and "unknown model 'no-such-model'" in proc.stderr
    proc = run_cli(
        [
            "inference.agent_client",
            "--model",
            str(tiny_model_dir),
            "--initial-peers",
            "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
        ],
        stdin="hi\n",
    )
    assert proc.returncode == ExitCode.SWARM, proc.stderr
    # the refused connection itself, not the DHT start timeout ("did not come up within")
    assert "cannot join the DHT" in proc.stderr


def test_daemon_refuses_checkpoint_with_contradicting_architecture(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    config.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
    (bad / "config.json").write_text(json.dumps(config))
    daemon_config = tmp_path / "d.yaml"
    # access is checked before the weights load: this one must get as far as loading them
    daemon_config.write_text(
        f"model: {bad}\nstages: [{{start: 0, end: 2}}]\ninsecure_open_swarm: true\n"
    )
    proc = run_cli(["node.cli", "serve", "--config", str(daemon_config)], timeout=60)
    assert proc.returncode == ExitCode.CHECKPOINT
    assert "tensors are LLaMA-layout" in proc.stderr and "node0 stamp" in proc.stderr
