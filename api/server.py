"""The FastAPI app of ``node0 api``: OpenAI's chat-completions and models endpoints, health
and Prometheus metrics, over a :class:`~api.backend.SwarmBackend`.

Each request is answered in a fresh pipeline session (``ConversationEngine.complete`` /
``stream``), closed when the answer ends, when it fails, or at once when the client hangs up
mid-stream. Prompt + completion must fit the context window: an explicit ``max_tokens`` that
does not fit is a 400 ``context_length_exceeded`` (as vLLM answers); without one the answer may
take whatever the window leaves.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from api.backend import SwarmBackend
from api.errors import APIError, bad_parameter, from_node0
from api.protocol import ChatRequest, parse_chat
from api.tool_turn import DeltaWriter, ToolTurn, message_json
from base.errors import Node0Error

log = logging.getLogger(__name__)

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "context": "length"}


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "node0_api_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "node0_api_prompt_tokens", "prompt tokens of answered requests", registry=self.registry
        )
        self.completion_tokens = Counter(
            "node0_api_completion_tokens", "tokens generated", registry=self.registry
        )
        self.ttft = Histogram(
            "node0_api_time_to_first_token_seconds",
            "seconds from the request to the first generated token",
            buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )


class SSEResponse(StreamingResponse):
    """A server-sent-event stream that always runs ``on_close`` when the response ends: at its
    end, on an error, or when the client disconnects (Starlette then cancels the stream; the
    close is shielded so the pipeline session is closed at once, not when garbage is
    collected)."""

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], Awaitable[None]]) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._on_close()


def _sse(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


def _usage(result) -> dict:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def create_app(backend: SwarmBackend, *, api_keys: Sequence[str] = ()) -> FastAPI:
    """The app over ``backend``; with ``api_keys``, ``/v1/*`` takes only ``Bearer <key>``."""
    app = FastAPI(title="node0 api", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = Metrics()
    engine = backend.engine
    keys = [k.encode() for k in api_keys]

    def error_response(exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(Node0Error)
    async def _node0_error(request: Request, exc: Node0Error) -> JSONResponse:
        return error_response(from_node0(exc))

    @app.middleware("http")
    async def _count(request: Request, call_next):
        response = await call_next(request)
        metrics.requests.labels(request.url.path, str(response.status_code)).inc()
        return response

    def authorize(request: Request) -> None:
        if not keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        # compare against every key, so the time taken does not tell which one nearly matched
        ok = False
        for key in keys:
            ok |= hmac.compare_digest(given, key)
        if not ok:
            raise APIError(
                401,
                "invalid API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )

    async def adapters_of(model: str) -> tuple[str, ...]:
        served = await asyncio.to_thread(backend.models)
        if model == served.base:
            return ()
        if model in served.adapters:
            return (model,)
        raise APIError(
            404,
            f"the model '{model}' does not exist; this swarm serves "
            f"{[served.base, *served.adapters]} (GET /v1/models)",
            code="model_not_found",
            param="model",
        )

    @app.get("/health")
    async def health() -> JSONResponse:
        route = await asyncio.to_thread(backend.has_route)
        body = {"status": "ok" if route else "no_route", "model": backend.model_id}
        return JSONResponse(body, status_code=200 if route else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        authorize(request)
        served = await asyncio.to_thread(backend.models)
        created = int(time.time())

        def card(model_id: str, parent: str | None) -> dict:
            return {
                "id": model_id,
                "object": "model",
                "created": created,
                "owned_by": "node0",
                "root": served.base,
                "parent": parent,
                "max_model_len": engine.max_length,
            }

        data = [card(served.base, None)] + [card(a, served.base) for a in served.adapters]
        return JSONResponse({"object": "list", "data": data})

    async def plan(req: ChatRequest, turn: ToolTurn):
        """The request's settings, refusing a prompt + answer longer than the window."""
        from inference.conversation import GenerationSettings

        prepared = await asyncio.to_thread(
            engine.prepare, turn.messages, max_new_tokens=1, prefix=turn.prefix
        )
        prompt = len(prepared.prompt_ids)
        room = engine.max_length - 1 - prompt  # the most tokens the answer can have
        if len(prepared.messages) != len(turn.messages) or room < 1:
            raise APIError(
                400,
                f"this model's maximum context length is {engine.max_length} tokens; the "
                f"messages take {len(engine.encode(turn.messages, turn.prefix))} tokens",
                code="context_length_exceeded",
                param="messages",
            )
        if req.max_tokens is not None and req.max_tokens > room:
            raise APIError(
                400,
                f"this model's maximum context length is {engine.max_length} tokens; the "
                f"messages take {prompt} tokens and max_tokens asks for {req.max_tokens} "
                f"more (at most {room} fit)",
                code="context_length_exceeded",
                param="max_tokens",
            )
        try:
            return GenerationSettings.create(
                max_new_tokens=req.max_tokens or room,
                temperature=req.temperature,
                top_k=req.top_k,
                top_p=req.top_p,
                seed=req.seed,
                stop=req.stop + turn.stop,
            )
        except Node0Error as exc:
            raise bad_parameter("temperature", str(exc)) from exc

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        started = time.perf_counter()
        authorize(request)
        try:
            body = await request.json()
        except ValueError as exc:
            raise APIError(
                400, f"the request body is not JSON: {exc}", code="invalid_json"
            ) from exc
        req = parse_chat(body)
        adapters = await adapters_of(req.model)
        turn = ToolTurn.of(req, engine.tool_format)
        settings = await plan(req, turn)
        completion_id = f"chatcmpl-{secrets.token_hex(12)}"
        created = int(time.time())

        def record(result) -> None:
            metrics.prompt_tokens.inc(result.prompt_tokens)
            metrics.completion_tokens.inc(result.completion_tokens)

        if not req.stream:
            result = await engine.complete(
                turn.messages, settings, adapters=adapters, prefix=turn.prefix
            )
            metrics.ttft.observe(
                time.perf_counter() - started - result.elapsed + result.time_to_first_token
            )
            record(result)
            reply = turn.reply(result.text)
            finish = "tool_calls" if reply.tool_calls else FINISH_REASONS[result.finish_reason]
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": req.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": message_json(reply),
                            "logprobs": None,
                            "finish_reason": finish,
                        }
                    ],
                    "usage": _usage(result),
                }
            )

        stream = engine.stream(turn.messages, settings, adapters=adapters, prefix=turn.prefix)
        chunks = aiter(stream)
        # the first chunk before the headers: a failure to open the route or a refusal is still
        # an HTTP error with its status, not an event in a 200 stream
        try:
            first: str | None = await anext(chunks)
        except StopAsyncIteration:
            first = None
        except BaseException:
            await stream.aclose()
            raise
        metrics.ttft.observe(time.perf_counter() - started)

        def chunk(delta: dict, finish: str | None = None) -> dict:
            event = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": req.model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if req.include_usage:
                event["usage"] = None
            return event

        # the rest of the turn is pumped by a task of its own: Starlette cancels the response
        # (its anyio scope, again at every await) when the client hangs up, and the turn's
        # cleanup must not run inside that scope, or closing the pipeline session is cut short
        queue: asyncio.Queue = asyncio.Queue()

        async def pump() -> None:
            try:
                async for text in chunks:
                    queue.put_nowait(text)
                queue.put_nowait(stream.result)
            except Node0Error as exc:
                queue.put_nowait(exc)
            finally:
                await stream.aclose()

        pumping = asyncio.ensure_future(pump())

        async def close() -> None:
            pumping.cancel()
            await asyncio.gather(pumping, return_exceptions=True)

        deltas = DeltaWriter(turn)

        async def events() -> AsyncIterator[str]:
            yield _sse(chunk({"role": "assistant", "content": ""}))
            for delta in deltas.feed(first or ""):
                yield _sse(chunk(delta))
            while isinstance(item := await queue.get(), str):
                for delta in deltas.feed(item):
                    yield _sse(chunk(delta))
            for delta in deltas.finish():
                yield _sse(chunk(delta))
            if isinstance(item, Node0Error):
                yield _sse(from_node0(item).body())
                yield _sse("[DONE]")
                return
            result = item
            record(result)
            finish = "tool_calls" if deltas.calls else FINISH_REASONS[result.finish_reason]
            yield _sse(chunk({}, finish))
            if req.include_usage:
                yield _sse(
                    {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": req.model,
                        "choices": [],
                        "usage": _usage(result),
                    }
                )
            yield _sse("[DONE]")

        return SSEResponse(events(), close)

    return app
