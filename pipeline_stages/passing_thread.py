"""Run a daemon's one-off compute (loading, measuring, compiling a stage) on a thread that ends.

Why: torch's CPU kernels run on libgomp, and every thread that starts a parallel region keeps
its own team of worker threads for the rest of its life. Once a process holds more team
workers than it has CPUs, libgomp cuts their spin-wait to 100 iterations, so they fall asleep
between regions and each of the hundreds of parallel regions in a decode step waits for a
futex wake-up. A daemon that loaded and compiled its stage on its main thread and then served
from the step scheduler's thread held two teams. On the 2-vCPU host, one team and the shorter
spin of :mod:`base.openmp_spin` took its first two stages' bfloat16 decode hops from 19.5 to
about 15.5 ms (BENCHMARKS.md, "One OpenMP team per daemon").
A thread that exits frees its team, so the loading and measuring of a stage (at start and at a
move) run here, and the step scheduler's thread, which computes everything else, keeps the
only team (:mod:`pipeline_stages.compute_thread`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def on_passing_thread(fn: Callable[[], T], name: str = "stage-setup") -> T:
    """Run ``fn`` on a new thread, wait for it to end, and return its result (or raise what it
    raised, with its traceback)."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["result"] = fn()
        except BaseException as exc:  # re-raised on the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]  # type: ignore[return-value]
