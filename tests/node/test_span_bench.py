"""node.span_bench on a tiny stage: positive figures, weights untouched, no weight gradients."""

from __future__ import annotations

import torch

from node.span_bench import measure_span
from pipeline_stages.loader import load_stage


def test_measures_decode_and_training_throughput_without_touching_the_weights(tiny_model_dir):
    for span in [(0, 2), (2, 6)]:
        stage = load_stage(tiny_model_dir, *span)
        before = {n: p.detach().clone() for n, p in stage.named_parameters()}
        flags = {n: p.requires_grad for n, p in stage.named_parameters()}
        result = measure_span(stage, bench_tokens=16, budget_s=0.05)
        assert result.decode_tokens_per_s > 0
        assert result.forward_samples_per_s > 0 and result.backward_samples_per_s > 0
        assert result.bench_tokens == 16
        for name, param in stage.named_parameters():
            assert torch.equal(param, before[name]) and param.grad is None
            assert param.requires_grad == flags[name]
