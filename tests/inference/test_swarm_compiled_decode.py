"""Daemons with ``compile_decode`` (models.compiled_decode) compile before they serve, and a
bfloat16 swarm of them decodes the tokens of single-process transformers in bfloat16, its decode
steps served by the compiled step (each daemon counts them in its log at shutdown)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from inference.swarm_client import SwarmClient
from tests.fixtures import local_swarm, reference_generate, swarm_generate
from tests.inference.test_swarm_bf16 import LOGITS_ATOL, TINY_PROMPTS, TINY_SPLIT

pytestmark = pytest.mark.integration

NEW_TOKENS = 24


def test_compiled_bf16_swarm_greedy_equals_transformers_bf16(tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    with torch.inference_mode():
        reference = reference_generate(model, TINY_PROMPTS, NEW_TOKENS)
    with local_swarm(
        tmp_path, str(tiny_model_dir), TINY_SPLIT, dtype="bfloat16", compile_decode=True
    ) as state:
        c = SwarmClient(str(tiny_model_dir), state.initial_peers)
        try:
            c.wait_for_route()
            results = swarm_generate(c, TINY_PROMPTS, max_new_tokens=NEW_TOKENS, first_logits=True)
        finally:
            c.close()
    for result, (tokens, logits) in zip(results, reference, strict=True):
        assert result.token_ids == tokens
        assert (result.first_logits - logits.float()).abs().max().item() <= LOGITS_ATOL
    decode_steps = len(TINY_PROMPTS) * (NEW_TOKENS - 1)  # every token after the prompt's first
    for peer in state.peers:
        text = Path(peer.log).read_text()
        assert "compiled decode step" in text, peer.name  # the banner
        assert re.search(r"layers \[\d+, \d+\]: [\d.]+ s", text), peer.name  # compiled first
        served = re.search(r"(\d+) step\(s\) served by the compiled decode", text)
        assert served and int(served.group(1)) >= decode_steps, (peer.name, served)


def test_compile_decode_is_for_cpu_stages():
    from node.config import DaemonConfig

    with pytest.raises(ValueError, match="compile_decode is for CPU stages"):
        DaemonConfig.model_validate(
            {
                "model": "m",
                "stages": [{"start": 0, "end": 1}],
                "device": "cuda",
                "compile_decode": True,
                "insecure_open_swarm": True,
            }
        )
