"""The inference client: pipeline sessions with failover, generation, the conversation engine
every front end sits on (``node0-inference``, ``node0 demo``, the HTTP API), transcripts.

Importing this package does not import torch or grpc; the names below load lazily.
"""

import importlib
from typing import Any

import base  # noqa: F401,E402  (turns gRPC fork handlers off before grpc loads)

_EXPORTS = {
    "Conversation": "inference.conversation",
    "ConversationEngine": "inference.conversation",
    "GenerationSettings": "inference.conversation",
    "PreparedTurn": "inference.conversation",
    "TurnResult": "inference.conversation",
    "fit_window": "inference.conversation",
    "ContextScope": "inference.rag_context",
    "RagContext": "inference.rag_context",
    "TurnStream": "inference.turn_stream",
    "SwarmClient": "inference.swarm_client",
    "SessionTranscript": "inference.transcript",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'inference' has no attribute {name!r}")
