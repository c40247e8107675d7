"""The family registry: lookups by config, architecture and GGUF arch; each family's tables
equal the tensors of transformers' own model of that family."""

from __future__ import annotations

import pytest
import torch

from base.errors import CheckpointError
from models import (
    declared_family,
    families,
    family_for_gguf,
    family_of,
    get_family,
    register_family,
)
from models.tiny import tiny_llama_config, tiny_qwen2_config

CONFIGS = {"llama": tiny_llama_config, "qwen2": tiny_qwen2_config}


def test_built_in_families_are_registered():
    assert [f.name for f in families()] == ["llama", "qwen2"]
    assert get_family("qwen2").architecture == "Qwen2ForCausalLM"
    with pytest.raises(KeyError, match="no model family 'mixtral'"):
        get_family("mixtral")


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_lookup_by_config_object_dict_and_gguf_arch(name):
    family = get_family(name)
    config = CONFIGS[name]()
    assert family_of(config) is family and declared_family(config) is family
    assert family_of(config.to_dict()) is family
    assert family_of({"architectures": [family.architecture]}) is family
    assert family_for_gguf(family.gguf.arch) is family
    assert type(family.export_config(config.to_dict())) is family.config_class


def test_unknown_family_is_refused_naming_the_supported_ones():
    with pytest.raises(CheckpointError, match=r"LLaMA \(LlamaForCausalLM\), Qwen2"):
        family_of({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral"})
    assert declared_family({"architectures": ["LlamaForCausalLM"], "model_type": "qwen2"}) is None
    assert family_for_gguf("gpt2") is None


def test_a_family_cannot_take_another_ones_names():
    import dataclasses

    clash = dataclasses.replace(get_family("qwen2"), name="qwen2-again")
    with pytest.raises(ValueError, match="reuses"):
        register_family(clash)
    assert register_family(get_family("qwen2")) is get_family("qwen2")  # idempotent


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_tables_equal_the_transformers_model_of_the_family(name):
    from transformers import AutoModelForCausalLM

    family = get_family(name)
    config = CONFIGS[name](num_layers=2)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    reference = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    assert family.expected_shapes(config, range(2), first=True, last=True) == reference
    with torch.device("meta"):
        stage = family.build_stage(config, 0, 2)
    assert {n: tuple(t.shape) for n, t in stage.state_dict().items()} == reference
