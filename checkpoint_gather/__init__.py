"""Checkpoint gather: pull the distributed model from the swarm (``weights_service`` on the
stages, ``weights_client`` + ``gather`` on the gatherer), verified export (HF safetensors, GGUF,
PEFT adapter), and checkpoint metadata (inspect, stamp).

Submodules import torch/transformers; import what you need from them directly, e.g.
``from checkpoint_gather.export import export_checkpoint``.
"""

import base  # noqa: F401,E402  (turns gRPC fork handlers off before grpc loads)

__all__ = [
    "coverage",
    "export",
    "gather",
    "gguf_export",
    "gguf_tokenizer",
    "hf_export",
    "inspect",
    "manifest",
    "merge",
    "peft_export",
    "sources",
    "stamp",
    "weights_client",
    "weights_service",
]
