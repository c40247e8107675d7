"""The one YAML config loader, for every config kind (daemon, swarm, train, corpus, rag, …).

YAML files only name values; a pydantic model holds defaults, meaning and validation. Any parse or
validation problem becomes a :class:`ConfigError` that names the file and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from base.errors import ConfigError
from base.hashing import sha256_bytes

Model = TypeVar("Model", bound=BaseModel)


def load_yaml_config(
    path: str | Path, model: type[Model], *, overrides: Mapping[str, Any] | None = None
) -> tuple[Model, str]:
    """Parse and validate a YAML config; returns it with the sha256 of the file's bytes.

    Args:
        path: the YAML file; its top level must be a mapping (an empty file is ``{}``).
        model: the pydantic model that validates it.
        overrides: top-level keys set over the file's before validation (e.g. CLI options);
            the sha256 stays the file's.

    Raises:
        ConfigError: the file cannot be read, is not YAML or not a mapping, or fails
            validation (each problem named by its field path).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    try:
        data = yaml.safe_load(raw) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    data.update(overrides or {})
    try:
        return model.model_validate(data), sha256_bytes(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{path}: invalid {model.__name__}: {problems}") from exc
