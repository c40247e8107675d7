"""Who computes next on a daemon: inference batches first, training in the time between them.

One forward at a time uses the stage's weights and every torch thread, so inference batches
and training pieces take turns, all on the step scheduler's thread, the daemon's one compute
thread (:mod:`pipeline_stages.scheduler`, :mod:`pipeline_stages.compute_thread`). The
scheduler asks :meth:`ComputeGate.training_next` which kind goes next. Inference goes first, as
in petals: a waiting training piece runs when no inference step waits. While both wait,
training gets the turn only while its share of the recent compute time is below
``training_share``, so a daemon that never stops serving still trains, at a bounded cost to its
sessions. "Recent" is an exponentially decayed sum of each kind's turn times (half-life
``half_life_s``).

A training turn is one piece of a micro-batch (:mod:`pipeline_stages.piecewise`: a decoder
block, or a chunk of the LM head), so an inference batch waits for at most one piece, never
for a whole forward or backward.

Every turn holds the gate's lock. Work on other threads that changes the stage's modules
(attaching an adapter) or copies its tensors holds it too (:meth:`training`), so it never
sees a turn half done.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager


class ComputeGate:
    def __init__(
        self,
        *,
        training_share: float = 0.25,
        half_life_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not 0 < training_share < 1:
            raise ValueError("training_share must be in (0, 1)")
        if half_life_s <= 0:
            raise ValueError("half_life_s must be positive")
        self.training_share = training_share
        self.half_life_s = half_life_s
        self._clock = clock
        # reentrant: a turn's work may hold the gate again (an adapter attached in a turn)
        self._lock = threading.RLock()
        self._figures = threading.Lock()
        self._spent = {False: 0.0, True: 0.0}  # decayed compute seconds, by "is training"
        self._decayed_at = clock()

    @contextmanager
    def _turn(self, training: bool) -> Iterator[None]:
        """Hold the gate while computing, and count the time to this kind of turn."""
        with self._lock:
            began = self._clock()
            try:
                yield
            finally:
                ended = self._clock()
                with self._figures:
                    self._account(training, ended - began, ended)

    def _account(self, training: bool, seconds: float, now: float) -> None:
        decay = 0.5 ** ((now - self._decayed_at) / self.half_life_s)
        self._decayed_at = now
        for kind in self._spent:
            self._spent[kind] *= decay
        self._spent[training] += seconds

    def training_next(self, inference_waiting: bool) -> bool:
        """Whether a waiting training turn goes before the inference that may wait: when none
        waits, or while training has had less than its share of the recent compute time."""
        if not inference_waiting:
            return True
        with self._figures:
            total = self._spent[False] + self._spent[True]
            return self._spent[True] < self.training_share * total

    def share(self) -> float:
        """Training's share of the recent compute time (0 before any turn)."""
        with self._figures:
            total = self._spent[False] + self._spent[True]
            return self._spent[True] / total if total else 0.0

    def inference(self) -> AbstractContextManager[None]:
        """An inference batch's turn (the scheduler's thread)."""
        return self._turn(training=False)

    def training(self) -> AbstractContextManager[None]:
        """A training turn: a piece on the scheduler's thread, or work on another thread that
        must not overlap a turn (counted as training time)."""
        return self._turn(training=True)
