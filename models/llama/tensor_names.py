"""LLaMA tensor names in the Hugging Face layout, and signatures of other families.

A stage holds its modules under the same names as the full ``LlamaForCausalLM`` (global layer
indices), so a stage's state dict, its PEFT adapter keys and the gathered checkpoint all share
one naming scheme.
"""

from __future__ import annotations

import re

EMBED = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"

# per-layer tensor suffix -> shape as a function of the config
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

_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

# Tensor-name fragments that identify a family other than LLaMA (checked in order).
FOREIGN_SIGNATURES: tuple[tuple[str, str], ...] = (
    ("self_attn.q_proj.bias", "Qwen2ForCausalLM (model_type qwen2): biased q/k/v"),
    ("self_attn.q_norm.weight", "Qwen3ForCausalLM (model_type qwen3): per-head q/k norms"),
    ("block_sparse_moe", "MixtralForCausalLM (model_type mixtral): mixture-of-experts blocks"),
    ("mlp.experts.", "a mixture-of-experts model: expert MLPs"),
    ("attn.c_attn", "GPT2LMHeadModel (model_type gpt2)"),
    ("self_attention.query_key_value", "a Falcon/BLOOM-style fused attention model"),
    ("mlp.fc1", "a Phi-style model (fc1/fc2 MLP)"),
)


def layer_tensor_name(layer: int, suffix: str) -> str:
    return f"model.layers.{layer}.{suffix}"


def parse_layer(name: str) -> tuple[int, str] | None:
    """``model.layers.12.mlp.up_proj.weight`` -> ``(12, "mlp.up_proj.weight")``."""
    match = _LAYER_RE.match(name)
    return (int(match.group(1)), match.group(2)) if match else None


def expected_shapes(
    config, layers: range, *, first: bool, last: bool
) -> dict[str, tuple[int, ...]]:
    """Every tensor a stage covering ``layers`` needs, with its shape from the config."""
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q_out = config.num_attention_heads * head_dim
    kv_out = config.num_key_value_heads * head_dim
    inter = config.intermediate_size
    per_layer = {
        "input_layernorm.weight": (hidden,),
        "post_attention_layernorm.weight": (hidden,),
        "self_attn.q_proj.weight": (q_out, hidden),
        "self_attn.k_proj.weight": (kv_out, hidden),
        "self_attn.v_proj.weight": (kv_out, hidden),
        "self_attn.o_proj.weight": (hidden, q_out),
        "mlp.gate_proj.weight": (inter, hidden),
        "mlp.up_proj.weight": (inter, hidden),
        "mlp.down_proj.weight": (hidden, inter),
    }
    shapes: dict[str, tuple[int, ...]] = {}
    if first:
        shapes[EMBED] = (config.vocab_size, hidden)
    for layer in layers:
        for suffix, shape in per_layer.items():
            shapes[layer_tensor_name(layer, suffix)] = shape
    if last:
        shapes[FINAL_NORM] = (hidden,)
        shapes[LM_HEAD] = (config.vocab_size, hidden)
    return shapes
