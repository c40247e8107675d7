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
from contextlib import contextmanager


class ComputeGate:
    def __init__(self, *, training_every: int = 4):
        if training_every < 1:
            raise ValueError("training_every must be at least 1")
        self.training_every = training_every
        self._cond = threading.Condition()
        self._busy = False
        self._inference_waiting = 0
        self._training_waiting = 0
        self._streak = 0  # inference batches since training last ran

    @contextmanager
    def inference(self) -> Iterator[None]:
        with self._cond:
            self._inference_waiting += 1
            try:
                self._cond.wait_for(
                    lambda: (
                        not self._busy
                        and not (self._training_waiting and self._streak >= self.training_every)
                    )
                )
            finally:
                self._inference_waiting -= 1
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._streak += 1
                self._cond.notify_all()

    @contextmanager
    def training(self) -> Iterator[None]:
        with self._cond:
            self._training_waiting += 1
            try:
                self._cond.wait_for(
                    lambda: (
                        not self._busy
                        and (not self._inference_waiting or self._streak >= self.training_every)
                    )
                )
            finally:
                self._training_waiting -= 1
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._streak = 0
                self._cond.notify_all()
