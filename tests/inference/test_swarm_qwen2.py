"""A 3-stage swarm of real daemon processes serving a tiny Qwen2 generates, greedily, the tokens
transformers' ``Qwen2ForCausalLM`` generates in one process."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from inference.swarm_client import SwarmClient
from tests.fixtures import local_swarm, reference_generate, swarm_generate

pytestmark = pytest.mark.integration

SPLIT = [("s0", [(0, 2)]), ("s1", [(2, 4)]), ("s2", [(4, 6)])]
PROMPTS = [[5, 17, 99, 3, 42], [1, 2, 3], [200, 100, 50, 25, 12, 6, 3]]


def test_qwen2_swarm_greedy_tokens_equal_single_process(tiny_qwen2_dir, tmp_path):
    reference = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.float32).eval()
    expected = reference_generate(reference, PROMPTS, 24)
    with local_swarm(tmp_path, str(tiny_qwen2_dir), SPLIT, max_message_bytes=1 << 20) as state:
        client = SwarmClient(str(tiny_qwen2_dir), state.initial_peers)
        try:
            client.wait_for_route()
            results = swarm_generate(client, PROMPTS, max_new_tokens=24, first_logits=True)
        finally:
            client.close()
    diffs = []
    for result, (tokens, logits) in zip(results, expected, strict=True):
        assert result.token_ids == tokens
        diffs.append((result.first_logits - logits).abs().max().item())
    print(f"qwen2 swarm vs single process: first-step max |logit diff| {max(diffs):.2e}")
    assert max(diffs) < 1e-4
