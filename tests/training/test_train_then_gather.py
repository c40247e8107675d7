"""Fine-tune on the swarm, then gather: the exports are the model the swarm now serves.

`node0 train` trains the `eq` adapter for a few steps over 3 real daemons; `gather` then pulls
the stages (adapter included) and writes a merged Hugging Face directory + GGUF and a PEFT
adapter directory. The merged export's logits equal the swarm's with the adapter, the PEFT
adapter on the base model equals the merged export, and the GGUF f32 gives the same greedy
tokens.
"""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from tests.fixtures import (
    REPO,
    SPLIT,
    local_swarm,
    reference_generate,
    run_cli,
    run_train,
    train_config,
)

pytestmark = pytest.mark.integration

PROMPTS = [[5, 17, 99, 3, 42, 8, 200, 31], [7, 7, 120, 64, 9], [300, 2, 44, 18, 250, 77, 6]]
NEW = 16


def swarm_outputs(tmp_path, model_dir, peers) -> dict:
    """The swarm's greedy tokens and first logits, base and with `eq` (own process)."""
    out = tmp_path / "swarm-outputs.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.programs.swarm_outputs", str(model_dir), str(out), *peers],
        input=json.dumps({"prompts": PROMPTS, "max_new_tokens": NEW, "adapter_sets": [[], ["eq"]]}),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    raw = json.loads(out.read_text())
    return {
        tuple(k.split(",")) if k else (): [
            SimpleNamespace(token_ids=r["tokens"], first_logits=torch.tensor(r["logits"]))
            for r in v
        ]
        for k, v in raw.items()
    }


def _load(path, **kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, local_files_only=True, **kw
    ).eval()


def _last_logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1]


def test_gathered_exports_after_a_swarm_fine_tune_equal_the_swarm(tiny_model_dir, tmp_path):
    from peft import PeftModel

    config = train_config(tiny_model_dir, run_id="tg-run", steps=6, learning_rate=2e-2)
    with local_swarm(tmp_path, str(tiny_model_dir), SPLIT) as state:
        run_train(tmp_path, tmp_path / "swarm.json", config, "--no-probes")
        swarm = swarm_outputs(tmp_path, tiny_model_dir, state.initial_peers)
        merged = tmp_path / "merged"
        only = tmp_path / "adapter"
        for out, extra in (
            (merged, ["--merge-adapters", "eq", "--gguf", "f32"]),
            (only, ["--adapters-only", "--gguf", "none"]),
        ):
            done = run_cli(
                [
                    "node.cli",
                    "gather",
                    "--model",
                    str(tiny_model_dir),
                    "--out",
                    str(out),
                    "--runs-dir",
                    str(tmp_path / "runs"),
                    "--initial-peers",
                    *state.initial_peers,
                    *extra,
                ],
                timeout=300,
            )
            assert done.returncode == 0, done.stderr[-2000:]
    assert any(
        a.token_ids != b.token_ids or (a.first_logits - b.first_logits).abs().max() > 1e-3
        for a, b in zip(swarm[()], swarm[("eq",)], strict=True)
    )  # training mattered
    merged_model = _load(merged / "hf")
    peft_model = PeftModel.from_pretrained(_load(tiny_model_dir), str(only / "adapter")).eval()
    gguf_path = next(merged.glob("*f32.gguf"))
    gguf_model = _load(gguf_path.parent, gguf_file=gguf_path.name)
    vs_swarm = vs_merged = 0.0
    for ids, served in zip(PROMPTS, swarm[("eq",)], strict=True):
        merged_logits = _last_logits(merged_model, ids)
        vs_swarm = max(vs_swarm, (merged_logits - served.first_logits).abs().max().item())
        vs_merged = max(
            vs_merged, (_last_logits(peft_model, ids) - merged_logits).abs().max().item()
        )
        [(tokens, _)] = reference_generate(merged_model, [ids], NEW)
        [(gguf_tokens, _)] = reference_generate(gguf_model, [ids], NEW)
        assert tokens == served.token_ids and gguf_tokens == served.token_ids
    print(
        f"after a swarm fine-tune: merged export vs swarm max |logit diff| {vs_swarm:.2e}; "
        f"PEFT adapter export vs merged {vs_merged:.2e}"
    )
    assert vs_swarm <= 1e-4 and vs_merged <= 1e-4
