"""Parts of ``node0 api`` without a swarm: the bounded queue, the completions body, the
extensions, the disconnect watcher; then the app itself in-process (uvicorn on a free loopback
port) over a conversation engine whose stages are scripted."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
from httpx_sse import connect_sse

from api.admission import Admission, QueueFull
from api.backend import ServedModels
from api.completions import parse_completion
from api.errors import APIError
from api.extensions import Extensions
from api.launch import free_port
from api.streaming import ClientDisconnected, unless_disconnected
from proto import node0_pb2


def run(coro):
    return asyncio.run(coro)


# --- admission ---------------------------------------------------------------------------------


def test_admission_serves_in_order_and_refuses_beyond_the_queue():
    async def scenario():
        admission = Admission(max_concurrent=2, max_queue=2)
        order: list[str] = []
        release = asyncio.Event()

        async def request(name: str) -> None:
            async with admission.slot():
                order.append(name)
                await release.wait()

        tasks = [asyncio.create_task(request(n)) for n in "abcd"]
        await asyncio.sleep(0)
        assert (admission.running, admission.waiting) == (2, 2)
        with pytest.raises(QueueFull) as info:
            await admission.acquire()
        assert (info.value.status, info.value.code) == (429, "queue_full")
        assert int(info.value.headers()["Retry-After"]) >= 1
        release.set()
        await asyncio.gather(*tasks)
        assert order == ["a", "b", "c", "d"]
        assert (admission.running, admission.waiting) == (0, 0)

    run(scenario())


def test_admission_without_a_queue_refuses_at_once():
    async def scenario():
        admission = Admission(max_concurrent=1, max_queue=0)
        ticket = await admission.acquire()
        with pytest.raises(QueueFull):
            await admission.acquire()
        admission.release(ticket)
        admission.release(await admission.acquire())
        assert admission.running == 0

    run(scenario())


def test_a_cancelled_waiter_leaves_the_queue_and_passes_on_a_slot_it_was_given():
    async def scenario():
        admission = Admission(max_concurrent=1, max_queue=2)
        first = await admission.acquire()
        waiting = asyncio.create_task(admission.acquire())
        await asyncio.sleep(0)
        assert admission.waiting == 1
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert admission.waiting == 0
        # a slot handed over in the same loop turn as the waiter's cancellation is passed on
        second = asyncio.create_task(admission.acquire())
        third = asyncio.create_task(admission.acquire())
        await asyncio.sleep(0)
        admission.release(first)
        second.cancel()
        await asyncio.gather(second, return_exceptions=True)
        admission.release(await third)
        assert (admission.running, admission.waiting) == (0, 0)

    run(scenario())


# --- the completions body ----------------------------------------------------------------------


def completion(**fields):
    return parse_completion({"model": "m", "prompt": "Once upon", **fields})


def test_completion_defaults_and_prompt_forms():
    req = completion()
    assert (req.prompt, req.max_tokens, req.temperature, req.echo) == ("Once upon", 16, 1.0, False)
    assert completion(prompt=["Once"]).prompt == "Once"
    assert completion(prompt=[1, 2, 3]).prompt == [1, 2, 3]
    assert completion(prompt=[[4, 5]]).prompt == [4, 5]
    assert completion(logprobs=None, suffix="", best_of=1, n=1, echo=True).echo


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        (dict(prompt=["a", "b"]), "prompt", "unsupported_value"),
        (dict(prompt=[[1], [2]]), "prompt", "unsupported_value"),
        (dict(prompt=""), "prompt", "invalid_value"),
        (dict(prompt=[1, -2]), "prompt", "invalid_value"),
        (dict(prompt=None), "prompt", "invalid_value"),
        (dict(n=2), "n", "unsupported_value"),
        (dict(best_of=3), "best_of", "unsupported_value"),
        (dict(logprobs=0), "logprobs", "unsupported_parameter"),
        (dict(suffix="end"), "suffix", "unsupported_parameter"),
        (dict(presence_penalty=1), "presence_penalty", "unsupported_parameter"),
        (dict(max_tokens=0), "max_tokens", "invalid_value"),
        (dict(stream_options={"include_usage": True}), "stream_options", "invalid_value"),
        (dict(messages=[]), "messages", "unknown_parameter"),
    ],
)
def test_completion_refusals_name_the_parameter(fields, param, code):
    with pytest.raises(APIError) as info:
        completion(**fields)
    assert (info.value.status, info.value.param, info.value.code) == (400, param, code)


# --- extensions --------------------------------------------------------------------------------


class Store:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_extensions_parse_names_never_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("NODE0_HOME", str(tmp_path))
    store = Store()
    extensions = Extensions({"docs": store})
    ext = extensions.parse(
        {
            "adapters": ["a", "b"],
            "rag": {"store": "docs", "role": "polecat", "rig": "gastown"},
            "transcript": "my-agent.1",
        }
    )
    assert ext.adapters == ("a", "b")
    assert ext.rag is store
    assert (ext.scope.rig, ext.scope.role) == ("gastown", "polecat")
    assert ext.transcript == tmp_path / "transcripts" / "my-agent.1.jsonl"
    assert (ext.rig, ext.role) == ("gastown", "polecat")
    assert extensions.parse({}).transcript is None
    elsewhere = Extensions(transcript_dir=tmp_path / "out").parse({"transcript": "x"})
    assert elsewhere.transcript == tmp_path / "out" / "x.jsonl"
    extensions.close()
    assert store.closed


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"transcript": "../etc/passwd"}, "transcript", "invalid_value"),
        ({"transcript": "a/b"}, "transcript", "invalid_value"),
        ({"transcript": ".hidden"}, "transcript", "invalid_value"),
        ({"rag": {"store": "/etc"}}, "rag.store", "unknown_rag_store"),
        ({"rag": {}}, "rag.store", "unknown_rag_store"),
        ({"rag": {"store": "docs", "role": "king"}}, "rag.role", "invalid_value"),
        ({"rag": {"store": "docs", "path": "/"}}, "rag.path", "unknown_parameter"),
        ({"rag": "docs"}, "rag", "invalid_value"),
        ({"adapters": "a"}, "adapters", "invalid_value"),
        ({"adapters": ["a", "a"]}, "adapters", "invalid_value"),
    ],
)
def test_extension_refusals(body, param, code):
    with pytest.raises(APIError) as info:
        Extensions({"docs": Store()}).parse(body)
    assert (info.value.status, info.value.param, info.value.code) == (400, param, code)


# --- the disconnect watcher --------------------------------------------------------------------


class FakeRequest:
    """``receive()`` answers ``http.disconnect`` once ``hang_up`` is set."""

    def __init__(self) -> None:
        self.hang_up = asyncio.Event()

    async def receive(self) -> dict:
        await self.hang_up.wait()
        return {"type": "http.disconnect"}


def test_unless_disconnected_cancels_the_work_when_the_client_hangs_up():
    async def scenario():
        request = FakeRequest()
        cleaned = asyncio.Event()

        async def work():
            try:
                await asyncio.sleep(60)
            finally:
                cleaned.set()

        asyncio.get_running_loop().call_later(0.05, request.hang_up.set)
        with pytest.raises(ClientDisconnected):
            await unless_disconnected(request, work())
        assert cleaned.is_set()

        async def quick():
            return 42

        assert await unless_disconnected(FakeRequest(), quick()) == 42

    run(scenario())


# --- the app over scripted stages --------------------------------------------------------------


class ScriptedSession:
    """A pipeline session that answers every step with token 40 after ``delay`` seconds."""

    def __init__(self, backend: ScriptedBackend, max_length: int, adapters: tuple[str, ...]):
        self.backend, self.max_length, self.token_ids = backend, max_length, []
        self.closed = False

    async def open(self) -> None:
        self.backend.sessions.append(self)

    async def close(self) -> None:
        self.closed = True

    async def step(self, token_ids, position, *, sampling, return_logits=False):
        await asyncio.sleep(self.backend.delay)
        self.token_ids = self.token_ids[:position] + list(token_ids)
        return node0_pb2.StepResponse(token=40)


class ScriptedBackend:
    """What ``create_app`` needs of a :class:`~api.backend.SwarmBackend`."""

    model_id = "m"

    def __init__(self, delay: float = 0.02) -> None:
        from inference.conversation import ConversationEngine
        from models.tiny import build_tokenizer

        self.delay = delay
        self.sessions: list[ScriptedSession] = []
        self.engine = ConversationEngine(
            lambda length, adapters: ScriptedSession(self, length, adapters),
            build_tokenizer(),
            prompt_format="completion",
            max_length=512,
        )

    def models(self) -> ServedModels:
        return ServedModels("m", ())

    def has_route(self) -> bool:
        return True


@contextmanager
def app_server(backend: ScriptedBackend, **options):
    """The app in uvicorn on 127.0.0.1 (a thread of this process); always stopped."""
    import uvicorn

    from api.server import create_app

    port = free_port()
    config = uvicorn.Config(
        create_app(backend, **options), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def gauge(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + 20
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_full_queue_is_429_and_a_bad_request_is_400_without_queueing():
    backend = ScriptedBackend()
    request = {"model": "m", "prompt": "hello", "max_tokens": 3}
    with app_server(backend, max_concurrent=1, max_queue=0) as base:
        body = {**request, "max_tokens": 400, "stream": True}
        with httpx.Client(timeout=30) as http:
            with connect_sse(http, "POST", f"{base}/v1/completions", json=body) as holder:
                events = holder.iter_sse()
                next(events)
                assert gauge(base, "node0_api_requests_in_flight") == 1
                busy = httpx.post(f"{base}/v1/completions", json=request)
                bad = httpx.post(f"{base}/v1/completions", json={**request, "n": 2})
                chat = httpx.post(
                    f"{base}/v1/chat/completions",
                    json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                )
        assert busy.status_code == chat.status_code == 429
        assert busy.json()["error"]["code"] == "queue_full"
        assert int(busy.headers["Retry-After"]) >= 1
        assert (bad.status_code, bad.json()["error"]["param"]) == (400, "n")
        wait_for(lambda: gauge(base, "node0_api_requests_in_flight") == 0, "the slot back")
        answer = httpx.post(f"{base}/v1/completions", json=request)
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"prompt": "hello"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hello"}]}),
    ],
)
def test_a_non_streaming_hang_up_closes_the_session_and_frees_the_slot(path, body):
    backend = ScriptedBackend(delay=0.05)
    with app_server(backend, max_concurrent=1, max_queue=0) as base:
        payload = json.dumps({"model": "m", "max_tokens": 400, **body}).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(head.encode() + payload)
            wait_for(lambda: backend.sessions, "the session")
        (session,) = backend.sessions
        wait_for(lambda: session.closed, "the session closed")
        assert len(session.token_ids) < 100  # cut short, not run to max_tokens
        wait_for(lambda: gauge(base, "node0_api_requests_in_flight") == 0, "the slot back")
        metrics = httpx.get(f"{base}/metrics").text
        assert f'node0_api_requests_total{{endpoint="{path}",status="499"}} 1.0' in metrics
