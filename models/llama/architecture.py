"""Check a checkpoint's declared architecture against the tensors it actually holds.

Runs before any weight is loaded (seed 001: never fall back silently to random weights). Reads
only ``config.json`` and the safetensors headers (names and shapes), never the tensor data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from base.errors import CheckpointError
from models.llama.tensor_names import (
    EMBED,
    FOREIGN_SIGNATURES,
    LM_HEAD,
    expected_shapes,
    parse_layer,
)

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
SUPPORTED_MODEL_TYPES = ("llama",)


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


def _detect_family(names: list[str]) -> str | None:
    for fragment, family in FOREIGN_SIGNATURES:
        if any(fragment in name for name in names):
            return family
    return None


def check_architecture(config, index: CheckpointIndex) -> None:
    """Raise :class:`CheckpointError` when config.json and the tensors disagree.

    The message says what the tensors look like and how to fix the declaration.
    """
    directory = index.directory
    declared = list(getattr(config, "architectures", None) or [])
    model_type = getattr(config, "model_type", None)
    names = sorted(index.shapes)
    foreign = _detect_family(names)
    fix = (
        f"node0 stamp {directory} --architecture <Architecture> --model-type <type> -o <OUT>"
        ' (or edit "architectures"/"model_type" in config.json)'
    )
    if foreign is not None:
        raise CheckpointError(
            f"{directory}: config.json declares {declared or '(no architecture)'} / model_type "
            f"{model_type!r}, but the tensors look like {foreign}; node0 serves LLaMA-family "
            "checkpoints only",
            hint="use a LLaMA-architecture checkpoint; if the declaration is what is wrong: " + fix,
        )
    if model_type not in SUPPORTED_MODEL_TYPES or not set(declared) & set(SUPPORTED_ARCHITECTURES):
        raise CheckpointError(
            f"{directory}: tensors are LLaMA-layout, but config.json declares architectures="
            f"{declared} model_type={model_type!r}",
            hint='declare architectures=["LlamaForCausalLM"], model_type="llama": '
            + fix.replace("<Architecture>", "LlamaForCausalLM").replace("<type>", "llama"),
        )
    n_layers = config.num_hidden_layers
    tied = bool(getattr(config, "tie_word_embeddings", False))
    expected = expected_shapes(config, range(n_layers), first=True, last=True)
    if tied:
        expected.pop(LM_HEAD)
    missing = [n for n in expected if n not in index.shapes]
    if missing:
        raise CheckpointError(
            f"{directory}: {len(missing)} tensors required by the declared config "
            f"({n_layers} layers) are missing, e.g. {missing[:3]}; the checkpoint holds "
            f"{index.num_layers} layers",
            hint="check num_hidden_layers in config.json against the checkpoint",
        )
    extra_layers = sorted({p[0] for n in names if (p := parse_layer(n)) and p[0] >= n_layers})
    if extra_layers:
        raise CheckpointError(
            f"{directory}: tensors for layers {extra_layers} exist beyond num_hidden_layers="
            f"{n_layers}",
            hint="check num_hidden_layers in config.json",
        )
    wrong = [(n, index.shapes[n], s) for n, s in expected.items() if index.shapes[n] != s]
    if wrong:
        name, got, want = wrong[0]
        raise CheckpointError(
            f"{directory}: {len(wrong)} tensors have shapes that contradict config.json, e.g. "
            f"{name}: checkpoint {list(got)}, config implies {list(want)}",
            hint="the config (hidden_size, heads, vocab_size, …) does not belong to these weights",
        )
    if EMBED not in index.shapes:  # pragma: no cover - covered by `missing`
        raise CheckpointError(f"{directory}: no token embedding")
