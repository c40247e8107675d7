"""SmolLM2-135M gathered from a live 3-stage swarm (slow tier): the Hugging Face export's logits
equal the swarm's; the GGUF f32 export, read back by transformers' GGUF loader, generates the
swarm's greedy tokens on 5 prompts x 32 tokens; f16's agreement is reported."""

from __future__ import annotations

import json

import pytest
import torch

from checkpoint_gather.gather import GatherOptions, gather
from inference.swarm_client import SwarmClient
from tests.fixtures import load_causal_lm, local_swarm, reference_generate, swarm_generate

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "A polecat implements a bead by",
    "Once upon a time, in a small village,",
    "The three primary colors are",
]
NEW_TOKENS = 32
SPLIT = [("s0", [(0, 10)]), ("s1", [(10, 20)]), ("s2", [(20, 30)])]


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_smollm2_gathered_from_the_swarm_matches_it(smollm2_dir, tmp_path):
    from transformers import AutoTokenizer

    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    with local_swarm(tmp_path / "swarm", "smollm2-135m", SPLIT, torch_threads=1) as state:
        client = SwarmClient("smollm2-135m", state.initial_peers)
        try:
            client.wait_for_route()
            swarm = swarm_generate(client, prompts, max_new_tokens=NEW_TOKENS, first_logits=True)
        finally:
            client.close()
        result = gather(
            GatherOptions(
                model="smollm2-135m", out_dir=tmp_path / "out", gguf_types=("f32", "f16")
            ),
            initial_peers=state.initial_peers,
        )
    swarm_tokens = [r.token_ids for r in swarm]
    figures = {"seconds": result.seconds, "bytes": result.bytes}
    hf = load_causal_lm(result.export.hf_dir)
    hf_out = reference_generate(hf, prompts, NEW_TOKENS)
    figures["hf_max_abs_logit_diff"] = max(
        (logits - r.first_logits).abs().max().item()
        for (_, logits), r in zip(hf_out, swarm, strict=True)
    )
    figures["hf_identical_prompts"] = sum(
        t == s for (t, _), s in zip(hf_out, swarm_tokens, strict=True)
    )
    del hf
    for out_type, path in result.export.gguf_files.items():
        model = load_causal_lm(path.parent, gguf_file=path.name)
        out = reference_generate(model, prompts, NEW_TOKENS)
        del model
        agree = sum(
            a == b
            for (t, _), s in zip(out, swarm_tokens, strict=True)
            for a, b in zip(t, s, strict=True)
        )
        figures[out_type] = {
            "token_agreement": agree / (len(prompts) * NEW_TOKENS),
            "identical_prompts": sum(t == s for (t, _), s in zip(out, swarm_tokens, strict=True)),
            "max_abs_logit_diff": max(
                (lg - r.first_logits).abs().max().item()
                for (_, lg), r in zip(out, swarm, strict=True)
            ),
        }
    print(json.dumps(figures, indent=2))
    assert figures["hf_max_abs_logit_diff"] <= 1e-4
    assert figures["hf_identical_prompts"] == len(PROMPTS)
    assert figures["f32"]["identical_prompts"] == len(PROMPTS)
    assert figures["f16"]["token_agreement"] > 0.5
