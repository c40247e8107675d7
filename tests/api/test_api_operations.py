"""``node0 api`` operations over a real 3-stage SmolLM2 swarm, with the ``openai`` client:
``POST /v1/completions`` (raw prompts), node0's body extensions (stacked adapters, RAG by store
name, transcripts by name), the bounded queue (429 ``queue_full``), hang-ups of non-streaming
requests, and the latency metrics.

Answers are compared with the conversation engine's for the same prompt, adapters and
retrieval scope (and the raw-prompt answer with single-process transformers). The servers are
the real CLI in their own processes on 127.0.0.1 and free ports.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import openai
import pytest
import torch
from httpx_sse import connect_sse
from prometheus_client.parser import text_string_to_metric_families

from inference.conversation import ConversationEngine, GenerationSettings
from inference.rag_context import ContextScope, RagContext
from inference.swarm_client import SwarmClient
from tests.fixtures import (
    SMOLLM2_3STAGE,
    active_sessions,
    api_server,
    reference_generate,
)

# the session's shared swarm (smollm2_swarm: tool adapters trained first) may start in this
# module's setup: minutes on busy cores
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

MODEL = "smollm2-135m"
TUNED, OTHER = "tuned", "other"
TOKENS = 12
PROMPT = "The three most important rules of a well-run workshop are"
QUESTION = [{"role": "user", "content": "Write a haiku about the sea."}]
RAG_QUESTION = [
    {"role": "user", "content": "How should a polecat mark the bead on its hook as done?"}
]
SCOPE = ContextScope(rig="gastown", role="polecat")
RAG = {"store": "docs", "role": "polecat", "rig": "gastown"}
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "context": "length"}


@pytest.fixture(scope="module")
def swarm(smollm2_swarm):
    return smollm2_swarm  # serves TUNED and OTHER (tests.fixtures.SHARED_ADAPTERS)


@pytest.fixture(scope="module")
def client(swarm):
    client = SwarmClient(MODEL, swarm.initial_peers)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def engine(client):
    return ConversationEngine.connect(client)


@pytest.fixture(scope="module")
def rag(sample_store_dir):
    context = RagContext.open(sample_store_dir)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture(scope="module")
def transcripts(tmp_path_factory):
    return tmp_path_factory.mktemp("transcripts")


@pytest.fixture(scope="module")
def server(swarm, sample_store_dir, transcripts, tmp_path_factory):
    log = tmp_path_factory.mktemp("api-ops-log") / "server.log"
    args = ["--rag-store", f"docs={sample_store_dir}", "--transcript-dir", str(transcripts)]
    with api_server(swarm.initial_peers, *args, log=log) as base:
        yield base


@pytest.fixture(scope="module")
def oai(server):
    with openai.OpenAI(base_url=f"{server}/v1", api_key="none", max_retries=0, timeout=120) as c:
        yield c


def greedy(max_new_tokens: int = TOKENS) -> GenerationSettings:
    return GenerationSettings.create(max_new_tokens=max_new_tokens)


def raw_reference(engine, prompt, *, adapters=(), scope=None, rag=None, tokens=TOKENS):
    prepared = engine.prepare_prompt(prompt, scope=scope, rag=rag)
    return asyncio.run(engine.complete_prepared(prepared, greedy(tokens), adapters=adapters))


def chat_reference(engine, messages, *, adapters=(), scope=None, rag=None, tokens=TOKENS):
    prepared = engine.prepare(messages, max_new_tokens=tokens, scope=scope, rag=rag)
    return asyncio.run(engine.complete_prepared(prepared, greedy(tokens), adapters=adapters))


def error_of(exc: openai.APIStatusError) -> dict:
    body = exc.response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


def metrics(base: str) -> dict[tuple[str, tuple], float]:
    """``/metrics`` as {(sample name, sorted labels): value}."""
    text = httpx.get(f"{base}/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def wait_until(predicate, what: str, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# --- completions -------------------------------------------------------------------------------


def test_completion_greedy_equals_engine_and_single_process(oai, engine, smollm2_dir):
    from transformers import AutoModelForCausalLM

    expected = raw_reference(engine, PROMPT)
    answer = oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=TOKENS, temperature=0)
    assert answer.object == "text_completion"
    (choice,) = answer.choices
    assert choice.text == expected.text
    assert choice.finish_reason == FINISH[expected.finish_reason]
    assert answer.usage.prompt_tokens == expected.prompt_tokens
    assert expected.prompt_ids == engine.tokenizer(PROMPT).input_ids  # as is: no chat template
    assert answer.usage.completion_tokens == expected.completion_tokens

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    [(tokens, _logits)] = reference_generate(model, [expected.prompt_ids], TOKENS)
    assert expected.token_ids == tokens[: len(expected.token_ids)]


def test_completion_prompt_forms_echo_and_defaults(oai, engine):
    expected = raw_reference(engine, PROMPT)
    ids = engine.prepare_prompt(PROMPT).prompt_ids
    for prompt in ([PROMPT], ids, [ids]):
        answer = oai.completions.create(
            model=MODEL, prompt=prompt, max_tokens=TOKENS, temperature=0
        )
        assert answer.choices[0].text == expected.text
    echoed = oai.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=TOKENS, temperature=0, echo=True
    )
    assert echoed.choices[0].text == PROMPT + expected.text
    default = oai.completions.create(model=MODEL, prompt=PROMPT, temperature=0)
    assert default.usage.completion_tokens <= 16  # OpenAI's default max_tokens
    assert default.choices[0].text == raw_reference(engine, PROMPT, tokens=16).text


def test_completion_stream_equals_the_whole_answer(oai, engine, server):
    expected = raw_reference(engine, PROMPT)
    chunks = list(
        oai.completions.create(
            model=MODEL,
            prompt=PROMPT,
            max_tokens=TOKENS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected.text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == FINISH[expected.finish_reason]
    assert all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == TOKENS
    assert all(c.usage is None for c in chunks[:-1])

    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 4, "temperature": 0, "stream": True}
    with httpx.Client(timeout=120) as http:
        with connect_sse(http, "POST", f"{server}/v1/completions", json=body) as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            data = [event.data for event in source.iter_sse()]
    assert data[-1] == "[DONE]"
    events = [json.loads(d) for d in data[:-1]]
    assert {e["object"] for e in events} == {"text_completion"}
    assert len({e["id"] for e in events}) == 1
    assert (
        "".join(e["choices"][0]["text"] for e in events)
        == raw_reference(engine, PROMPT, tokens=4).text
    )


def test_completion_refusals_are_openai_errors(oai, engine):
    window = engine.max_length
    cases = [
        (dict(prompt=["one", "two"]), "prompt", "unsupported_value"),
        (dict(prompt=PROMPT, n=2), "n", "unsupported_value"),
        (dict(prompt=PROMPT, best_of=2), "best_of", "unsupported_value"),
        (dict(prompt=PROMPT, logprobs=1), "logprobs", "unsupported_parameter"),
        (dict(prompt=PROMPT, suffix="."), "suffix", "unsupported_parameter"),
        (dict(prompt=[len(engine.tokenizer) + 5]), "prompt", "invalid_value"),
        (dict(prompt=PROMPT, max_tokens=window), "max_tokens", "context_length_exceeded"),
        (dict(prompt="word " * (window + 10)), "prompt", "context_length_exceeded"),
        (dict(prompt=[1] * 3, extra_body={"rag": RAG}), "rag", "invalid_value"),
    ]
    for kwargs, param, code in cases:
        with pytest.raises(openai.BadRequestError) as info:
            oai.completions.create(model=MODEL, **{"max_tokens": 4, **kwargs})
        error = error_of(info.value)
        assert (error["param"], error["code"]) == (param, code), error
        assert error["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as info:
        oai.completions.create(model="no-such-model", prompt=PROMPT, max_tokens=4)
    assert error_of(info.value)["code"] == "model_not_found"


# --- extensions --------------------------------------------------------------------------------


def test_adapters_extension_stacks_after_the_model_ids_adapter(oai, engine):
    stacked = chat_reference(engine, QUESTION, adapters=(TUNED, OTHER))
    assert stacked.text != chat_reference(engine, QUESTION, adapters=(TUNED,)).text
    answer = oai.chat.completions.create(
        model=TUNED,
        messages=QUESTION,
        max_tokens=TOKENS,
        temperature=0,
        extra_body={"adapters": [OTHER]},
    )
    assert answer.choices[0].message.content == stacked.text
    raw = oai.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=TOKENS,
        temperature=0,
        extra_body={"adapters": [TUNED, OTHER]},
    )
    assert raw.choices[0].text == raw_reference(engine, PROMPT, adapters=(TUNED, OTHER)).text
    with pytest.raises(openai.NotFoundError) as info:
        oai.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=4, extra_body={"adapters": ["nope"]}
        )
    error = error_of(info.value)
    assert (error["code"], error["param"]) == ("unknown_adapter", "adapters")
    assert "nope" in error["message"]


def test_rag_extension_equals_the_engine_with_that_scope(oai, engine, rag):
    expected = chat_reference(engine, RAG_QUESTION, scope=SCOPE, rag=rag)
    plain = engine.prepare(RAG_QUESTION, max_new_tokens=TOKENS)
    assert expected.context is not None and expected.prompt_tokens > len(plain.prompt_ids)
    answer = oai.chat.completions.create(
        model=MODEL,
        messages=RAG_QUESTION,
        max_tokens=TOKENS,
        temperature=0,
        extra_body={"rag": RAG},
    )
    assert answer.choices[0].message.content == expected.text
    assert answer.usage.prompt_tokens == expected.prompt_tokens

    prompt = RAG_QUESTION[0]["content"]
    raw = raw_reference(engine, prompt, scope=SCOPE, rag=rag)
    assert raw.context is not None
    answer = oai.completions.create(
        model=MODEL, prompt=prompt, max_tokens=TOKENS, temperature=0, extra_body={"rag": RAG}
    )
    assert answer.choices[0].text == raw.text
    assert answer.usage.prompt_tokens == raw.prompt_tokens


def test_rag_and_transcript_refusals(oai):
    cases = [
        ({"rag": {"store": "/etc"}}, "rag.store", "unknown_rag_store"),
        ({"rag": {"role": "polecat"}}, "rag.store", "unknown_rag_store"),  # no default store
        ({"rag": {**RAG, "role": "emperor"}}, "rag.role", "invalid_value"),
        ({"transcript": "../../etc/x"}, "transcript", "invalid_value"),
        ({"bogus": 1}, "bogus", "unknown_parameter"),
    ]
    for extra, param, code in cases:
        with pytest.raises(openai.BadRequestError) as info:
            oai.chat.completions.create(
                model=MODEL, messages=QUESTION, max_tokens=4, extra_body=extra
            )
        error = error_of(info.value)
        assert (error["param"], error["code"]) == (param, code), error


def test_transcript_extension_appends_sessions(oai, transcripts):
    chat = oai.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=4,
        temperature=0,
        extra_body={"transcript": "api-test"},
    )
    raw = oai.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=4,
        temperature=0,
        extra_body={"transcript": "api-test", "rag": RAG},
    )
    first, second = [json.loads(line) for line in (transcripts / "api-test.jsonl").open()]
    assert first["schema"] == "gastown.transcript/1" and first["outcome"] == "success"
    assert (first["rig"], first["role"]) == ("api-test", "crew")
    assert first["turns"] == [
        {"speaker": "user", "text": QUESTION[0]["content"]},
        {"speaker": "assistant", "text": chat.choices[0].message.content},
    ]
    assert (second["rig"], second["role"]) == ("gastown", "polecat")
    assert second["turns"] == [  # the prompt as given, without the retrieved context
        {"speaker": "user", "text": PROMPT},
        {"speaker": "assistant", "text": raw.choices[0].text},
    ]
    assert first["session_id"] != second["session_id"]


# --- hang-ups, the queue, metrics --------------------------------------------------------------


def post_and_hang_up(base: str, path: str, body: dict, client: SwarmClient) -> int:
    """POST ``body`` on a raw connection, close it once the daemons hold the request's
    sessions; returns how many were open then."""
    url = urlsplit(base)
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(head.encode() + payload)
        wait_until(lambda: active_sessions(client) == len(SMOLLM2_3STAGE), "the request's sessions")
        return active_sessions(client)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": QUESTION}),
        ("/v1/completions", {"prompt": PROMPT}),
    ],
)
def test_non_streaming_hang_up_closes_the_sessions(server, client, path, body):
    assert active_sessions(client) == 0
    body = {"model": MODEL, "max_tokens": 400, "temperature": 0.7, "seed": 1, **body}
    during = post_and_hang_up(server, path, body, client)
    # the server must close the pipeline session now, long before the daemons' idle eviction
    # (300 s) would
    deadline = time.monotonic() + 5
    while (after := active_sessions(client)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert during == len(SMOLLM2_3STAGE)
    assert after == 0
    closed = ("node0_api_requests_total", (("endpoint", path), ("status", "499")))
    wait_until(lambda: metrics(server).get(closed, 0) >= 1, "the hang-up to be counted")


def test_latency_and_queue_metrics(server):
    values = metrics(server)
    assert values[("node0_api_inter_token_latency_seconds_count", ())] > 0
    assert values[("node0_api_time_to_first_token_seconds_count", ())] > 0
    assert values[("node0_api_queue_depth", ())] == 0
    assert values[("node0_api_requests_in_flight", ())] == 0
    for hop, (_name, [(start, end)]) in enumerate(SMOLLM2_3STAGE):
        for phase in ("prefill", "decode"):
            labels = (("hop", str(hop)), ("phase", phase), ("span", f"{start}-{end}"))
            assert values[("node0_api_hop_step_seconds_count", labels)] > 0
    ok = ("node0_api_requests_total", (("endpoint", "/v1/completions"), ("status", "200")))
    assert values[ok] > 0


def test_full_queue_is_429_with_retry_after(swarm, engine, tmp_path):
    args = ["--max-concurrent", "1", "--max-queue", "1"]
    with api_server(swarm.initial_peers, *args, log=tmp_path / "busy.log") as base:
        queued: dict = {}
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 400, "stream": True}
        body |= {"temperature": 0.7, "seed": 1}
        with httpx.Client(timeout=120) as http:
            with connect_sse(http, "POST", f"{base}/v1/completions", json=body) as holder:
                events = holder.iter_sse()  # kept: a dropped iterator closes the response
                next(events)  # the stream holds the one slot

                def wait_in_queue():
                    queued["response"] = httpx.post(
                        f"{base}/v1/completions",
                        json={"model": MODEL, "prompt": PROMPT, "max_tokens": 4, "temperature": 0},
                        timeout=120,
                    )

                waiter = threading.Thread(target=wait_in_queue)
                waiter.start()
                wait_until(lambda: metrics(base)[("node0_api_queue_depth", ())] == 1, "a queue")
                assert metrics(base)[("node0_api_requests_in_flight", ())] == 1
                with openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0) as c:
                    with pytest.raises(openai.RateLimitError) as info:
                        c.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)
        # the stream closed: its slot goes to the queued request
        waiter.join(120)
        response = info.value.response
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) >= 1
        assert error_of(info.value)["code"] == "queue_full"
        assert queued["response"].status_code == 200
        expected = raw_reference(engine, PROMPT, tokens=4).text
        assert queued["response"].json()["choices"][0]["text"] == expected
        wait_until(lambda: metrics(base)[("node0_api_requests_in_flight", ())] == 0, "idle")
        assert metrics(base)[("node0_api_queue_depth", ())] == 0
