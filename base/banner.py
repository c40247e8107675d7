"""The self-describing start of a long-running command: config path, fingerprint, decisions."""

from __future__ import annotations

import sys
from pathlib import Path


def print_banner(
    command: str, config_path: str | Path | None, config_sha256: str | None, decisions: list[str]
) -> None:
    """Print, before any work starts, what the command will do (to stderr)."""
    out = sys.stderr
    print(f"node0 {command}", file=out)
    if config_path is not None:
        print(f"  config: {config_path}  sha256={config_sha256}", file=out)
    for line in decisions:
        print(f"  {line}", file=out)
    out.flush()


def status(phase: str, message: str) -> None:
    """One line per phase, so a log shows where a run is."""
    print(f"[{phase}] {message}", file=sys.stderr, flush=True)
