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
