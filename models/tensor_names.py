"""Tensor names every family here shares: the Hugging Face decoder-only layout.

``model.embed_tokens`` / ``model.layers.<i>.…`` / ``model.norm`` / ``lm_head``, as LLaMA, Qwen2,
Mistral and most decoder-only models name them. A stage holds its modules under the same names
as the whole ``…ForCausalLM`` (global layer indices), so a stage's state dict, its PEFT adapter
keys and the gathered checkpoint all share one naming scheme. What a *layer* holds is the
family's business (:attr:`models.family.ModelFamily.layer_shapes`).
"""

from __future__ import annotations

import re

EMBED = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"

_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def layer_tensor_name(layer: int, suffix: str) -> str:
    """``(3, "mlp.up_proj.weight")`` -> ``model.layers.3.mlp.up_proj.weight``."""
    return f"model.layers.{layer}.{suffix}"


def parse_layer(name: str) -> tuple[int, str] | None:
    """``model.layers.12.mlp.up_proj.weight`` -> ``(12, "mlp.up_proj.weight")``."""
    match = _LAYER_RE.match(name)
    return (int(match.group(1)), match.group(2)) if match else None


def head_dim(config) -> int:
    """The attention head size: ``config.head_dim`` if set, else hidden / heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def decoder_layer_shapes(config) -> dict[str, tuple[int, ...]]:
    """The tensors of a LLaMA-style block (RMSNorms, q/k/v/o without bias, gated MLP).

    Families with more per layer (Qwen2's q/k/v biases) start from this table.
    """
    hidden = config.hidden_size
    q_out = config.num_attention_heads * head_dim(config)
    kv_out = config.num_key_value_heads * head_dim(config)
    inter = config.intermediate_size
    return {
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
