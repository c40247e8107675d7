"""Where each tensor of a safetensors checkpoint lives, with its shape (headers only).

Reads ``model.safetensors`` or the shards an index names; never the tensor data. Every family
and every consumer (the architecture check, the stage loader, gather, inspect) uses this one
reader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from base.errors import CheckpointError
from models.tensor_names import parse_layer


@dataclass(frozen=True)
class CheckpointIndex:
    """Where each tensor of a safetensors checkpoint lives, with its shape."""

    directory: Path
    files: dict[str, Path]  # tensor name -> file
    shapes: dict[str, tuple[int, ...]]

    @property
    def num_layers(self) -> int:
        layers = {parsed[0] for name in self.shapes if (parsed := parse_layer(name))}
        return max(layers) + 1 if layers else 0


def index_checkpoint(directory: str | Path) -> CheckpointIndex:
    """Read tensor names and shapes from the safetensors files (single or sharded)."""
    directory = Path(directory)
    index_file = directory / "model.safetensors.index.json"
    if index_file.is_file():
        weight_map = json.loads(index_file.read_text())["weight_map"]
        file_names = sorted(set(weight_map.values()))
    elif (directory / "model.safetensors").is_file():
        file_names = ["model.safetensors"]
    else:
        raise CheckpointError(f"no model.safetensors or index in {directory}")
    files: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for file_name in file_names:
        path = directory / file_name
        try:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():
                    files[name] = path
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"cannot read safetensors header of {path}: {exc}") from exc
    return CheckpointIndex(directory=directory, files=files, shapes=shapes)
