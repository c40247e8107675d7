"""Step guard: NaN/inf gradients skip the step (counted, process alive); clipping by norm."""

from __future__ import annotations

import math

import torch

from lora import StepGuard


def _params(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(4, 3, generator=generator)),
        torch.nn.Parameter(torch.randn(5, generator=generator)),
    ]


def test_non_finite_gradients_skip_the_step_and_are_counted():
    params = _params()
    optimizer = torch.optim.SGD(params, lr=0.1)
    guard = StepGuard(params, max_grad_norm=1.0)
    before = [p.detach().clone() for p in params]
    for bad in (float("nan"), float("inf")):
        params[0].grad = torch.ones_like(params[0])
        params[1].grad = torch.ones_like(params[1])
        params[1].grad[2] = bad
        outcome = guard.step(optimizer)
        assert not outcome.applied and outcome.reason == "non-finite gradients"
        assert not math.isfinite(outcome.grad_norm)
        assert all(p.grad is None for p in params)
        assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    assert (guard.applied, guard.skipped) == (0, 2)
    # the next good step goes through
    for p in params:
        p.grad = torch.full_like(p, 0.01)
    outcome = guard.step(optimizer)
    assert outcome.applied and outcome.skipped_total == 2 and outcome.applied_total == 1
    assert not all(torch.equal(p, b) for p, b in zip(params, before, strict=True))


def test_clipping_matches_torch_clip_grad_norm():
    params, reference = _params(), _params()
    generator = torch.Generator().manual_seed(1)
    for p, r in zip(params, reference, strict=True):
        p.grad = 10 * torch.randn(p.shape, generator=generator)
        r.grad = p.grad.clone()
    expected_norm = float(torch.nn.utils.clip_grad_norm_(reference, 1.0))
    torch.optim.SGD(reference, lr=0.5).step()
    guard = StepGuard(params, max_grad_norm=1.0)
    outcome = guard.step(torch.optim.SGD(params, lr=0.5))
    assert outcome.applied and outcome.clipped
    assert math.isclose(outcome.grad_norm, expected_norm, rel_tol=1e-6)
    for p, r in zip(params, reference, strict=True):
        torch.testing.assert_close(p, r)
    # below the limit: no clipping
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    assert not guard.step(torch.optim.SGD(params, lr=0.5)).clipped
