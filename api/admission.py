"""The bounded queue in front of generation: ``--max-concurrent`` slots, ``--max-queue`` waits.

A request takes a slot before it generates and gives it back when its answer ends (a stream:
when the response closes). With every slot taken it waits in a first-come-first-served queue;
with the queue full it is refused at once with :class:`QueueFull` (HTTP 429 and
``Retry-After``, which OpenAI's clients honour), so a burst cannot pile up unbounded work and
memory behind a swarm that has a fixed number of sessions. The daemons' own refusals (a full
stage: 503 ``session_capacity``) are a separate, later limit.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from api.errors import APIError

DEFAULT_MAX_CONCURRENT = 16
"""``--max-concurrent``: requests generating at once."""

DEFAULT_MAX_QUEUE = 64
"""``--max-queue``: requests waiting for a slot."""


class QueueFull(APIError):
    """429 ``queue_full``: every slot is taken and the queue holds ``max_queue`` requests."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(
            429, message, type="rate_limit_error", code="queue_full", retry_after=retry_after
        )


class Admission:
    """Slots for requests that generate at once, and a bounded FIFO queue for the others.

    Args:
        max_concurrent: requests generating at once (at least 1).
        max_queue: requests that may wait for a slot (0: none wait; a request that finds no
            free slot is refused).
    """

    def __init__(self, max_concurrent: int, max_queue: int) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self._running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._hold_seconds = 1.0  # moving average of how long a request keeps its slot
        self._held_since: dict[int, float] = {}
        self._tickets = itertools.count()

    @property
    def running(self) -> int:
        """Requests holding a slot."""
        return self._running

    @property
    def waiting(self) -> int:
        """Requests in the queue."""
        return len(self._waiters)

    def retry_after(self) -> float:
        """Seconds until a queue place is likely free: the queue ahead, drained by every slot at
        the recent pace (at least 1 s)."""
        rounds = (self.waiting + 1) / self.max_concurrent
        return max(1.0, math.ceil(rounds * self._hold_seconds))

    async def acquire(self) -> int:
        """Take a slot, waiting in the queue for one; returns a ticket for :meth:`release`.

        Raises:
            QueueFull: no free slot and the queue is full.
        """
        if self._running < self.max_concurrent and not self.waiting:
            self._running += 1
            return self._hold()
        if self.waiting >= self.max_queue:
            raise QueueFull(
                f"the server is busy: {self._running} requests are generating and "
                f"{self.waiting} are queued (--max-concurrent {self.max_concurrent}, "
                f"--max-queue {self.max_queue}); retry later",
                self.retry_after(),
            )
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._hand_over()  # the slot came with the cancellation: pass it on
            else:
                self._waiters.remove(waiter)
            raise
        return self._hold()

    def release(self, ticket: int) -> None:
        """Give back the slot of ``ticket`` (to the first request in the queue, if any)."""
        held = time.monotonic() - self._held_since.pop(ticket)
        self._hold_seconds = 0.8 * self._hold_seconds + 0.2 * held
        self._hand_over()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for the body of the ``async with``."""
        ticket = await self.acquire()
        try:
            yield
        finally:
            self.release(ticket)

    def _hold(self) -> int:
        ticket = next(self._tickets)
        self._held_since[ticket] = time.monotonic()
        return ticket

    def _hand_over(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on: running stays the same
                return
        self._running -= 1
