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
