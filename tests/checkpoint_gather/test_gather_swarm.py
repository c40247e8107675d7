"""``node0 gather`` against a live 3-stage swarm of real daemons serving the tiny model with a
task adapter: the exports equal the single-process model and the swarm's own output, with and
without the adapter; a corrupted chunk fails closed and a rerun succeeds."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
import torch

from checkpoint_gather.gather import GatherOptions, gather
from checkpoint_gather.weights_service import FAULTS_ENV
from inference.swarm_client import SwarmClient
from lora import LoraSettings, deterministic_init_, save_peft_adapter
from tests.fixtures import load_causal_lm, local_swarm, reference_generate, run_cli

pytestmark = pytest.mark.integration

SPLIT = [("s0", [(0, 2)]), ("s1", [(2, 4)]), ("s2", [(4, 6)])]
PROMPT = [5, 17, 99, 3, 42, 8, 200, 31]
NEW = 16
ADAPTER = "code-review"


def make_adapter(model_dir, out, seed: int = 1) -> None:
    """A PEFT adapter that changes the output (B far from its zero init)."""
    from peft import get_peft_model, get_peft_model_state_dict

    settings = LoraSettings(rank=4, alpha=8.0, init_seed=seed)
    model = get_peft_model(load_causal_lm(model_dir), settings.to_peft(), adapter_name=ADAPTER)
    deterministic_init_(model, ADAPTER, seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.6)
    save_peft_adapter(get_peft_model_state_dict(model, adapter_name=ADAPTER), settings, out)


@pytest.fixture(scope="module")
def swarm(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("gather-swarm")
    make_adapter(tiny_model_dir, root / "adapter")
    (root / "faults").mkdir()
    with pytest.MonkeyPatch.context() as patch:  # the daemons inherit the variable
        patch.setenv(FAULTS_ENV, str(root / "faults"))
        with local_swarm(
            root / "swarm", str(tiny_model_dir), SPLIT, adapters={ADAPTER: str(root / "adapter")}
        ) as state:
            patch.delenv(FAULTS_ENV)
            yield state, root


@pytest.fixture(scope="module")
def swarm_output(swarm, tiny_model_dir):
    """The swarm's greedy tokens and first logits, base model and with the adapter."""
    state, _ = swarm
    client = SwarmClient(str(tiny_model_dir), state.initial_peers)
    try:
        client.wait_for_route()
        tokenizer = client.load_tokenizer()

        async def run(adapters):
            return await client.generate_once(
                tokenizer, PROMPT, max_new_tokens=NEW, return_first_logits=True, adapters=adapters
            )

        return {adapters: asyncio.run(run(adapters)) for adapters in ((), (ADAPTER,))}
    finally:
        client.close()


def _last_logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([PROMPT])).logits[0, -1]


def _gguf_model(path):
    return load_causal_lm(path.parent, gguf_file=path.name)


def _cli_gather(state, model_dir, out, runs, *extra):
    return run_cli(
        [
            "node.cli",
            "gather",
            "--model",
            str(model_dir),
            "--out",
            str(out),
            "--runs-dir",
            str(runs),
            "--initial-peers",
            *state.initial_peers,
            *extra,
        ],
        timeout=240,
    )


def test_gather_equals_single_process_and_the_swarm(swarm, swarm_output, tiny_model_dir, tmp_path):
    state, _ = swarm
    out = tmp_path / "out"
    done = _cli_gather(state, tiny_model_dir, out, tmp_path / "runs", "--gguf", "f32")
    assert done.returncode == 0, done.stderr
    assert f"Hugging Face: {out / 'hf'}" in done.stdout and "from_pretrained" in done.stdout
    exported = load_causal_lm(out / "hf")
    reference = load_causal_lm(tiny_model_dir)
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        vs_single = (exported(ids).logits - reference(ids).logits).abs().max().item()
    vs_swarm = (_last_logits(exported) - swarm_output[()].first_logits).abs().max().item()
    print(
        f"base export: max |logit diff| vs single process {vs_single:.2e}, vs swarm {vs_swarm:.2e}"
    )
    assert vs_single <= 1e-4 and vs_swarm <= 1e-4
    [(gguf_tokens, _)] = reference_generate(_gguf_model(out / "model-f32.gguf"), [PROMPT], NEW)
    assert gguf_tokens == swarm_output[()].token_ids
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["layers"] for s in manifest["sources"]] == [[0, 2], [2, 4], [4, 6]]
    assert all(s["peer"] and s["extra"]["endpoint"] for s in manifest["sources"])
    [run] = (tmp_path / "runs").iterdir()
    record = json.loads((run / "run_record.json").read_text())
    assert record["status"] == "done"
    assert {a["path"].split("/")[-1] for a in record["artifacts"]} >= {
        "model.safetensors",
        "model-f32.gguf",
        "manifest.json",
    }


def test_merged_and_adapter_exports_equal_the_swarm_with_the_adapter(
    swarm, swarm_output, tiny_model_dir, tmp_path
):
    from peft import PeftModel

    state, _ = swarm
    with_adapter = swarm_output[(ADAPTER,)]
    assert with_adapter.token_ids != swarm_output[()].token_ids  # the adapter matters
    merged = gather(
        GatherOptions(
            model=str(tiny_model_dir),
            out_dir=tmp_path / "merged",
            merge_adapters=(ADAPTER,),
            gguf_types=("f32",),
        ),
        initial_peers=state.initial_peers,
    )
    merged_model = load_causal_lm(merged.export.hf_dir)
    merged_logits = _last_logits(merged_model)
    vs_swarm = (merged_logits - with_adapter.first_logits).abs().max().item()
    [(tokens, _)] = reference_generate(merged_model, [PROMPT], NEW)
    [(gguf_tokens, _)] = reference_generate(
        _gguf_model(merged.export.gguf_files["f32"]), [PROMPT], NEW
    )

    only = gather(
        GatherOptions(model=str(tiny_model_dir), out_dir=tmp_path / "adapter", adapters_only=True),
        initial_peers=state.initial_peers,
    )
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter", "manifest.json"]
    peft_model = PeftModel.from_pretrained(
        load_causal_lm(tiny_model_dir), str(only.export.adapter_dir)
    ).eval()
    vs_merged = (_last_logits(peft_model) - merged_logits).abs().max().item()
    print(
        f"merged export vs swarm with {ADAPTER}: max |logit diff| {vs_swarm:.2e}; "
        f"PEFT adapter export vs merged export {vs_merged:.2e}"
    )
    assert vs_swarm <= 1e-4 and vs_merged <= 1e-4
    assert tokens == with_adapter.token_ids and gguf_tokens == with_adapter.token_ids


def test_corrupted_chunk_fails_closed_and_a_rerun_succeeds(swarm, tiny_model_dir, tmp_path):
    state, root = swarm
    out = tmp_path / "out"
    (root / "faults" / "corrupt").touch()
    try:
        failed = _cli_gather(state, tiny_model_dir, out, tmp_path / "runs", "--gguf", "none")
    finally:
        (root / "faults" / "corrupt").unlink()  # the fix
    assert failed.returncode == 4, failed.stderr
    assert "arrived corrupt (sha256 of the received bytes differs" in failed.stderr
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    [run] = (tmp_path / "runs").iterdir()
    record = json.loads((run / "run_record.json").read_text())
    assert record["status"] == "failed" and "corrupt" in record["error"]
    result = gather(
        GatherOptions(model=str(tiny_model_dir), out_dir=out, gguf_types=()),
        initial_peers=state.initial_peers,
    )
    assert result.export.hf_dir.is_dir() and os.listdir(result.export.hf_dir)
