"""Each family's HF <-> llama.cpp tables against gguf-py's own and transformers' GGUF reader."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

from models import families, get_family
from models.gguf_layout import rope_theta, unpermute_qk
from models.tiny import tiny_llama_config, tiny_qwen2_config

CONFIGS = {"llama": tiny_llama_config, "qwen2": tiny_qwen2_config}
FAMILIES = [f.name for f in families()]


@pytest.mark.parametrize("name", FAMILIES)
def test_names_match_gguf_py_table(name):
    family = get_family(name)
    n_layers = 3
    config = CONFIGS[name](num_layers=n_layers)
    arch = next(a for a, n in MODEL_ARCH_NAMES.items() if n == family.gguf.arch)
    reference = get_tensor_name_map(arch, n_layers)
    names = family.expected_shapes(config, range(n_layers), first=True, last=True)
    for hf_name in names:
        ours = family.gguf.hf_to_gguf_name(hf_name)
        assert ours == reference.get_name(hf_name, try_suffixes=(".weight", ".bias")), hf_name
        assert family.gguf.gguf_to_hf_name(ours) == hf_name


def test_unknown_names_are_refused():
    llama, qwen2 = get_family("llama").gguf, get_family("qwen2").gguf
    with pytest.raises(KeyError):
        llama.hf_to_gguf_name("model.layers.0.self_attn.q_proj.bias")
    assert qwen2.hf_to_gguf_name("model.layers.0.self_attn.q_proj.bias") == "blk.0.attn_q.bias"
    with pytest.raises(KeyError):
        qwen2.hf_to_gguf_name("model.layers.0.self_attn.o_proj.bias")
    for layout in (llama, qwen2):
        with pytest.raises(KeyError):
            layout.gguf_to_hf_name("blk.0.attn_qkv.weight")


def test_llama_permutation_is_what_transformers_reverses():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    layout = get_family("llama").gguf
    config = tiny_llama_config(num_layers=1)  # 4 heads, 2 KV heads, head_dim 16
    rng = np.random.default_rng(0)
    q = rng.standard_normal((64, 64)).astype(np.float32)
    k = rng.standard_normal((32, 64)).astype(np.float32)
    _, q_gguf = layout.to_gguf_layout("model.layers.0.self_attn.q_proj.weight", q, config)
    _, k_gguf = layout.to_gguf_layout("model.layers.0.self_attn.k_proj.weight", k, config)
    assert not np.array_equal(q_gguf, q) and not np.array_equal(k_gguf, k)
    reader = LlamaTensorProcessor(config={"num_attention_heads": 4, "num_key_value_heads": 2})
    back_q = reader.process(q_gguf, "blk.0.attn_q.weight").weights
    back_k = reader.process(k_gguf, "blk.0.attn_k.weight").weights
    np.testing.assert_array_equal(back_q, q)
    np.testing.assert_array_equal(back_k, k)
    np.testing.assert_array_equal(unpermute_qk(q_gguf, 4), q)
    v = rng.standard_normal((32, 64)).astype(np.float32)
    assert layout.to_gguf_layout("model.layers.0.self_attn.v_proj.weight", v, config)[1] is v


def test_qwen2_rows_stay_in_hugging_face_order():
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS

    layout = get_family("qwen2").gguf
    config = tiny_qwen2_config(num_layers=1)
    rng = np.random.default_rng(0)
    for suffix, rows in (("q_proj.weight", 64), ("k_proj.weight", 32), ("q_proj.bias", 64)):
        weight = rng.standard_normal((rows, 64) if suffix.endswith("weight") else (rows,))
        name = f"model.layers.0.self_attn.{suffix}"
        assert layout.to_gguf_layout(name, weight, config)[1] is weight
    assert "qwen2" not in TENSOR_PROCESSORS  # transformers reads qwen2 tensors as they are


@pytest.mark.parametrize("name", FAMILIES)
def test_metadata_fields(name):
    family = get_family(name)
    arch = family.gguf.arch
    config = CONFIGS[name](num_layers=2)
    fields = family.gguf.metadata_fields(config)
    assert fields[f"{arch}.block_count"][0] == 2
    assert fields[f"{arch}.attention.head_count_kv"][0] == 2
    assert fields[f"{arch}.rope.dimension_count"][0] == 16
    assert fields[f"{arch}.rope.freq_base"][0] == rope_theta(config)
    assert fields[f"{arch}.attention.layer_norm_rms_epsilon"][0] == config.rms_norm_eps
    assert fields[f"{arch}.vocab_size"][0] == config.vocab_size
    assert f"{arch}.attention.key_length" not in fields
    assert all(key.startswith(f"{arch}.") for key in fields)
    config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    with pytest.raises(ValueError, match="RoPE type"):
        family.gguf.metadata_fields(config)
