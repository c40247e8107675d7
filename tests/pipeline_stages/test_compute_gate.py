"""The compute gate: inference first, training within its share of the compute time."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline_stages.compute_gate import ComputeGate


class StepClock:
    """A clock that advances only when a turn says so (one unit per turn)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_idle_gate_lets_training_straight_in():
    gate = ComputeGate()
    with gate.training():
        pass
    with gate.inference():
        pass


def test_waiting_training_gets_its_share_of_turns_while_inference_never_stops():
    clock = StepClock()
    gate = ComputeGate(training_share=0.25, half_life_s=50.0, clock=clock)
    turns: list[str] = []
    stop = threading.Event()

    def worker(kind: str):
        turn = gate.training if kind == "t" else gate.inference
        while not stop.is_set():
            with turn():
                turns.append(kind)
                clock.now += 1.0  # every turn costs one unit of compute
                time.sleep(0.001)  # the other threads are queued again by now

    threads = [threading.Thread(target=worker, args=(k,)) for k in ("i", "i", "t")]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(turns) < 400 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join(10)
    assert len(turns) >= 400
    share = turns[:400].count("t") / 400
    assert share == pytest.approx(0.25, abs=0.06), share
    assert gate.share() == pytest.approx(0.25, abs=0.06)
    # never two training turns in a row while inference waits below the share
    assert "ttt" not in "".join(turns[40:400])


def test_inference_goes_first_until_training_falls_below_its_share():
    clock = StepClock()
    gate = ComputeGate(training_share=0.5, half_life_s=1e6, clock=clock)
    with gate.training():  # training alone: it takes all of the compute
        clock.now += 3.0
    order: list[str] = []
    hold = threading.Event()
    holding = threading.Event()

    def inference(n: int):
        for _ in range(n):
            with gate.inference():
                order.append("i")
                clock.now += 1.0
                holding.set()
                hold.wait(5)

    def training():
        holding.wait(5)
        with gate.training():
            order.append("t")

    threads = [
        threading.Thread(target=inference, args=(4,)),
        threading.Thread(target=inference, args=(4,)),
        threading.Thread(target=training),
    ]
    for t in threads:
        t.start()
    holding.wait(5)
    time.sleep(0.2)  # every thread is queued behind the first inference batch
    hold.set()
    for t in threads:
        t.join(10)
    # training spent 3 units alone: with share 0.5 it waits until inference has had 3
    assert order.index("t") == 3, order
    assert sorted(order) == ["i"] * 8 + ["t"]


def test_a_share_outside_the_open_interval_is_refused():
    for share in (0, 1, -0.1):
        with pytest.raises(ValueError, match="training_share"):
            ComputeGate(training_share=share)
