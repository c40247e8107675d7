"""LLaMA in llama.cpp's GGUF layout: the plain decoder tables, Q/K rows permuted.

llama.cpp's converter (``LlamaModel.permute``) reorders the rows of ``q_proj`` (by the attention
head count) and ``k_proj`` (by the KV-head count under GQA) from Hugging Face's "rotate half"
layout to its interleaved one; transformers' GGUF reader (``LlamaTensorProcessor``) reverses it.
A file written without it still loads everywhere and silently gives wrong logits.
"""

from __future__ import annotations

from models.gguf_layout import DECODER_LAYER_TENSORS, GGUFLayout

ARCH = "llama"  # general.architecture

# HF suffix -> config attribute holding the head count its rows are grouped by
PERMUTED: dict[str, str] = {
    "self_attn.q_proj.weight": "num_attention_heads",
    "self_attn.k_proj.weight": "num_key_value_heads",
}


def _refuse(config) -> str | None:
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "attention/MLP biases have no llama.cpp LLaMA tensor"
    return None


LAYOUT = GGUFLayout(
    arch=ARCH, layer_tensors=dict(DECODER_LAYER_TENSORS), permuted=PERMUTED, refuse=_refuse
)
