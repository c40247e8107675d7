"""The Qwen2 family: per-layer tensors, GGUF layout, stage module; registered on import."""

from models.qwen2.family import QWEN2
from models.qwen2.stage_module import Qwen2Stage
from models.registry import register_family

register_family(QWEN2)

__all__ = ["QWEN2", "Qwen2Stage"]
