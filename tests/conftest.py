"""Shared fixtures: a tiny seeded LLaMA, the real SmolLM2 assets, local swarms of real daemons.

Swarms are started with the same code as ``node0 swarm up`` (node.local_swarm), on loopback with
free ports, each daemon in its own process group; the fixture always stops them (SIGTERM, then
SIGKILL of the whole group).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import base  # noqa: F401  (gRPC fork handlers off before any test imports grpc)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HIVEMIND_MEMORY_SHARING_STRATEGY", "file_descriptor")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from models.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", seed=0)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from models.assets import prepare_model

    return prepare_model("smollm2-135m")


@contextmanager
def local_swarm(
    tmp_path: Path, model: str, peers: list[tuple[str, list[tuple[int, int]]]], **daemon
) -> Iterator:
    """Start a swarm of real daemon processes; yields its SwarmState; always stops it."""
    from node.config import SwarmPreset
    from node.local_swarm import SwarmState, start_swarm, stop_peers

    preset = SwarmPreset.model_validate(
        {
            "model": model,
            "peers": [
                {"name": name, "stages": [{"start": s, "end": e} for s, e in stages]}
                for name, stages in peers
            ],
            "daemon": {
                "announce_period": 1.0,
                "announce_ttl": 4.0,
                "state_dir": str(tmp_path / "peer-state"),
                **daemon,
            },
        }
    )
    state_file = tmp_path / "swarm.json"
    state = start_swarm(preset, "test", runs_dir=tmp_path / "runs", state_file=state_file)
    try:
        yield state
    finally:
        stop_peers(SwarmState.load(state_file).peers if state_file.exists() else state.peers)
