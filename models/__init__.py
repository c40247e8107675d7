"""Model families behind one interface, and the checkpoint reader they share.

Generic code reaches a family only through the registry: :func:`family_of` a config (or
:func:`family_for_gguf` a GGUF architecture) gives the :class:`ModelFamily` with its stage
module, tensor tables and GGUF layout. :func:`check_architecture` proves a checkpoint's
declaration matches its tensors before anything is loaded. Families: ``models/llama``,
``models/qwen2``; ``docs/model_families.md`` says how to add one.
"""

from models.architecture import check_architecture
from models.checkpoint import CheckpointIndex, index_checkpoint
from models.family import ModelFamily
from models.registry import (
    declared_family,
    expected_shapes,
    families,
    family_for_gguf,
    family_of,
    get_family,
    register_family,
    supported,
)
from models.tensor_names import EMBED, FINAL_NORM, LM_HEAD, layer_tensor_name, parse_layer

__all__ = [
    "EMBED",
    "FINAL_NORM",
    "LM_HEAD",
    "CheckpointIndex",
    "ModelFamily",
    "check_architecture",
    "declared_family",
    "expected_shapes",
    "families",
    "family_for_gguf",
    "family_of",
    "get_family",
    "index_checkpoint",
    "layer_tensor_name",
    "parse_layer",
    "register_family",
    "supported",
]
