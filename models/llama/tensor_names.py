"""LLaMA's per-layer tensors in the Hugging Face layout.

The global names (embedding, final norm, LM head) and the ``model.layers.<i>.`` scheme are the
shared ones of :mod:`models.tensor_names`; a LLaMA block is the plain decoder block: two
RMSNorms, q/k/v/o projections without bias and a gated MLP.
"""

from __future__ import annotations

from models.tensor_names import decoder_layer_shapes

# per-layer tensor suffixes, in the order a block lists them
LAYER_TENSORS: tuple[str, ...] = (
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)


def layer_shapes(config) -> dict[str, tuple[int, ...]]:
    """Per-layer suffix -> shape for a LLaMA config."""
    shapes = decoder_layer_shapes(config)
    assert tuple(shapes) == LAYER_TENSORS
    return shapes
