"""Run a callable on the daemon's main thread and wait for its result.

hivemind's ``DecentralizedAverager`` installs a signal handler when it starts, which Python
allows only on the main thread; a training job (and its averager) is opened from a gRPC worker
thread. The worker posts the construction here; the daemon's main loop runs it between DHT
heartbeats and restores the daemon's own SIGINT handler afterwards.
"""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


class MainThreadCalls:
    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Callable, Future]] = queue.Queue()
        self._main = threading.main_thread()

    def call(self, fn: Callable[[], T], timeout: float | None = 300.0) -> T:
        """Run ``fn`` on the main thread (directly when already there) and return its result."""
        if threading.current_thread() is self._main:
            return _keeping_sigint(fn)
        future: Future = Future()
        self._queue.put((fn, future))
        return future.result(timeout=timeout)

    def run_pending(self, timeout: float) -> None:
        """Main loop: run queued calls, waiting at most ``timeout`` seconds for the first."""
        try:
            fn, future = self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return
        while True:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(_keeping_sigint(fn))
                except BaseException as exc:  # the caller re-raises it in its own thread
                    future.set_exception(exc)
            try:
                fn, future = self._queue.get_nowait()
            except queue.Empty:
                return


def _keeping_sigint(fn: Callable[[], T]) -> T:
    previous = signal.getsignal(signal.SIGINT)
    try:
        return fn()
    finally:
        signal.signal(signal.SIGINT, previous)
