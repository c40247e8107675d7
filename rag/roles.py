"""Gas Town roles, and how a path tells which role a document belongs to."""

from __future__ import annotations

from pathlib import Path

# directory name -> Gas Town role (a document under such a directory belongs to that role)
ROLE_DIRS: dict[str, str] = {
    "mayor": "mayor",
    "polecats": "polecat",
    "polecat": "polecat",
    "witness": "witness",
    "deacon": "deacon",
    "refinery": "refinery",
    "crew": "crew",
    "boot": "boot",
}
ROLES: frozenset[str] = frozenset(ROLE_DIRS.values())


def role_from_path(rel: str, *, is_dir: bool = False) -> str:
    """The role a file (or directory) belongs to: its nearest role directory; ``""`` for all."""
    parts = Path(rel).parts if is_dir else Path(rel).parts[:-1]
    for part in reversed(parts):
        if part in ROLE_DIRS:
            return ROLE_DIRS[part]
    return ""
