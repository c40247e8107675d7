"""Qwen2 in llama.cpp's GGUF layout: the decoder tables plus ``attn_q/k/v.bias``, no permutation.

llama.cpp's converter (``Qwen2Model``) writes the Hugging Face tensors as they are: its qwen2
graph applies NEOX-style RoPE, which is transformers' "rotate half" row order, so q/k rows are
not permuted (transformers' GGUF reader has no qwen2 tensor processor either). Hyperparameters
go under ``qwen2.*`` with the same keys as LLaMA's.
"""

from __future__ import annotations

from models.gguf_layout import DECODER_LAYER_TENSORS, GGUFLayout

ARCH = "qwen2"  # general.architecture

LAYER_TENSORS: dict[str, str] = {
    **DECODER_LAYER_TENSORS,
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
}

LAYOUT = GGUFLayout(arch=ARCH, layer_tensors=LAYER_TENSORS)
