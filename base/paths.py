"""Where node0 keeps its caches and state on this machine."""

from __future__ import annotations

import os
from pathlib import Path


def node0_home() -> Path:
    """Root of node0's caches and state; ``$NODE0_HOME`` or ``~/.cache/node0``."""
    return Path(os.environ.get("NODE0_HOME", Path.home() / ".cache" / "node0"))


def converted_weights_dir() -> Path:
    """Where CPU stages keep weights converted to their dtype (``$NODE0_HOME/converted``);
    see :mod:`pipeline_stages.mapped_weights`. Safe to delete while no daemon runs."""
    return node0_home() / "converted"
