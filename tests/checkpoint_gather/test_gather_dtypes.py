"""Exports in the asked dtype (offline, and pulled from bf16 stages in process): each tensor is
the source converted once (bitwise), a tensor already in the dtype keeps its bytes, config.json,
the manifest and the run record say which dtype and why, and a value a dtype cannot hold is
refused — never written as an infinity, never silently written in another dtype."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from base.errors import CheckpointError, ConfigError, ExitCode, RequestError
from checkpoint_gather.dtypes import resolve_export_dtype
from checkpoint_gather.export import export_checkpoint
from checkpoint_gather.gather import GatherOptions, StagePlan, gather_stages
from checkpoint_gather.merge import merge_adapters
from checkpoint_gather.sources import manifest_from_state_dict, read_local_stage, tensor_sha256
from checkpoint_gather.weights_client import PullTarget
from lora import LoraSettings
from provenance import create_run_dir
from tests.fixtures import NUM_LAYERS, PROMPT_IDS, STAGES, stage_server

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BIG = "model.layers.3.mlp.up_proj.weight"  # the weight given an out-of-range value below


def sources(model_dir, dtypes=None):
    """``[(manifest, state)]`` per stage of ``STAGES``, each read in its dtype (default float32;
    converted once, as a stage loads it)."""
    dtypes = dtypes or (torch.float32,) * len(STAGES)
    return [
        read_local_stage(model_dir, s, e, num_layers=NUM_LAYERS, source_id=f"stage-{s}", dtype=d)
        for (s, e), d in zip(STAGES, dtypes, strict=True)
    ]


def source_tensors(model_dir) -> dict[str, torch.Tensor]:
    """The checkpoint's own tensors (float32), by name."""
    return {n: t for _, state in sources(model_dir) for n, t in state.items()}


def export(model_dir, out, srcs, **kw):
    kw = {"gguf_types": (), **kw}
    return export_checkpoint(out, _config(model_dir), srcs, tokenizer_dir=model_dir, **kw)


def _config(model_dir):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(model_dir), local_files_only=True)


def _load(path, dtype, **kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype, local_files_only=True, **kw
    ).eval()


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(PROMPT_IDS).logits


def test_the_rule():
    assert resolve_export_dtype(None, ["bfloat16"]).to_json() == {
        "dtype": "bfloat16",
        "rule": "the dtype every stage holds",
        "held": ["bfloat16"],
    }
    mixed = resolve_export_dtype(None, ["float16", "bfloat16"])
    assert (mixed.name, mixed.as_held) == ("float32", False)
    assert mixed.rule == "float32: the stages hold bfloat16, float16"
    asked = resolve_export_dtype("float16", ["float32"])
    assert (asked.name, asked.rule, asked.as_held) == ("float16", "asked", False)
    assert resolve_export_dtype("bfloat16", ["bfloat16"]).as_held
    with pytest.raises(ConfigError, match="unknown dtype 'float64'") as info:
        resolve_export_dtype("float64", ["float32"])
    assert info.value.exit_code == ExitCode.CONFIG


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_asked_dtype_is_the_source_converted_once(tiny_models, tmp_path, dtype):
    src = tiny_models[False]
    run = create_run_dir(tmp_path / "runs", "gather-test", config={"dtype": dtype})
    result = export(src, tmp_path / "out", sources(src), dtype=dtype, run=run)
    want = DTYPES[dtype]
    written = load_file(result.hf_dir / "model.safetensors")
    original = source_tensors(src)
    assert set(written) == set(original)
    for name, tensor in written.items():
        assert tensor.dtype == want and torch.equal(tensor, original[name].to(want)), name
    config = json.loads((result.hf_dir / "config.json").read_text())
    assert config["dtype"] == dtype == result.dtype
    record = json.loads((result.hf_dir / "node0_export.json").read_text())
    assert record["dtype"] == dtype
    assert record["tensors"] == {n: tensor_sha256(t) for n, t in sorted(written.items())}
    expected = {"dtype": dtype, "rule": "asked", "held": ["float32"]}
    assert json.loads(result.manifest.read_text())["dtype"] == expected
    assert json.loads((run.path / "run_record.json").read_text())["dtype"] == expected
    # transformers loads it in that dtype with the logits of the source loaded in that dtype
    assert torch.equal(_logits(_load(result.hf_dir, want)), _logits(_load(src, want)))


def test_bf16_stages_export_their_exact_bytes_to_hf_and_gguf_bf16(tiny_models, tmp_path):
    from gguf import GGMLQuantizationType, GGUFReader

    src = tiny_models[True]
    srcs = sources(src, (torch.bfloat16,) * len(STAGES))
    held = {n: t for _, state in srcs for n, t in state.items()}
    result = export(src, tmp_path / "out", srcs, gguf_types=("bf16", "f16"))  # dtype: the rule
    assert json.loads(result.manifest.read_text())["dtype"]["rule"] == "the dtype every stage holds"
    written = load_file(result.hf_dir / "model.safetensors")
    for name, tensor in written.items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, held[name]), name
    reader = GGUFReader(str(result.gguf_files["bf16"]))
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert embd.tensor_type == GGMLQuantizationType.BF16
    embed = held["model.embed_tokens.weight"]
    assert np.asarray(embd.data).tobytes() == embed.view(torch.uint16).numpy().tobytes()
    # transformers' GGUF loader, in bf16: every weight is the stages' (Q/K rows un-permuted)
    hf = _load(result.hf_dir, torch.bfloat16)
    gguf_file = result.gguf_files["bf16"]
    from_gguf = _load(gguf_file.parent, torch.bfloat16, gguf_file=gguf_file.name)
    ours = hf.state_dict()
    for name, tensor in from_gguf.state_dict().items():
        assert torch.equal(tensor, ours[name]), name
    worst = (_logits(from_gguf) - _logits(hf)).abs().max().item()
    print(f"GGUF bf16 of bf16 stages vs their HF bf16 export: max |dlogit| {worst:.3e}")
    assert worst == 0.0
    # f16 holds every bf16 value of these weights (none below f16's normal range here)
    gguf_file = result.gguf_files["f16"]
    f16 = _load(gguf_file.parent, torch.float32, gguf_file=gguf_file.name)
    worst = (_logits(f16) - _logits(_load(result.hf_dir, torch.float32))).abs().max().item()
    print(f"GGUF f16 of bf16 stages vs their HF export, both in fp32: max |dlogit| {worst:.3e}")
    assert worst <= 1e-4


def test_stages_that_disagree_export_float32(tiny_models, tmp_path):
    src = tiny_models[False]
    srcs = sources(src, (torch.bfloat16, torch.float16, torch.float32))
    result = export(src, tmp_path / "out", srcs)
    manifest = json.loads(result.manifest.read_text())
    assert manifest["dtype"] == {
        "dtype": "float32",
        "rule": "float32: the stages hold bfloat16, float16, float32",
        "held": ["bfloat16", "float16", "float32"],
    }
    held = {n: t for _, state in srcs for n, t in state.items()}
    for name, tensor in load_file(result.hf_dir / "model.safetensors").items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, held[name].float()), name


def _with_value(srcs, value: float):
    """``srcs`` with one element of :data:`BIG` set to ``value`` (manifest re-declared)."""
    out = []
    for manifest, state in srcs:
        if BIG in state:
            state = {**state, BIG: state[BIG].clone()}
            state[BIG][0, 0] = value
            manifest = manifest_from_state_dict(
                manifest.source_id, manifest.start, manifest.end, state
            )
        out.append((manifest, state))
    return out


@pytest.mark.parametrize(
    "value, kw, message",
    [
        (1e5, {"dtype": "float16"}, "beyond the largest float16 can hold"),
        (1e5, {"hf": False, "gguf_types": ("f16",)}, "beyond the largest GGUF F16 can hold"),
        (1e7, {"hf": False, "gguf_types": ("q8_0",)}, "beyond the largest GGUF Q8_0 can hold"),
        (3.4e38, {"hf": False, "gguf_types": ("bf16",)}, "beyond the largest GGUF BF16 can hold"),
        (3.4e38, {"dtype": "bfloat16"}, "beyond the largest bfloat16 can hold"),
    ],
)
def test_a_value_the_dtype_cannot_hold_is_refused(tiny_models, tmp_path, value, kw, message):
    src = tiny_models[False]
    run = create_run_dir(tmp_path / "runs", "gather-test", config={})
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=f"{BIG}: holds values up to .*{message}") as info:
        export(src, out, _with_value(sources(src), value), run=run, **kw)
    assert info.value.exit_code == ExitCode.CHECKPOINT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing, no temporary
    record = json.loads((run.path / "run_record.json").read_text())
    assert record["status"] == "failed" and BIG in record["error"]


def test_values_that_fit_are_written_and_infinities_stay_infinities(tiny_models, tmp_path):
    src = tiny_models[False]
    big = export(src, tmp_path / "big", _with_value(sources(src), 1e5), dtype="bfloat16")
    assert load_file(big.hf_dir / "model.safetensors")[BIG][0, 0].item() == 99840.0  # rounded
    inf = export(src, tmp_path / "inf", _with_value(sources(src), float("inf")), dtype="float16")
    assert load_file(inf.hf_dir / "model.safetensors")[BIG][0, 0].item() == float("inf")


def test_a_tensor_no_export_dtype_holds_is_refused(tiny_models, tmp_path):
    src = tiny_models[False]
    srcs = sources(src)
    manifest, state = srcs[1]
    state = {**state, BIG: state[BIG].to(torch.int8)}
    srcs[1] = (manifest_from_state_dict(manifest.source_id, 2, 5, state), state)
    with pytest.raises(CheckpointError, match=f"{BIG}: dtype int8, expected one of float32"):
        export(src, tmp_path / "out", srcs, hf=False, gguf_types=("bf16",))
    assert not (tmp_path / "out").exists()


def test_gather_options_and_cli_refuse_a_dtype_they_cannot_apply(tmp_path):
    with pytest.raises(ConfigError, match="unknown dtype 'float64'"):
        GatherOptions(model="m", out_dir=tmp_path / "o", dtype="float64")
    for kw in ({"adapters_only": True}, {"hf": False}):
        with pytest.raises(RequestError, match="--dtype sets the Hugging Face weights' dtype"):
            GatherOptions(model="m", out_dir=tmp_path / "o", dtype="bfloat16", **kw)
    from checkpoint_gather.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["gather", "--out", "o", "--gguf", "bf16,q8_0"])
    assert (args.dtype, args.gguf) == ("auto", ("bf16", "q8_0"))
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["gather", "--out", "o", "--dtype", "float64"])
    assert info.value.code == ExitCode.USAGE


def test_merged_weights_are_rounded_once():
    torch.manual_seed(0)
    name = "model.layers.0.self_attn.q_proj.weight"
    weight = torch.randn(8, 8).to(torch.bfloat16)
    settings = LoraSettings(rank=2, alpha=4.0, target_modules=("q_proj",))
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    adapters = [
        {f"{prefix}.lora_A.weight": torch.randn(2, 8), f"{prefix}.lora_B.weight": torch.randn(8, 2)}
        for _ in range(2)
    ]
    base = {name: weight}
    assert merge_adapters(base, [(settings, a) for a in adapters]) == [name]
    exact = weight.float() + sum(
        settings.scaling * a[f"{prefix}.lora_B.weight"] @ a[f"{prefix}.lora_A.weight"]
        for a in adapters
    )
    assert base[name].dtype == torch.float32 and torch.allclose(base[name], exact, atol=1e-6)


def test_bf16_stages_pulled_in_process_keep_their_bytes(tiny_models, tmp_path):
    src = tiny_models[False]
    with stage_server(src, dtype=torch.bfloat16) as (_, _, endpoint):
        plans = [StagePlan(s, e, (PullTarget(endpoint, "peer-a", s, e),)) for s, e in STAGES]
        result = gather_stages(
            GatherOptions(model=str(src), out_dir=tmp_path / "out", gguf_types=()),
            plans,
            tokenizer_dir=src,
        )
    assert [s.base.tensors[BIG].dtype for s in result.stages if BIG in s.base.tensors] == [
        "bfloat16"
    ]
    original = source_tensors(src)
    for name, tensor in load_file(result.export.hf_dir / "model.safetensors").items():
        assert tensor.dtype == torch.bfloat16, name
        assert torch.equal(tensor, original[name].to(torch.bfloat16)), name
