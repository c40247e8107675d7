"""The model-family registry: families register themselves; callers look them up by config.

Each family package calls :func:`register_family` when it is imported; the registry imports
the built-in packages (:data:`BUILTIN_FAMILIES`) on the first lookup, so importing ``models``
stays cheap and nothing outside ``models/`` names a family. Lookups go by what a checkpoint
declares: ``model_type`` and ``architectures`` in its config, or ``general.architecture`` in a
GGUF file.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping

from base.errors import CheckpointError
from models.family import ModelFamily

# packages that register a family when imported
BUILTIN_FAMILIES: tuple[str, ...] = ("models.llama", "models.qwen2")

_FAMILIES: dict[str, ModelFamily] = {}
_lock = threading.Lock()
_loaded = False


def register_family(family: ModelFamily) -> ModelFamily:
    """Add ``family``; its name, architectures and model types must be new."""
    for other in _FAMILIES.values():
        if other is family:
            return family
        taken = (
            {other.name} & {family.name}
            | set(other.architectures) & set(family.architectures)
            | set(other.model_types) & set(family.model_types)
        )
        if taken:
            raise ValueError(f"family {family.name!r} reuses {sorted(taken)} of {other.name!r}")
    _FAMILIES[family.name] = family
    return family


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    with _lock:
        if not _loaded:
            for module in BUILTIN_FAMILIES:
                importlib.import_module(module)
            _loaded = True


def families() -> tuple[ModelFamily, ...]:
    """Every registered family, in registration order."""
    _load_builtin()
    return tuple(_FAMILIES.values())


def supported() -> str:
    """``"LLaMA (LlamaForCausalLM), Qwen2 (Qwen2ForCausalLM)"``, for messages."""
    return ", ".join(f"{f.display_name} ({f.architecture})" for f in families())


def get_family(name: str) -> ModelFamily:
    """The family registered as ``name`` (``"llama"``, ``"qwen2"``)."""
    for family in families():
        if family.name == name:
            return family
    raise KeyError(f"no model family {name!r}; registered: {[f.name for f in families()]}")


def declared_family(config) -> ModelFamily | None:
    """The family whose architecture *and* model type ``config`` declares, else None."""
    return next((f for f in families() if f.declares(config)), None)


def family_of(config) -> ModelFamily:
    """The family of a config object or dict: by ``model_type``, else by ``architectures``.

    Raises:
        CheckpointError: the config names no registered family.
    """
    get = config.get if isinstance(config, Mapping) else lambda k: getattr(config, k, None)
    model_type = get("model_type")
    declared = list(get("architectures") or [])
    for family in families():
        if model_type in family.model_types:
            return family
    for family in families():
        if set(declared) & set(family.architectures):
            return family
    raise CheckpointError(
        f"config declares architectures={declared} model_type={model_type!r}, which is no "
        f"model family node0 serves ({supported()})",
        hint="use a checkpoint of a supported family",
    )


def expected_shapes(config, layers: range, *, first: bool, last: bool):
    """Every tensor a stage of ``config``'s family covering ``layers`` needs, with its shape."""
    return family_of(config).expected_shapes(config, layers, first=first, last=last)


def family_for_gguf(arch: str | None) -> ModelFamily | None:
    """The family whose GGUF ``general.architecture`` is ``arch``, else None."""
    return next((f for f in families() if f.gguf.arch == arch), None)
