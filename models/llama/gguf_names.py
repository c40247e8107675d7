"""LLaMA in llama.cpp's GGUF layout: tensor names, Q/K row order, and the ``llama.*`` metadata.

Three declarative tables drive both directions (HF -> GGUF when exporting, GGUF -> HF when
inspecting):

* :data:`GLOBAL_TENSORS` and :data:`LAYER_TENSORS`: Hugging Face name <-> llama.cpp name
  (the same mapping gguf-py's ``get_tensor_name_map(MODEL_ARCH.LLAMA, n)`` gives; a unit test
  cross-checks them).
* :data:`PERMUTED`: which tensors llama.cpp stores with rotary pairs interleaved, and the head
  count to permute by. llama.cpp's converter reorders the rows of ``q_proj`` (by the attention
  head count) and ``k_proj`` (by the KV-head count under GQA) from Hugging Face's "rotate half"
  layout to its interleaved one. A file written without it still loads everywhere and silently
  gives wrong logits.
* :data:`METADATA`: ``llama.<key>`` <- config attribute, with the GGUF value type.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGUFValueType

from models.llama.tensor_names import (
    EMBED,
    FINAL_NORM,
    LM_HEAD,
    layer_tensor_name,
    parse_layer,
)

ARCH = "llama"  # general.architecture

GLOBAL_TENSORS: dict[str, str] = {
    EMBED: "token_embd.weight",
    FINAL_NORM: "output_norm.weight",
    LM_HEAD: "output.weight",
}

# per-layer HF suffix -> per-block GGUF suffix
LAYER_TENSORS: dict[str, str] = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}

# HF suffix -> config attribute holding the head count its rows are grouped by
PERMUTED: dict[str, str] = {
    "self_attn.q_proj.weight": "num_attention_heads",
    "self_attn.k_proj.weight": "num_key_value_heads",
}

_GGUF_GLOBAL = {v: k for k, v in GLOBAL_TENSORS.items()}
_GGUF_LAYER = {v: k for k, v in LAYER_TENSORS.items()}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(.+)$")


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rope_theta(config) -> float:
    """RoPE base; transformers 5 keeps it in ``rope_parameters`` (``rope_theta`` is None)."""
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    if theta is None:
        theta = getattr(config, "rope_theta", None)
    if theta is None:
        raise ValueError("config has no rope_theta (rope_parameters['rope_theta'])")
    return float(theta)


def rope_type(config) -> str:
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    return str(params.get("rope_type") or scaling.get("rope_type") or "default")


@dataclass(frozen=True)
class MetadataKey:
    """One ``llama.<key>`` field: its GGUF type, how to read it from a config, its HF name."""

    key: str
    vtype: GGUFValueType
    from_config: Callable[[Any], Any]
    hf_name: str


def _attr(name: str) -> Callable[[Any], Any]:
    return lambda config: getattr(config, name)


METADATA: tuple[MetadataKey, ...] = (
    MetadataKey(
        "block_count", GGUFValueType.UINT32, _attr("num_hidden_layers"), "num_hidden_layers"
    ),
    MetadataKey(
        "context_length",
        GGUFValueType.UINT32,
        _attr("max_position_embeddings"),
        "max_position_embeddings",
    ),
    MetadataKey("embedding_length", GGUFValueType.UINT32, _attr("hidden_size"), "hidden_size"),
    MetadataKey(
        "feed_forward_length", GGUFValueType.UINT32, _attr("intermediate_size"), "intermediate_size"
    ),
    MetadataKey(
        "attention.head_count",
        GGUFValueType.UINT32,
        _attr("num_attention_heads"),
        "num_attention_heads",
    ),
    MetadataKey(
        "attention.head_count_kv",
        GGUFValueType.UINT32,
        _attr("num_key_value_heads"),
        "num_key_value_heads",
    ),
    MetadataKey(
        "attention.layer_norm_rms_epsilon",
        GGUFValueType.FLOAT32,
        _attr("rms_norm_eps"),
        "rms_norm_eps",
    ),
    MetadataKey("rope.freq_base", GGUFValueType.FLOAT32, rope_theta, "rope_theta"),
    MetadataKey("rope.dimension_count", GGUFValueType.UINT32, head_dim, "head_dim"),
    MetadataKey("vocab_size", GGUFValueType.UINT32, _attr("vocab_size"), "vocab_size"),
)


def metadata_fields(config) -> dict[str, tuple[Any, GGUFValueType]]:
    """``{"llama.block_count": (30, UINT32), …}`` for ``config``.

    Raises ValueError for configs llama.cpp's plain LLaMA graph cannot express (scaled RoPE,
    attention/MLP biases).
    """
    if rope_type(config) != "default":
        raise ValueError(f"RoPE type {rope_type(config)!r} has no GGUF export here")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ValueError("attention/MLP biases have no llama.cpp LLaMA tensor")
    fields = {f"{ARCH}.{m.key}": (m.from_config(config), m.vtype) for m in METADATA}
    dim = head_dim(config)
    if dim * config.num_attention_heads != config.hidden_size:
        # llama.cpp assumes head_dim = hidden / heads unless told otherwise
        fields[f"{ARCH}.attention.key_length"] = (dim, GGUFValueType.UINT32)
        fields[f"{ARCH}.attention.value_length"] = (dim, GGUFValueType.UINT32)
    return fields


def hf_to_gguf_name(name: str) -> str:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight``."""
    if name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[name]
    parsed = parse_layer(name)
    if parsed is None or parsed[1] not in LAYER_TENSORS:
        raise KeyError(f"no llama.cpp name for tensor {name!r}")
    return f"blk.{parsed[0]}.{LAYER_TENSORS[parsed[1]]}"


def gguf_to_hf_name(name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``."""
    if name in _GGUF_GLOBAL:
        return _GGUF_GLOBAL[name]
    match = _BLOCK_RE.match(name)
    if match is None or match.group(2) not in _GGUF_LAYER:
        raise KeyError(f"no Hugging Face LLaMA name for GGUF tensor {name!r}")
    return layer_tensor_name(int(match.group(1)), _GGUF_LAYER[match.group(2)])


def permute_qk(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face row order -> llama.cpp's (convert_hf_to_gguf.py ``LlamaModel.permute``).

    ``weight``: (n_head * head_dim, in). Within each head, rows ``[x_0..x_{d/2}, y_0..y_{d/2}]``
    become ``[x_0, y_0, x_1, y_1, …]``.
    """
    rows = weight.shape[0]
    assert rows % (2 * n_head) == 0, (weight.shape, n_head)
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def unpermute_qk(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of :func:`permute_qk` (what GGUF readers apply on load)."""
    rows = weight.shape[0]
    assert rows % (2 * n_head) == 0, (weight.shape, n_head)
    return (
        weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def to_gguf_layout(name: str, weight: np.ndarray, config) -> tuple[str, np.ndarray]:
    """One HF tensor -> ``(gguf name, array in llama.cpp's row order)``; shapes are kept."""
    gguf_name = hf_to_gguf_name(name)
    parsed = parse_layer(name)
    if parsed is not None and parsed[1] in PERMUTED:
        out = permute_qk(weight, getattr(config, PERMUTED[parsed[1]]))
        assert out.shape == weight.shape
        return gguf_name, out
    return gguf_name, weight
