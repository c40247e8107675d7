"""The daemon's step scheduler: every open session's pending step in one batched forward.

gRPC handler threads :meth:`StepScheduler.submit` a session's step and wait for its future. One
scheduler thread loops: it takes the pending steps oldest first, gives each a share of the
batch token budget — a decode step one token, a prompt the next chunk of at most
``prefill_chunk`` tokens — and runs them as one forward per hosted stage (a ragged batch, see
:mod:`models.ragged_batch`). A long prompt is fed chunk by chunk over several iterations, each
shared with the other sessions' decode tokens, so it delays them by one chunk's compute instead
of the whole prompt's. The oldest step always gets its share first, so none starves; a step
whose chunks are all done resolves its future with the stage output.

A batch of one is the same path: there is no other way a daemon runs an inference step.

The scheduler's thread is the daemon's one compute thread (:mod:`pipeline_stages.compute_thread`):
other threads hand it work with :meth:`StepScheduler.run` (a training piece from a gRPC
handler, compiling the decode step) and wait for the result. Between batches it takes the
next turn by the compute gate's rule (:mod:`pipeline_stages.compute_gate`): inference first, a
waiting training piece when no step waits or while training is below its share.

Convoys. A decode step costs a stage about the same for one session as for several (the
weights are read once per batch), so the scheduler keeps sessions that step at the same rhythm
together. Every session steps at a period (its last two arrivals here); one that is not pending
now is *due* at its last arrival plus that period. Before it starts a batch the scheduler waits
for the sessions due before ``linger_s`` from now (a session long overdue, more than half a
period, is not waited for: its turn ended or its client paused). Two groups of sessions out of
phase by less than ``linger_s`` so merge into one convoy, the first to arrive waiting once for
the other; a convoy's own members, whose steps arrive a few milliseconds apart (one gRPC handler
each, behind the interpreter lock the batch holds), no longer split at every stage. A lone
session never waits. ``linger_s`` trades a session's latency (at most one linger per batch) for
batch size: stages that share cores gain the most (each batch they split costs them a weight
read), stages on their own hardware keep several convoys in flight with a short one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from base.sampler import SamplingParams
from pipeline_stages.compute_gate import ComputeGate
from pipeline_stages.compute_thread import in_callers_modes
from pipeline_stages.sessions import Session

log = logging.getLogger(__name__)

T = TypeVar("T")

STATS_WINDOW_S = 30.0  # batches this recent make the reported figures


@dataclass
class PendingStep:
    """One session's step: ``inputs`` at ``position``, possibly fed over several batches."""

    session: Session
    position: int
    inputs: torch.Tensor  # (1, n) token ids or (1, n, hidden)
    sampling: SamplingParams | None = None
    return_logits: bool = False
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)
    fed: int = 0  # positions already computed
    outputs: list[torch.Tensor] = field(default_factory=list)  # per chunk (non-last stages)

    @property
    def tokens(self) -> int:
        return self.inputs.shape[1]

    @property
    def remaining(self) -> int:
        return self.tokens - self.fed


@dataclass(frozen=True)
class Share:
    """The part of a pending step one batch computes: ``tokens`` positions from ``step.fed``."""

    step: PendingStep
    tokens: int

    @property
    def inputs(self) -> torch.Tensor:
        return self.step.inputs[:, self.step.fed : self.step.fed + self.tokens]

    @property
    def finishes(self) -> bool:
        return self.tokens == self.step.remaining


RunBatch = Callable[[tuple[int, int], list[Share]], None]


@dataclass
class HandedWork:
    """Work another thread handed the scheduler's thread (:meth:`StepScheduler.run`)."""

    fn: Callable[[], object]
    training: bool  # a training turn (else it goes before any step, as compiling does)
    future: Future = field(default_factory=Future)


class Arrivals:
    """When each session's steps arrive here, and when its next one is due."""

    def __init__(self):
        self._seen: dict[str, tuple[float, float | None]] = {}  # id -> (last arrival, period)

    def arrived(self, session_id: str, at: float) -> None:
        last = self._seen.get(session_id)
        self._seen[session_id] = (at, at - last[0] if last else None)

    def due_before(
        self, deadline: float, now: float, pending_ids: set[str], is_open: Callable[[str], bool]
    ) -> tuple[list[str], float]:
        """Open sessions, not pending, whose next step is due by ``deadline`` and not overdue
        by more than half a period at ``now``; and the moment the last of them stops being
        waited for (``now`` when there are none)."""
        due, give_up = [], now
        for sid, (last, period) in list(self._seen.items()):
            if sid in pending_ids or period is None:
                continue
            if not is_open(sid):
                del self._seen[sid]
                continue
            expected = last + period
            if expected <= deadline and now <= expected + period / 2:
                due.append(sid)
                give_up = max(give_up, expected + period / 2)
        return due, give_up


def plan_batch(pending: list[PendingStep], budget: int, chunk: int) -> list[Share]:
    """Shares for the next batch: oldest step first, each at most ``chunk`` positions, all of
    them at most ``budget``. The oldest always gets a full share (``chunk <= budget``)."""
    shares, used = [], 0
    for step in sorted(pending, key=lambda s: s.enqueued):
        room = budget - used
        if room <= 0:
            break
        take = min(step.remaining, chunk, room)
        shares.append(Share(step, take))
        used += take
    return shares


class StepScheduler:
    """Batches the pending steps of a daemon's sessions (see the module docstring).

    Args:
        run_batch: computes a list of shares on one stage (the executor's batched forward);
            it advances each share's step and resolves the futures of finished ones.
        max_batch_tokens: the batch token budget (decode tokens plus prefill chunks).
        prefill_chunk: the most positions of one prompt a batch computes.
        linger_s: the longest a batch waits for sessions due to step (see the module docstring).
        is_open: whether a session is still open (a closed one is not waited for).
        gate: whose turn is next, and the lock every turn holds (a new one by default).
    """

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_tokens: int,
        prefill_chunk: int,
        linger_s: float = 0.0,
        is_open: Callable[[str], bool] = lambda session_id: True,
        gate: ComputeGate | None = None,
    ):
        if not 1 <= prefill_chunk <= max_batch_tokens:
            raise ValueError("need 1 <= prefill_chunk <= max_batch_tokens")
        if linger_s < 0:
            raise ValueError("linger_s must not be negative")
        self.run_batch = run_batch
        self.max_batch_tokens = max_batch_tokens
        self.prefill_chunk = prefill_chunk
        self.linger_s = linger_s
        self.is_open = is_open
        self.gate = gate if gate is not None else ComputeGate()
        self._arrivals = Arrivals()
        self._pending: list[PendingStep] = []
        self._handed: deque[HandedWork] = deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._recent: deque[tuple[float, int, int, float]] = deque()  # (end, rows, tokens, s)
        self._thread = threading.Thread(target=self._loop, name="step-scheduler", daemon=True)
        self._thread.start()

    def submit(self, step: PendingStep) -> Future:
        with self._cond:
            if self._stopped:
                raise RuntimeError("the step scheduler is stopped")
            self._pending.append(step)
            self._arrivals.arrived(step.session.session_id, step.enqueued)
            self._cond.notify()
        return step.future

    def run(self, fn: Callable[[], T], *, training: bool = True) -> T:
        """``fn()`` on the scheduler's thread in a turn of its own, under the caller's grad mode;
        its result, or what it raised. ``training``: a training turn (inference goes first);
        else it goes before the next batch. On the scheduler's thread itself it runs at once."""
        if threading.get_ident() == self._thread.ident:
            return fn()
        work = HandedWork(in_callers_modes(fn), training)
        with self._cond:
            if self._stopped:
                raise RuntimeError("the step scheduler is stopped")
            self._handed.append(work)
            self._cond.notify()
        return work.future.result()

    def queue_depth(self) -> int:
        with self._cond:
            return len(self._pending)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            pending, self._pending = self._pending, []
            handed, self._handed = list(self._handed), deque()
            self._cond.notify_all()
        for work in handed:
            work.future.set_exception(RuntimeError("the daemon is shutting down"))
        for step in pending:
            try:
                step.future.set_exception(RuntimeError("the daemon is shutting down"))
            except InvalidStateError:  # the running batch finished it (it stays pending
                pass  # until that batch returns)
        self._thread.join(10)

    def _next_handed(self) -> HandedWork | None:
        """The handed work whose turn it is before the next batch (the condition held)."""
        if not self._handed:
            return None
        work = self._handed[0]
        if work.training and not self.gate.training_next(inference_waiting=bool(self._pending)):
            return None
        return self._handed.popleft()

    def _run_handed(self, work: HandedWork) -> None:
        try:
            with self.gate.training() if work.training else self.gate.inference():
                result = work.fn()
        except BaseException as exc:  # the caller's to handle, on its thread
            work.future.set_exception(exc)
        else:
            work.future.set_result(result)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._handed or self._stopped)
                if self._stopped:
                    return
                work = self._next_handed()
                if work is None:
                    self._linger_for_convoy()
                    if self._stopped:
                        return
                    shares = plan_batch(self._pending, self.max_batch_tokens, self.prefill_chunk)
            if work is not None:
                self._run_handed(work)
                continue
            started = time.monotonic()
            by_stage: dict[tuple[int, int], list[Share]] = {}
            for share in shares:
                by_stage.setdefault(share.step.session.stage_key, []).append(share)
            for stage_key, group in by_stage.items():
                try:
                    with self.gate.inference():
                        self.run_batch(stage_key, group)
                except BaseException as exc:  # run_batch fails every share it could not finish
                    log.exception("batch on %s failed", stage_key)
                    for share in group:
                        if not share.step.future.done():
                            share.step.future.set_exception(exc)
            ended = time.monotonic()
            with self._cond:
                self._pending = [s for s in self._pending if not s.future.done()]
                self._recent.append(
                    (ended, len(shares), sum(s.tokens for s in shares), ended - started)
                )
                while self._recent and self._recent[0][0] < ended - STATS_WINDOW_S:
                    self._recent.popleft()

    def _linger_for_convoy(self) -> None:
        """Wait (the condition held) for the sessions due within ``linger_s`` of the moment this
        thread is free to batch (see the module docstring)."""
        if self.linger_s <= 0:
            return
        deadline = time.monotonic() + self.linger_s
        while not self._stopped:
            now = time.monotonic()
            pending_ids = {s.session.session_id for s in self._pending}
            due, give_up = self._arrivals.due_before(deadline, now, pending_ids, self.is_open)
            if not due or now >= deadline:
                return
            self._cond.wait(min(deadline, give_up) - now)  # an arrival or a give-up wakes it

    def stats(self) -> dict[str, float]:
        """Recent figures: mean and peak sessions per batch, queue depth, mean batch time,
        positions computed per second."""
        with self._cond:
            now = time.monotonic()
            recent = [r for r in self._recent if r[0] >= now - STATS_WINDOW_S]
            depth = len(self._pending)
        if not recent:
            return {
                "batch_size": 0.0,
                "peak_batch_size": 0,
                "queue_depth": depth,
                "step_ms": 0.0,
                "tokens_per_s": 0.0,
            }
        span = max(now - min(r[0] - r[3] for r in recent), 1e-9)
        return {
            "batch_size": sum(r[1] for r in recent) / len(recent),
            "peak_batch_size": max(r[1] for r in recent),
            "queue_depth": depth,
            "step_ms": 1000 * sum(r[3] for r in recent) / len(recent),
            "tokens_per_s": sum(r[2] for r in recent) / span,
        }
