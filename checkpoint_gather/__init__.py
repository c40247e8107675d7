"""Checkpoint gather: verified export of the distributed model (HF safetensors, GGUF, PEFT
adapter), and checkpoint metadata (inspect, stamp).

Submodules import torch/transformers; import what you need from them directly, e.g.
``from checkpoint_gather.export import export_checkpoint``.
"""

__all__ = [
    "atomic",
    "coverage",
    "export",
    "gguf_export",
    "gguf_tokenizer",
    "hf_export",
    "inspect",
    "manifest",
    "peft_export",
    "sources",
    "stamp",
]
