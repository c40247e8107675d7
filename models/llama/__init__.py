"""Everything LLaMA-specific: tensor names, the architecture check, the stage module."""

from models.llama.architecture import CheckpointIndex, check_architecture, index_checkpoint
from models.llama.stage_module import LlamaStage

__all__ = ["CheckpointIndex", "LlamaStage", "check_architecture", "index_checkpoint"]
