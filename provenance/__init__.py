"""Run directories and run records: every producing command leaves one, never overwritten."""

from base.atomic import atomic_write
from base.hashing import sha256_bytes, sha256_file, sha256_json
from provenance.run_dir import RunDir, create_run_dir, environment_versions

__all__ = [
    "RunDir",
    "atomic_write",
    "create_run_dir",
    "environment_versions",
    "sha256_bytes",
    "sha256_file",
    "sha256_json",
]
