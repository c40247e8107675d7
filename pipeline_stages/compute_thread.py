"""One thread computes for a daemon; every other thread runs torch on one OpenMP thread.

Why: torch's CPU kernels run on libgomp, and every thread that starts a parallel region keeps
its own team of worker threads for the rest of its life. Once a process holds more team
workers than it has CPUs, libgomp cuts every worker's spin-wait to 100 iterations, so the
workers fall asleep between regions and each of the hundreds of parallel regions in a decode
step waits for a futex wake-up. On the 2-vCPU host a second team took a stage's compiled
bfloat16 step from 9-13 to 20-25 ms (BENCHMARKS.md, "One OpenMP team per daemon").

A daemon has many threads that touch tensors: gRPC handlers decode requests and allocate a
session's cache, the step scheduler samples, training calls arrive on gRPC threads. Any of
them that once ran an operation over about 32,768 elements started a team: a long prompt was
enough (measured: hops 11 → 13-15 ms on the middle stage after one 650-token prompt). So:

- :class:`ComputeThread`: one long-lived thread runs the daemon's compute (loading, measuring
  and compiling a stage, inference batches, training pieces), so one team serves them all.
  The compute gate (:mod:`pipeline_stages.compute_gate`) decides whose turn it is; the turn's
  work runs here, with the caller's grad mode.
- :func:`pin_to_one_thread`: every other daemon thread (main, gRPC handlers, the scheduler)
  sets its own OpenMP and MKL thread counts to one, so what it computes runs inline and
  starts no team. Both counts are per thread; the compute thread keeps the daemon's
  ``torch_threads``.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")


class ComputeThread:
    """A thread that runs the functions given to :meth:`run`, one at a time, in order."""

    def __init__(self, name: str = "compute"):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._ident: int | None = None
        self.run(self._note_ident)

    def _note_ident(self) -> None:
        self._ident = threading.get_ident()

    @property
    def ident(self) -> int | None:
        """The thread's identifier (``threading.get_ident()`` on it)."""
        return self._ident

    def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the compute thread, under the caller's grad and inference modes (both
        are per thread in torch); its result, or what it raised. Called on the compute thread
        itself, it runs at once."""
        if threading.get_ident() == self._ident:
            return fn()
        inference = torch.is_inference_mode_enabled()
        grad = torch.is_grad_enabled()

        def in_callers_modes() -> T:
            if inference:
                with torch.inference_mode():
                    return fn()
            with torch.set_grad_enabled(grad):
                return fn()

        return self._pool.submit(in_callers_modes).result()

    def close(self) -> None:
        """Let the thread end once its queue is done (callers still waiting get their result)."""
        self._pool.shutdown(wait=False)


def run_here(fn: Callable[[], T]) -> T:
    """A turn that runs ``fn`` on the calling thread (a job used outside a daemon)."""
    return fn()


@cache
def _thread_setters() -> tuple[Callable[[int], object], Callable[[int], object]] | None:
    """libgomp's ``omp_set_num_threads`` and MKL's ``MKL_Set_Num_Threads_Local``, from the
    copies torch loaded (its wheel ships its own libgomp; a second copy would be another
    runtime); None where torch runs on another threading library."""
    paths: dict[str, str] = {}
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                for name in ("libgomp", "libtorch_cpu"):
                    if name in path.rsplit("/", 1)[-1]:
                        paths.setdefault(name, path)
    except OSError:
        return None
    if "libgomp" not in paths:
        return None
    try:
        omp = ctypes.CDLL(paths["libgomp"]).omp_set_num_threads
        # the C entry point (the lower-case names are Fortran's, which take a pointer)
        mkl = getattr(ctypes.CDLL(paths["libtorch_cpu"]), "MKL_Set_Num_Threads_Local", None)
    except (OSError, AttributeError, KeyError):
        return None
    return omp, (mkl or (lambda n: None))


def pin_to_one_thread() -> bool:
    """Make torch compute on this thread alone from now on (no OpenMP team, no MKL threads);
    whether it could. Other threads keep their counts."""
    setters = _thread_setters()
    if setters is None:
        log.debug("no libgomp in this process: threads not pinned")
        return False
    torch.get_num_threads()  # torch's own per-thread setup first, or it would undo ours later
    omp_set, mkl_set = setters
    omp_set(1)
    mkl_set(1)
    return True
