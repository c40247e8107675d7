"""The artifact store: adapter directories kept by the sha256 of their weights.

Layout (``$NODE0_HOME/models/`` unless configured)::

    <root>/sha256/<hex>/adapter_model.safetensors   the file whose sha256 is <hex>
    <root>/sha256/<hex>/adapter_config.json

An entry is written once, atomically (a staged directory renamed into place), and is never
changed afterwards; two versions with identical weights share one entry. :meth:`verify` reads
the file again and compares; a daemon does the same before it loads an adapter.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from base.atomic import atomic_dir
from base.errors import CheckpointError
from base.hashing import sha256_file

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class StoredAdapter:
    """One adapter in the store: its directory and the digests of its two files."""

    path: Path
    sha256: str
    config_sha256: str
    size: int


def read_adapter_dir(directory: Path) -> dict:
    """``adapter_config.json`` of a PEFT adapter directory, checked to be one."""
    config_path, weights = directory / CONFIG, directory / WEIGHTS
    if not config_path.is_file() or not weights.is_file():
        raise CheckpointError(
            f"{directory} is not a PEFT adapter directory (needs {CONFIG} and {WEIGHTS})",
            hint="give the adapter/ directory of `node0 gather --adapters-only`",
        )
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config_path}: not readable JSON: {exc}") from exc
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{config_path}: not a LoRA adapter config")
    return config


class ArtifactStore:
    """Content-addressed adapter directories under ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path_for(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256

    def put_adapter(
        self, directory: str | Path, *, expected_sha256: str | None = None
    ) -> StoredAdapter:
        """Copy a PEFT adapter directory into the store (a no-op when it is there already).

        Raises:
            CheckpointError: not an adapter directory, or its weights' sha256 differs from
                ``expected_sha256`` (the digest its producing run recorded).
        """
        directory = Path(directory)
        read_adapter_dir(directory)
        digest = sha256_file(directory / WEIGHTS)
        if expected_sha256 is not None and digest != expected_sha256:
            exc = CheckpointError(
                f"{directory / WEIGHTS}: sha256 {digest[:16]}… does not match the recorded "
                f"{expected_sha256[:16]}…; refusing to register it",
                hint="the file changed after its run wrote it; gather it again",
            )
            exc.reason = "sha256_mismatch"
            raise exc
        target = self.path_for(digest)
        if not target.is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_dir(target) as staged:
                shutil.copyfile(directory / WEIGHTS, staged / WEIGHTS)
                shutil.copyfile(directory / CONFIG, staged / CONFIG)
        self.verify(digest)
        return StoredAdapter(
            path=target,
            sha256=digest,
            config_sha256=sha256_file(target / CONFIG),
            size=(target / WEIGHTS).stat().st_size,
        )

    def verify(self, sha256: str) -> Path:
        """The entry's directory, after checking its weights still hash to ``sha256``."""
        target = self.path_for(sha256)
        weights = target / WEIGHTS
        if not weights.is_file():
            raise CheckpointError(f"artifact {sha256[:16]}… is missing from {self.root}")
        actual = sha256_file(weights)
        if actual != sha256:
            exc = CheckpointError(
                f"artifact {sha256[:16]}… in {self.root} is corrupt (sha256 {actual[:16]}…)"
            )
            exc.reason = "sha256_mismatch"
            raise exc
        return target

    def remove(self, sha256: str) -> bool:
        """Delete an entry; returns whether it existed."""
        target = self.path_for(sha256)
        if not target.is_dir():
            return False
        shutil.rmtree(target)
        return True
