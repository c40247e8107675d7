"""The step scheduler's plan (oldest first, chunked prompts, the token budget) and the compute
gate's order (inference first, training between batches)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from pipeline_stages.compute_gate import ComputeGate
from pipeline_stages.scheduler import Arrivals, PendingStep, StepScheduler, plan_batch
from pipeline_stages.sessions import Session
from tests.fixtures import StepClock


def pending(tokens: int, enqueued: float, name: str = "s") -> PendingStep:
    session = Session(name, (0, 1), 4096, cache=None)
    return PendingStep(session, 0, torch.zeros(1, tokens, dtype=torch.int64), enqueued=enqueued)


def test_a_long_prompt_takes_one_chunk_and_the_decodes_share_the_rest():
    prompt = pending(1000, enqueued=0.0)
    decodes = [pending(1, enqueued=1.0 + i) for i in range(7)]
    shares = plan_batch([*decodes, prompt], budget=256, chunk=128)
    assert [s.tokens for s in shares] == [128] + [1] * 7
    assert shares[0].step is prompt


def test_the_budget_caps_a_batch_and_the_oldest_always_gets_its_share():
    steps = [pending(100, enqueued=float(i)) for i in range(4)]
    shares = plan_batch(steps, budget=256, chunk=128)
    assert [s.tokens for s in shares] == [100, 100, 56]  # the third gets what is left
    assert [s.step for s in shares] == steps[:3]


def test_a_prompt_is_fed_over_several_batches_and_its_outputs_join():
    seen = []

    def run_batch(stage_key, shares):
        for share in shares:
            seen.append(share.tokens)
            step = share.step
            step.outputs.append(share.inputs.clone())
            step.fed += share.tokens
            if step.remaining == 0:
                step.future.set_result(torch.cat(step.outputs, dim=1))

    scheduler = StepScheduler(run_batch, max_batch_tokens=8, prefill_chunk=4)
    try:
        step = pending(10, enqueued=time.monotonic())
        step.inputs = torch.arange(10).unsqueeze(0)
        assert torch.equal(scheduler.submit(step).result(timeout=10), step.inputs)
        assert seen == [4, 4, 2]
        assert scheduler.stats()["peak_batch_size"] == 1
    finally:
        scheduler.stop()


def test_a_failing_batch_fails_its_steps_and_the_scheduler_keeps_going():
    calls = []

    def run_batch(stage_key, shares):
        calls.append(len(shares))
        if len(calls) == 1:
            raise RuntimeError("boom")
        for share in shares:
            share.step.future.set_result("ok")

    scheduler = StepScheduler(run_batch, max_batch_tokens=8, prefill_chunk=4)
    try:
        first = scheduler.submit(pending(1, enqueued=time.monotonic()))
        try:
            first.result(timeout=10)
            raise AssertionError("the failed batch resolved")
        except RuntimeError as exc:
            assert str(exc) == "boom"
        assert scheduler.submit(pending(1, enqueued=time.monotonic())).result(timeout=10) == "ok"
    finally:
        scheduler.stop()


def test_a_session_is_due_one_period_after_its_last_step_until_half_a_period_late():
    arrivals = Arrivals()
    arrivals.arrived("a", 0.0)
    arrivals.arrived("a", 0.1)  # period 0.1: due at 0.2, waited for until 0.25
    arrivals.arrived("new", 0.15)  # no period yet: never waited for
    open_ids = {"a", "new"}.__contains__
    due, give_up = arrivals.due_before(0.25, 0.15, set(), open_ids)
    assert due == ["a"] and give_up == pytest.approx(0.25)
    assert arrivals.due_before(0.19, 0.15, set(), open_ids)[0] == []  # not due yet
    assert arrivals.due_before(0.35, 0.30, set(), open_ids)[0] == []  # long overdue
    assert arrivals.due_before(0.25, 0.15, {"a"}, open_ids)[0] == []  # pending already
    assert arrivals.due_before(0.25, 0.15, set(), lambda sid: False)[0] == []  # closed
    assert arrivals.due_before(0.25, 0.15, set(), open_ids)[0] == []  # and forgotten


def test_a_batch_waits_for_a_session_due_within_the_linger_and_a_lone_one_does_not():
    batches = []

    def run_batch(stage_key, shares):
        batches.append(sorted(share.step.session.session_id for share in shares))
        for share in shares:
            share.step.future.set_result("ok")

    scheduler = StepScheduler(run_batch, max_batch_tokens=8, prefill_chunk=4, linger_s=30.0)
    try:
        # "b" alone steps every 0.3 s: nobody else is due, so each step runs at once (a wrong
        # wait would last the 30 s linger and trip the timeout)
        for _ in range(3):
            scheduler.submit(pending(1, time.monotonic(), "b")).result(timeout=10)
            time.sleep(0.3)
        # b is due 0.3 s after its last step: a step of "a" now waits for it
        first = scheduler.submit(pending(1, time.monotonic(), "a"))
        time.sleep(0.1)
        assert not first.done()
        second = scheduler.submit(pending(1, time.monotonic(), "b"))
        assert first.result(timeout=10) == second.result(timeout=10) == "ok"
        assert batches == [["b"]] * 3 + [["a", "b"]]
        # b then stops stepping: a waits for it at most until it is half a period late
        scheduler.submit(pending(1, time.monotonic(), "a")).result(timeout=10)
        assert batches[-1] == ["a"]
    finally:
        scheduler.stop()


def test_handed_work_runs_on_the_scheduler_thread_and_returns_or_raises():
    scheduler = StepScheduler(lambda key, shares: None, max_batch_tokens=8, prefill_chunk=4)
    try:
        there = scheduler.run(threading.get_ident)
        assert there != threading.get_ident()
        assert scheduler.run(threading.get_ident, training=False) == there
        # handed work that hands more runs it at once (it would otherwise wait for itself)
        assert scheduler.run(lambda: scheduler.run(threading.get_ident)) == there
        with pytest.raises(KeyError, match="missing"):
            scheduler.run(lambda: {}["missing"])
        with torch.no_grad():  # the caller's grad mode holds there
            assert scheduler.run(torch.is_grad_enabled) is False
        with torch.enable_grad():
            assert scheduler.run(torch.is_grad_enabled) is True
    finally:
        scheduler.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        scheduler.run(lambda: 1)


def steps_until(scheduler, stop: threading.Event, name: str, count: int | None = None) -> None:
    """Submit one-token steps one after another, as a session decoding does."""
    done = 0
    while not stop.is_set() and (count is None or done < count):
        scheduler.submit(pending(1, time.monotonic(), f"{name}-{done}")).result(timeout=30)
        done += 1


def test_waiting_training_gets_its_share_of_turns_while_inference_never_stops():
    clock = StepClock()
    gate = ComputeGate(training_share=0.25, half_life_s=50.0, clock=clock)
    turns: list[str] = []

    def run_batch(stage_key, shares):
        turns.append("i")
        clock.now += 1.0  # every turn costs one unit of compute
        time.sleep(0.001)  # the other sessions are queued again by now
        for share in shares:
            share.step.future.set_result(None)

    def piece():
        turns.append("t")
        clock.now += 1.0
        time.sleep(0.001)

    scheduler = StepScheduler(run_batch, max_batch_tokens=1, prefill_chunk=1, gate=gate)
    stop = threading.Event()
    sessions = [threading.Thread(target=steps_until, args=(scheduler, stop, n)) for n in "ab"]

    def training():
        while not stop.is_set():
            scheduler.run(piece)

    threads = [*sessions, threading.Thread(target=training)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 20
        while len(turns) < 400 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        scheduler.stop()
    assert len(turns) >= 400
    share = turns[:400].count("t") / 400
    assert share == pytest.approx(0.25, abs=0.06), share
    # never two training turns in a row while inference waits below the share
    assert "ttt" not in "".join(turns[40:400])


def test_inference_goes_first_until_training_falls_below_its_share():
    clock = StepClock()
    gate = ComputeGate(training_share=0.5, half_life_s=1e6, clock=clock)
    with gate.training():  # training alone: it takes all of the compute
        clock.now += 3.0
    order: list[str] = []
    first_batch, release = threading.Event(), threading.Event()

    def run_batch(stage_key, shares):
        order.append("i")
        clock.now += 1.0
        first_batch.set()
        release.wait(5)
        time.sleep(0.01)  # the other session is queued again by now
        for share in shares:
            share.step.future.set_result(None)

    scheduler = StepScheduler(run_batch, max_batch_tokens=1, prefill_chunk=1, gate=gate)
    stop = threading.Event()
    sessions = [threading.Thread(target=steps_until, args=(scheduler, stop, n, 4)) for n in "ab"]
    try:
        for thread in sessions:
            thread.start()
        first_batch.wait(5)
        trainer = threading.Thread(target=lambda: scheduler.run(lambda: order.append("t")))
        trainer.start()
        time.sleep(0.2)  # both sessions and the trainer wait behind the first batch
        release.set()
        for thread in [*sessions, trainer]:
            thread.join(10)
    finally:
        scheduler.stop()
    # training spent 3 units alone: with share 0.5 it waits until inference has had as much
    # (training's older units have decayed a little by then)
    assert order.index("t") == 3, order
    assert sorted(order) == ["i"] * 8 + ["t"]
