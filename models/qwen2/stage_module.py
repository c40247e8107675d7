"""A pipeline stage of a Qwen2 model, built from transformers' own Qwen2 blocks."""

from __future__ import annotations

from transformers.models.qwen2.modeling_qwen2 import (
    Qwen2DecoderLayer,
    Qwen2RMSNorm,
    Qwen2RotaryEmbedding,
)

from models.stage_module import DecoderStage


class Qwen2Stage(DecoderStage):
    """Layers ``[start, end)`` of a Qwen2 model (:class:`~models.stage_module.DecoderStage`)."""

    decoder_layer_class = Qwen2DecoderLayer
    norm_class = Qwen2RMSNorm
    rotary_class = Qwen2RotaryEmbedding
