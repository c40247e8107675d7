"""bfloat16 swarms against transformers in bf16: the tiny model (default tier) and the real one
(``slow``: 100 s on two cores, the same code path at SmolLM2's shapes).

Each stage holds its weights and KV-cache in bfloat16 and sends its activations in bfloat16
(half the bytes per hop); the last stage samples from its logits cast to float32, as
``generate`` does. Greedy tokens are identical to single-process transformers loaded in bf16 on
every prompt, and the first-step logits agree within the tolerance measured here (the
difference of two bf16 computations of the same logits, different kernels and shapes: the
measured worst is printed by the test and documented in docs/precision.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from inference.swarm_client import SwarmClient
from tests.fixtures import SMOLLM2_3STAGE as SPLIT
from tests.fixtures import chat_prompt_ids, local_swarm, reference_generate, swarm_generate
from tests.inference.test_swarm_smollm2 import MODEL, QUESTIONS

pytestmark = pytest.mark.integration

NEW_TOKENS = 48
LOGITS_ATOL = 0.125  # one bf16 step at magnitude 16-32; measured worst on this machine: 0.0


@pytest.fixture(scope="module")
def prompts(smollm2_dir):
    return chat_prompt_ids(AutoTokenizer.from_pretrained(smollm2_dir), QUESTIONS)


@pytest.fixture(scope="module")
def client(smollm2_dir, tmp_path_factory):
    with local_swarm(tmp_path_factory.mktemp("bf16"), MODEL, SPLIT, dtype="bfloat16") as state:
        c = SwarmClient(MODEL, state.initial_peers)
        try:
            route = c.wait_for_route()
            assert {(r.dtype, tuple(r.accepts)) for r in route} == {("bfloat16", ("bfloat16",))}
            yield c
        finally:
            c.close()


TINY_SPLIT = [("s0", [(0, 2)]), ("s1", [(2, 4)]), ("s2", [(4, 6)])]
TINY_PROMPTS = [[5, 17, 99, 3, 42], [1, 2, 3], [200, 100, 50, 25, 12, 6, 3], [7] * 12]


def test_tiny_bf16_swarm_greedy_equals_transformers_bf16(tiny_model_dir, tmp_path, monkeypatch):
    """Also: the float32 checkpoint's weights reach the daemons as converted copies that each
    daemon maps from ``$NODE0_HOME/converted`` (pipeline_stages/mapped_weights.py)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    with torch.inference_mode():
        reference = reference_generate(model, TINY_PROMPTS, NEW_TOKENS)
    home = tmp_path / "home"
    monkeypatch.setenv("NODE0_HOME", str(home))  # the daemons inherit it
    with local_swarm(tmp_path, str(tiny_model_dir), TINY_SPLIT, dtype="bfloat16") as state:
        c = SwarmClient(str(tiny_model_dir), state.initial_peers)
        try:
            route = c.wait_for_route()
            assert {(r.dtype, tuple(r.accepts)) for r in route} == {("bfloat16", ("bfloat16",))}
            results = swarm_generate(c, TINY_PROMPTS, max_new_tokens=NEW_TOKENS, first_logits=True)
            for peer in state.peers:
                maps = Path(f"/proc/{peer.pid}/maps").read_text()
                assert f"{home / 'converted'}/" in maps, peer.name
        finally:
            c.close()
    for result, (tokens, logits) in zip(results, reference, strict=True):
        assert result.token_ids == tokens
        assert (result.first_logits - logits.float()).abs().max().item() <= LOGITS_ATOL


@pytest.mark.slow
def test_bf16_swarm_greedy_equals_transformers_bf16_token_for_token(smollm2_dir, client, prompts):
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.bfloat16).eval()
    with torch.inference_mode():
        reference = reference_generate(model, prompts, NEW_TOKENS)
    results = swarm_generate(client, prompts, max_new_tokens=NEW_TOKENS, first_logits=True)
    worst = 0.0
    for question, result, (tokens, logits) in zip(QUESTIONS, results, reference, strict=True):
        worst = max(worst, (result.first_logits - logits.float()).abs().max().item())
        assert result.token_ids == tokens, question
    print(f"\n{len(prompts)} prompts x {NEW_TOKENS} tokens identical in bf16; worst {worst:.3e}")
    assert worst <= LOGITS_ATOL
