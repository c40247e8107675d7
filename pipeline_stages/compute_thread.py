"""One thread computes for a daemon; every other thread runs torch on one OpenMP thread.

Why: torch's CPU kernels run on libgomp, and every thread that starts a parallel region keeps
its own team of worker threads for the rest of its life. Once a process holds more team
workers than it has CPUs, libgomp cuts every worker's spin-wait to 100 iterations, so the
workers fall asleep between regions and each of the hundreds of parallel regions in a decode
step waits for a futex wake-up. On the 2-vCPU host a second team took a stage's compiled
bfloat16 step from 9-13 to 20-25 ms (BENCHMARKS.md, "One OpenMP team per daemon").

A daemon has many threads that touch tensors: gRPC handlers decode requests and allocate a
session's cache, and training calls arrive on them. Any of them that once ran an operation
over about 32,768 elements started a team: a long prompt was enough (measured: the middle
stage's bfloat16 hops went from 11-12 to 13-21 ms after one 650-token prompt, for good). So:

- One long-lived thread computes: the step scheduler's (:mod:`pipeline_stages.scheduler`).
  It runs the inference batches, compiles the decode step, and runs each training piece
  that a gRPC handler hands it (:meth:`StepScheduler.run`, under the handler's grad mode:
  :func:`in_callers_modes`), so one team serves them all. The daemon's one-off loading and
  measuring run on a thread that ends (:mod:`pipeline_stages.passing_thread`).
- :func:`pin_to_one_thread`: every other daemon thread (main, gRPC handlers) sets its own
  OpenMP and MKL thread counts to one, so what it computes (decoding a request, allocating
  a session's cache) runs inline and starts no team. Both counts are per thread; the
  scheduler's thread keeps the daemon's ``torch_threads``.

Why not a compute thread of its own, with the scheduler handing it each batch: measured, the
hand-off (a second thread to wake on busy cores) cost 4 concurrent eager sessions about 8% of
their tokens/s (BENCHMARKS.md, "One compute thread per daemon").
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from functools import cache
from typing import TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")


def in_callers_modes(fn: Callable[[], T]) -> Callable[[], T]:
    """``fn`` to run on another thread under this thread's grad and inference modes (both are
    per thread in torch): a training piece's forward builds its graph there as it would here."""
    inference = torch.is_inference_mode_enabled()
    grad = torch.is_grad_enabled()

    def run() -> T:
        if inference:
            with torch.inference_mode():
                return fn()
        with torch.set_grad_enabled(grad):
            return fn()

    return run


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
