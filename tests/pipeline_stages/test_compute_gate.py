"""The compute gate: its rule (inference first, training within its share of the compute time)
and its lock (a turn excludes work on other threads that holds the gate). The order it gives
the scheduler's thread is tested in test_scheduler.py."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline_stages.compute_gate import ComputeGate
from tests.fixtures import StepClock


def test_training_goes_next_when_no_inference_waits():
    gate = ComputeGate()
    assert gate.training_next(inference_waiting=False)
    assert not gate.training_next(inference_waiting=True)  # nothing spent yet: no share owed


def test_training_goes_before_waiting_inference_only_while_below_its_share():
    clock = StepClock()
    gate = ComputeGate(training_share=0.25, half_life_s=1e6, clock=clock)
    with gate.inference():
        clock.now += 3.0
    assert gate.training_next(inference_waiting=True)  # 0 of 3 units
    with gate.training():
        clock.now += 1.0
    assert gate.share() == pytest.approx(0.25)
    assert not gate.training_next(inference_waiting=True)  # 1 of 4: at its share
    with gate.inference():
        clock.now += 1.0
    assert gate.training_next(inference_waiting=True)  # 1 of 5


def test_recent_time_counts_more_than_old():
    clock = StepClock()
    gate = ComputeGate(training_share=0.5, half_life_s=1.0, clock=clock)
    with gate.training():
        clock.now += 1.0
    clock.now += 10.0  # ten half-lives later the training time is all but forgotten
    with gate.inference():
        clock.now += 1.0
    assert gate.share() < 0.01


def test_a_turn_excludes_work_that_holds_the_gate_on_another_thread():
    gate = ComputeGate()
    order: list[str] = []
    inside = threading.Event()

    def other():
        inside.wait(5)
        with gate.training():  # e.g. attaching an adapter
            order.append("other")

    thread = threading.Thread(target=other)
    thread.start()
    with gate.inference():
        inside.set()
        time.sleep(0.2)
        order.append("turn")
        with gate.training():  # reentrant on the same thread
            order.append("nested")
    thread.join(5)
    assert order == ["turn", "nested", "other"]


def test_a_share_outside_the_open_interval_is_refused():
    for share in (0, 1, -0.1):
        with pytest.raises(ValueError, match="training_share"):
            ComputeGate(training_share=share)
