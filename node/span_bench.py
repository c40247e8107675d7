"""Measure what a loaded span can do, for its announcement: decode tokens/s and training
samples/s.

The figures are capacity, not load (``tokens_per_s`` in a record is what the scheduler computed
recently): one session's decode steps through the whole span, and one training sample of
``bench_tokens`` positions forward and backward. Routing (:mod:`base.route_cost`) turns them
into per-hop time, placement (:mod:`node.placement`) into per-layer throughput. Each figure
takes at most about ``budget_s`` seconds of steps, so a daemon measures in a second or two on
a CPU; a dummy input stands for real ones (the cost of a step does not depend on its values).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from models.stage_module import DecoderStage

log = logging.getLogger(__name__)

PREFILL = 8  # positions in the cache before the timed decode steps


@dataclass(frozen=True)
class SpanThroughput:
    decode_tokens_per_s: float = 0.0
    forward_samples_per_s: float = 0.0
    backward_samples_per_s: float = 0.0
    bench_tokens: int = 0


def dummy_inputs(stage: DecoderStage, n: int) -> torch.Tensor:
    """``n`` positions of input for ``stage``: token ids on the first stage, else hidden states
    in the stage's dtype (values do not change a step's cost)."""
    device = next(stage.parameters()).device
    if stage.is_first:
        return torch.ones((1, n), dtype=torch.int64, device=device)
    dtype = next(stage.parameters()).dtype
    return torch.zeros((1, n, stage.full_config.hidden_size), dtype=dtype, device=device)


def _timed(fn, budget_s: float, max_runs: int) -> float:
    """Runs per second of ``fn`` over at most ``max_runs`` runs or ``budget_s`` seconds. The
    first run is timed too when it alone took the budget (a slow or loaded machine measures
    once); otherwise it was the warm-up and is left out."""
    started = time.perf_counter()
    fn()
    first = time.perf_counter() - started
    if first >= budget_s:
        return 1.0 / max(first, 1e-9)
    runs, started = 0, time.perf_counter()
    while runs < max_runs:
        fn()
        runs += 1
        if time.perf_counter() - started >= budget_s:
            break
    return runs / max(time.perf_counter() - started, 1e-9)


def measure_span(
    stage: DecoderStage, *, bench_tokens: int = 32, budget_s: float = 0.25
) -> SpanThroughput:
    """Decode tokens/s and training forward / backward samples/s of ``stage``."""

    cache = stage.new_cache()
    with torch.inference_mode():
        stage(dummy_inputs(stage, PREFILL), cache=cache, logits_to_keep=1)

    @torch.inference_mode()
    def decode_step() -> None:
        stage(dummy_inputs(stage, 1), cache=cache, logits_to_keep=1)

    decode_tps = _timed(decode_step, budget_s, 32)

    def forward() -> torch.Tensor:
        with torch.enable_grad():
            x = dummy_inputs(stage, bench_tokens)
            if x.is_floating_point():
                x.requires_grad_(True)
            return stage(x)

    def forward_backward() -> None:
        out = forward()
        if out.requires_grad:
            out.float().square().mean().backward()

    # gradients flow to the input only (as through a frozen base with small adapters): no
    # weight-sized gradient buffers on a daemon that budgeted its memory for the weights
    trainable = [p for p in stage.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        forward_sps = _timed(forward, budget_s, 8)
        both = 1.0 / _timed(forward_backward, budget_s, 8)
    finally:
        for p in trainable:
            p.requires_grad_(True)
    # a backward costs at least about a forward; less means the timings were disturbed
    backward_s = max(both - 1.0 / forward_sps, 1.0 / forward_sps)
    result = SpanThroughput(
        decode_tokens_per_s=round(decode_tps, 2),
        forward_samples_per_s=round(forward_sps, 3),
        backward_samples_per_s=round(1.0 / backward_s, 3),
        bench_tokens=bench_tokens,
    )
    log.info("span [%d, %d) measured: %s", stage.start, stage.end, result)
    return result
