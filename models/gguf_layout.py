"""A family in llama.cpp's GGUF layout: tensor names, row order and ``<arch>.*`` metadata.

One :class:`GGUFLayout` per family drives both directions (HF -> GGUF when exporting, GGUF ->
HF when inspecting) from declarative tables:

* ``layer_tensors``: Hugging Face per-layer suffix <-> per-block GGUF suffix, plus the three
  global tensors of :data:`GLOBAL_TENSORS` (each family's tables equal what gguf-py's
  ``get_tensor_name_map(MODEL_ARCH.<X>, n)`` gives; unit tests cross-check them);
* ``permuted``: which tensors llama.cpp stores with rotary pairs interleaved, and the head count
  to permute by (LLaMA's q/k; none for Qwen2, whose llama.cpp graph uses NEOX-style RoPE on the
  Hugging Face row order). A file written with the wrong choice still loads everywhere and
  silently gives wrong logits;
* ``metadata``: ``<arch>.<key>`` <- config attribute, with the GGUF value type.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf import GGUFValueType

from models.tensor_names import EMBED, FINAL_NORM, LM_HEAD, head_dim, layer_tensor_name, parse_layer

GLOBAL_TENSORS: dict[str, str] = {
    EMBED: "token_embd.weight",
    FINAL_NORM: "output_norm.weight",
    LM_HEAD: "output.weight",
}

# per-layer HF suffix -> per-block GGUF suffix of a LLaMA-style block
DECODER_LAYER_TENSORS: dict[str, str] = {
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

_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(.+)$")


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
    """One ``<arch>.<key>`` field: its GGUF type, how to read it from a config, its HF name."""

    key: str
    vtype: GGUFValueType
    from_config: Callable[[Any], Any]
    hf_name: str


def _attr(name: str) -> Callable[[Any], Any]:
    return lambda config: getattr(config, name)


# the hyperparameters llama.cpp's converter writes for a LLaMA-style decoder (TextModel)
DECODER_METADATA: tuple[MetadataKey, ...] = (
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


def permute_qk(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face row order -> llama.cpp's (convert_hf_to_gguf.py ``LlamaModel.permute``).

    ``weight``: (n_head * head_dim, …). Within each head, rows ``[x_0..x_{d/2}, y_0..y_{d/2}]``
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


def _no_objection(config) -> str | None:
    return None


@dataclass(frozen=True, eq=False)
class GGUFLayout:
    """How one family's tensors and hyperparameters are written in a llama.cpp GGUF.

    Attributes:
        arch: ``general.architecture`` and the prefix of the hyperparameter keys.
        layer_tensors: HF per-layer suffix -> GGUF per-block suffix.
        permuted: HF per-layer suffix -> config attribute holding the head count its rows are
            grouped by; those tensors get :func:`permute_qk`.
        metadata: the ``<arch>.<key>`` fields written from the config.
        refuse: a reason this config has no GGUF form here (None: it has one).
    """

    arch: str
    layer_tensors: Mapping[str, str]
    permuted: Mapping[str, str] = field(default_factory=dict)
    metadata: tuple[MetadataKey, ...] = DECODER_METADATA
    refuse: Callable[[Any], str | None] = _no_objection

    def metadata_fields(self, config) -> dict[str, tuple[Any, GGUFValueType]]:
        """``{"<arch>.block_count": (30, UINT32), …}`` for ``config``.

        Raises ValueError for configs llama.cpp's graph for this arch cannot express.
        """
        if rope_type(config) != "default":
            raise ValueError(f"RoPE type {rope_type(config)!r} has no GGUF export here")
        reason = self.refuse(config)
        if reason:
            raise ValueError(reason)
        fields = {f"{self.arch}.{m.key}": (m.from_config(config), m.vtype) for m in self.metadata}
        dim = head_dim(config)
        if dim * config.num_attention_heads != config.hidden_size:
            # llama.cpp assumes head_dim = hidden / heads unless told otherwise
            fields[f"{self.arch}.attention.key_length"] = (dim, GGUFValueType.UINT32)
            fields[f"{self.arch}.attention.value_length"] = (dim, GGUFValueType.UINT32)
        return fields

    def hf_to_gguf_name(self, name: str) -> str:
        """``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight``."""
        if name in GLOBAL_TENSORS:
            return GLOBAL_TENSORS[name]
        parsed = parse_layer(name)
        if parsed is None or parsed[1] not in self.layer_tensors:
            raise KeyError(f"no llama.cpp {self.arch} name for tensor {name!r}")
        return f"blk.{parsed[0]}.{self.layer_tensors[parsed[1]]}"

    def gguf_to_hf_name(self, name: str) -> str:
        """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``."""
        for hf_name, gguf_name in GLOBAL_TENSORS.items():
            if name == gguf_name:
                return hf_name
        match = _BLOCK_RE.match(name)
        by_gguf = {v: k for k, v in self.layer_tensors.items()}
        if match is None or match.group(2) not in by_gguf:
            raise KeyError(f"no Hugging Face name for {self.arch} GGUF tensor {name!r}")
        return layer_tensor_name(int(match.group(1)), by_gguf[match.group(2)])

    def to_gguf_layout(self, name: str, weight: np.ndarray, config) -> tuple[str, np.ndarray]:
        """One HF tensor -> ``(gguf name, array in llama.cpp's row order)``; shapes are kept."""
        gguf_name = self.hf_to_gguf_name(name)
        parsed = parse_layer(name)
        if parsed is not None and parsed[1] in self.permuted:
            out = permute_qk(weight, getattr(config, self.permuted[parsed[1]]))
            assert out.shape == weight.shape
            return gguf_name, out
        return gguf_name, weight
