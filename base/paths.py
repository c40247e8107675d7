"""Where node0 keeps its caches and state on this machine."""

from __future__ import annotations

import os
from pathlib import Path


def node0_home() -> Path:
    """Root of node0's caches and state; ``$NODE0_HOME`` or ``~/.cache/node0``."""
    return Path(os.environ.get("NODE0_HOME", Path.home() / ".cache" / "node0"))
