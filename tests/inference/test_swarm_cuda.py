"""Stages on a GPU (marked ``gpu``; skipped without CUDA, run with ``make test-gpu``).

A 3-stage SmolLM2 swarm of bfloat16 daemons on ``cuda`` against transformers in bfloat16 on
the same GPU: identical greedy tokens; each daemon announces ``device: cuda:0``.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from inference.swarm_client import SwarmClient
from tests.fixtures import SMOLLM2_3STAGE as SPLIT
from tests.fixtures import chat_prompt_ids, local_swarm, reference_generate, swarm_generate
from tests.inference.test_swarm_smollm2 import MODEL, QUESTIONS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

NEW_TOKENS = 48


def test_bf16_swarm_on_cuda_equals_transformers_on_cuda(smollm2_dir, tmp_path):
    prompts = chat_prompt_ids(AutoTokenizer.from_pretrained(smollm2_dir), QUESTIONS[:4])
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.bfloat16).cuda().eval()

    class OnCuda:  # reference_generate builds CPU tensors
        def generate(self, x, **kwargs):
            return model.generate(x.cuda(), **kwargs).cpu()

        def __call__(self, x):
            return model(x.cuda())

    with torch.inference_mode():
        reference = reference_generate(OnCuda(), prompts, NEW_TOKENS)
    daemon = {"dtype": "bfloat16", "device": "cuda"}
    with local_swarm(tmp_path, MODEL, SPLIT, **daemon) as state:
        client = SwarmClient(MODEL, state.initial_peers)
        try:
            route = client.wait_for_route()
            assert {r.device for r in route} == {"cuda:0"}
            results = swarm_generate(client, prompts, max_new_tokens=NEW_TOKENS)
        finally:
            client.close()
    for result, (tokens, _) in zip(results, reference, strict=True):
        assert result.token_ids == tokens
