"""The DiLoCo outer loop (lora/diloco.py): outer steps against a hand computation, its
checkpointed state, and the config's refusals (averaging.mode diloco)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from lora.config import AveragingSettings
from lora.diloco import DiLoCoOuter
from training.config import TrainConfig


def _inner_steps(param, inner, outer, grads):
    due = []
    for g in grads:
        param.grad = torch.tensor(g)
        inner.step()
        due.append(outer.note_inner_step())
    return due


def test_two_outer_steps_equal_a_hand_computed_nesterov_sgd():
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    outer = DiLoCoOuter([param], local_steps=2, outer_lr=0.5, outer_momentum=0.9)
    inner = torch.optim.SGD([param], lr=0.1)
    other = torch.tensor([0.4, 0.0])  # the other replica's pseudo-gradient, both rounds

    def average():
        param.grad = (param.grad + other) / 2
        return "report"

    # round 1: local θ = [1, -2] - 0.1·[1, 1] - 0.1·[1, 1] = [0.8, -2.2]; Δ = [0.2, 0.2]
    assert _inner_steps(param, inner, outer, [[1.0, 1.0], [1.0, 1.0]]) == [False, True]
    assert outer.outer_step(average) == "report"
    g1 = torch.tensor([0.3, 0.1])  # mean of [0.2, 0.2] and [0.4, 0.0]
    b1 = g1  # momentum buffer after the first step
    theta1 = torch.tensor([1.0, -2.0]) - 0.5 * (g1 + 0.9 * b1)
    assert torch.allclose(param.detach(), theta1, atol=1e-7)
    # round 2: one inner step of [2, -1] and one of [0, 1]: Δ = 0.1·[2, 0] = [0.2, 0.0]
    assert _inner_steps(param, inner, outer, [[2.0, -1.0], [0.0, 1.0]]) == [False, True]
    outer.outer_step(average)
    g2 = torch.tensor([0.3, 0.0])
    b2 = 0.9 * b1 + g2
    theta2 = theta1 - 0.5 * (g2 + 0.9 * b2)
    assert torch.allclose(param.detach(), theta2, atol=1e-6)
    assert outer.inner_steps == 4 and outer.local_step == 0


def test_state_dict_round_trip_keeps_outer_params_momentum_and_count():
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    outer = DiLoCoOuter([param], local_steps=2, outer_lr=0.5, outer_momentum=0.9)
    inner = torch.optim.SGD([param], lr=0.1)
    _inner_steps(param, inner, outer, [[1.0, 1.0], [1.0, 1.0]])
    outer.outer_step(lambda: None)
    _inner_steps(param, inner, outer, [[1.0, 0.0]])  # mid-way: local θ ≠ outer θ
    state = outer.state_dict()

    twin = torch.nn.Parameter(param.detach().clone())
    restored = DiLoCoOuter([twin], local_steps=2, outer_lr=0.5, outer_momentum=0.9)
    restored.load_state_dict(state)
    assert restored.inner_steps == 3 and restored.local_step == 1
    for o in (outer, restored):  # the same next round from the same local step
        o.params[0].grad = torch.tensor([0.5, 0.5])
        torch.optim.SGD(o.params, lr=0.1).step()
        assert o.note_inner_step()
        o.outer_step(lambda: None)
    assert torch.equal(param.detach(), twin.detach())

    with pytest.raises(ValueError, match="other shapes"):
        DiLoCoOuter([torch.nn.Parameter(torch.zeros(3))], local_steps=2).load_state_dict(state)


def test_config_refuses_diloco_without_replicas_or_local_steps(tmp_path):
    with pytest.raises(ValidationError, match="local_steps"):
        AveragingSettings(mode="diloco", local_steps=0)
    data = {"train": [str(tmp_path / "train.jsonl")]}
    with pytest.raises(ValidationError, match="diloco with replicas 1"):
        TrainConfig(data=data, averaging={"mode": "diloco", "local_steps": 2})
    config = TrainConfig(
        data=data, replicas=2, averaging={"mode": "diloco", "local_steps": 2, "outer_lr": 0.5}
    )
    assert config.averaging.mode == "diloco" and config.averaging.target_group_size == 2
    assert TrainConfig(data=data, replicas=2).averaging.mode == "per_step"


@pytest.mark.integration
def test_replicas_average_an_outer_step_only_with_partners_at_that_outer_step():
    """Two replicas (two DHTs, two averager processes) in diloco mode: at outer step 1 they
    average; at different outer steps they do not, even when they look at the same time; a
    replica at outer step 4 waits for a partner still in its local steps before it, and they
    average."""
    import threading
    import time

    from base.dht import start_dht, visible_maddrs
    from lora.averaging import StageGradientAverager, averaging_prefix

    settings = AveragingSettings(
        mode="diloco",
        local_steps=2,
        target_group_size=2,
        request_timeout=2.0,
        min_matchmaking_time=3.0,
        matchmaking_timeout=6.0,
        partner_wait=120.0,
        presence_heartbeat=0.5,
    )
    first = start_dht([])
    second = start_dht(visible_maddrs(first))
    prefix = averaging_prefix("tiny", 0, 2, "diloco-rounds", "code-review")
    params = {name: torch.nn.Parameter(torch.zeros(4, 8)) for name in "ab"}
    averagers = {
        name: StageGradientAverager(dht, prefix=prefix, params=[params[name]], settings=settings)
        for name, dht in (("a", first), ("b", second))
    }
    reports: dict[str, object] = {}

    def average(name: str, rounds: int, grad: float, delay: float = 0.0) -> threading.Thread:
        def run():
            time.sleep(delay)
            params[name].grad = torch.full((4, 8), grad)
            reports[name] = averagers[name].average(1.0, rounds=rounds)

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    try:
        for thread in (average("a", 0, 1.0), average("b", 0, 3.0)):  # outer step 1 for both
            thread.join(timeout=120)
        for name in "ab":
            assert reports[name].averaged, reports[name]
            assert torch.allclose(params[name].grad, torch.full((4, 8), 2.0))
        # a has passed outer step 2, b has not: they look together and stay apart
        averagers["a"].set_step(4, rounds=2)
        averagers["b"].set_step(2, rounds=1)
        for thread in (average("a", 2, 1.0), average("b", 1, 3.0)):
            thread.join(timeout=120)
        for name, grad in (("a", 1.0), ("b", 3.0)):
            report = reports[name]
            assert not report.averaged and report.group_size == 1, report
            assert torch.equal(params[name].grad, torch.full((4, 8), grad))
        # a reaches outer step 4 while b's trainer is still in its local steps before it (due:
        # alive, outer step 3 passed, training); b arrives after a whole matchmaking window
        averagers["b"].set_step(7, rounds=3)
        threads = [average("a", 3, 1.0)]
        deadline = time.monotonic() + 9.0  # longer than a's matchmaking window
        while time.monotonic() < deadline:
            averagers["b"].note_activity()
            time.sleep(0.5)
        threads.append(average("b", 3, 3.0))
        for thread in threads:
            thread.join(timeout=180)
        for name in "ab":
            report = reports[name]
            assert report.averaged and report.group_size == 2 and not report.resynced, report
            assert torch.allclose(params[name].grad, torch.full((4, 8), 2.0))
        assert reports["a"].attempts >= 2, reports["a"]  # it looked again for b
    finally:
        for averager in averagers.values():
            averager.shutdown()
        second.shutdown()
        first.shutdown()
