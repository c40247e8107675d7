"""The FastAPI app of ``node0 api``: OpenAI's chat-completions, completions and models
endpoints, health and Prometheus metrics, over a :class:`~api.backend.SwarmBackend`.

Each request is answered in a fresh pipeline session (``ConversationEngine.complete_prepared``
/ ``stream_prepared``), closed when the answer ends, when it fails, or at once when the client
hangs up. Generating requests take a slot of the bounded queue first (:mod:`api.serving`).
Prompt + completion must fit the context window: an explicit ``max_tokens`` that does not fit
is a 400 ``context_length_exceeded`` (as vLLM answers); without one a chat answer may take
whatever the window leaves.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.admission import DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_QUEUE, Admission
from api.backend import SwarmBackend
from api.completions import add_completions
from api.errors import APIError, from_node0
from api.extensions import Extensions, RequestExtensions
from api.metrics import Metrics
from api.protocol import ChatRequest, generation_settings, parse_chat
from api.serving import FINISH_REASONS, Serving, usage
from api.streaming import PumpedStream, SSEResponse, sse
from api.tool_turn import DeltaWriter, ToolTurn, message_json
from base.errors import Node0Error

log = logging.getLogger(__name__)


def create_app(
    backend: SwarmBackend,
    *,
    api_keys: Sequence[str] = (),
    metrics: Metrics | None = None,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    max_queue: int = DEFAULT_MAX_QUEUE,
    extensions: Extensions | None = None,
) -> FastAPI:
    """The app over ``backend``.

    Args:
        backend: the swarm connection.
        api_keys: with keys, ``/v1/*`` takes only ``Bearer <key>``.
        metrics: the metrics to export (None: new ones; pass the ones whose ``observe_hop`` the
            backend's sessions report to).
        max_concurrent: requests generating at once.
        max_queue: requests waiting for a slot before 429 ``queue_full``.
        extensions: the RAG stores requests may name (None: none).
    """
    app = FastAPI(title="node0 api", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = metrics or Metrics()
    serving = Serving(
        backend,
        metrics=metrics,
        admission=Admission(max_concurrent, max_queue),
        api_keys=api_keys,
        extensions=extensions or Extensions(),
    )
    engine = backend.engine
    authorize = serving.authorize
    adapters_of = serving.adapters_of

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

    async def plan(req: ChatRequest, turn: ToolTurn, ext: RequestExtensions):
        """The request's settings and prepared prompt (with the retrieved context of the ``rag``
        extension), refusing a prompt + answer longer than the window."""
        prepared = await asyncio.to_thread(
            engine.prepare,
            turn.messages,
            max_new_tokens=1,
            prefix=turn.prefix,
            scope=ext.scope,
            rag=ext.rag,
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
        return generation_settings(req, req.max_tokens or room, turn.stop), prepared

    async def chat_completions(request: Request) -> Response:
        started = request.state.received
        body = await serving.json_body(request)
        req = parse_chat(body)
        ext = serving.extensions.parse(body)
        adapters = await adapters_of(req.model, ext.adapters)
        turn = ToolTurn.of(req, engine.tool_format)
        settings, prepared = await plan(req, turn, ext)
        await serving.admit(request)
        completion_id = f"chatcmpl-{secrets.token_hex(12)}"
        created = int(time.time())

        async def record(result) -> None:
            metrics.observe_result(result)
            await ext.save_transcript(req.messages, result.text)

        if not req.stream:
            result = await engine.complete_prepared(prepared, settings, adapters=adapters)
            metrics.ttft.observe(
                time.perf_counter() - started - result.elapsed + result.time_to_first_token
            )
            await record(result)
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
                    "usage": usage(result),
                }
            )

        pumped = await PumpedStream.start(
            engine.stream_prepared(prepared, settings, adapters=adapters)
        )
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

        deltas = DeltaWriter(turn)

        async def events() -> AsyncIterator[str]:
            yield sse(chunk({"role": "assistant", "content": ""}))
            for delta in deltas.feed(pumped.first or ""):
                yield sse(chunk(delta))
            while isinstance(item := await pumped.next(), str):
                for delta in deltas.feed(item):
                    yield sse(chunk(delta))
            for delta in deltas.finish():
                yield sse(chunk(delta))
            if isinstance(item, Node0Error):
                yield sse(from_node0(item).body())
                yield sse("[DONE]")
                return
            result = item
            await record(result)
            finish = "tool_calls" if deltas.calls else FINISH_REASONS[result.finish_reason]
            yield sse(chunk({}, finish))
            if req.include_usage:
                yield sse(
                    {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": req.model,
                        "choices": [],
                        "usage": usage(result),
                    }
                )
            yield sse("[DONE]")

        return SSEResponse(events(), pumped.close)

    serving.post(app, "/v1/chat/completions", chat_completions)
    add_completions(app, serving)
    return app
