"""A run directory with its run record.

Layout::

    <root>/<kind>-<UTC yyyymmddTHHMMSS>-<8 hex>/
        run_record.json       inputs, resolved config + sha256, versions, seeds, artifacts
        config_resolved.yaml  the resolved config that was hashed
        ...                   the command's own artifacts

A run directory is created with ``mkdir(exist_ok=False)``: an existing one is never reused or
overwritten. The record is rewritten atomically (temp file + rename) as the run progresses, so a
crash leaves the last consistent record with ``status: running``.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import secrets
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from base.atomic import atomic_write
from base.errors import RunDirError
from base.hashing import canonical_json, sha256_bytes, sha256_file

_TRACKED_PACKAGES = (
    "node0",
    "torch",
    "transformers",
    "hivemind",
    "peft",
    "gguf",
    "grpcio",
    "safetensors",
    "protobuf",
)


def environment_versions() -> dict[str, str]:
    """Versions of python and the packages a run's results depend on."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


@dataclass
class RunDir:
    """An open run directory: :meth:`add_artifact` for each output, :meth:`finish` at the end."""

    path: Path
    record: dict[str, Any] = field(default_factory=dict)

    def add_input(self, path: str | Path, *, role: str = "input") -> None:
        p = Path(path)
        entry: dict[str, Any] = {"path": str(p), "role": role}
        if p.is_file():
            entry.update(sha256=sha256_file(p), size=p.stat().st_size)
        self.record["inputs"].append(entry)
        self._flush()

    def add_artifact(self, path: str | Path) -> None:
        """Register a file (relative to the run dir or absolute) with its sha256 and size."""
        p = Path(path)
        if not p.is_absolute():
            p = self.path / p
        rel = os.path.relpath(p, self.path)
        self.record["artifacts"] = [a for a in self.record["artifacts"] if a["path"] != rel]
        self.record["artifacts"].append(
            {"path": rel, "sha256": sha256_file(p), "size": p.stat().st_size}
        )
        self._flush()

    def set(self, key: str, value: Any) -> None:
        self.record[key] = value
        self._flush()

    def finish(self, status: str = "done", **extra: Any) -> None:
        self.record.update(extra)
        self.record["status"] = status
        self.record["ended_at"] = _utc_now()
        self._flush()

    def _flush(self) -> None:
        text = canonical_json(self.record)
        atomic_write(self.path / "run_record.json", text)


def create_run_dir(
    root: str | Path,
    kind: str,
    *,
    config: dict[str, Any] | None = None,
    config_path: str | Path | None = None,
    seeds: dict[str, int] | None = None,
    argv: list[str] | None = None,
) -> RunDir:
    """Create a new, never-before-used run directory and write its initial run record."""
    root = Path(root).resolve()  # artifacts may be given relative to the run dir or the cwd
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create run root {root}: {exc}") from exc
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S")
    path = root / f"{kind}-{stamp}-{secrets.token_hex(4)}"
    try:
        path.mkdir(exist_ok=False)
    except FileExistsError as exc:  # practically impossible with 32 random bits, still fail closed
        raise RunDirError(f"run directory {path} already exists; refusing to overwrite") from exc
    record: dict[str, Any] = {
        "kind": kind,
        "run_id": path.name,
        "status": "running",
        "started_at": _utc_now(),
        "argv": list(sys.argv if argv is None else argv),
        "inputs": [],
        "artifacts": [],
        "seeds": dict(seeds or {}),
        "versions": environment_versions(),
    }
    if config is not None:
        resolved = yaml.safe_dump(config, sort_keys=True).encode()
        atomic_write(path / "config_resolved.yaml", resolved)
        record["config"] = {
            "path": str(config_path) if config_path else None,
            "sha256": sha256_bytes(resolved),
        }
    run = RunDir(path=path, record=record)
    run._flush()
    return run
