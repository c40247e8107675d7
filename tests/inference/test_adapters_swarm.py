"""Task adapters served by the swarm: per-session adapter sets equal single-process PEFT."""

from __future__ import annotations

import asyncio

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from base.errors import RequestError
from inference.swarm_client import SwarmClient
from tests.fixtures import local_swarm, make_adapter

pytestmark = pytest.mark.integration

SPLIT = [("s0", [(0, 2)]), ("s1", [(2, 4)]), ("s2", [(4, 6)])]
PROMPT = [5, 17, 99, 3, 42, 8]
NEW = 16


@torch.inference_mode()
def peft_greedy(model_dir, adapters: dict, active: list[str]) -> list[int]:
    names = list(adapters)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dir), adapters[names[0]], adapter_name=names[0]
    )
    for name in names[1:]:
        model.load_adapter(adapters[name], adapter_name=name)
    model.base_model.set_adapter(active)
    model.eval()
    out = model.generate(
        torch.tensor([PROMPT]),
        max_new_tokens=NEW,
        min_new_tokens=NEW,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[0, len(PROMPT) :].tolist()


def test_concurrent_sessions_with_different_adapters_match_peft(tiny_model_dir, tmp_path):
    adapters = {"code-review": tmp_path / "a", "git-workflow": tmp_path / "b"}
    for seed, (name, path) in enumerate(adapters.items(), start=1):
        make_adapter(tiny_model_dir, name, seed, path)
    expected = {
        ("code-review",): peft_greedy(tiny_model_dir, adapters, ["code-review"]),
        ("git-workflow",): peft_greedy(tiny_model_dir, adapters, ["git-workflow"]),
        ("code-review", "git-workflow"): peft_greedy(
            tiny_model_dir, adapters, ["code-review", "git-workflow"]
        ),
    }
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.inference_mode():
        expected[()] = base.generate(
            torch.tensor([PROMPT]),
            max_new_tokens=NEW,
            min_new_tokens=NEW,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[0, len(PROMPT) :].tolist()
    assert len({tuple(v) for v in expected.values()}) == 4  # the adapters really differ

    with local_swarm(
        tmp_path / "swarm",
        str(tiny_model_dir),
        SPLIT,
        adapters={k: str(v) for k, v in adapters.items()},
    ) as state:
        client = SwarmClient(str(tiny_model_dir), state.initial_peers)
        try:
            client.wait_for_route()
            tokenizer = client.load_tokenizer()

            async def run_all():
                return await asyncio.gather(
                    *(
                        client.generate_once(tokenizer, PROMPT, max_new_tokens=NEW, adapters=sets)
                        for sets in expected
                    )
                )

            results = asyncio.run(run_all())
            for sets, result in zip(expected, results, strict=True):
                assert result.token_ids == expected[sets], sets
            with pytest.raises(RequestError, match="available: code-review, git-workflow"):
                asyncio.run(
                    client.generate_once(
                        tokenizer, PROMPT, max_new_tokens=2, adapters=("planning",)
                    )
                )
            assert all(r.adapters == ["code-review", "git-workflow"] for r in client.records())
        finally:
            client.close()
