import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from base.errors import CheckpointError
from pipeline_stages.loader import load_stage


@pytest.fixture
def copy_of(tiny_model_dir, tmp_path):
    def make():
        out = tmp_path / "ckpt"
        shutil.copytree(tiny_model_dir, out)
        return out

    return make


def edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_declared_architecture_contradicting_tensors_is_refused_with_fix(copy_of):
    ckpt = copy_of()
    edit_config(ckpt, architectures=["MistralForCausalLM"], model_type="mistral")
    with pytest.raises(CheckpointError, match="tensors are LLaMA-layout") as err:
        load_stage(ckpt, 0, 2)
    assert "node0 stamp" in str(err.value) and "LlamaForCausalLM" in str(err.value)


def test_foreign_family_tensors_are_named(copy_of):
    ckpt = copy_of()
    weights = load_file(ckpt / "model.safetensors")
    weights["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    save_file(weights, ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match="Qwen2"):
        load_stage(ckpt, 0, 2)


def test_layer_count_mismatch_is_refused(copy_of):
    ckpt = copy_of()
    edit_config(ckpt, num_hidden_layers=8)
    with pytest.raises(CheckpointError, match="missing"):
        load_stage(ckpt, 0, 2)
    edit_config(ckpt, num_hidden_layers=4)
    with pytest.raises(CheckpointError, match=r"layers \[4, 5\] exist beyond"):
        load_stage(ckpt, 0, 2)


def test_shape_mismatch_is_refused(copy_of):
    ckpt = copy_of()
    edit_config(ckpt, intermediate_size=100)
    with pytest.raises(CheckpointError, match="shapes that contradict"):
        load_stage(ckpt, 0, 2)


def test_corrupt_safetensors_is_refused(copy_of):
    ckpt = copy_of()
    (ckpt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match="cannot read safetensors header"):
        load_stage(ckpt, 0, 2)


def test_layer_range_outside_model_is_refused(tiny_model_dir):
    with pytest.raises(CheckpointError, match="outside the model's 6 layers"):
        load_stage(tiny_model_dir, 4, 9)


@pytest.fixture
def qwen2_copy(tiny_qwen2_dir, tmp_path):
    out = tmp_path / "qwen2"
    shutil.copytree(tiny_qwen2_dir, out)
    return out


def test_qwen2_checkpoint_declared_as_qwen2_loads(tiny_qwen2_dir):
    from models.qwen2 import Qwen2Stage

    stage = load_stage(tiny_qwen2_dir, 0, 2)
    assert isinstance(stage, Qwen2Stage)
    assert stage.model.layers["1"].self_attn.k_proj.bias.abs().sum() > 0  # biases were loaded


def test_qwen2_tensors_declared_as_llama_are_refused_naming_qwen2(qwen2_copy):
    edit_config(qwen2_copy, architectures=["LlamaForCausalLM"], model_type="llama")
    with pytest.raises(CheckpointError, match="tensors are Qwen2-layout") as err:
        load_stage(qwen2_copy, 0, 2)
    assert "--architecture Qwen2ForCausalLM --model-type qwen2" in str(err.value)


def test_llama_tensors_declared_as_qwen2_are_refused(copy_of):
    ckpt = copy_of()
    edit_config(ckpt, architectures=["Qwen2ForCausalLM"], model_type="qwen2")
    with pytest.raises(CheckpointError, match="tensors are LLaMA-layout") as err:
        load_stage(ckpt, 0, 2)
    assert "--architecture LlamaForCausalLM" in str(err.value)


def test_layer_tensors_the_family_lacks_are_refused(qwen2_copy):
    weights = load_file(qwen2_copy / "model.safetensors")
    weights["model.layers.3.self_attn.o_proj.bias"] = torch.zeros(64)
    save_file(weights, qwen2_copy / "model.safetensors")
    with pytest.raises(CheckpointError, match="not part of a Qwen2 block") as err:
        load_stage(qwen2_copy, 0, 2)
    assert "model.layers.3.self_attn.o_proj.bias" in str(err.value)


def test_unsupported_family_is_refused_even_with_a_known_signature(qwen2_copy):
    weights = load_file(qwen2_copy / "model.safetensors")
    weights["model.layers.0.self_attn.q_norm.weight"] = torch.ones(16)
    save_file(weights, qwen2_copy / "model.safetensors")
    with pytest.raises(CheckpointError, match="look like Qwen3ForCausalLM") as err:
        load_stage(qwen2_copy, 0, 2)
    assert "LLaMA (LlamaForCausalLM), Qwen2 (Qwen2ForCausalLM)" in str(err.value)


def test_qwen2_sliding_window_is_refused(qwen2_copy):
    edit_config(qwen2_copy, use_sliding_window=True, sliding_window=8, max_window_layers=2)
    with pytest.raises(CheckpointError, match="sliding-window attention"):
        load_stage(qwen2_copy, 0, 2)
