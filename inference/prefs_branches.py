"""Where a preference session works: its own git worktree and branch of the rig.

The spec names Dolt branches; git branches are the stand-in that exists here, and this module
is the only place that knows it (a Dolt backend replaces :class:`GitWorktrees`). Each session
of ``node0 prefs sling`` gets ``prefs/<bead>/<label>`` branched from the rig's ``HEAD``, checked
out in ``.node0/prefs/worktrees/<bead>-<label>`` under the rig.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from base.errors import DataError


@dataclass(frozen=True)
class Worktree:
    path: Path
    branch: str
    base: str  # the commit it branched from


def _git(root: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        raise DataError(f"git {' '.join(args)} in {root} failed: {proc.stderr.strip()[:300]}")
    return proc.stdout.strip()


class GitWorktrees:
    """The branch backend on git: one worktree and branch per session."""

    def __init__(self, rig: Path):
        self.rig = Path(rig).resolve()

    def open(self, bead: str, label: str) -> Worktree:
        """A fresh worktree on branch ``prefs/<bead>/<label>`` from the rig's HEAD (an existing
        one of the same name is replaced: a re-sling starts over)."""
        base = _git(self.rig, "rev-parse", "HEAD")
        branch = f"prefs/{bead}/{label}"
        path = self.rig / ".node0" / "prefs" / "worktrees" / f"{bead}-{label}"
        self.close(bead, label)
        path.parent.mkdir(parents=True, exist_ok=True)
        _git(self.rig, "worktree", "add", "--force", "-B", branch, str(path), base)
        return Worktree(path, branch, base)

    def close(self, bead: str, label: str) -> None:
        """Remove the session's worktree (its branch stays, with the session's commits)."""
        path = self.rig / ".node0" / "prefs" / "worktrees" / f"{bead}-{label}"
        if path.exists():
            _git(self.rig, "worktree", "remove", "--force", str(path))

    def head(self, worktree: Worktree) -> str:
        """The branch's commit now (the base when the session committed nothing)."""
        return _git(worktree.path, "rev-parse", "HEAD")
