"""One turn as an async stream: text chunks while it is generated, then its result.

The generation runs as a task that pushes each released chunk into a queue; iterating the
stream drains the queue. Closing the stream early (a client that hung up) cancels the task,
and the conversation underneath discards its pipeline session, whose caches may then be
half-way through a step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

_DONE = object()


class TurnStream:
    """The text chunks of one turn as they are generated, then :attr:`result`.

    ::

        async with conversation.stream("hello", settings) as stream:
            async for chunk in stream:
                send(chunk)
        finish(stream.result)

    Iterating raises the turn's error (a :class:`~base.errors.Node0Error`) after the chunks
    streamed before it. A stream runs its turn once; it starts on the first iteration.

    Args:
        run: runs the turn, handing each chunk to the callback it is given, and returns the
            turn's result.
    """

    def __init__(self, run: Callable[[Callable[[str], None]], Awaitable[Any]]) -> None:
        self._run = run
        self._chunks = self._produce()
        self._result: Any = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._chunks

    @property
    def result(self):
        """The turn's result (a :class:`~inference.conversation.TurnResult`) once streamed."""
        if self._result is None:
            raise RuntimeError("the turn has not finished: iterate the stream to its end first")
        return self._result

    async def _produce(self) -> AsyncIterator[str]:
        queue: asyncio.Queue = asyncio.Queue()
        task = asyncio.ensure_future(self._run(queue.put_nowait))
        task.add_done_callback(lambda _task: queue.put_nowait(_DONE))
        try:
            while (chunk := await queue.get()) is not _DONE:
                yield chunk
            self._result = task.result()  # raises the turn's error
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def aclose(self) -> None:
        """Stop the turn if it is still running (its task is cancelled and awaited)."""
        await self._chunks.aclose()

    async def __aenter__(self) -> TurnStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
