"""Who computes next on a daemon: inference batches first, training in the time between them.

One forward at a time uses the stage's weights and every torch thread, so inference batches
(from the step scheduler) and training pieces take turns through this gate. Inference goes
first, as in petals: a waiting training turn runs when no inference batch waits. While both
wait, training gets the turn only while its share of the recent compute time is below
``training_share``, so a daemon that never stops serving still trains, at a bounded cost to
its sessions. "Recent" is an exponentially decayed sum of each kind's turn times (half-life
``half_life_s``).

A training turn is one piece of a micro-batch (:mod:`pipeline_stages.piecewise`: a decoder
block, or a chunk of the LM head), so an inference batch waits for at most one piece, never
for a whole forward or backward.

A turn's work runs on the daemon's compute thread (:meth:`run_inference`, :meth:`run_training`;
:mod:`pipeline_stages.compute_thread`), whichever thread waited for the turn, so one OpenMP
team does all of it. :meth:`inference` and :meth:`training` hold a turn on the caller's thread
instead, for work that only changes the stage's modules (attaching an adapter) or copies its
tensors.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TypeVar

from pipeline_stages.compute_thread import ComputeThread

T = TypeVar("T")


class ComputeGate:
    def __init__(
        self,
        *,
        training_share: float = 0.25,
        half_life_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        compute: ComputeThread | None = None,
    ):
        if not 0 < training_share < 1:
            raise ValueError("training_share must be in (0, 1)")
        if half_life_s <= 0:
            raise ValueError("half_life_s must be positive")
        self.training_share = training_share
        self.half_life_s = half_life_s
        self._clock = clock
        self._cond = threading.Condition()
        self._busy = False
        self._waiting = {False: 0, True: 0}  # turns waiting, by "is training"
        self._spent = {False: 0.0, True: 0.0}  # decayed compute seconds, by "is training"
        self._decayed_at = clock()
        self.compute = compute if compute is not None else ComputeThread()

    @contextmanager
    def _turn(self, training: bool) -> Iterator[None]:
        """Wait until this kind of turn may compute, compute, then wake the other waiters."""
        with self._cond:
            self._waiting[training] += 1
            try:
                self._cond.wait_for(lambda: not self._busy and self._may_run(training))
            finally:
                self._waiting[training] -= 1
            self._busy = True
        began = self._clock()
        try:
            yield
        finally:
            ended = self._clock()
            with self._cond:
                self._busy = False
                self._account(training, ended - began, ended)
                self._cond.notify_all()

    def _account(self, training: bool, seconds: float, now: float) -> None:
        decay = 0.5 ** ((now - self._decayed_at) / self.half_life_s)
        self._decayed_at = now
        for kind in self._spent:
            self._spent[kind] *= decay
        self._spent[training] += seconds

    def _training_due(self) -> bool:
        """Training has had less than its share of the recent compute time."""
        total = self._spent[False] + self._spent[True]
        return self._spent[True] < self.training_share * total

    def _may_run(self, training: bool) -> bool:
        if training:
            return not self._waiting[False] or self._training_due()
        return not (self._waiting[True] and self._training_due())

    def share(self) -> float:
        """Training's share of the recent compute time (0 before any turn)."""
        with self._cond:
            total = self._spent[False] + self._spent[True]
            return self._spent[True] / total if total else 0.0

    def inference(self) -> AbstractContextManager[None]:
        """An inference batch's turn (first, unless training is below its share)."""
        return self._turn(training=False)

    def training(self) -> AbstractContextManager[None]:
        """A training piece's turn (when no inference waits, or training is below its share)."""
        return self._turn(training=True)

    def run_inference(self, fn: Callable[[], T]) -> T:
        """``fn()`` in an inference turn, on the compute thread."""
        with self._turn(training=False):
            return self.compute.run(fn)

    def run_training(self, fn: Callable[[], T]) -> T:
        """``fn()`` in a training turn, on the compute thread."""
        with self._turn(training=True):
            return self.compute.run(fn)
