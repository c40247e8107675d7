"""``node0 gather`` from a live 3-stage swarm of real daemons holding the tiny model in bfloat16.

Gathered to bf16 (the default for a swarm that holds bf16), the export holds the exact bytes the
stages hold: every safetensors tensor equals the source checkpoint's tensor converted once to
bf16 (``torch.equal``), and transformers loads it in bf16 with logits equal to the source loaded
in bf16. The GGUF bf16 file read back by transformers' GGUF loader has the same weights; the
GGUF f16 file (which holds these bf16 values) gives the same logits within 1e-4 in float32.
Asked for float32, the export is the stages' bf16 values widened. With CUDA (marked ``gpu``), the
same from daemons on ``cuda``.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from checkpoint_gather.gather import GatherOptions, gather
from tests.fixtures import PROMPT_IDS, local_swarm, run_cli

pytestmark = pytest.mark.integration

SPLIT = [("s0", [(0, 2)]), ("s1", [(2, 4)]), ("s2", [(4, 6)])]
HELD = {"dtype": "bfloat16", "rule": "the dtype every stage holds", "held": ["bfloat16"]}


@pytest.fixture(scope="module")
def swarm(tiny_model_dir, tmp_path_factory):
    with local_swarm(
        tmp_path_factory.mktemp("gather-bf16"), str(tiny_model_dir), SPLIT, dtype="bfloat16"
    ) as state:
        yield state


def _load(path, dtype, **kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype, local_files_only=True, **kw
    ).eval()


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(PROMPT_IDS).logits


def _source(model_dir) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")  # float32, as built


def test_bf16_swarm_gathered_to_bf16_writes_the_stages_exact_bytes(swarm, tiny_model_dir, tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    done = run_cli(
        [
            "node.cli",
            "gather",
            "--model",
            str(tiny_model_dir),
            "--out",
            str(out),
            "--runs-dir",
            str(runs),
            "--gguf",
            "bf16,f16",
            "--initial-peers",
            *swarm.initial_peers,
        ],
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert f"Hugging Face: {out / 'hf'} (bfloat16)" in done.stdout
    source = _source(tiny_model_dir)
    written = load_file(out / "hf" / "model.safetensors")
    assert set(written) == set(source)
    for name, tensor in written.items():
        assert tensor.dtype == torch.bfloat16, name
        assert torch.equal(tensor, source[name].to(torch.bfloat16)), name
    assert json.loads((out / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((out / "manifest.json").read_text())["dtype"] == HELD
    [run] = runs.iterdir()
    record = json.loads((run / "run_record.json").read_text())
    assert record["status"] == "done" and record["dtype"] == HELD
    assert yaml.safe_load((run / "config_resolved.yaml").read_text())["dtype"] == "auto"

    exported = _load(out / "hf", torch.bfloat16)
    reference = _load(tiny_model_dir, torch.bfloat16)
    assert torch.equal(_logits(exported), _logits(reference))

    from_gguf = _load(out, torch.bfloat16, gguf_file="model-bf16.gguf")
    ours = exported.state_dict()
    for name, tensor in from_gguf.state_dict().items():
        assert torch.equal(tensor, ours[name]), name
    bf16_gap = (_logits(from_gguf) - _logits(reference)).abs().max().item()
    f16 = _load(out, torch.float32, gguf_file="model-f16.gguf")
    f16_gap = (_logits(f16) - _logits(_load(out / "hf", torch.float32))).abs().max().item()
    print(
        f"bf16 swarm: GGUF bf16 (bf16) vs reference bf16 max |dlogit| {bf16_gap:.3e}; "
        f"GGUF f16 vs the bf16 export, both in fp32: {f16_gap:.3e}"
    )
    assert bf16_gap == 0.0 and f16_gap <= 1e-4


def test_bf16_swarm_gathered_to_float32_is_widened_exactly(swarm, tiny_model_dir, tmp_path):
    result = gather(
        GatherOptions(
            model=str(tiny_model_dir), out_dir=tmp_path / "out", dtype="float32", gguf_types=()
        ),
        initial_peers=swarm.initial_peers,
    )
    source = _source(tiny_model_dir)
    for name, tensor in load_file(result.export.hf_dir / "model.safetensors").items():
        assert tensor.dtype == torch.float32, name
        assert torch.equal(tensor, source[name].to(torch.bfloat16).float()), name
    manifest = json.loads(result.export.manifest.read_text())
    assert manifest["dtype"] == {"dtype": "float32", "rule": "asked", "held": ["bfloat16"]}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_swarm_on_cuda_gathers_its_exact_bytes(tiny_model_dir, tmp_path):
    daemon = {"dtype": "bfloat16", "device": "cuda"}
    with local_swarm(tmp_path / "swarm", str(tiny_model_dir), SPLIT, **daemon) as state:
        result = gather(
            GatherOptions(model=str(tiny_model_dir), out_dir=tmp_path / "out", gguf_types=()),
            initial_peers=state.initial_peers,
        )
    source = _source(tiny_model_dir)
    for name, tensor in load_file(result.export.hf_dir / "model.safetensors").items():
        assert torch.equal(tensor, source[name].to(torch.bfloat16)), name
