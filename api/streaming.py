"""Server-sent events, and answers that stop when their client hangs up.

A streaming answer ends with its response (:class:`SSEResponse` runs its close callbacks
however the stream ends; :class:`PumpedStream` runs the turn beside it). A non-streaming answer
runs as a task beside a watcher of the connection (:func:`unless_disconnected`): a client that
hangs up cancels it, and the conversation engine closes the pipeline session at once, so the
daemons free its caches.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import StreamingResponse

from base.errors import Node0Error

if TYPE_CHECKING:
    from inference.conversation import TurnResult
    from inference.turn_stream import TurnStream

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed the connection before its answer was ready."""


class SSEResponse(StreamingResponse):
    """A server-sent-event stream that always runs its close callbacks when the response ends:
    at its end, on an error, or when the client disconnects (Starlette then cancels the stream;
    the callbacks are shielded so the pipeline session is closed at once, not when garbage is
    collected)."""

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], Awaitable[None]]) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._on_close: list[Callable[[], Awaitable[None] | None]] = [on_close]

    def add_close_callback(self, callback: Callable[[], Awaitable[None] | None]) -> None:
        """Run ``callback`` too when the response ends (after the ones added before it)."""
        self._on_close.append(callback)

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                for callback in self._on_close:
                    outcome = callback()
                    if outcome is not None:
                        await outcome


def sse(payload: dict | str) -> str:
    """One ``data:`` event (a JSON object, or a literal such as ``[DONE]``)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


async def _disconnect(request: Request) -> None:
    """Returns when the client has closed the connection (the request body is read already:
    the next ASGI message is ``http.disconnect``)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """``await work``, cancelled when the client disconnects first.

    Raises:
        ClientDisconnected: the client hung up; ``work`` was cancelled and has finished its
            cleanup (a conversation has closed its pipeline session).
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done() and watcher.exception() is None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise ClientDisconnected
        return await task
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


class PumpedStream:
    """A turn's text stream, started before its HTTP response.

    :meth:`start` waits for the first chunk, so that a failure to open the route or a refusal
    is still an HTTP error with its status, not an event in a 200 stream. The rest of the turn
    is pumped by a task of its own: Starlette cancels the response (its anyio scope, again at
    every await) when the client hangs up, and the turn's cleanup must not run inside that
    scope, or closing the pipeline session is cut short. :meth:`close` (the response's close
    callback) stops the turn wherever it is.
    """

    def __init__(self, stream: TurnStream, chunks: AsyncIterator[str], first: str | None) -> None:
        self.first = first
        """The first text chunk (None: the turn ended without text)."""
        self._stream = stream
        self._queue: asyncio.Queue = asyncio.Queue()
        self._task = asyncio.ensure_future(self._pump(chunks))

    @classmethod
    async def start(cls, stream: TurnStream) -> PumpedStream:
        """Run ``stream`` up to its first chunk (raising the turn's error if it fails first)."""
        chunks = aiter(stream)
        try:
            first: str | None = await anext(chunks)
        except StopAsyncIteration:
            first = None
        except BaseException:
            await stream.aclose()
            raise
        return cls(stream, chunks, first)

    async def _pump(self, chunks: AsyncIterator[str]) -> None:
        try:
            async for text in chunks:
                self._queue.put_nowait(text)
            self._queue.put_nowait(self._stream.result)
        except Node0Error as exc:
            self._queue.put_nowait(exc)
        finally:
            await self._stream.aclose()

    async def next(self) -> str | TurnResult | Node0Error:
        """The next text chunk after :attr:`first`; then the turn's result, or its error."""
        return await self._queue.get()

    async def close(self) -> None:
        """Stop the turn (its pipeline session closes) and wait until it has."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
