"""The export manifest (``manifest.json`` in the output) and the export's run record.

The manifest says what the output is made of and proves it: every source (peer, stage, layer
range, the sha256 of each tensor it sent), the coverage plan (which source provided each layer),
and the sha256 and size of every output file. The run record (``provenance.create_run_dir``)
lists the same output files as artifacts, with the inputs, versions and status of the run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from base.atomic import atomic_file
from checkpoint_gather.coverage import CoveragePlan
from checkpoint_gather.sources import SourceManifest
from provenance import RunDir, sha256_file, sha256_json

MANIFEST = "manifest.json"

# sha256 of files this process wrote and hashed, keyed by (device, inode, size, mtime): the
# key survives the rename that publishes an output, so each output is read back only once.
_FILE_DIGESTS: dict[tuple[int, int, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, remembered while the file is unchanged (even if renamed)."""
    stat = os.stat(path)
    key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    digest = _FILE_DIGESTS.get(key)
    if digest is None:
        digest = _FILE_DIGESTS[key] = sha256_file(path)
    return digest


def file_digests(path: Path, root: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {sha256, size}}`` for a file or every file under a directory."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {
        str(p.relative_to(root)): {"sha256": file_sha256(p), "size": p.stat().st_size}
        for p in files
    }


def build_manifest(
    root: Path,
    *,
    model: str | None,
    sources: Sequence[SourceManifest],
    plan: CoveragePlan | None,
    outputs: Mapping[str, Path],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of an export whose ``outputs`` (label -> path) all lie under ``root``."""
    source_json = [s.to_json() for s in sources]
    return {
        "model": model,
        "sources": [
            {
                **{k: v for k, v in s.items() if k != "tensors"},
                "tensors_sha256": sha256_json(s["tensors"]),
                "tensors": s["tensors"],
            }
            for s in source_json
        ],
        "coverage": None
        if plan is None
        else {
            "num_layers": plan.num_layers,
            "tied": plan.tied,
            "layers": {str(k): v for k, v in sorted(plan.layer_sources.items())},
            "dropped": plan.dropped,
        },
        "outputs": {
            label: {"path": str(path.relative_to(root)), "files": file_digests(path, root)}
            for label, path in sorted(outputs.items())
        },
        **dict(extra or {}),
    }


def write_manifest(root: str | Path, manifest: Mapping[str, Any], *, durable: bool = True) -> Path:
    """Write ``manifest.json`` into ``root`` (atomically; never over an existing one)."""
    path = Path(root) / MANIFEST
    with atomic_file(path, durable=durable) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def record_outputs(run: RunDir, root: Path, manifest: Mapping[str, Any]) -> None:
    """Register every output file (and the manifest) as an artifact of ``run``, with the
    digests the manifest already holds (the files are not read again)."""
    run.set(
        "sources", [{k: v for k, v in s.items() if k != "tensors"} for s in manifest["sources"]]
    )
    files = {
        rel: entry
        for output in manifest["outputs"].values()
        for rel, entry in output["files"].items()
    }
    path = root / MANIFEST
    files[MANIFEST] = {"sha256": file_sha256(path), "size": path.stat().st_size}
    entries = [
        {
            "path": os.path.relpath((root / rel).resolve(), run.path),
            "sha256": entry["sha256"],
            "size": entry["size"],
        }
        for rel, entry in sorted(files.items())
    ]
    paths = {entry["path"] for entry in entries}
    run.set(
        "artifacts",
        [a for a in run.record.get("artifacts", []) if a["path"] not in paths] + entries,
    )
