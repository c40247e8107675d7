"""Pipeline schedules without a swarm: the order of every stage's calls, the data each call gets,
overlap between stages, and what a failed call leaves behind (fake stage clients)."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from training.pipeline_step import MicroBatch, pipeline_eval_loss, pipeline_train_step
from training.schedule import BACKWARD, FORWARD, SCHEDULES, Op, run_schedule, stage_orders

WAIT_S = 30.0  # a bound on waiting for another thread, never a measured time


def notation(order: list[Op]) -> str:
    return " ".join(f"{op.kind[0].upper()}{op.microbatch}" for op in order)


def test_each_schedule_orders_every_stage_as_its_in_flight_limit_says():
    orders = {name: [notation(o) for o in stage_orders(name, 3, 4)] for name in SCHEDULES}
    assert orders["gpipe"] == ["F0 F1 F2 F3 B0 B1 B2 B3"] * 3
    assert orders["1f1b"] == [
        "F0 F1 F2 B0 F3 B1 B2 B3",  # warm-up of 2, then one forward, one backward
        "F0 F1 B0 F2 B1 F3 B2 B3",
        "F0 B0 F1 B1 F2 B2 F3 B3",
    ]
    assert orders["sequential"] == ["F0 B0 F1 B1 F2 B2 F3 B3"] * 3
    assert [notation(o) for o in stage_orders("1f1b", 3, 4, backward=False)] == ["F0 F1 F2 F3"] * 3
    with pytest.raises(ValueError, match="unknown schedule 'pipedream'"):
        stage_orders("pipedream", 3, 4)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_stage_runs_forwards_then_backwards_in_micro_batch_order(schedule):
    for stages in range(1, 5):
        for microbatches in range(1, 7):
            for order in stage_orders(schedule, stages, microbatches):
                forwards = [op.microbatch for op in order if op.kind == FORWARD]
                backwards = [op.microbatch for op in order if op.kind == BACKWARD]
                # the same accumulation order on every stage as one micro-batch at a time
                assert forwards == backwards == list(range(microbatches))
                assert all(
                    order.index(Op(FORWARD, i)) < order.index(Op(BACKWARD, i))
                    for i in range(microbatches)
                )


class FakeStage:
    """A stage client that checks what it is sent and logs its calls in a shared log.

    Stage ``k``'s output for micro-batch ``i`` is a tensor full of ``100 * (k + 1) + i``, its
    input gradient one full of ``-(100 * k + i)``, so every call can tell which micro-batch it
    got and from which stage.
    """

    def __init__(self, index: int, count: int, log: list, lock: threading.Lock):
        self.index, self.count = index, count
        self.log, self.lock = log, lock
        self.ids: dict[str, int] = {}  # micro-batch id -> index, learned at forward
        self.pending: set[str] = set()
        self.steps = 0
        self.before_forward = None  # hook: (stage, micro-batch) -> None
        self.fail_on: tuple[str, int] | None = None
        self.in_flight = 0

    def _enter(self, kind: str, mb: int) -> None:
        with self.lock:
            self.in_flight += 1
            self.log.append(("start", self.index, kind, mb))

    def _leave(self, kind: str, mb: int) -> None:
        with self.lock:
            self.in_flight -= 1
            self.log.append(("end", self.index, kind, mb))

    def forward(self, mb_id, tensors, loss_scale=1.0, *, evaluate=False):
        x = tensors["input"]
        mb = int(x.flatten()[0]) if self.index == 0 else int(x.flatten()[0]) - 100 * self.index
        assert (x == x.flatten()[0]).all()
        self.ids[mb_id] = mb
        self._enter(FORWARD, mb)
        try:
            if self.before_forward is not None:
                self.before_forward(self.index, mb)
            if self.fail_on == (FORWARD, mb):
                raise ConnectionError(f"stage {self.index} died")
            if not evaluate:
                self.pending.add(mb_id)
            if self.index == self.count - 1:
                assert "labels" in tensors
                return None, float(10 * (mb + 1)), 0
            return torch.full((1, 2, 3), float(100 * (self.index + 1) + mb)), 0.0, 0
        finally:
            self._leave(FORWARD, mb)

    def backward(self, mb_id, grad):
        mb = self.ids[mb_id]
        self._enter(BACKWARD, mb)
        try:
            if self.index == self.count - 1:
                assert grad is None
            else:
                assert (grad == -(100 * (self.index + 1) + mb)).all(), (self.index, mb, grad)
            self.pending.remove(mb_id)
            return None if self.index == 0 else torch.full((1, 2, 3), -(100.0 * self.index + mb))
        finally:
            self._leave(BACKWARD, mb)

    def optimizer_step(self, step, *, samples=1.0, discard=False, checkpoint=False):
        assert not self.pending, "every forward got its backward before the optimizer step"
        self.steps += 1
        return _Report()


class _Report:
    applied, grad_norm, step, averaging, reason = True, 0.5, 1, "", ""


def fake_route(count: int):
    log, lock = [], threading.Lock()
    return [FakeStage(k, count, log, lock) for k in range(count)], log


def batches(count: int) -> list[MicroBatch]:
    out = []
    for i in range(count):
        ids = torch.full((1, 4), i, dtype=torch.int64)
        labels = ids.clone()
        labels[0, :3] = -100  # one counted token per micro-batch (labels[:, 1:])
        out.append(MicroBatch(ids, torch.ones_like(ids), labels))
    return out


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_calls_follow_the_schedule_and_wait_for_their_inputs(schedule):
    stages, log = fake_route(3)
    result = pipeline_train_step(stages, batches(4), step=0, schedule=schedule)
    orders = stage_orders(schedule, 3, 4)
    for k in range(3):  # each stage got its calls in the schedule's order, one at a time
        calls = [(kind, mb) for what, stage, kind, mb in log if stage == k and what == "start"]
        assert calls == [(op.kind, op.microbatch) for op in orders[k]]
        mine = [entry for entry in log if entry[1] == k]
        assert [entry[0] for entry in mine] == ["start", "end"] * len(orders[k])
    position = {entry: n for n, entry in enumerate(log)}
    for i in range(4):  # a call starts after the call it consumes ended
        for k in range(1, 3):
            assert position[("end", k - 1, FORWARD, i)] < position[("start", k, FORWARD, i)]
            assert position[("end", k, BACKWARD, i)] < position[("start", k - 1, BACKWARD, i)]
    assert result.loss == (10 + 20 + 30 + 40) / 4 and result.tokens == 4
    assert all(s.steps == 1 for s in stages)
    assert len(result.bubble) == 3 and all(0.0 <= b <= 1.0 for b in result.bubble)
    assert len(result.busy_s) == 3 and result.wall_s > 0


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
def test_a_stage_runs_the_next_micro_batch_while_the_next_stage_runs_this_one(schedule):
    stages, _ = fake_route(2)
    second_started = threading.Event()
    overlapped = []

    def before_forward(stage: int, mb: int) -> None:
        if (stage, mb) == (0, 1):
            second_started.set()
        if (stage, mb) == (1, 0):  # hold stage 1 on micro-batch 0 until stage 0 takes the next
            overlapped.append(second_started.wait(WAIT_S))

    for stage in stages:
        stage.before_forward = before_forward
    pipeline_train_step(stages, batches(2), step=0, schedule=schedule)
    assert overlapped == [True]


def test_sequential_starts_a_micro_batch_only_after_the_previous_one_came_back():
    stages, log = fake_route(3)
    pipeline_train_step(stages, batches(3), step=0, schedule="sequential")
    calls = [(stage, kind, mb) for what, stage, kind, mb in log if what == "start"]
    one = [(0, FORWARD), (1, FORWARD), (2, FORWARD), (2, BACKWARD), (1, BACKWARD), (0, BACKWARD)]
    assert calls == [(k, kind, mb) for mb in range(3) for k, kind in one]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_a_failed_call_stops_the_step_once_nothing_runs_any_more(schedule):
    stages, log = fake_route(3)
    stages[1].fail_on = (FORWARD, 2)
    with pytest.raises(ConnectionError, match="stage 1 died"):
        pipeline_train_step(stages, batches(4), step=0, schedule=schedule)
    assert all(s.in_flight == 0 for s in stages)  # nothing still runs when the caller reroutes
    assert all(s.steps == 0 for s in stages)  # no optimizer step on a broken step
    started = [(stage, kind, mb) for what, stage, kind, mb in log if what == "start"]
    assert (2, FORWARD, 2) not in started and (0, BACKWARD, 3) not in started


def test_eval_runs_forwards_only_and_sums_the_loss_in_micro_batch_order():
    stages, log = fake_route(3)
    loss, tokens = pipeline_eval_loss(stages, batches(3))
    assert (loss, tokens) == ((10 + 20 + 30) / 3, 3)
    assert {kind for _, _, kind, _ in log} == {FORWARD}
    assert all(not s.pending for s in stages)
    loss, tokens = pipeline_eval_loss(stages, [])
    assert math.isnan(loss) and tokens == 0


def test_orders_that_wait_on_each_other_are_refused_not_hung():
    # stage 0 waits for stage 1's backward of 0; stage 1 waits for stage 0's forward of 1
    orders = [
        [Op(FORWARD, 0), Op(BACKWARD, 0), Op(FORWARD, 1), Op(BACKWARD, 1)],
        [Op(FORWARD, 1), Op(BACKWARD, 1), Op(FORWARD, 0), Op(BACKWARD, 0)],
    ]
    with pytest.raises(RuntimeError, match="deadlock"):
        run_schedule(orders, lambda stage, op, arg: None)
