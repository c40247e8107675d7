"""Who computes next on a daemon: inference batches first, training between them.

One forward at a time uses the stage's weights and every torch thread, so inference batches
(from the step scheduler) and training calls (forward, backward, optimizer step, attaching an
adapter) take turns through this gate. Inference goes first, as in petals: a waiting training
call runs when no inference batch is waiting, or after ``training_every`` inference batches in a
row, so training progresses on a daemon that never stops serving. A training call is one
micro-batch's forward or backward, so an inference batch waits at most one of those.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager


class ComputeGate:
    def __init__(self, *, training_every: int = 4):
        if training_every < 1:
            raise ValueError("training_every must be at least 1")
        self.training_every = training_every
        self._cond = threading.Condition()
        self._busy = False
        self._waiting = {False: 0, True: 0}  # calls waiting, by "is training"
        self._streak = 0  # inference batches since training last ran

    @contextmanager
    def _turn(self, training: bool) -> Iterator[None]:
        """Wait until this kind of call may compute, compute, then wake the other waiters."""
        with self._cond:
            self._waiting[training] += 1
            try:
                self._cond.wait_for(lambda: not self._busy and self._may_run(training))
            finally:
                self._waiting[training] -= 1
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._streak = 0 if training else self._streak + 1
                self._cond.notify_all()

    def _may_run(self, training: bool) -> bool:
        training_due = self._streak >= self.training_every
        if training:
            return not self._waiting[False] or training_due
        return not (self._waiting[True] and training_due)

    def inference(self) -> AbstractContextManager[None]:
        """An inference batch's turn (first, unless training is due)."""
        return self._turn(training=False)

    def training(self) -> AbstractContextManager[None]:
        """A training call's turn (when no inference waits, or training is due)."""
        return self._turn(training=True)
