"""What every endpoint of ``node0 api`` shares: the swarm backend and its engine, metrics, the
bounded queue, API keys, the extensions' resources; and how a generating endpoint is served.

A generating endpoint (:meth:`Serving.post`) is authorized, its body read, then its handler
runs as a task that the client's hang-up cancels, so a non-streaming answer's pipeline session
closes at once too. The handler checks the request, then takes a generation slot
(:meth:`Serving.admit`, :class:`~api.admission.Admission`: 429 ``queue_full`` when the queue is
full), so a bad request is a 400 without waiting; the slot is given back when the answer ends (a
stream: when its response closes).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from api.admission import Admission
from api.backend import SwarmBackend
from api.errors import APIError
from api.extensions import Extensions
from api.metrics import Metrics
from api.streaming import ClientDisconnected, SSEResponse, unless_disconnected

log = logging.getLogger(__name__)

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "context": "length"}
"""OpenAI's ``finish_reason`` of each engine finish reason."""

CLIENT_CLOSED = 499
"""The status recorded for a request whose client hung up before its answer (nginx's)."""


def usage(result) -> dict:
    """OpenAI's ``usage`` of a :class:`~inference.conversation.TurnResult`."""
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


Handler = Callable[[Request], Awaitable[Response]]


class Serving:
    """The state the endpoints share.

    Args:
        backend: the swarm connection.
        metrics: the server's metrics.
        admission: the generation slots and queue.
        api_keys: accepted ``Bearer`` keys (none: every request is accepted).
        extensions: what node0's body extensions may use (RAG stores).
    """

    def __init__(
        self,
        backend: SwarmBackend,
        *,
        metrics: Metrics,
        admission: Admission,
        api_keys: Sequence[str] = (),
        extensions: Extensions,
    ) -> None:
        self.backend = backend
        self.engine = backend.engine
        self.metrics = metrics
        self.admission = admission
        self.extensions = extensions
        self._keys = [k.encode() for k in api_keys]
        metrics.track_queue(lambda: admission.waiting, lambda: admission.running)

    def authorize(self, request: Request) -> None:
        """401 ``invalid_api_key`` unless the request carries an accepted key (with keys)."""
        if not self._keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        # compare against every key, so the time taken does not tell which one nearly matched
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(given, key)
        if not ok:
            raise APIError(
                401,
                "invalid API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )

    async def json_body(self, request: Request) -> Any:
        """The request body as JSON (400 ``invalid_json`` otherwise)."""
        try:
            return await request.json()
        except ValueError as exc:
            raise APIError(
                400, f"the request body is not JSON: {exc}", code="invalid_json"
            ) from exc

    async def adapters_of(self, model: str, stacked: Sequence[str] = ()) -> tuple[str, ...]:
        """The adapter set of a request: the adapter ``model`` names (none for the base model),
        then ``stacked`` (the ``adapters`` extension), each one served on a full route.

        Raises:
            APIError: 404 ``model_not_found`` for an unknown model, 404 ``unknown_adapter``
                (the daemons' refusal code) for an unknown stacked adapter.
        """
        if model == self.backend.model_id and not stacked:
            return ()  # the base model needs no listing
        served = await asyncio.to_thread(self.backend.models)
        if model == served.base:
            adapters: tuple[str, ...] = ()
        elif model in served.adapters:
            adapters = (model,)
        else:
            raise APIError(
                404,
                f"the model '{model}' does not exist; this swarm serves "
                f"{[served.base, *served.adapters]} (GET /v1/models)",
                code="model_not_found",
                param="model",
            )
        for name in stacked:
            if name not in served.adapters:
                raise APIError(
                    404,
                    f"the adapter '{name}' is not served on a full route; this swarm serves "
                    f"{list(served.adapters)} (GET /v1/models)",
                    code="unknown_adapter",
                    param="adapters",
                )
        return adapters + tuple(a for a in stacked if a not in adapters)

    async def admit(self, request: Request) -> None:
        """Take a generation slot for ``request``, waiting in the queue (429 ``queue_full`` when
        it is full). The endpoint (:meth:`post`) gives it back when the answer ends."""
        request.state.slot = await self.admission.acquire()

    def post(self, app: FastAPI, path: str, handler: Handler) -> None:
        """Serve ``POST path`` with ``handler``: authorized, cancelled when the client hangs up
        (:data:`CLIENT_CLOSED` is then recorded), its slot (:meth:`admit`) given back when its
        answer ends. The handler finds the time the request arrived in
        ``request.state.received`` (``time.perf_counter()``)."""

        async def endpoint(request: Request) -> Response:
            request.state.received = time.perf_counter()
            self.authorize(request)
            # read the body now: watching for a hang-up reads the connection after it
            await request.body()
            try:
                return await unless_disconnected(request, self._answer(request, handler))
            except ClientDisconnected:
                log.info("%s: the client hung up; its answer was cancelled", path)
                return Response(status_code=CLIENT_CLOSED)

        app.add_api_route(path, endpoint, methods=["POST"])

    async def _answer(self, request: Request, handler: Handler) -> Response:
        request.state.slot = None
        try:
            response = await handler(request)
        except BaseException:
            self._give_back(request)
            raise
        if isinstance(response, SSEResponse):
            response.add_close_callback(lambda: self._give_back(request))
        else:
            self._give_back(request)
        return response

    def _give_back(self, request: Request) -> None:
        ticket, request.state.slot = request.state.slot, None
        if ticket is not None:
            self.admission.release(ticket)
