"""The LLaMA <-> llama.cpp mapping tables against gguf-py's own and transformers' reader."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import MODEL_ARCH, get_tensor_name_map

from models.llama import gguf_names
from models.llama.tensor_names import LAYER_TENSORS, layer_tensor_name
from models.tiny import tiny_llama_config


def test_names_match_gguf_py_table():
    n_layers = 3
    reference = get_tensor_name_map(MODEL_ARCH.LLAMA, n_layers)
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    names += [layer_tensor_name(i, s) for i in range(n_layers) for s in LAYER_TENSORS]
    for name in names:
        ours = gguf_names.hf_to_gguf_name(name)
        theirs = reference.get_name(name, try_suffixes=(".weight",))
        assert ours == theirs, name
        assert gguf_names.gguf_to_hf_name(ours) == name


def test_unknown_names_are_refused():
    with pytest.raises(KeyError):
        gguf_names.hf_to_gguf_name("model.layers.0.self_attn.q_proj.bias")
    with pytest.raises(KeyError):
        gguf_names.gguf_to_hf_name("blk.0.attn_qkv.weight")


def test_permutation_is_what_transformers_reverses():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    config = tiny_llama_config(num_layers=1)  # 4 heads, 2 KV heads, head_dim 16
    rng = np.random.default_rng(0)
    q = rng.standard_normal((64, 64)).astype(np.float32)
    k = rng.standard_normal((32, 64)).astype(np.float32)
    _, q_gguf = gguf_names.to_gguf_layout("model.layers.0.self_attn.q_proj.weight", q, config)
    _, k_gguf = gguf_names.to_gguf_layout("model.layers.0.self_attn.k_proj.weight", k, config)
    assert not np.array_equal(q_gguf, q) and not np.array_equal(k_gguf, k)
    reader = LlamaTensorProcessor(config={"num_attention_heads": 4, "num_key_value_heads": 2})
    back_q = reader.process(q_gguf, "blk.0.attn_q.weight").weights
    back_k = reader.process(k_gguf, "blk.0.attn_k.weight").weights
    np.testing.assert_array_equal(back_q, q)
    np.testing.assert_array_equal(back_k, k)
    np.testing.assert_array_equal(gguf_names.unpermute_qk(q_gguf, 4), q)
    v = rng.standard_normal((32, 64)).astype(np.float32)
    assert gguf_names.to_gguf_layout("model.layers.0.self_attn.v_proj.weight", v, config)[1] is v


def test_metadata_fields():
    config = tiny_llama_config(num_layers=2)
    fields = gguf_names.metadata_fields(config)
    assert fields["llama.block_count"][0] == 2
    assert fields["llama.attention.head_count_kv"][0] == 2
    assert fields["llama.rope.dimension_count"][0] == 16
    assert fields["llama.rope.freq_base"][0] == gguf_names.rope_theta(config)
    assert fields["llama.vocab_size"][0] == config.vocab_size
    assert "llama.attention.key_length" not in fields
    config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    with pytest.raises(ValueError, match="RoPE type"):
        gguf_names.metadata_fields(config)
