"""The LLaMA family: per-layer tensors, GGUF layout, stage module; registered on import."""

from models.llama.family import LLAMA
from models.llama.stage_module import LlamaStage
from models.registry import register_family

register_family(LLAMA)

__all__ = ["LLAMA", "LlamaStage"]
