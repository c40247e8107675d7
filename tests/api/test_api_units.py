"""Parts of ``node0 api`` without a swarm: the bounded queue, the completions body, the
extensions, the disconnect watcher."""

from __future__ import annotations

import asyncio

import pytest

from api.admission import Admission, QueueFull
from api.completions import parse_completion
from api.errors import APIError
from api.extensions import Extensions
from api.streaming import ClientDisconnected, unless_disconnected


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
