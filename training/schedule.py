"""Pipeline schedules: which micro-batch each stage runs, in what order, and a runner for them.

A schedule is one ordered list of operations per stage. Every schedule here comes from one
rule: a stage runs its forwards in micro-batch order while fewer than its *in-flight limit*
micro-batches await their backward, and otherwise its next backward (also in micro-batch
order). The limit names the schedule:

- ``gpipe``: the number of micro-batches (all forwards, then all backwards);
- ``1f1b``: ``stages - k`` on stage ``k`` (warm-up forwards, then one forward, one backward);
- ``sequential``: 1 (one micro-batch crosses the whole route and back before the next starts).

Backwards run in micro-batch order on every stage under every schedule, so a stage's adapter
gradients accumulate in the same order, and to the same floats, whatever the schedule.

:func:`run_schedule` executes the lists with one worker thread per stage. A stage's worker
runs its list in order; an operation first waits for what it consumes — a forward the output
of the stage before for the same micro-batch, a backward the input gradient from the stage
after — so calls to different stages overlap and calls to one stage stay in the schedule's
order. Each worker times its calls (the stage's busy time, seen from the trainer).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

Schedule = Literal["1f1b", "gpipe", "sequential"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)
DEFAULT_SCHEDULE: Schedule = "1f1b"

FORWARD, BACKWARD = "forward", "backward"


@dataclass(frozen=True)
class Op:
    """One call on one stage: the forward or the backward of micro-batch ``microbatch``."""

    kind: str  # FORWARD | BACKWARD
    microbatch: int


def _in_flight_limit(schedule: str, stage: int, stages: int, microbatches: int) -> int:
    if schedule == "gpipe":
        return microbatches
    if schedule == "1f1b":
        return stages - stage
    if schedule == "sequential":
        return 1
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")


def stage_orders(
    schedule: str, stages: int, microbatches: int, *, backward: bool = True
) -> list[list[Op]]:
    """The operations of every stage, in the order that stage runs them (see the module doc).

    ``backward=False``: forwards only (held-out loss), the same for every schedule.
    """
    if stages < 1 or microbatches < 1:
        raise ValueError(f"a schedule needs stages and micro-batches, got {stages}, {microbatches}")
    if not backward:
        return [[Op(FORWARD, i) for i in range(microbatches)] for _ in range(stages)]
    orders = []
    for stage in range(stages):
        limit = _in_flight_limit(schedule, stage, stages, microbatches)
        order, forwards, backwards = [], 0, 0
        while backwards < microbatches:
            if forwards < microbatches and forwards - backwards < limit:
                order.append(Op(FORWARD, forwards))
                forwards += 1
            else:
                order.append(Op(BACKWARD, backwards))
                backwards += 1
        orders.append(order)
    return orders


@dataclass
class ScheduleRun:
    """What :func:`run_schedule` returns."""

    outputs: dict[tuple[str, int, int], object]
    """Results nobody consumed, by (kind, stage, micro-batch): the last stage's forwards and
    the first stage's backwards."""
    busy_s: list[float]
    """Per stage: seconds its calls took, from the trainer's side."""
    wall_s: float


def _consumes(op: Op, stage: int, stages: int) -> tuple[str, int, int] | None:
    """The result ``op`` on ``stage`` takes as its argument (None: none, the caller knows)."""
    if op.kind == FORWARD:
        return (FORWARD, stage - 1, op.microbatch) if stage > 0 else None
    return (BACKWARD, stage + 1, op.microbatch) if stage < stages - 1 else None


def run_schedule(orders: list[list[Op]], call: Callable[[int, Op, object], object]) -> ScheduleRun:
    """Run every stage's operations with one worker thread per stage.

    ``call(stage, op, arg)`` performs one operation and returns its result; ``arg`` is the
    result it consumes (the previous stage's forward output, the next stage's backward
    output), or None on the first stage's forwards and the last stage's backwards.

    Raises:
        The first exception a call raised, once every worker has stopped: a worker stops after
        its call in flight and a waiting one at once, so nothing runs on any stage any more
        when the caller handles the error (for example discards the step).
        RuntimeError: the orders wait on each other (a schedule that cannot run).
    """
    stages = len(orders)
    results: dict[tuple[str, int, int], object] = {}
    busy = [0.0] * stages
    errors: list[BaseException] = []
    cond = threading.Condition()
    wanted: dict[int, tuple[str, int, int]] = {}  # stage -> the result its worker waits for
    alive = stages

    def stuck() -> bool:
        """Every live worker waits for a result that is not there: none can ever arrive."""
        return len(wanted) == alive and all(dep not in results for dep in wanted.values())

    def take(stage: int, op: Op):
        """Wait for what ``op`` consumes; (True, arg), or (False, None) once a worker failed."""
        dep = _consumes(op, stage, stages)
        with cond:
            if dep is not None:
                wanted[stage] = dep
                while dep not in results and not errors:
                    if stuck():
                        errors.append(RuntimeError(f"schedule deadlock: stage {stage} at {op}"))
                        cond.notify_all()
                        break
                    cond.wait()
                del wanted[stage]
            if errors:
                return False, None
            return True, results.pop(dep) if dep is not None else None

    def worker(stage: int) -> None:
        nonlocal alive
        try:
            for op in orders[stage]:
                ok, arg = take(stage, op)
                if not ok:
                    return
                started = time.perf_counter()
                try:
                    out = call(stage, op, arg)
                finally:
                    busy[stage] += time.perf_counter() - started
                with cond:
                    results[(op.kind, stage, op.microbatch)] = out
                    cond.notify_all()
        except BaseException as exc:  # handed to the caller once every worker stopped
            with cond:
                errors.append(exc)
        finally:
            with cond:
                alive -= 1
                cond.notify_all()

    started = time.perf_counter()
    threads = [
        threading.Thread(target=worker, args=(k,), name=f"pipeline-stage-{k}", daemon=True)
        for k in range(stages)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return ScheduleRun(outputs=results, busy_s=busy, wall_s=wall)
