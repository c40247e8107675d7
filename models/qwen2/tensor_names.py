"""Qwen2's per-layer tensors in the Hugging Face layout: a LLaMA block with q/k/v biases.

``Qwen2Attention`` gives ``q_proj``, ``k_proj`` and ``v_proj`` a bias (``o_proj`` none); norms,
MLP and the global tensors are the shared decoder ones (:mod:`models.tensor_names`).
"""

from __future__ import annotations

from models.tensor_names import decoder_layer_shapes, head_dim

BIASES: tuple[str, ...] = (
    "self_attn.q_proj.bias",
    "self_attn.k_proj.bias",
    "self_attn.v_proj.bias",
)


def layer_shapes(config) -> dict[str, tuple[int, ...]]:
    """Per-layer suffix -> shape for a Qwen2 config."""
    shapes = decoder_layer_shapes(config)
    q_out = config.num_attention_heads * head_dim(config)
    kv_out = config.num_key_value_heads * head_dim(config)
    shapes["self_attn.q_proj.bias"] = (q_out,)
    shapes["self_attn.k_proj.bias"] = (kv_out,)
    shapes["self_attn.v_proj.bias"] = (kv_out,)
    return shapes
