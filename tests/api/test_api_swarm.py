"""``node0 api`` over a real 3-stage SmolLM2 swarm, driven by the official ``openai`` client.

The server is the real CLI (``python -m node.cli api``) in its own process on 127.0.0.1 and a
free port; its answers are compared with the conversation engine's (and node0-inference's) for
the same messages. Streams are parsed by real SSE clients (openai's, httpx-sse).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import httpx
import openai
import pytest
from httpx_sse import connect_sse

from inference.conversation import ConversationEngine, GenerationSettings
from inference.swarm_client import SwarmClient
from tests.fixtures import (
    SHARED_ADAPTERS,
    SMOLLM2_3STAGE,
    active_sessions,
    api_server,
    local_swarm,
    run_cli,
)

# the session's shared swarm (smollm2_swarm: tool adapters trained first) may start in this
# module's setup: minutes on busy cores
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

MODEL = "smollm2-135m"
SPLIT = SMOLLM2_3STAGE
ADAPTER = "tuned"
KEY = "sk-node0-test"
TOKENS = 24
CONVERSATION = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Italy?"},
]
QUESTION = [{"role": "user", "content": "Write a haiku about the sea."}]


@pytest.fixture(scope="module")
def swarm(smollm2_swarm):
    return smollm2_swarm


@pytest.fixture(scope="module")
def engine(swarm):
    client = SwarmClient(MODEL, swarm.initial_peers)
    try:
        yield ConversationEngine.connect(client)
    finally:
        client.close()


@pytest.fixture(scope="module")
def server(swarm, tmp_path_factory):
    log = tmp_path_factory.mktemp("api-log") / "server.log"
    with api_server(swarm.initial_peers, "--api-key", KEY, log=log) as base:
        yield base


@pytest.fixture(scope="module")
def oai(server):
    with openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120) as c:
        yield c


def reference(engine, messages, *, adapters=(), **settings):
    settings = GenerationSettings.create(**{"max_new_tokens": TOKENS, **settings})
    return asyncio.run(engine.complete(messages, settings, adapters=adapters))


FINISH = {"eos": "stop", "stop": "stop", "length": "length", "context": "length"}


def test_models_lists_base_and_adapter(oai):
    models = {m.id: m for m in oai.models.list().data}
    assert set(models) == {MODEL, *SHARED_ADAPTERS}
    assert models[ADAPTER].model_extra["parent"] == MODEL
    assert models[ADAPTER].model_extra["root"] == MODEL
    assert models[MODEL].model_extra["parent"] is None


def test_chat_greedy_equals_engine(oai, engine):
    expected = reference(engine, CONVERSATION)
    answer = oai.chat.completions.create(
        model=MODEL, messages=CONVERSATION, temperature=0, max_tokens=TOKENS, store=False
    )
    choice = answer.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected.text
    assert choice.finish_reason == FINISH[expected.finish_reason]
    assert answer.usage.prompt_tokens == expected.prompt_tokens
    assert answer.usage.completion_tokens == expected.completion_tokens
    assert answer.usage.total_tokens == expected.prompt_tokens + expected.completion_tokens


def test_chat_equals_node0_inference(oai, swarm):
    question = QUESTION[0]["content"]
    run = run_cli(
        ["inference.agent_client", "--initial-peers", *swarm.initial_peers, "--json"]
        + ["--max-new-tokens", str(TOKENS), "--transcript", "off"],
        stdin=question + "\n",
    )
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    text = "".join(e["text"] for e in events if e["type"] == "token")
    answer = oai.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_completion_tokens=TOKENS
    )
    assert answer.choices[0].message.content == text
    assert answer.usage.completion_tokens == events[-1]["completion_tokens"]


def test_stream_greedy_equals_engine_with_usage(oai, engine):
    expected = reference(engine, QUESTION)
    chunks = list(
        oai.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            temperature=0,
            max_completion_tokens=TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.text
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == FINISH[expected.finish_reason]
    assert all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == expected.completion_tokens
    assert chunks[-1].usage.prompt_tokens == expected.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_ends_with_done_event(server, engine):
    expected = reference(engine, QUESTION, max_new_tokens=8)
    body = {"model": MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 8}
    with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {KEY}"}) as http:
        with connect_sse(
            http, "POST", f"{server}/v1/chat/completions", json={**body, "stream": True}
        ) as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            data = [event.data for event in source.iter_sse()]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected.text
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_seeded_sampling_and_stop_equal_engine(oai, engine):
    sampled = dict(temperature=0.8, top_p=0.9, seed=7)
    expected = reference(engine, QUESTION, **sampled)
    for _ in range(2):
        answer = oai.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=TOKENS, **sampled
        )
        assert answer.choices[0].message.content == expected.text
    stopped = reference(engine, CONVERSATION, stop=["Rome"])
    answer = oai.chat.completions.create(
        model=MODEL, messages=CONVERSATION, temperature=0, max_tokens=TOKENS, stop=["Rome"]
    )
    assert answer.choices[0].message.content == stopped.text
    assert answer.choices[0].finish_reason == FINISH[stopped.finish_reason]


def test_adapter_model_equals_engine_with_adapter(oai, engine):
    expected = reference(engine, QUESTION, adapters=(ADAPTER,))
    answer = oai.chat.completions.create(
        model=ADAPTER, messages=QUESTION, temperature=0, max_tokens=TOKENS
    )
    assert answer.choices[0].message.content == expected.text


def _error(exc: openai.APIStatusError) -> dict:
    body = exc.response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


def test_bad_parameters_are_400_in_openai_shape(oai):
    cases = [
        (dict(n=2), "n", "unsupported_value"),
        (dict(temperature=5), "temperature", "invalid_value"),
        (dict(presence_penalty=0.5), "presence_penalty", "unsupported_parameter"),
        (dict(logit_bias={"42": 5}), "logit_bias", "unsupported_parameter"),
        (dict(extra_body={"no_such_field": 1}), "no_such_field", "unknown_parameter"),
        (dict(functions=[{"name": "f", "parameters": {}}]), "functions", "unsupported_parameter"),
        (dict(tool_choice="required"), "tool_choice", "invalid_value"),
    ]
    for kwargs, param, code in cases:
        with pytest.raises(openai.BadRequestError) as info:
            oai.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, **kwargs)
        assert info.value.status_code == 400
        error = _error(info.value)
        assert (error["param"], error["code"]) == (param, code), error
        assert error["type"] == "invalid_request_error"


def test_bad_key_is_401(server):
    with openai.OpenAI(base_url=f"{server}/v1", api_key="sk-wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as info:
            bad.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)
    assert info.value.status_code == 401
    assert _error(info.value)["code"] == "invalid_api_key"
    assert httpx.get(f"{server}/v1/models").status_code == 401


def test_unknown_model_is_404(oai):
    with pytest.raises(openai.NotFoundError) as info:
        oai.chat.completions.create(model="no-such-model", messages=QUESTION, max_tokens=4)
    error = _error(info.value)
    assert (error["code"], error["param"]) == ("model_not_found", "model")


def test_context_length_exceeded_is_400(oai, engine):
    for kwargs in (
        dict(messages=QUESTION, max_tokens=engine.max_length),
        dict(messages=[{"role": "user", "content": "word " * (engine.max_length + 10)}]),
    ):
        with pytest.raises(openai.BadRequestError) as info:
            oai.chat.completions.create(model=MODEL, **kwargs)
        assert _error(info.value)["code"] == "context_length_exceeded"


def test_disconnect_mid_stream_closes_sessions(server, engine, swarm):
    client = SwarmClient(MODEL, swarm.initial_peers)
    try:
        assert active_sessions(client) == 0
        body = {"model": MODEL, "messages": QUESTION, "max_tokens": 400, "stream": True}
        body |= {"temperature": 0.7, "seed": 1}
        with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {KEY}"}) as http:
            with connect_sse(http, "POST", f"{server}/v1/chat/completions", json=body) as src:
                events = src.iter_sse()
                for _ in range(4):
                    next(events)
                during = active_sessions(client)
        # the connection is closed: the server must close the pipeline session now, long
        # before the daemons' idle eviction (300 s) would
        deadline = time.monotonic() + 5
        while (after := active_sessions(client)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert during == len(SPLIT)
        assert after == 0
    finally:
        client.close()


def test_metrics_count_requests_and_tokens(server):
    text = httpx.get(f"{server}/metrics").text
    assert 'node0_api_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    assert "node0_api_completion_tokens_total" in text
    assert "node0_api_time_to_first_token_seconds_count" in text


def test_keyless_server_refuses_non_loopback_host():
    run = run_cli(["node.cli", "api", "--host", "0.0.0.0", "--initial-peers", "/ip4/x"])
    assert run.returncode == 12, run.stderr
    assert "without an API key" in run.stderr


def test_no_route_is_503(tiny_model_dir, tmp_path):
    """A swarm of its own (the shared one must stay whole): a stage stops, the API says 503."""
    split = [("a", [(0, 3)]), ("b", [(3, 6)])]
    with local_swarm(tmp_path / "swarm", str(tiny_model_dir), split) as swarm:
        args = ("--model", str(tiny_model_dir))
        with api_server(swarm.initial_peers, *args, log=tmp_path / "api.log") as server:
            os.killpg(swarm.peers[-1].pid, signal.SIGTERM)  # a graceful stop goes offline
            deadline = time.monotonic() + 30
            while httpx.get(f"{server}/health").status_code != 503:
                assert time.monotonic() < deadline
                time.sleep(0.5)
            reply = httpx.post(
                f"{server}/v1/chat/completions",
                json={"model": tiny_model_dir.name, "messages": QUESTION, "max_tokens": 4},
                timeout=60,
            )
    assert reply.status_code == 503, reply.text
    assert reply.json()["error"]["code"] == "no_route"
