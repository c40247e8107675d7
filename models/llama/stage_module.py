"""A pipeline stage of a LLaMA model, built from transformers' own LLaMA blocks."""

from __future__ import annotations

from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)

from models.stage_module import DecoderStage


class LlamaStage(DecoderStage):
    """Layers ``[start, end)`` of a LLaMA model (:class:`~models.stage_module.DecoderStage`)."""

    decoder_layer_class = LlamaDecoderLayer
    norm_class = LlamaRMSNorm
    rotary_class = LlamaRotaryEmbedding
